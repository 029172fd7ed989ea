use ed25519_dalek::SigningKey;

use super::*;
use crate::deploy::signed::{MaxParallel, Policy, Rollout, Targets, generate_signing_key};

const NOW: u64 = 1_700_000_000;

fn verifier(key: &SigningKey) -> Verifier {
    Verifier::new(
        Policy {
            trusted: Trust::Keys(vec![key.verifying_key()]),
            max_age: 3600,
            max_skew: 300,
        },
        1024,
    )
}

/// A synced core (see `nothing_starts_before_the_node_is_synced` for the other kind).
fn core(node: &str, key: &SigningKey) -> Core {
    let mut c = Core::new(node, BTreeSet::from(["web".to_string()]), verifier(key));
    assert!(c.on_synced().is_empty());
    c
}

fn event(key: &SigningKey, version: &str, issued_at: u64, id: u8, rollout: Rollout) -> Vec<u8> {
    signed(&deploy_event(version, issued_at, id, rollout), key)
}

fn deploy_event(version: &str, issued_at: u64, id: u8, rollout: Rollout) -> DeployEvent {
    DeployEvent {
        app: "web".into(),
        version: version.into(),
        url: format!("file:///a/{version}.tar.gz"),
        sha256: None,
        targets: Targets::default(),
        rollout,
        issued_at_ms: issued_at * 1000,
        id: [id; 16],
        options: Default::default(),
        chunks: None,
    }
}

fn signed(ev: &DeployEvent, key: &SigningKey) -> Vec<u8> {
    SignedEvent::sign(ev.clone(), key)
        .unwrap()
        .encode()
        .unwrap()
}

fn activations(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Activate { event, .. } => Some(event.version.clone()),
            _ => None,
        })
        .collect()
}

fn published<'a>(fx: &'a [Effect], kind: &str) -> Vec<(&'a str, u64, &'a [u8])> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Publish(item) if item.kind == kind => {
                Some((item.key.as_str(), item.version, item.body.as_slice()))
            }
            _ => None,
        })
        .collect()
}

fn slot(fx: &[Effect], kind: &str, origin: &str) -> Superseding {
    let (key, version, body) = published(fx, kind)[0];
    Superseding {
        kind: kind.into(),
        key: key.into(),
        version,
        origin: origin.into(),
        body: body.to_vec(),
        sig: None,
    }
}

fn member(name: &str) -> MemberView {
    MemberView {
        name: name.into(),
        alive: true,
        failed: false,
        tags: Default::default(),
        deploy_format: Some(crate::deploy::signed::DEPLOY_FORMAT),
    }
}

#[test]
fn a_trusted_event_is_activated_once_and_published_as_desired() {
    let key = generate_signing_key();
    let mut c = core("a", &key);
    let bytes = event(&key, "v1", NOW, 1, Rollout::default());
    let fx = c.on_event(&bytes, NOW);
    assert_eq!(activations(&fx), ["v1"]);
    // The activation names the key that signed it, as its id.
    let signer = fx.iter().find_map(|e| match e {
        Effect::Activate { signer, .. } => Some(signer.clone()),
        _ => None,
    });
    let id = crate::keytext::key_id(&key.verifying_key());
    assert_eq!(signer, Some(Some(id)));
    assert!(fx.contains(&Effect::Persist));
    assert_eq!(published(&fx, DESIRED_KIND).len(), 1);
    // The same event again (a replay, or a redelivery after the state file could not be
    // written) starts nothing; it only writes the state file again.
    assert_eq!(c.on_event(&bytes, NOW), [Effect::Persist]);
    // Finished: the outcome is published, and nothing is started again.
    let fx = c.on_finished(
        "web",
        &Outcome::Ok {
            event_id: hex::encode([1; 16]),
            version: "v1".into(),
        },
        NOW * 1000,
    );
    let o: NodeOutcome = postcard::from_bytes(published(&fx, OUTCOME_KIND)[0].2).unwrap();
    assert_eq!((o.result, o.node.as_str()), (Res::Ok, "a"));
    assert!(activations(&fx).is_empty());
    assert_eq!(c.phase("web"), "idle");
}

