//! The activation's order and its rollbacks, step by step.

use super::*;

fn req(v: &str) -> Request {
    Request {
        event_id: format!("e-{v}"),
        version: v.into(),
        source: source(v),
        ignore_stop_hook_failures: false,
    }
}

fn source(v: &str) -> Source {
    Source {
        url: format!("s3://b/web-{v}.tar"),
        sha256: Some([v.len() as u8; 32]),
        chunks: None,
        swarm: Default::default(),
    }
}

fn fetch(version: &str) -> Effect {
    Effect::Fetch {
        version: v(version),
        source: source(version),
    }
}

fn v(s: &str) -> String {
    s.to_string()
}

fn passed(version: &str) -> Effect {
    Effect::Judge {
        version: v(version),
        verdict: Verdict::Passed,
    }
}

fn failed(version: &str) -> Effect {
    Effect::Judge {
        version: v(version),
        verdict: Verdict::Failed,
    }
}

/// Runs the machine from v1 to v2 up to the health check: staged, v1 stopped, v2 started;
/// `current` still v1.
fn to_checking(m: &mut Activation) {
    assert_eq!(m.step(Input::Deploy(req("v2"))), [fetch("v2")]);
    assert_eq!(m.step(Input::Fetched(Ok(()))), [Effect::StopJail]);
    assert_eq!(
        m.step(Input::Stopped),
        [Effect::StartJail { version: v("v2") }]
    );
    assert_eq!(
        m.step(Input::Started(Ok(()))),
        [Effect::CheckHealth { version: v("v2") }]
    );
    assert_eq!(m.current(), Some("v1"), "switched only once it passed");
}

#[test]
fn a_healthy_deploy_is_switched_to_judged_and_reported_ok() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    to_checking(&mut m);
    assert_eq!(
        m.step(Input::HealthPassed),
        [Effect::SwitchCurrent { version: v("v2") }]
    );
    let ok = Outcome::Ok {
        event_id: v("e-v2"),
        version: v("v2"),
    };
    assert_eq!(
        m.step(Input::Switched(Ok(()))),
        [passed("v2"), Effect::Report(ok)]
    );
    assert_eq!((m.current(), m.is_idle()), (Some("v2"), true));
}

#[test]
fn failed_health_stops_the_new_restarts_current_and_reports_rolled_back() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    to_checking(&mut m);
    assert_eq!(
        m.step(Input::HealthFailed(v("GET: 500"))),
        [failed("v2"), Effect::StopJail]
    );
    assert_eq!(
        m.step(Input::Stopped),
        [Effect::StartJail { version: v("v1") }]
    );
    let out = Outcome::RolledBack {
        event_id: v("e-v2"),
        version: v("v2"),
        to: v("v1"),
        error: v("GET: 500"),
    };
    assert_eq!(m.step(Input::Started(Ok(()))), [Effect::Report(out)]);
    assert_eq!((m.current(), m.is_idle()), (Some("v1"), true));
}

#[test]
fn a_crash_while_checking_or_a_failed_start_rolls_back_too() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    to_checking(&mut m);
    assert_eq!(
        m.step(Input::Crashed(v("exit 1"))),
        [failed("v2"), Effect::StopJail]
    );
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    m.step(Input::Deploy(req("v2")));
    m.step(Input::Fetched(Ok(())));
    m.step(Input::Stopped);
    assert_eq!(
        m.step(Input::Started(Err(v("no exe")))),
        [failed("v2"), Effect::StopJail]
    );
    assert_eq!(
        m.step(Input::Stopped),
        [Effect::StartJail { version: v("v1") }]
    );
}

/// The check passed but `current` could not be switched: a restart would bring back v1,
/// so v1 is brought back now, and v2 (never live) is judged failed.
#[test]
fn a_failed_switch_after_the_check_rolls_back() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    to_checking(&mut m);
    m.step(Input::HealthPassed);
    assert_eq!(
        m.step(Input::Switched(Err(v("read-only file system")))),
        [failed("v2"), Effect::StopJail]
    );
    m.step(Input::Stopped);
    let out = m.step(Input::Started(Ok(())));
    assert!(
        matches!(&out[..], [Effect::Report(Outcome::RolledBack { error, .. })] if error.contains("read-only")),
        "{out:?}"
    );
    assert_eq!(m.current(), Some("v1"));
}

