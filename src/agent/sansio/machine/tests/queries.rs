//! Queries across machines: the lifecycle on the origin, and key dispatch.

use super::*;
use crate::agent::KeyOp;
use crate::agent::key_auth::sign;
use crate::agent::sansio::keys::keys_fan_in;
use crate::agent::sansio::machine::QueryRequest;
use crate::gossip::Key;

fn ping(timeout: Duration) -> QueryRequest {
    QueryRequest {
        name: "ping".into(),
        payload: Vec::new(),
        filters: Vec::new(),
        timeout,
    }
}

fn answered_by(result: &QueryResult) -> Vec<(String, String)> {
    let mut out: Vec<_> = (result.answers.iter())
        .map(|(n, p)| (n.name.clone(), String::from_utf8_lossy(p).into_owned()))
        .collect();
    out.sort();
    out
}

fn deadlines_armed(sim: &Sim, i: usize) -> usize {
    let armed =
        |t: &(Duration, u64, usize, Timer)| t.2 == i && matches!(t.3, Timer::QueryDeadline(_));
    sim.timers.iter().filter(|t| armed(t)).count()
}

#[test]
fn a_query_finishes_as_soon_as_every_member_answered() {
    let mut sim = Sim::cluster(vec![Setup::default(), Setup::default(), Setup::default()]);
    sim.input(0, |m, now| m.user_query(now, ping(10 * SEC), "q1"));
    assert!(
        sim.nodes[0].done.is_empty(),
        "b and c have not answered yet"
    );
    assert_eq!(deadlines_armed(&sim, 0), 1);
    // The query travels by gossip; the answers alone finish it, long before the
    // deadline.
    sim.run_for(SEC);
    let (waiter, result) = &sim.nodes[0].done[0];
    assert_eq!(*waiter, "q1");
    let expect = [("a", "a"), ("b", "b"), ("c", "c")].map(|(n, p)| (n.into(), p.into()));
    assert_eq!(answered_by(result), expect);
    assert!(result.missing.is_empty());
    assert!(
        sim.nodes[0]
            .log
            .iter()
            .any(|e| matches!(e, Effect::CancelDeadline(_))),
        "the deadline is dropped"
    );
    assert_eq!(deadlines_armed(&sim, 0), 0);
    // B and C answered with one datagram each.
    for i in [1, 2] {
        let answers = sim.nodes[i].log.iter().filter(|e| {
            matches!(e, Effect::Send { to, plain }
                if *to == sim.nodes[0].id.addr
                    && matches!(direct(plain), Some(Direct::QueryResponse(_))))
        });
        assert_eq!(answers.count(), 1, "node {i}");
    }
}

#[test]
fn the_deadline_lists_the_members_that_did_not_answer() {
    let mut sim = Sim::cluster(vec![Setup::default(), Setup::default(), Setup::default()]);
    sim.nodes[2].up = false;
    sim.input(0, |m, now| m.user_query(now, ping(3 * SEC), "q2"));
    sim.run_for(2 * SEC);
    assert!(sim.nodes[0].done.is_empty(), "c may still answer");
    sim.run_for(2 * SEC);
    let (_, result) = &sim.nodes[0].done[0];
    let names: Vec<_> = answered_by(result).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b"]);
    let missing: Vec<_> = result.missing.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(missing, ["c"]);
}

#[test]
fn reserved_and_malformed_queries_fail_without_sending() {
    let mut sim = Sim::cluster(vec![Setup::default(), Setup::default()]);
    let sent = sim.nodes[0].log.len();
    let mut reserved = ping(SEC);
    reserved.name = "_keys".into();
    sim.input(0, |m, now| m.user_query(now, reserved, "reserved"));
    sim.input(0, |m, now| {
        m.key_query(now, KeyOp::Install, None, None, "no key")
    });
    let failed: Vec<_> = sim.nodes[0].failed.iter().map(|(w, _)| *w).collect();
    assert_eq!(failed, ["reserved", "no key"]);
    assert_eq!(sim.nodes[0].log.len(), sent, "nothing was sent or armed");
}

#[test]
fn a_key_operation_is_applied_on_every_node_and_fans_in() {
    let mut sim = Sim::cluster(vec![Setup::default(), Setup::default(), Setup::default()]);
    let new = Key::from_bytes([7; 32]).to_base64();
    let op = Some(new.clone());
    sim.input(0, |m, now| {
        let auth = sign("install", Some(&new), &operator(), now.wall_millis());
        m.key_query(now, KeyOp::Install, op, Some(auth), "install")
    });
    sim.run_for(SEC);
    for node in &sim.nodes {
        let rings: Vec<_> = (node.log.iter())
            .filter_map(|e| match e {
                Effect::Keyring { ring, save_to } => Some((ring.list(), save_to.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(rings.len(), 1, "{}: {rings:?}", node.id.name);
        assert!(rings[0].0.contains(&new), "{}", node.id.name);
        assert_eq!(rings[0].1, None, "no keyring file configured");
        assert!(node.machine.keyring.list().contains(&new));
    }
    let (waiter, result) = sim.nodes[0].done.remove(0);
    assert_eq!(waiter, "install");
    let fanned = keys_fan_in(result);
    assert_eq!(fanned.keys.get(&new), Some(&3), "{fanned:?}");
    assert!(fanned.results.iter().all(|r| r.ok), "{fanned:?}");
    assert!(fanned.missing.is_empty());

    // Listing changes nothing.
    sim.input(0, |m, now| {
        m.key_query(now, KeyOp::List, None, None, "list")
    });
    sim.run_for(SEC);
    for node in &sim.nodes {
        let changes = node
            .log
            .iter()
            .filter(|e| matches!(e, Effect::Keyring { .. }));
        assert_eq!(changes.count(), 1, "{}", node.id.name);
    }
    assert_eq!(sim.nodes[0].done[0].1.answers.len(), 3);
}

/// Any holder of the gossip key can send the keys query; only the operator's signature
/// changes a keyring.
#[test]
fn an_unsigned_or_forged_key_operation_changes_no_keyring() {
    let mut sim = Sim::cluster(vec![Setup::default(), Setup::default()]);
    let new = Key::from_bytes([8; 32]).to_base64();
    let op = Some(new.clone());
    sim.input(0, |m, now| {
        m.key_query(now, KeyOp::Install, op, None, "unsigned")
    });
    sim.run_for(SEC);
    let thief = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let op = Some(new.clone());
    sim.input(0, |m, now| {
        let auth = sign("install", Some(&new), &thief, now.wall_millis());
        m.key_query(now, KeyOp::Install, op, Some(auth), "forged")
    });
    sim.run_for(SEC);
    for node in &sim.nodes {
        let changed = node.log.iter().any(|e| matches!(e, Effect::Keyring { .. }));
        assert!(!changed, "{} changed its keyring", node.id.name);
        assert!(!node.machine.keyring.list().contains(&new));
    }
    for (waiter, why) in [("unsigned", "not signed"), ("forged", "does not verify")] {
        let (_, result) = sim.nodes[0]
            .done
            .iter()
            .find(|(w, _)| *w == waiter)
            .unwrap();
        let fanned = keys_fan_in(result.clone());
        assert_eq!(fanned.results.len(), 2, "{fanned:?}");
        for r in &fanned.results {
            assert!(!r.ok && r.error.as_deref().unwrap().contains(why), "{r:?}");
        }
    }
}