#[test]
fn forged_stale_future_and_untrusted_events_are_refused() {
    let key = generate_signing_key();
    let other = generate_signing_key();
    let mut c = core("a", &key);
    assert!(
        c.on_event(&event(&other, "v1", NOW, 1, Rollout::default()), NOW)
            .is_empty()
    );
    assert!(
        c.on_event(&event(&key, "v1", NOW - 7200, 2, Rollout::default()), NOW)
            .is_empty()
    );
    assert!(
        c.on_event(&event(&key, "v1", NOW + 7200, 3, Rollout::default()), NOW)
            .is_empty()
    );
    assert!(c.on_event(b"garbage", NOW).is_empty());
    // No trusted keys at all: refused too.
    let mut none = Core::new(
        "a",
        BTreeSet::from(["web".to_string()]),
        Verifier::new(
            Policy {
                trusted: Trust::Keys(vec![]),
                max_age: 3600,
                max_skew: 300,
            },
            16,
        ),
    );
    let _ = none.on_synced();
    assert!(
        none.on_event(&event(&key, "v1", NOW, 4, Rollout::default()), NOW)
            .is_empty()
    );
    assert!(c.desired("web").is_none());
}

#[test]
fn the_desired_slot_converges_a_node_that_missed_the_event_whatever_its_age() {
    let key = generate_signing_key();
    let mut a = core("a", &key);
    let mut b = core("b", &key);
    let fx = a.on_event(&event(&key, "v1", NOW, 1, Rollout::default()), NOW);
    let item = slot(&fx, DESIRED_KIND, "a");
    // b was away for a day: the slot still applies (it is the latest desired state).
    let _ = b.on_members(vec![member("a"), member("b")]);
    assert_eq!(activations(&b.on_slot(&item)), ["v1"]);
    // A forged slot body is ignored.
    let mut forged = item.clone();
    forged.body = event(&generate_signing_key(), "evil", NOW, 9, Rollout::default());
    let mut c = core("c", &key);
    assert!(c.on_slot(&forged).is_empty());
}

#[test]
fn waves_start_in_order_and_a_failure_halts_the_rest() {
    let key = generate_signing_key();
    let names = ["n0", "n1", "n2"];
    let rollout = Rollout {
        max_parallel: Some(MaxParallel::Count(1)),
        canary: 0,
    };
    let bytes = event(&key, "v2", NOW, 5, rollout);
    let mut cores: Vec<Core> = names.iter().map(|n| core(n, &key)).collect();
    // Everyone knows everyone and that they all run web.
    let announce: Vec<Superseding> = cores
        .iter_mut()
        .zip(names)
        .map(|(c, n)| slot(&c.restore(Persisted::default(), 1), APPS_KIND, n))
        .collect();
    for c in &mut cores {
        let _ = c.on_members(names.iter().map(|n| member(n)).collect());
        for a in &announce {
            let _ = c.on_slot(a);
        }
    }
    let started: Vec<bool> = cores
        .iter_mut()
        .map(|c| !activations(&c.on_event(&bytes, NOW)).is_empty())
        .collect();
    assert_eq!(started.iter().filter(|s| **s).count(), 1, "{started:?}");
    let first = started.iter().position(|s| *s).unwrap();
    // The first wave reports ok: exactly one more node starts.
    let fx = cores[first].on_finished(
        "web",
        &Outcome::Ok {
            event_id: hex::encode([5; 16]),
            version: "v2".into(),
        },
        NOW * 1000,
    );
    let ok = slot(&fx, OUTCOME_KIND, names[first]);
    let mut second = None;
    for (i, c) in cores.iter_mut().enumerate() {
        if i != first && !activations(&c.on_slot(&ok)).is_empty() {
            assert!(second.replace(i).is_none(), "two nodes started in wave 2");
        }
    }
    let second = second.expect("wave 2 started");
    // The second wave rolls back: the third node is halted, never started.
    let fx = cores[second].on_finished(
        "web",
        &Outcome::RolledBack {
            event_id: hex::encode([5; 16]),
            version: "v2".into(),
            to: "v1".into(),
            error: "health check failed".into(),
        },
        NOW * 1000,
    );
    let bad = slot(&fx, OUTCOME_KIND, names[second]);
    let third = (0..3).find(|i| *i != first && *i != second).unwrap();
    let _ = cores[third].on_slot(&ok);
    assert!(activations(&cores[third].on_slot(&bad)).is_empty());
    assert!(
        cores[third].phase("web").starts_with("halted"),
        "{}",
        cores[third].phase("web")
    );
    let p = cores[third].progress(&hex::encode([5; 16])).unwrap();
    assert_eq!((p.ok.len(), p.rolled_back.len(), p.halted.len()), (1, 1, 1));
    assert!(p.is_done() && !p.is_success());

    // Regression: the halted node restarts. It knows only itself until its first
    // push/pull, so it must not start the event it holds as desired before it is synced;
    // once synced (the others' apps and outcomes came back) it is still halted.
    let mut restarted = Core::new(
        names[third],
        BTreeSet::from(["web".to_string()]),
        verifier(&key),
    );
    let fx = restarted.restore(cores[third].persisted(), NOW * 1000 + 1);
    assert!(activations(&fx).is_empty(), "started before it was synced");
    assert_eq!(restarted.phase("web"), SYNCING);
    let _ = restarted.on_members(names.iter().map(|n| member(n)).collect());
    for item in announce.iter().chain([&ok, &bad]) {
        assert!(activations(&restarted.on_slot(item)).is_empty());
    }
    assert!(activations(&restarted.on_synced()).is_empty());
    assert!(
        restarted.phase("web").starts_with("halted"),
        "{}",
        restarted.phase("web")
    );
}