#[test]
fn a_failed_rollback_reports_both_errors() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    to_checking(&mut m);
    m.step(Input::HealthFailed(v("sick")));
    m.step(Input::Stopped);
    let out = m.step(Input::Started(Err(v("gone"))));
    match &out[..] {
        [Effect::Report(Outcome::Failed { error, .. })] => {
            assert!(error.contains("sick") && error.contains("gone"), "{error}")
        }
        o => panic!("{o:?}"),
    }
}

/// A first deploy that fails its check: the new instance is stopped, and only then is the
/// outcome reported (the activation's record outlives the stop); nothing ever named it
/// `current`, so nothing starts it later and deploying it again is a full activation.
#[test]
fn no_previous_release_means_failed_once_stopped() {
    let mut m = Activation::new(None, Handover::StopFirst);
    m.step(Input::Deploy(req("v1")));
    m.step(Input::Fetched(Ok(())));
    m.step(Input::Stopped);
    m.step(Input::Started(Ok(())));
    let out = m.step(Input::HealthFailed(v("sick")));
    assert_eq!(out, [failed("v1"), Effect::StopJail]);
    assert!(m.active().is_some(), "still active while it stops");
    let out = m.step(Input::Stopped);
    assert!(
        matches!(&out[..], [Effect::Report(Outcome::Failed { error, .. })] if error.contains("no previous")),
        "{out:?}"
    );
    assert_eq!((m.current(), m.is_idle()), (None, true));
    assert_eq!(m.step(Input::Deploy(req("v1"))), [fetch("v1")]);
}

/// A release on disk goes through the stage too (which finds it there): the activation
/// it waited for may have pruned it meanwhile.
#[test]
fn current_is_a_no_op_and_a_failed_stage_activates_nothing() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    let out = m.step(Input::Deploy(req("v1")));
    assert!(matches!(&out[..], [Effect::Report(Outcome::Ok { .. })]));
    assert_eq!(m.step(Input::Deploy(req("v0"))), [fetch("v0")]);
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    m.step(Input::Deploy(req("v2")));
    let out = m.step(Input::Fetched(Err(v("digest mismatch"))));
    assert!(
        matches!(&out[..], [Effect::Report(Outcome::Failed { error, .. })] if error == "digest mismatch")
    );
    assert_eq!((m.current(), m.is_idle()), (Some("v1"), true));
}

#[test]
fn requests_during_an_activation_wait_and_the_newest_wins() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst);
    m.step(Input::Deploy(req("v2")));
    assert!(m.step(Input::Deploy(req("v3"))).is_empty());
    assert!(m.step(Input::Deploy(req("v4"))).is_empty());
    assert!(m.step(Input::HealthPassed).is_empty(), "late input ignored");
    let out = m.step(Input::Fetched(Err(v("404"))));
    assert!(matches!(&out[0], Effect::Report(Outcome::Failed { .. })));
    assert_eq!(out[1], fetch("v4"));
}

/// With an overlap the old instance is never stopped before the new one is ready and
/// `current` names it; then it is, and only then is the deploy judged and reported.
#[test]
fn an_overlapping_deploy_stops_the_old_instance_last() {
    let mut m = Activation::new(Some(v("v1")), Handover::Overlap);
    assert_eq!(m.step(Input::Deploy(req("v2"))), [fetch("v2")]);
    assert_eq!(
        m.step(Input::Fetched(Ok(()))),
        [Effect::StartNext { version: v("v2") }]
    );
    assert_eq!(
        m.step(Input::Started(Ok(()))),
        [Effect::CheckHealth { version: v("v2") }]
    );
    assert_eq!(
        m.step(Input::HealthPassed),
        [Effect::SwitchCurrent { version: v("v2") }]
    );
    assert_eq!(m.step(Input::Switched(Ok(()))), [Effect::Promote]);
    assert_eq!((m.current(), m.is_idle()), (Some("v2"), false));
    let ok = Outcome::Ok {
        event_id: v("e-v2"),
        version: v("v2"),
    };
    assert_eq!(
        m.step(Input::Promoted(Ok(()))),
        [passed("v2"), Effect::Report(ok)]
    );
    assert!(m.is_idle());
}

