//! The operator's orders about a rollout (pause, resume, cancel) and the options that bound
//! it (progress deadline, min-healthy), through the core.

use super::*;

/// `c` learns that `node` runs `web`.
fn runs_web(c: &mut Core, node: &str) {
    c.on_slot(&Superseding {
        kind: APPS_KIND.into(),
        key: node.into(),
        version: 1,
        origin: node.into(),
        body: postcard::to_allocvec(&vec!["web".to_string()]).unwrap(),
        sig: None,
    });
}

fn order(key: &SigningKey, event: u8, action: Action, at: u64, id: u8) -> Vec<u8> {
    let c = Control {
        app: "web".into(),
        event_id: [event; 16],
        action,
        issued_at_ms: at * 1000,
        id: [id; 16],
    };
    SignedControl::sign(c, key).bytes().to_vec()
}

/// Nodes `a` and `b` in two waves of event `id` (one node each): the core of the node in
/// the second wave, which knows both run `web`, and the two names in wave order.
fn second_wave(key: &SigningKey, id: u8) -> (Core, String, String) {
    let plan = crate::deploy::rollout::Plan::new(&[id; 16], &["a".into(), "b".into()], &ONE_BY_ONE);
    let (first, second) = (plan.waves[0][0].clone(), plan.waves[1][0].clone());
    let mut c = core(&second, key);
    c.on_members(vec![member("a"), member("b")]);
    runs_web(&mut c, &first);
    (c, first, second)
}

/// Members `a` and `b`, with `down` declared failed by gossip.
fn with_down(down: &str) -> Vec<MemberView> {
    let failed = MemberView {
        alive: false,
        failed: true,
        ..member(down)
    };
    (["a", "b"].iter().filter(|n| **n != down))
        .map(|n| member(n))
        .chain([failed])
        .collect()
}

const ONE_BY_ONE: Rollout = Rollout {
    max_parallel: Some(MaxParallel::Count(1)),
    canary: 0,
};

/// Two nodes in two waves; the second (`b`) waits for the first. A pause holds it after
/// the first reported ok; a resume lets it go; the orders travel as slots too.
#[test]
fn pause_holds_the_waves_not_started_and_resume_releases_them() {
    let key = generate_signing_key();
    let bytes = event(&key, "v2", NOW, 7, ONE_BY_ONE);
    let (mut c, first, _) = second_wave(&key, 7);
    assert!(
        activations(&c.on_event(&bytes, NOW)).is_empty(),
        "waits for wave 1"
    );
    let fx = c.on_control(&order(&key, 7, Action::Pause, NOW + 1, 1), NOW + 1);
    assert_eq!(published(&fx, CONTROL_KIND).len(), 1, "kept for latecomers");
    let ok = NodeOutcome {
        node: first.clone(),
        app: "web".into(),
        event_id: hex::encode([7; 16]),
        version: "v2".into(),
        result: Res::Ok,
        error: None,
        at: NOW + 2,
    };
    let fx = c.on_slot(&Superseding {
        kind: OUTCOME_KIND.into(),
        key: outcome_key("web", &first),
        version: 2,
        origin: first.clone(),
        body: postcard::to_allocvec(&ok).unwrap(),
        sig: None,
    });
    assert!(activations(&fx).is_empty(), "paused");
    assert!(c.phase("web").contains("paused"), "{}", c.phase("web"));
    assert_eq!(
        c.progress(&hex::encode([7; 16]))
            .unwrap()
            .control
            .as_deref(),
        Some("paused")
    );
    // An older order changes nothing; a newer resume releases the wave.
    assert!(
        c.on_control(&order(&key, 7, Action::Resume, NOW, 2), NOW + 3)
            .is_empty()
    );
    let fx = c.on_control(&order(&key, 7, Action::Resume, NOW + 3, 3), NOW + 3);
    assert_eq!(activations(&fx), ["v2"]);
}

/// A cancel halts every target not started, for good: no later order undoes it, the
/// local operator is told so, and `--wait` ends (nothing pending).
#[test]
fn cancel_is_final() {
    let key = generate_signing_key();
    let bytes = event(&key, "v2", NOW, 8, ONE_BY_ONE);
    let (mut c, _, second) = second_wave(&key, 8);
    c.on_event(&bytes, NOW);
    c.on_control(&order(&key, 8, Action::Cancel, NOW + 1, 1), NOW + 1);
    let later = order(&key, 8, Action::Resume, NOW + 2, 2);
    assert!(c.admit_control(&later, NOW + 2).is_err());
    assert!(activations(&c.on_control(&later, NOW + 2)).is_empty());
    assert!(c.phase("web").contains("cancelled"));
    let p = c.progress(&hex::encode([8; 16])).unwrap();
    assert!(p.pending.is_empty() && p.halted.contains(&second), "{p:?}");
    // An order signed by another key is refused.
    let stranger = generate_signing_key();
    assert!(
        c.admit_control(&order(&stranger, 9, Action::Pause, NOW, 3), NOW)
            .is_err()
    );
}