fn outcome_slot(node: &str, id: u8, result: Res) -> Superseding {
    let o = NodeOutcome {
        node: node.into(),
        app: "web".into(),
        event_id: hex::encode([id; 16]),
        version: "v2".into(),
        result,
        error: None,
        at: NOW,
    };
    Superseding {
        kind: OUTCOME_KIND.into(),
        key: outcome_key("web", node),
        version: 1,
        origin: node.into(),
        body: postcard::to_allocvec(&o).unwrap(),
        sig: None,
    }
}

/// A core of wave 2 of 10 targets in waves of 5, which knows them all and holds the event.
fn waiting_core(key: &SigningKey, id: u8, nth: usize) -> (Core, Vec<String>) {
    let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    let rollout = Rollout {
        max_parallel: Some(MaxParallel::Count(5)),
        canary: 0,
    };
    let ev = deploy_event("v2", NOW, id, rollout);
    let plan = crate::deploy::rollout::Plan::new(&ev.id, &names, &rollout);
    let mut c = core(&plan.waves[1][nth], key);
    let _ = c.on_members(names.iter().map(|n| member(n)).collect());
    for n in &names {
        let _ = c.on_slot(&Superseding {
            kind: APPS_KIND.into(),
            key: n.clone(),
            version: 1,
            origin: n.clone(),
            body: postcard::to_allocvec(&vec!["web".to_string()]).unwrap(),
            sig: None,
        });
    }
    assert!(activations(&c.on_event(&signed(&ev, key), NOW)).is_empty());
    (c, plan.waves[0].clone())
}

/// Outcomes a waiting node counted already only shorten its wait (no fresh plan each):
/// it starts on the last ok of the wave before it, and a failure there halts it.
#[test]
fn a_waiting_node_counts_outcomes_down_and_starts_after_the_last() {
    let key = generate_signing_key();
    let (mut c, first) = waiting_core(&key, 6, 0);
    assert!(
        c.phase("web").starts_with("wave 2 waits for 5 ("),
        "{}",
        c.phase("web")
    );
    for (i, n) in first[..4].iter().enumerate() {
        assert!(c.on_slot(&outcome_slot(n, 6, Res::Ok)).is_empty());
        assert!(c.on_tick(NOW * 1000 + 60_000).is_empty());
        let want = format!("wave 2 waits for {} (", 4 - i);
        assert!(c.phase("web").starts_with(&want), "{}", c.phase("web"));
    }
    // An ok of another event decides afresh: still waits.
    assert!(activations(&c.on_slot(&outcome_slot(&first[4], 7, Res::Ok))).is_empty());
    assert!(
        c.phase("web").starts_with("wave 2 waits for 1 ("),
        "{}",
        c.phase("web")
    );
    assert_eq!(
        activations(&c.on_slot(&outcome_slot(&first[4], 6, Res::Ok))),
        ["v2"]
    );

    let (mut c, first) = waiting_core(&key, 8, 1);
    assert!(c.on_slot(&outcome_slot(&first[0], 8, Res::Ok)).is_empty());
    let fx = c.on_slot(&outcome_slot(&first[1], 8, Res::RolledBack));
    assert!(activations(&fx).is_empty());
    let want = format!("halted by {} (rolled_back)", first[1]);
    assert_eq!(c.phase("web"), want);
}

