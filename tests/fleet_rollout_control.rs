//! Steering a rollout once it started, end to end (real agents, Garage, real jails):
//! `rollout pause|resume|cancel` mid-rollout, `rollout status`, and `--progress-deadline`.

#[path = "common/agent.rs"]
mod agent_support;
mod common;
#[path = "common/fleet.rs"]
mod fleet;

use agent_support::wait_for;
use fleet::{Fleet, Kind, LONG, text};
use serde_json::Value;

/// `event deploy web VERSION EXTRA...` without waiting: the event id it printed first.
fn start(f: &Fleet, version: &str, extra: &[&str]) -> String {
    let mut args = vec!["event", "deploy", "web", version, "--unpinned"];
    args.extend_from_slice(extra);
    let out = f.cli(1, &args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(id.len(), 32, "no event id first: {}", text(&out));
    id
}

fn rollout(f: &Fleet, args: &[&str]) -> std::process::Output {
    let mut all = vec!["rollout"];
    all.extend_from_slice(args);
    f.cli(1, &all)
}

/// Waits until the progress of `id` at n1 satisfies `want`.
fn wait_progress(f: &Fleet, id: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    wait_for(LONG, what, || Some(f.progress(1, id)).filter(|p| want(p)))
}

fn count(p: &Value, list: &str) -> usize {
    p[list].as_array().map_or(0, Vec::len)
}

#[test]
fn pause_holds_the_waves_resume_releases_them_and_cancel_is_final() {
    let mut f = Fleet::with_garage("82.4");
    f.health_deadline = "10s".into();
    f.start_all(3);
    f.publish("v1", Kind::Healthy);
    f.deploy_all_ok("v1");
    f.publish("v2", Kind::Slow(1500));
    f.publish("v3", Kind::Slow(1500));

    // Paused while wave 1 deploys: it finishes, the waves after it hold.
    let id = start(&f, "v2", &["--max-parallel", "1"]);
    let out = rollout(&f, &["pause", &id]);
    assert!(out.status.success(), "pause: {}", text(&out));
    let p = wait_progress(&f, &id, "wave 1 done, paused", |p| {
        p["control"] == "paused" && count(p, "ok") == 1
    });
    let held: Vec<String> = p["waves"][1]
        .as_array()
        .into_iter()
        .chain(p["waves"][2].as_array())
        .flatten()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    for node in &held {
        let v = f.wait_status(1, node, "held by the pause", |v| {
            v["phase"].as_str().is_some_and(|s| s.contains("paused"))
        });
        assert_eq!(v["version"], "v1", "{node} deployed while paused: {v}");
    }
    let out = rollout(&f, &["status", &id]);
    let status = text(&out);
    assert!(
        status.contains(": paused") && status.contains("wave 2:"),
        "{status}"
    );
    assert!(rollout(&f, &["resume", &id]).status.success());
    let p = wait_progress(&f, &id, "all ok after resume", |p| count(p, "ok") == 3);
    assert_eq!(p["control"], "resumed");

    // Cancelled: nothing after wave 1 ever starts, and no order undoes it.
    let id = start(&f, "v3", &["--max-parallel", "1"]);
    assert!(rollout(&f, &["cancel", &id]).status.success());
    let p = wait_progress(&f, &id, "cancelled and done", |p| {
        count(p, "pending") == 0 && count(p, "halted") >= 2
    });
    assert_eq!(p["control"], "cancelled");
    let out = rollout(&f, &["resume", &id]);
    assert!(
        !out.status.success() && text(&out).contains("cancelled"),
        "{}",
        text(&out)
    );
    for node in p["halted"].as_array().unwrap() {
        let n = fleet::num(node.as_str().unwrap());
        assert_eq!(
            f.current_on_disk(n).as_deref(),
            Some("v2"),
            "{node} started after the cancel"
        );
    }
}

/// A target that does not report within `--progress-deadline` counts as failed: here the
/// first wave's node, whose agent is SIGSTOPped while it deploys a release that takes 2 s
/// (so gossip soon declares it failed too). The waves after it never start, also once it
/// is down, and the rollout ends, naming the deadline.
#[test]
fn a_sigstopped_target_past_the_progress_deadline_halts_the_waves() {
    let mut f = Fleet::with_garage("82.5");
    f.health_deadline = "10s".into();
    f.start_all(3);
    f.publish("v1", Kind::Healthy);
    f.deploy_all_ok("v1");
    f.publish("v2", Kind::Slow(2000));
    let id = start(
        &f,
        "v2",
        &["--max-parallel", "1", "--progress-deadline", "5s"],
    );
    let waves = f.progress(1, &id)["waves"].clone();
    let first = waves[0][0].as_str().unwrap().to_owned();
    let stopped = fleet::num(&first);
    // Every other node has the event before its first wave's node stops gossiping.
    for n in (1..=3u8).filter(|n| *n != stopped) {
        wait_for(LONG, "the event reached every node", || {
            f.try_progress(n, &id)
        });
    }
    f.agent(stopped).signal(nix::sys::signal::Signal::SIGSTOP);
    let via = if stopped == 1 { 2 } else { 1 };
    let p = wait_for(LONG, "the rollout ends", || {
        Some(f.progress(via, &id)).filter(|p| count(p, "pending") == 0)
    });
    assert_eq!(p["failed"], serde_json::json!([first]), "{p}");
    let why = p["errors"][&first].as_str().unwrap_or_default();
    assert!(why.contains("progress deadline"), "{p}");
    assert_eq!(count(&p, "halted"), 2, "{p}");
    // Once gossip declared it failed too, at every node, the others stay on v1, halted:
    // checked over 3 s (six controller ticks), since what must not happen is a start.
    for n in (1..=3u8).filter(|n| *n != stopped) {
        wait_for(LONG, "the stopped node declared failed", || {
            (f.agent(n).status_of(&first).as_deref() == Some("failed")).then_some(())
        });
    }
    let halted: Vec<String> = serde_json::from_value(p["halted"].clone()).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let phases = f.status_json(via);
        for node in &halted {
            let n = fleet::num(node);
            assert_eq!(
                f.current_on_disk(n).as_deref(),
                Some("v1"),
                "{node} started"
            );
            let answer = (phases["responses"].as_array().into_iter().flatten())
                .find(|r| r["node"] == node.as_str())
                .unwrap_or_else(|| panic!("no status answer from {node}: {phases}"));
            let phase = answer["apps"]["web"]["phase"].as_str().unwrap_or_default();
            assert!(
                phase.starts_with(&format!("halted by {first}")),
                "{node}: {phase}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