/// A target that never reports past the progress deadline counts as failed: the waves
/// after it halt, and the progress lists it with the reason.
#[test]
fn a_silent_target_past_the_progress_deadline_halts_the_waves() {
    let key = generate_signing_key();
    let mut ev = deploy_event("v2", NOW, 9, ONE_BY_ONE);
    ev.options.progress_deadline_secs = Some(30);
    let (mut c, first, _) = second_wave(&key, 9);
    c.on_event(&signed(&ev, &key), NOW);
    assert!(c.on_tick((NOW + 29) * 1000).is_empty());
    assert!(
        c.phase("web").starts_with("wave 2 waits"),
        "{}",
        c.phase("web")
    );
    c.on_tick((NOW + 31) * 1000);
    assert!(
        c.phase("web").starts_with(&format!("halted by {first}")),
        "{}",
        c.phase("web")
    );
    // Declared failed by gossip (SIGSTOPped, say), it stays a target: the halt holds.
    c.on_members(with_down(&first));
    assert!(
        c.phase("web").starts_with(&format!("halted by {first}")),
        "{}",
        c.phase("web")
    );
    let p = c.progress(&hex::encode([9; 16])).unwrap();
    assert_eq!(p.failed, std::slice::from_ref(&first));
    assert!(p.errors[&first].contains("progress deadline"));
    assert!(p.unreachable.is_empty(), "{p:?}");
    assert!(p.is_done() && !p.is_success());
}

/// With a progress deadline, a first-wave target that gossip declares failed before the
/// deadline passes holds the later waves until it does (then halts them): its silence is
/// what the deadline judges, so going down is no way past it.
#[test]
fn a_target_down_before_the_progress_deadline_holds_the_waves() {
    let key = generate_signing_key();
    let mut ev = deploy_event("v2", NOW, 12, ONE_BY_ONE);
    ev.options.progress_deadline_secs = Some(30);
    let (mut c, first, _) = second_wave(&key, 12);
    c.on_event(&signed(&ev, &key), NOW);
    assert!(activations(&c.on_members(with_down(&first))).is_empty());
    assert!(activations(&c.on_tick((NOW + 29) * 1000)).is_empty());
    assert!(
        c.phase("web").starts_with("wave 2 waits"),
        "{}",
        c.phase("web")
    );
    assert!(activations(&c.on_tick((NOW + 31) * 1000)).is_empty());
    assert!(
        c.phase("web").starts_with(&format!("halted by {first}")),
        "{}",
        c.phase("web")
    );
}

/// `--min-healthy` cuts the waves: of 4 targets with 3 to keep, one deploys at a time.
#[test]
fn min_healthy_cuts_the_waves() {
    let key = generate_signing_key();
    let mut ev = DeployEvent {
        app: "web".into(),
        version: "v2".into(),
        url: "file:///a/v2.tar.gz".into(),
        sha256: None,
        targets: Targets::default(),
        rollout: Rollout::default(),
        issued_at_ms: NOW * 1000,
        id: [10; 16],
        options: Default::default(),
        chunks: None,
    };
    ev.options.min_healthy = Some(crate::deploy::signed::MinHealthy::Percent(75));
    let bytes = SignedEvent::sign(ev.clone(), &key)
        .unwrap()
        .encode()
        .unwrap();
    let mut c = core("a", &key);
    let names = ["a", "b", "c", "d"];
    c.on_members(names.iter().map(|n| member(n)).collect());
    for n in &names[1..] {
        runs_web(&mut c, n);
    }
    c.on_event(&bytes, NOW);
    let p = c.progress(&hex::encode([10; 16])).unwrap();
    assert_eq!(p.waves.len(), 4, "{:?}", p.waves);
    ev.options.min_healthy = Some(crate::deploy::signed::MinHealthy::Count(4));
    ev.id = [11; 16];
    ev.issued_at_ms += 1;
    let bytes = signed(&ev, &key);
    assert!(activations(&c.on_event(&bytes, NOW)).is_empty());
    assert!(c.phase("web").contains("min-healthy"), "{}", c.phase("web"));
}
