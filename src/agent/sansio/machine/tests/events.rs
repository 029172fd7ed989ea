//! User events across machines: eager push, and owed handlers with their journal.

use super::*;
use crate::agent::pending::{JournalLine, Mark, backoff};
use crate::gossip::UserEvent;

fn deploy_handler() -> Setup {
    Setup {
        handlers: vec![("user:deploy", "/bin/h1")],
        ..Setup::default()
    }
}

fn publish(sim: &mut Sim, i: usize, name: &str) -> UserEvent {
    let mut id = None;
    sim.input(i, |m, now| {
        let (result, effects) = m.publish_event(now, name, b"v1".to_vec());
        id = Some(result.expect("published").id);
        effects
    });
    let id = id.unwrap();
    let sent = sim.nodes[i].log.iter().find_map(|e| match e {
        Effect::Send { plain, .. } => match direct(plain) {
            Some(Direct::Event(ev)) if format!("{:032x}", ev.id.0) == id => Some(ev),
            _ => None,
        },
        _ => None,
    });
    sent.expect("the event was pushed")
}

/// Where the first effect `f` picks is in node `i`'s log.
fn first(sim: &Sim, i: usize, f: impl Fn(&E) -> bool) -> Option<usize> {
    sim.nodes[i].log.iter().position(f)
}

fn pushes(e: &E, ev: &UserEvent) -> bool {
    matches!(e, Effect::Send { plain, .. }
        if matches!(direct(plain), Some(Direct::Event(x)) if x.id == ev.id))
}

fn journals(e: &E, line: &JournalLine) -> bool {
    matches!(e, Effect::Journal { lines, .. } if lines.contains(line))
}

fn spawned(sim: &Sim, i: usize) -> Vec<Vec<String>> {
    (sim.nodes[i].log.iter())
        .filter_map(|e| match e {
            Effect::SpawnEventHandlers {
                handlers, slots, ..
            } => {
                assert_eq!(handlers.len(), slots.len(), "one slot per handler");
                Some(handlers.iter().map(|h| h.command[0].clone()).collect())
            }
            _ => None,
        })
        .collect()
}

/// Completes node `i`'s oldest journal write with `result`.
fn complete_journal(sim: &mut Sim, i: usize, result: Result<(), String>) {
    let batches = sim.nodes[i].disk.pop_front().expect("a journal write");
    sim.input(i, |m, now| m.journaled(now, batches, result));
}

#[test]
fn a_new_event_is_pushed_to_peers_before_anything_touches_the_disk() {
    let setups = vec![Setup::default(), deploy_handler(), deploy_handler()];
    let mut sim = Sim::cluster(setups);
    let ev = publish(&mut sim, 0, "deploy");
    let mut to: Vec<_> = (sim.nodes[0].log.iter())
        .filter_map(|e| match e {
            Effect::Send { to, .. } if pushes(e, &ev) => Some(*to),
            _ => None,
        })
        .collect();
    to.sort();
    assert_eq!(
        to,
        [sim.nodes[1].id.addr, sim.nodes[2].id.addr],
        "pushed at once"
    );
    assert_eq!(
        first(&sim, 0, |e| matches!(e, Effect::Journal { .. })),
        None,
        "no handler on a"
    );
    sim.settle();
    let delivered = JournalLine::Delivered(ev.clone());
    for i in [1, 2] {
        let push = first(&sim, i, |e| pushes(e, &ev)).expect("pushed on");
        let after_push = &sim.nodes[i].log[push..];
        let owed = push
            + after_push
                .iter()
                .position(|e| matches!(e, Effect::StartOwed))
                .unwrap();
        let journal = first(&sim, i, |e| journals(e, &delivered)).expect("journaled");
        assert!(
            push < owed && owed < journal,
            "node {i}: {push} {owed} {journal}"
        );
        assert!(
            spawned(&sim, i).is_empty(),
            "nothing starts before the journal is durable"
        );
        // Pushed on to the other peer only, never back to the origin.
        let back = sim.nodes[i].log.iter().any(|e| {
            matches!(e, Effect::Send { to, .. } if *to == sim.nodes[0].id.addr && pushes(e, &ev))
        });
        assert!(!back, "node {i} pushed the event back to its origin");
    }
    complete_journal(&mut sim, 1, Ok(()));
    assert_eq!(spawned(&sim, 1), [["/bin/h1"]]);
}