/// A failed check with an overlap stops the new instance only; the old one, never stopped,
/// is "started" again (a no-op for the supervisor when it serves).
#[test]
fn an_overlapping_deploy_that_fails_discards_the_new_instance_only() {
    for fail in [
        Input::HealthFailed(v("unhealthy")),
        Input::Crashed(v("unhealthy")),
    ] {
        let mut m = Activation::new(Some(v("v1")), Handover::Overlap);
        m.step(Input::Deploy(req("v2")));
        m.step(Input::Fetched(Ok(())));
        m.step(Input::Started(Ok(())));
        assert_eq!(m.step(fail), [failed("v2"), Effect::Discard]);
        assert_eq!(
            m.step(Input::Stopped),
            [Effect::StartJail { version: v("v1") }]
        );
        let back = Outcome::RolledBack {
            event_id: v("e-v2"),
            version: v("v2"),
            to: v("v1"),
            error: v("unhealthy"),
        };
        assert_eq!(m.step(Input::Started(Ok(()))), [Effect::Report(back)]);
        assert_eq!(m.current(), Some("v1"));
    }
    // A first release has nothing to go back to.
    let mut m = Activation::new(None, Handover::Overlap);
    m.step(Input::Deploy(req("v1")));
    m.step(Input::Fetched(Ok(())));
    assert_eq!(
        m.step(Input::Started(Err(v("no such command")))),
        [failed("v1"), Effect::Discard]
    );
    let [Effect::Report(Outcome::Failed { error, .. })] = &m.step(Input::Stopped)[..] else {
        panic!("a first release that fails is reported failed");
    };
    assert!(error.contains("no previous release"), "{error}");
}

fn all_hooks() -> HookSet {
    HookPoint::ALL
        .iter()
        .fold(HookSet::default(), |set, p| set.with(*p))
}

fn hook(point: HookPoint, release: &str) -> Effect {
    Effect::RunHook {
        point,
        release: v(release),
        version: v("v2"),
        previous: Some(v("v1")),
    }
}

/// Every step of a deploy with every hook, in order, one answer at a time: the effects.
fn walk(m: &mut Activation, answers: Vec<Input>) -> Vec<Effect> {
    let mut seen = m.step(Input::Deploy(req("v2")));
    for a in answers {
        seen.extend(m.step(a));
    }
    seen
}

fn ran() -> Input {
    Input::HookRan(Ok(()))
}

/// With an overlap: before_start in the new jail before it starts, after_start once it is
/// ready, before_stop in the old jail before the switch (a veto still changes nothing),
/// after_stop once the old one stopped.
#[test]
fn hooks_run_in_order_around_an_overlap() {
    let mut m = Activation::new(Some(v("v1")), Handover::Overlap).with_hooks(all_hooks());
    let answers = vec![
        Input::Fetched(Ok(())),
        ran(),
        Input::Started(Ok(())),
        Input::HealthPassed,
        ran(),
        ran(),
        Input::Switched(Ok(())),
        Input::Promoted(Ok(())),
        ran(),
    ];
    let seen = walk(&mut m, answers);
    let ok = Outcome::Ok {
        event_id: v("e-v2"),
        version: v("v2"),
    };
    assert_eq!(
        seen,
        [
            fetch("v2"),
            hook(HookPoint::BeforeStart, "v2"),
            Effect::StartNext { version: v("v2") },
            Effect::CheckHealth { version: v("v2") },
            hook(HookPoint::AfterStart, "v2"),
            hook(HookPoint::BeforeStop, "v1"),
            Effect::SwitchCurrent { version: v("v2") },
            Effect::Promote,
            hook(HookPoint::AfterStop, "v1"),
            passed("v2"),
            Effect::Report(ok),
        ]
    );
}

#[test]
fn hooks_run_in_order_around_a_stop_then_start() {
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst).with_hooks(all_hooks());
    let answers = vec![
        Input::Fetched(Ok(())),
        ran(),
        Input::Stopped,
        ran(),
        ran(),
        Input::Started(Ok(())),
        Input::HealthPassed,
        ran(),
        Input::Switched(Ok(())),
    ];
    let seen = walk(&mut m, answers);
    assert_eq!(
        seen[..9],
        [
            fetch("v2"),
            hook(HookPoint::BeforeStop, "v1"),
            Effect::StopJail,
            hook(HookPoint::AfterStop, "v1"),
            hook(HookPoint::BeforeStart, "v2"),
            Effect::StartJail { version: v("v2") },
            Effect::CheckHealth { version: v("v2") },
            hook(HookPoint::AfterStart, "v2"),
            Effect::SwitchCurrent { version: v("v2") },
        ]
    );
    assert!(matches!(seen[10], Effect::Report(Outcome::Ok { .. })));
}

