//! The activation's order and its rollbacks, step by step.

use super::*;

fn req(v: &str) -> Request {
    Request {
        event_id: format!("e-{v}"),
        version: v.into(),
        source: source(v),
    }
}

fn source(v: &str) -> Source {
    Source {
        url: format!("s3://b/web-{v}.tar"),
        sha256: Some([v.len() as u8; 32]),
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
    assert_eq!(m.step(Input::Stopped), [passed("v2"), Effect::Report(ok)]);
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