#[test]
fn owed_handlers_wait_for_slots_are_journaled_first_and_retried_after_failures() {
    let mut sim = Sim::new(vec![Setup {
        handlers: vec![("user:deploy", "/bin/h1"), ("user", "/bin/h2")],
        ..Setup::default()
    }]);
    sim.start(0, Vec::new());
    let hs = sim.nodes[0].machine.settings().handlers.clone();
    let mark = |ev: &UserEvent, i: usize| Mark {
        id: ev.id,
        command: hs[i].command.clone(),
    };
    sim.nodes[0].free_slots = 0;
    let ev = publish_locally(&mut sim, "deploy");
    assert!(sim.nodes[0].disk.is_empty(), "no slot: not journaled yet");
    // One slot frees: /bin/h1 is journaled (h2 as still owed), not started yet.
    sim.nodes[0].free_slots = 1;
    sim.input(0, |_, _| vec![Effect::StartOwed]);
    let lines = vec![
        JournalLine::Delivered(ev.clone()),
        JournalLine::Owed(mark(&ev, 1)),
    ];
    assert!(
        matches!(sim.nodes[0].log.last(), Some(Effect::Journal { lines: l, .. }) if *l == lines)
    );
    assert!(spawned(&sim, 0).is_empty());
    complete_journal(&mut sim, 0, Ok(()));
    assert_eq!(spawned(&sim, 0), [["/bin/h1"]]);
    // The next slot: /bin/h2, with its retry line.
    sim.input(0, |_, _| vec![Effect::StartOwed]);
    assert!(journals(
        sim.nodes[0].log.last().unwrap(),
        &JournalLine::Retry(mark(&ev, 1))
    ));
    complete_journal(&mut sim, 0, Ok(()));
    assert_eq!(spawned(&sim, 0), [["/bin/h1"], ["/bin/h2"]]);

    // /bin/h1 could not be spawned: journaled as owed, retried after the backoff.
    let h1 = hs[0].clone();
    sim.input(0, |m, now| m.handler_failed(now, ev.clone(), h1));
    assert!(journals(
        &sim.nodes[0].log[sim.nodes[0].log.len() - 2],
        &JournalLine::Owed(mark(&ev, 0))
    ));
    assert!(matches!(sim.nodes[0].log.last(),
        Some(Effect::Schedule { after, timer: Timer::RetryHandlers(id) }) if *after == backoff(0) && *id == ev.id));
    let retry = JournalLine::Retry(mark(&ev, 0));
    sim.run_for(backoff(0) / 2);
    assert!(
        !sim.nodes[0].log.iter().any(|e| journals(e, &retry)),
        "not before the backoff"
    );
    sim.run_for(backoff(0));
    assert!(sim.nodes[0].log.iter().any(|e| journals(e, &retry)));
    // The journal write fails: owed again, a longer backoff, nothing started.
    complete_journal(&mut sim, 0, Err("disk full".into()));
    assert!(matches!(sim.nodes[0].log.last(),
        Some(Effect::Schedule { after, timer: Timer::RetryHandlers(_) }) if *after == backoff(1)));
    assert_eq!(spawned(&sim, 0).len(), 2);
    sim.run_for(backoff(1) + SEC);
    complete_journal(&mut sim, 0, Ok(()));
    assert_eq!(spawned(&sim, 0), [["/bin/h1"], ["/bin/h2"], ["/bin/h1"]]);
}

/// Publishes on a node without peers (nothing to push to): the event as delivered.
fn publish_locally(sim: &mut Sim, name: &str) -> UserEvent {
    sim.input(0, |m, now| m.publish_event(now, name, b"v1".to_vec()).1);
    let owed = sim.nodes[0].machine.pending.records();
    owed.last().expect("owed").event.clone()
}

#[test]
fn a_member_that_joins_runs_member_handlers_and_a_monitor_line() {
    let setups = vec![
        Setup {
            handlers: vec![("member-join", "/bin/joined")],
            ..Setup::default()
        },
        Setup::default(),
    ];
    let sim = Sim::cluster(setups);
    let runs: Vec<_> = (sim.nodes[0].log.iter())
        .filter_map(|e| match e {
            Effect::RunHandlers {
                event,
                payload,
                handlers,
                ..
            } => Some((
                event.as_str(),
                payload.as_slice(),
                handlers[0].command[0].as_str(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(runs, [("member-join", &b"b"[..], "/bin/joined")]);
    let line = sim.nodes[0].log.iter().any(
        |e| matches!(e, Effect::Monitor(v) if v["event"] == "member-join" && v["node"] == "b"),
    );
    assert!(line);
    assert!(
        first(&sim, 1, |e| matches!(e, Effect::RunHandlers { .. })).is_none(),
        "b has none"
    );
}