/// A failing before_start vetoes the deploy like a failed check: the new instance (never
/// started) is discarded, the old one (never stopped) stays, on_rollback runs, and the
/// outcome carries the hook's error, and on_rollback's too when it fails.
#[test]
fn a_failing_before_start_rolls_back_and_runs_on_rollback() {
    let mut m = Activation::new(Some(v("v1")), Handover::Overlap).with_hooks(all_hooks());
    m.step(Input::Deploy(req("v2")));
    m.step(Input::Fetched(Ok(())));
    let veto = Input::HookRan(Err(v("migration failed")));
    assert_eq!(m.step(veto), [failed("v2"), Effect::Discard]);
    assert_eq!(
        m.step(Input::Stopped),
        [Effect::StartJail { version: v("v1") }]
    );
    assert_eq!(
        m.step(Input::Started(Ok(()))),
        [hook(HookPoint::OnRollback, "v1")]
    );
    let out = m.step(Input::HookRan(Err(v("pager down"))));
    let [Effect::Report(Outcome::RolledBack { to, error, .. })] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(to, "v1");
    assert!(
        error.contains("migration failed") && error.contains("on_rollback hook: pager down"),
        "{error}"
    );
}

/// A broken before_stop in the old release vetoes the deploy, unless the deploy says to
/// ignore it; a failing after_stop changes nothing (the old one is gone by then).
#[test]
fn stop_hook_failures_veto_unless_ignored_and_after_stop_never_does() {
    let mut m = Activation::new(Some(v("v1")), Handover::Overlap).with_hooks(all_hooks());
    walk(
        &mut m,
        vec![
            Input::Fetched(Ok(())),
            ran(),
            Input::Started(Ok(())),
            Input::HealthPassed,
            ran(),
        ],
    );
    let out = m.step(Input::HookRan(Err(v("lb api down"))));
    assert_eq!(out, [Effect::Discard], "the new release is not to blame");

    let mut m = Activation::new(Some(v("v1")), Handover::Overlap).with_hooks(all_hooks());
    let mut r = req("v2");
    r.ignore_stop_hook_failures = true;
    m.step(Input::Deploy(r));
    for a in [
        Input::Fetched(Ok(())),
        ran(),
        Input::Started(Ok(())),
        Input::HealthPassed,
        ran(),
    ] {
        m.step(a);
    }
    let out = m.step(Input::HookRan(Err(v("lb api down"))));
    assert_eq!(out, [Effect::SwitchCurrent { version: v("v2") }]);
    m.step(Input::Switched(Ok(())));
    m.step(Input::Promoted(Ok(())));
    let out = m.step(Input::HookRan(Err(v("after_stop broke"))));
    assert!(
        matches!(&out[..], [_, Effect::Report(Outcome::Ok { .. })]),
        "{out:?}"
    );
}

/// The next instance was gone when it was to take over: `current` (switched already) is
/// pointed back at the old release, which never stopped.
#[test]
fn a_failed_promote_points_current_back() {
    let mut m = Activation::new(Some(v("v1")), Handover::Overlap);
    m.step(Input::Deploy(req("v2")));
    m.step(Input::Fetched(Ok(())));
    m.step(Input::Started(Ok(())));
    m.step(Input::HealthPassed);
    assert_eq!(m.step(Input::Switched(Ok(()))), [Effect::Promote]);
    let out = m.step(Input::Promoted(Err(v("no next instance runs"))));
    assert_eq!(
        out,
        [failed("v2"), Effect::SwitchCurrent { version: v("v1") }]
    );
    assert_eq!(m.current(), Some("v1"));
    assert_eq!(m.step(Input::Switched(Ok(()))), [Effect::Discard]);
    assert_eq!(
        m.step(Input::Stopped),
        [Effect::StartJail { version: v("v1") }]
    );
    let out = m.step(Input::Started(Ok(())));
    assert!(
        matches!(&out[..], [Effect::Report(Outcome::RolledBack { .. })]),
        "{out:?}"
    );
}

/// A broken before_stop of the old release, stopping first: nothing was touched yet, so
/// nothing is undone, and the new release is not judged (it never ran).
#[test]
fn a_before_stop_veto_before_anything_stopped_changes_nothing() {
    let hooks = HookSet::default().with(HookPoint::BeforeStop);
    let mut m = Activation::new(Some(v("v1")), Handover::StopFirst).with_hooks(hooks);
    m.step(Input::Deploy(req("v2")));
    assert_eq!(
        m.step(Input::Fetched(Ok(()))),
        [hook(HookPoint::BeforeStop, "v1")]
    );
    let out = m.step(Input::HookRan(Err(v("lb api down"))));
    let [Effect::Report(Outcome::Failed { error, .. })] = &out[..] else {
        panic!("{out:?}");
    };
    assert!(error.contains("lb api down") && error.contains("nothing was changed"));
    assert_eq!((m.current(), m.is_idle()), (Some("v1"), true));
}
