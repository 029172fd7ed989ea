//! What `event deploy --wait` shows and how it ends: the progress line, when to stop
//! waiting, the exit code, and the final report (text or JSON).
//!
//! Pure, so the decision "did this deploy succeed" is unit tested: success means every
//! target is `ok`; any `failed`, `rolled_back`, `halted`, unreachable or too-old target is a failure
//! once nothing reachable is pending any more; the deadline passing first is a timeout
//! naming the pending nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::deploy::status::Progress;

/// Exit code when a target failed, rolled back or was halted.
pub const EXIT_FAILED: u8 = 2;
/// Exit code when the deadline passed with targets still pending.
pub const EXIT_TIMEOUT: u8 = 3;

/// The counts shown on the progress line; a change is worth a new plain line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    pub rolled_back: usize,
    pub halted: usize,
    pub unreachable: usize,
    pub too_old: usize,
    pub pending: usize,
}

impl Counts {
    pub fn of(p: &Progress) -> Counts {
        Counts {
            total: p.targets.len(),
            ok: p.ok.len(),
            failed: p.failed.len(),
            rolled_back: p.rolled_back.len(),
            halted: p.halted.len(),
            unreachable: p.unreachable.len(),
            too_old: p.too_old.len(),
            pending: p.pending.len(),
        }
    }
}

/// "17/20 ok, 1 failed, 2 pending" (zero counts other than pending left out).
pub fn line(c: &Counts) -> String {
    let mut s = format!("{}/{} ok", c.ok, c.total);
    for (n, what) in [
        (c.failed, "failed"),
        (c.rolled_back, "rolled back"),
        (c.halted, "halted"),
        (c.unreachable, "unreachable"),
        (c.too_old, "too old"),
    ] {
        if n > 0 {
            s.push_str(&format!(", {n} {what}"));
        }
    }
    s.push_str(&format!(", {} pending", c.pending));
    s
}

/// The line with a bar in front, for a terminal: `[#######.....] 17/20 ok, ...`.
/// Failed, rolled-back, halted, unreachable and too-old targets are drawn as `x`.
pub fn bar(c: &Counts, width: usize) -> String {
    let cells = |n: usize| n.saturating_mul(width).checked_div(c.total).unwrap_or(0);
    let ok = cells(c.ok).min(width);
    let bad = cells(c.failed + c.rolled_back + c.halted + c.unreachable + c.too_old);
    let bad = bad.min(width - ok);
    format!(
        "[{}{}{}] {}",
        "#".repeat(ok),
        "x".repeat(bad),
        ".".repeat(width - ok - bad),
        line(c)
    )
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failed,
    TimedOut,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Success => 0,
            Verdict::Failed => EXIT_FAILED,
            Verdict::TimedOut => EXIT_TIMEOUT,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Success => "ok",
            Verdict::Failed => "failed",
            Verdict::TimedOut => "timeout",
        }
    }
}

/// `None`: keep waiting. `progress` is `None` while the agent has not seen the event.
pub fn verdict(progress: Option<&Progress>, deadline_passed: bool) -> Option<Verdict> {
    match progress {
        Some(p) if p.is_done() => Some(if p.is_success() {
            Verdict::Success
        } else {
            Verdict::Failed
        }),
        _ if deadline_passed => Some(Verdict::TimedOut),
        _ => None,
    }
}

/// The `--format json` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub event_id: String,
    pub app: String,
    pub version: String,
    /// `ok`, `failed` or `timeout`.
    pub result: &'static str,
    pub ok: Vec<String>,
    pub failed: Vec<String>,
    pub rolled_back: Vec<String>,
    /// Every target without an outcome: still to start or deploying, halted, unreachable
    /// or too old (so the four lists above cover every target).
    pub pending: Vec<String>,
    /// Of `pending`: will not start, a failure halted the rollout before their wave.
    pub halted: Vec<String>,
    /// Of `pending`: failed members, not waited for; they converge once back.
    pub unreachable: Vec<String>,
    /// Of `pending`: members whose agents cannot read the event, not reached.
    pub too_old: Vec<String>,
    /// A newer deploy event of the app replaced this one.
    pub superseded_by: Option<String>,
    pub errors: BTreeMap<String, String>,
}