#[test]
fn nothing_starts_before_the_node_is_synced() {
    let key = generate_signing_key();
    let mut c = Core::new("a", BTreeSet::from(["web".to_string()]), verifier(&key));
    let fx = c.on_event(&event(&key, "v1", NOW, 1, Rollout::default()), NOW);
    assert!(activations(&fx).is_empty());
    assert!(
        fx.contains(&Effect::Persist),
        "accepted and recorded: {fx:?}"
    );
    assert_eq!(c.desired("web").unwrap().version, "v1");
    assert_eq!(c.phase("web"), SYNCING);
    assert_eq!(activations(&c.on_synced()), ["v1"]);
    assert!(c.on_synced().is_empty(), "once");
}

#[test]
fn synced_after_a_push_pull_or_alone_after_the_grace() {
    use std::time::Duration;
    let grace = Duration::from_secs(30);
    assert!(sync_reached(1, 4, Duration::ZERO, grace));
    assert!(
        !sync_reached(0, 4, Duration::from_secs(999), grace),
        "peers to ask"
    );
    assert!(!sync_reached(0, 0, Duration::from_secs(29), grace));
    assert!(sync_reached(0, 0, grace, grace));
}

#[test]
fn a_restarted_node_does_not_redo_finished_work_but_resumes_cut_short_work() {
    let key = generate_signing_key();
    let mut c = core("a", &key);
    let _ = c.on_event(&event(&key, "v1", NOW, 1, Rollout::default()), NOW);
    // Cut short: restored before it finished -> started again.
    let saved = c.persisted();
    let mut again = Core::new("a", BTreeSet::from(["web".to_string()]), verifier(&key));
    assert!(activations(&again.restore(saved, 2)).is_empty());
    assert_eq!(activations(&again.on_synced()), ["v1"]);
    let _ = again.on_finished(
        "web",
        &Outcome::Ok {
            event_id: hex::encode([1; 16]),
            version: "v1".into(),
        },
        3,
    );
    let mut third = core("a", &key);
    let fx = third.restore(again.persisted(), 4);
    assert!(activations(&fx).is_empty());
    // It re-publishes its desired state and last outcome.
    assert_eq!(published(&fx, DESIRED_KIND).len(), 1);
    assert_eq!(published(&fx, OUTCOME_KIND).len(), 1);
    assert_eq!(third.last_outcome("web").unwrap().version, "v1");
}

#[test]
fn apps_this_node_does_not_run_and_non_targets_are_left_alone() {
    let key = generate_signing_key();
    let mut c = Core::new("a", BTreeSet::from(["db".to_string()]), verifier(&key));
    assert!(
        activations(&c.on_event(&event(&key, "v1", NOW, 1, Rollout::default()), NOW)).is_empty()
    );
    let mut d = core("a", &key);
    let ev = DeployEvent {
        app: "web".into(),
        version: "v1".into(),
        url: String::new(),
        sha256: None,
        targets: Targets {
            nodes: vec!["b.*".into()],
            tags: vec![],
        },
        rollout: Rollout::default(),
        issued_at_ms: NOW * 1000,
        id: [2; 16],
        options: Default::default(),
        chunks: None,
    };
    let bytes = SignedEvent::sign(ev, &key).unwrap().encode().unwrap();
    assert!(activations(&d.on_event(&bytes, NOW)).is_empty());
    assert_eq!(d.phase("web"), "not a target");
}

#[test]
fn desired_versions_order_like_the_desired_state() {
    let mk = |at, id| DeployEvent {
        app: "web".into(),
        version: "v".into(),
        url: String::new(),
        sha256: None,
        targets: Targets::default(),
        rollout: Rollout::default(),
        issued_at_ms: at,
        id,
        options: Default::default(),
        chunks: None,
    };
    assert!(desired_version(&mk(NOW + 1, [0; 16])) > desired_version(&mk(NOW, [255; 16])));
    assert!(desired_version(&mk(NOW, [2; 16])) > desired_version(&mk(NOW, [1; 16])));
    // Two events of one millisecond that share their first id byte still differ.
    let ms = 1_764_612_000_123;
    let mut second = [7; 16];
    second[1] = 8;
    assert!(desired_version(&mk(ms, second)) > desired_version(&mk(ms, [7; 16])));
    // Milliseconds of the year 2100 keep their order (no bit shifted out).
    let y2100 = 4_102_444_800_000;
    assert!(desired_version(&mk(y2100, [0; 16])) > desired_version(&mk(y2100 - 1, [255; 16])));
}

