//! Joining, learning a member's tags, and leaving.

use super::*;
use crate::agent::sansio::Dial;

fn dials(node: &Node, kind: Dial) -> Vec<String> {
    (node.log.iter())
        .filter_map(|e| match e {
            Effect::Dial {
                target, kind: k, ..
            } if *k == kind => Some(target.clone()),
            _ => None,
        })
        .collect()
}

fn join_retries(node: &Node) -> Vec<Duration> {
    (node.log.iter())
        .filter_map(|e| match e {
            Effect::Schedule {
                after,
                timer: Timer::RetryJoin,
            } => Some(*after),
            _ => None,
        })
        .collect()
}

#[test]
fn failed_join_rounds_back_off_and_give_up_at_retry_max() {
    let nobody = "10.0.9.9:7946".to_owned();
    let mut sim = Sim::new(vec![Setup {
        join: vec![nobody.clone()],
        retry_interval: Some("1s"),
        retry_max: Some(4),
        ..Setup::default()
    }]);
    sim.start(0, Vec::new());
    sim.run_for(60 * SEC);
    let node = &sim.nodes[0];
    assert_eq!(
        dials(node, Dial::Join),
        vec![nobody; 4],
        "four rounds, then no more"
    );
    assert_eq!(join_retries(node), [SEC, 2 * SEC, 4 * SEC], "growing waits");
}

#[test]
fn a_late_peer_is_joined_on_the_next_round() {
    let mut sim = Sim::new(vec![
        Setup::default(),
        Setup {
            join: vec![addr(0)],
            retry_interval: Some("1s"),
            ..Setup::default()
        },
    ]);
    sim.nodes[0].up = false;
    sim.start(1, Vec::new());
    sim.run_for(SEC / 2);
    assert_eq!(join_retries(&sim.nodes[1]), [SEC]);
    sim.nodes[0].up = true;
    sim.start(0, Vec::new());
    sim.run_for(5 * SEC);
    assert_eq!(dials(&sim.nodes[1], Dial::Join).len(), 2);
    assert_eq!(join_retries(&sim.nodes[1]), [SEC], "joined: no third round");
    assert_eq!(sim.member(1, "a").status, "alive");
    assert_eq!(sim.member(0, "b").status, "alive");
}

#[test]
fn a_member_up_with_unknown_tags_is_asked_by_the_next_tag_sweep() {
    let db = || Setup {
        tags: vec!["role=db".into()],
        ..Setup::default()
    };
    // B is never started: it announces no tags, only a push/pull tells them.
    let mut sim = Sim::new(vec![Setup::default(), db()]);
    let b = sim.nodes[1].id.clone();
    sim.start(0, vec![b.clone()]);
    sim.settle();
    assert_eq!(sim.member(0, "b").status, "alive");
    assert!(
        dials(&sim.nodes[0], Dial::Sync).is_empty(),
        "no push/pull at once: the tags may be on their way by gossip"
    );
    sim.run_for(crate::agent::sansio::untagged::SWEEP_EVERY + SEC / 2);
    assert_eq!(dials(&sim.nodes[0], Dial::Sync), [b.addr.to_string()]);
    let tags = sim.member(0, "b").tags;
    assert_eq!(
        tags.get("role").map(String::as_str),
        Some("db"),
        "learned by the sweep's dial"
    );
    // Nothing is left to ask: the sweep does not come back.
    sim.run_for(3 * crate::agent::sansio::untagged::SWEEP_EVERY);
    assert_eq!(dials(&sim.nodes[0], Dial::Sync).len(), 1);
}

#[test]
fn leave_sends_notices_then_saves_the_state() {
    let mut sim = Sim::cluster(vec![Setup::default(), Setup::default(), Setup::default()]);
    let before = sim.nodes[1].log.len();
    sim.input(1, |m, now| m.leave(now));
    assert!(sim.nodes[1].machine.stopped());
    let effects = &sim.nodes[1].log[before..];
    let notices: Vec<SocketAddr> = (effects.iter())
        .map_while(|e| match e {
            Effect::Send { to, plain } if matches!(direct(plain), Some(Direct::Leave(_))) => {
                Some(*to)
            }
            _ => None,
        })
        .collect();
    let mut got = notices.clone();
    got.sort();
    let expect = [sim.nodes[0].id.addr, sim.nodes[2].id.addr];
    assert_eq!(got, expect, "the notices come first, one per member");
    match effects.last() {
        Some(Effect::Snapshot(state)) => {
            let mut names: Vec<_> = state.members.iter().map(|m| m.name.as_str()).collect();
            names.sort();
            assert_eq!(names, ["a", "c"], "rejoin targets for the next start");
        }
        other => panic!("the state file comes last: {other:?}"),
    }
    sim.nodes[1].up = false;
    sim.run_for(3 * SEC);
    assert_eq!(sim.member(0, "b").status, "left");
    assert_eq!(sim.member(2, "b").status, "left");
    // A stopped node dials nobody: no join round, no reconnect.
    let rounds = dials(&sim.nodes[1], Dial::Join).len();
    sim.input(1, |m, now| m.timer(now, Timer::RetryJoin));
    sim.input(1, |m, _| m.reconnect_tick());
    assert_eq!(dials(&sim.nodes[1], Dial::Join).len(), rounds);
    assert!(dials(&sim.nodes[1], Dial::Reconnect).is_empty());
}

/// Regression (found by the simulator): the snapshot tick pruned a node's own tags from
/// its tag book, since foca does not list the node itself.
#[test]
fn the_snapshot_tick_keeps_the_nodes_own_tags() {
    let web = Setup {
        tags: vec!["role=web".into()],
        ..Setup::default()
    };
    let mut sim = Sim::cluster(vec![web, Setup::default()]);
    sim.input(0, |m, now| m.snapshot_tick(now));
    let own = sim.nodes[0].machine.tags_of("a");
    assert_eq!(
        own.and_then(|t| t.get("role").cloned()).as_deref(),
        Some("web")
    );
}