/// The JSON report; `progress` `None` means the agent never saw the event.
pub fn report(
    event_id: &str,
    app: &str,
    version: &str,
    progress: Option<&Progress>,
    v: Verdict,
) -> Report {
    let p = progress.cloned().unwrap_or_default();
    let mut pending: Vec<String> = p
        .pending
        .iter()
        .chain(&p.halted)
        .chain(&p.unreachable)
        .chain(&p.too_old)
        .cloned()
        .collect();
    pending.sort();
    Report {
        event_id: event_id.to_string(),
        app: app.to_string(),
        version: version.to_string(),
        result: v.as_str(),
        ok: p.ok,
        failed: p.failed,
        rolled_back: p.rolled_back,
        pending,
        halted: p.halted,
        unreachable: p.unreachable,
        too_old: p.too_old,
        superseded_by: p.superseded_by,
        errors: p.errors,
    }
}

fn names(list: &[String], errors: &BTreeMap<String, String>) -> String {
    use super::status::one_line;
    list.iter()
        .map(|n| match errors.get(n) {
            Some(e) => format!("{} ({})", one_line(n), one_line(e)),
            None => one_line(n),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The final text message (one line per kind of trouble).
pub fn summary(
    what: &str,
    progress: Option<&Progress>,
    v: Verdict,
    timeout: Duration,
) -> Vec<String> {
    let Some(p) = progress else {
        return vec![format!(
            "{what}: timed out after {}: the agent never reported progress for this event \
             (is it an agent with deploy support, and did it accept the event?)",
            humantime::format_duration(timeout)
        )];
    };
    let c = Counts::of(p);
    let mut out = vec![match v {
        Verdict::Success => format!("{what}: all {} target(s) ok", c.total),
        Verdict::Failed if c.total == 0 => format!(
            "{what}: no node matched the targets (check --node/--tag and `droot-fleet members`)"
        ),
        Verdict::Failed => format!("{what} did not succeed: {}", line(&c)),
        Verdict::TimedOut => format!(
            "{what}: timed out after {}: {}",
            humantime::format_duration(timeout),
            line(&c)
        ),
    }];
    for (list, label) in [
        (&p.failed, "failed"),
        (&p.rolled_back, "rolled back"),
        (&p.halted, "halted (not started)"),
        (&p.pending, "still pending"),
        (
            &p.unreachable,
            "unreachable (not waited for; converges once back, or `droot-fleet force-leave NODE` if it is gone)",
        ),
        (
            &p.too_old,
            "agent too old for this event (not reached; upgrade it and deploy again, or deploy with --no-fanout)",
        ),
    ] {
        if !list.is_empty() {
            out.push(format!("  {label}: {}", names(list, &p.errors)));
        }
    }
    if let Some(newer) = &p.superseded_by {
        out.push(format!(
            "  replaced by the newer deploy event {newer}: pending targets deploy that one"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn progress(ok: &[&str], failed: &[&str], pending: &[&str]) -> Progress {
        let mut targets = s(ok);
        targets.extend(s(failed));
        targets.extend(s(pending));
        targets.sort();
        Progress {
            event_id: "ab".into(),
            app: "web".into(),
            version: "v2".into(),
            targets,
            ok: s(ok),
            failed: s(failed),
            pending: s(pending),
            errors: failed
                .iter()
                .map(|n| (n.to_string(), "health check failed".to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn line_and_bar() {
        let c = Counts {
            total: 20,
            ok: 17,
            failed: 1,
            pending: 2,
            ..Default::default()
        };
        assert_eq!(line(&c), "17/20 ok, 1 failed, 2 pending");
        assert_eq!(
            bar(&c, 20),
            format!("[{}x..] 17/20 ok, 1 failed, 2 pending", "#".repeat(17))
        );
        let empty = Counts::default();
        assert_eq!(bar(&empty, 4), "[....] 0/0 ok, 0 pending");
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(None, false), None);
        assert_eq!(verdict(None, true), Some(Verdict::TimedOut));
        let running = progress(&["a"], &[], &["b"]);
        assert_eq!(verdict(Some(&running), false), None);
        assert_eq!(verdict(Some(&running), true), Some(Verdict::TimedOut));
        let done = progress(&["a", "b"], &[], &[]);
        assert_eq!(verdict(Some(&done), true), Some(Verdict::Success));
        let bad = progress(&["a"], &["b"], &[]);
        assert_eq!(verdict(Some(&bad), false), Some(Verdict::Failed));
        let mut halted = progress(&["a"], &[], &[]);
        halted.targets.push("c".into());
        halted.halted.push("c".into());
        assert_eq!(verdict(Some(&halted), false), Some(Verdict::Failed));
        let nobody = progress(&[], &[], &[]);
        assert_eq!(verdict(Some(&nobody), false), Some(Verdict::Failed));
        assert_eq!(Verdict::Success.exit_code(), 0);
        assert_ne!(Verdict::Failed.exit_code(), 0);
        assert_ne!(Verdict::TimedOut.exit_code(), 0);
    }

    #[test]
    fn summaries_name_the_nodes() {
        let t = Duration::from_secs(600);
        let bad = progress(&["a"], &["b"], &[]);
        let lines = summary("deploy web v2", Some(&bad), Verdict::Failed, t);
        assert_eq!(
            lines[0],
            "deploy web v2 did not succeed: 1/2 ok, 1 failed, 0 pending"
        );
        assert_eq!(lines[1], "  failed: b (health check failed)");
        let slow = progress(&["a"], &[], &["c", "d"]);
        let lines = summary("deploy web v2", Some(&slow), Verdict::TimedOut, t);
        assert!(lines[0].contains("timed out after 10m"), "{lines:?}");
        assert_eq!(lines[1], "  still pending: c, d");
        let lines = summary("deploy web v2", None, Verdict::TimedOut, t);
        assert!(lines[0].contains("never reported progress"), "{lines:?}");
    }

    #[test]
    fn json_report_has_the_issue_fields() {
        let bad = progress(&["a"], &["b"], &["c"]);
        let r = report("ab", "web", "v2", Some(&bad), Verdict::TimedOut);
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "event_id",
            "app",
            "version",
            "ok",
            "failed",
            "rolled_back",
            "pending",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["result"], "timeout");
        assert_eq!(v["pending"], serde_json::json!(["c"]));
        assert_eq!(v["errors"]["b"], "health check failed");
    }

    #[test]
    fn every_target_is_in_one_of_the_four_lists() {
        let mut p = progress(&["a"], &["b"], &["c"]);
        p.halted.push("d".into());
        p.unreachable.push("e".into());
        p.targets.extend(["d".into(), "e".into()]);
        let r = report("ab", "web", "v2", Some(&p), Verdict::Failed);
        assert_eq!(r.pending, ["c", "d", "e"]);
        assert_eq!(
            (r.halted.as_slice(), r.unreachable.as_slice()),
            (&s(&["d"])[..], &s(&["e"])[..])
        );
    }

    #[test]
    fn a_target_too_old_for_the_event_is_not_a_success() {
        let mut p = progress(&["a"], &[], &[]);
        p.targets.push("b".into());
        p.too_old.push("b".into());
        assert_eq!(verdict(Some(&p), false), Some(Verdict::Failed));
        let r = report("ab", "web", "v2", Some(&p), Verdict::Failed);
        assert_eq!((r.pending, r.too_old), (s(&["b"]), s(&["b"])));
        let lines = summary("deploy web v2", Some(&p), Verdict::Failed, Duration::ZERO);
        assert_eq!(
            lines,
            [
                "deploy web v2 did not succeed: 1/2 ok, 1 too old, 0 pending",
                "  agent too old for this event (not reached; upgrade it and deploy again, or \
                 deploy with --no-fanout): b"
            ]
        );
    }

    #[test]
    fn an_unreachable_target_is_not_a_success() {
        let mut p = progress(&["a", "b"], &[], &[]);
        p.targets.push("c".into());
        p.unreachable.push("c".into());
        assert_eq!(verdict(Some(&p), false), Some(Verdict::Failed));
        let lines = summary(
            "deploy web v2",
            Some(&p),
            Verdict::Failed,
            Duration::from_secs(1),
        );
        assert_eq!(
            lines[0],
            "deploy web v2 did not succeed: 2/3 ok, 1 unreachable, 0 pending"
        );
        assert!(
            lines[1].starts_with("  unreachable (not waited for"),
            "{lines:?}"
        );
    }
}