#[test]
fn a_superseded_event_is_done_and_a_refused_one_is_not_admitted() {
    let key = generate_signing_key();
    let mut c = core("a", &key);
    let _ = c.on_event(&event(&key, "v1", NOW, 1, Rollout::default()), NOW);
    let _ = c.on_event(&event(&key, "v2", NOW + 1, 2, Rollout::default()), NOW);
    let p = c.progress(&hex::encode([1; 16])).unwrap();
    assert_eq!(p.superseded_by, Some(hex::encode([2; 16])));
    assert!(p.is_done() && !p.is_success());
    assert!(
        c.progress(&hex::encode([2; 16]))
            .unwrap()
            .superseded_by
            .is_none()
    );
    // admit: the local check the API runs before gossiping an operator's event.
    let other = generate_signing_key();
    assert!(
        c.admit(&event(&other, "v3", NOW, 3, Rollout::default()), NOW)
            .is_err()
    );
    assert!(
        c.admit(&event(&key, "v3", NOW - 7200, 4, Rollout::default()), NOW)
            .is_err()
    );
    let ok = event(&key, "v3", NOW + 2, 5, Rollout::default());
    assert!(c.admit(&ok, NOW).is_ok());
    // admit records nothing: the event itself is still accepted when it arrives.
    assert_eq!(activations(&c.on_event(&ok, NOW)), ["v3"]);
}

/// Regression: the entry agent checked signature and age only, so a replayed event handed
/// to `POST /v1/deploy` was gossiped for every other node to refuse. It is refused at once.
#[test]
fn a_replayed_event_is_not_admitted_by_the_entry_agent() {
    let key = generate_signing_key();
    let mut c = core("a", &key);
    let ev = event(&key, "v1", NOW, 1, Rollout::default());
    assert!(c.admit(&ev, NOW).is_ok());
    assert_eq!(activations(&c.on_event(&ev, NOW)), ["v1"]);
    match c.admit(&ev, NOW + 1) {
        Err(VerifyError::Replayed { id }) => assert_eq!(id, hex::encode([1; 16])),
        other => panic!("a replay was admitted: {other:?}"),
    }
}

/// Regression: the accepted ids lived in memory only, so after a restart a replay was not
/// refused as one (only found older than the desired state). They are persisted now.
#[test]
fn a_replay_after_a_restart_is_still_refused_as_one() {
    let key = generate_signing_key();
    let mut c = core("a", &key);
    let v1 = event(&key, "v1", NOW, 1, Rollout::default());
    let v2 = event(&key, "v2", NOW + 1, 2, Rollout::default());
    c.on_event(&v1, NOW);
    c.on_event(&v2, NOW + 1);
    let bytes = c.persisted().encode();
    let mut back = core("a", &key);
    back.restore(Persisted::decode(&bytes).unwrap(), NOW * 1000);
    for (bytes, id) in [(&v1, [1u8; 16]), (&v2, [2; 16])] {
        match back.verifier.accept(bytes, NOW + 2) {
            Err(VerifyError::Replayed { id: got }) => assert_eq!(got, hex::encode(id)),
            other => panic!("not refused as a replay after the restart: {other:?}"),
        }
    }
    let v3 = event(&key, "v3", NOW + 2, 3, Rollout::default());
    assert_eq!(activations(&back.on_event(&v3, NOW + 2)), ["v3"]);
}

/// The state file names what is wrong with it: another format, another version, a cut.
#[test]
fn the_state_file_is_versioned_and_a_bad_one_says_why() {
    let key = generate_signing_key();
    let mut c = core("a", &key);
    c.on_event(&event(&key, "v1", NOW, 1, Rollout::default()), NOW);
    let bytes = c.persisted().encode();
    let back = Persisted::decode(&bytes).unwrap();
    assert_eq!(back.seen, c.persisted().seen);
    assert_eq!(back.desired, c.persisted().desired);
    let raw = postcard::to_allocvec(&c.persisted()).unwrap();
    let e = Persisted::decode(&raw).unwrap_err();
    assert!(e.contains("no DFDS header"), "{e}");
    let mut newer = bytes.clone();
    newer[4] = 2;
    let e = Persisted::decode(&newer).unwrap_err();
    assert!(e.contains("format version 2, this agent reads 1"), "{e}");
    let e = Persisted::decode(&bytes[..5]).unwrap_err();
    assert!(e.contains("corrupt"), "{e}");
    assert!(
        Persisted::decode(&bytes[..4])
            .unwrap_err()
            .contains("truncated")
    );
}

#[path = "core_control_tests.rs"]
mod control;
