//! Operator features of `droot-fleet agent` on real processes (127.77.61-64.N):
//! `monitor`, `info`, SIGHUP reload, `force-leave`, and `retry_join`.

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/ops.rs"]
mod ops;

use std::io::BufRead as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_support::{Agent, Cluster, wait_for};
use nix::sys::signal::Signal;
use ops::{ChildGuard, LONG, all_text, cli_cmd, json, ok};
use serde_json::Value;

/// `droot-fleet monitor` against `a`, its stdout lines collected by a thread.
fn monitor(a: &Agent) -> (ChildGuard, Arc<Mutex<Vec<String>>>) {
    let mut cmd = cli_cmd(&["monitor"]);
    cmd.env("DROOT_FLEET_RPC", a.rpc());
    let mut guard = ChildGuard::spawn(&mut cmd);
    let stdout = guard.0.as_mut().unwrap().stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    (guard, lines)
}

fn parsed(lines: &Arc<Mutex<Vec<String>>>) -> Vec<Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The monitor stream carries event and log lines as NDJSON, and the CLI ends cleanly
/// (exit 0, a short note on stderr) when the agent leaves.
#[test]
fn monitor_streams_events_and_logs_and_ends_cleanly_on_leave() {
    let c = Cluster::new("77.61");
    let mut a = c.start(1, &[], "");
    let (mut mon, lines) = monitor(&a);

    // The subscription starts when the request arrives, possibly between an event's log
    // line and its event line: fire until an event line and both log lines are seen.
    let seen = || {
        let all = parsed(&lines);
        let user = all
            .iter()
            .any(|v| v["type"] == "log" && v["message"] == "user event" && v["level"] == "INFO");
        let handler = all
            .iter()
            .any(|v| v["type"] == "log" && v["message"] == "handler finished");
        let event = (all.into_iter()).find(|v| v["type"] == "event" && v["name"] == "mon");
        event.filter(|_| user && handler)
    };
    let mut event_line = None;
    let deadline = Instant::now() + LONG;
    while event_line.is_none() && Instant::now() < deadline {
        ok(&a.cli(&["event", "mon", "hello-monitor"]));
        let until = Instant::now() + Duration::from_secs(2);
        while event_line.is_none() && Instant::now() < until {
            event_line = seen();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let ev = event_line.expect("an event line and its log lines on the monitor stream");
    assert_eq!(ev["event"], "user", "{ev}");
    assert_eq!(ev["payload"], "hello-monitor", "{ev}");
    assert_eq!(ev["origin"], "n1", "{ev}");
    assert!(ev["ltime"].is_u64(), "{ev}");

    // `info` shows the node and counts what it delivered, in JSON and as text.
    let info = json(&a.cli(&["info", "--format", "json"]));
    assert_eq!(info["name"], "n1", "{info}");
    assert_eq!(info["members_alive"], 1, "{info}");
    assert!(
        info["counters"]["events_delivered"].as_u64() >= Some(1),
        "{info}"
    );
    let text = ok(&a.cli(&["info"]));
    assert!(text.lines().any(|l| l == "name = n1"), "{text}");
    assert!(text.contains("\nevents_delivered = "), "{text}");

    // The agent leaves: the stream ends, the CLI exits 0 and says why.
    ok(&a.cli(&["leave"]));
    a.wait_exit(Duration::from_secs(10));
    let out = mon.wait_output(Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "monitor exit {}: {err}", out.status);
    assert!(err.contains("the agent closed the monitor stream"), "{err}");
    assert!(!err.contains("error"), "{err}");
    let all = parsed(&lines);
    assert!(
        all.iter().any(|v| v["message"] == "left the cluster"),
        "the last log lines reach the monitor before it ends: {all:?}"
    );
}

/// A SIGKILLed agent cuts the stream: the monitor CLI fails with a clear message.
#[test]
fn monitor_reports_an_agent_that_died() {
    let c = Cluster::new("77.62");
    let mut a = c.start(1, &[], "");
    let (mut mon, lines) = monitor(&a);
    wait_for(LONG, "the monitor to be subscribed", || {
        ok(&a.cli(&["event", "ping-mon"]));
        std::thread::sleep(Duration::from_millis(300));
        parsed(&lines)
            .iter()
            .any(|v| v["type"] == "event")
            .then_some(())
    });
    a.kill9();
    let out = mon.wait_output(Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("monitor stream"), "{err}");
    assert!(err.contains("agent"), "{err}");
}

/// Tags of `node` as seen by `a`'s `members --format json`.
fn tags_seen(a: &Agent, node: &str) -> Option<Value> {
    let list = json(&a.cli(&["members", "--format", "json"]));
    list.as_array()?
        .iter()
        .find(|m| m["name"] == node)
        .map(|m| m["tags"].clone())
}

/// SIGHUP reloads tags (seen by other members via push/pull), handlers (the new one
/// runs, the old one no longer) and the log level; a broken config — bad TOML, or a
/// bad log level — is refused with a logged error and changes nothing.
#[test]
fn sighup_reloads_tags_handlers_and_log_level_and_refuses_broken_config() {
    let c = Cluster::new("77.63");
    let marks = c.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let setup = |role: &str, mark: &str| {
        format!(
            "\n[[handler]]\nevent = \"user:hup\"\ncommand = [\"sh\", \"-c\", \"echo $DROOT_FLEET_LTIME >> {}/{mark}\"]\n{}",
            marks.display(),
            ops::tags_table(&[("role", role)])
        )
    };
    let count = |mark: &str| {
        std::fs::read_to_string(marks.join(mark))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let a = ops::start_n(&c, 2, |n| {
        if n == 1 {
            setup("old", "old")
        } else {
            String::new()
        }
    });
    wait_for(LONG, "n2 to learn n1's tags", || {
        (tags_seen(&a[1], "n1")? == serde_json::json!({"role": "old"})).then_some(())
    });
    assert!(!a[0].log_text().contains(" DEBUG "), "info level at start");

    // New tags, a new handler instead of the old one, log level debug.
    let text = c.config(&setup("new", "new"));
    std::fs::write(
        &a[0].config,
        text.replace("log_level = \"info\"", "log_level = \"debug\""),
    )
    .unwrap();
    a[0].signal(Signal::SIGHUP);
    wait_for(LONG, "the reload to be logged", || {
        a[0].log_text().contains("SIGHUP: reloaded").then_some(())
    });
    let t0 = Instant::now();
    wait_for(LONG, "n2 to see n1's new tags", || {
        (tags_seen(&a[1], "n1")? == serde_json::json!({"role": "new"})).then_some(())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        tags_seen(&a[0], "n1").unwrap(),
        serde_json::json!({"role": "new"})
    );
    ok(&a[1].cli(&["event", "hup"]));
    wait_for(LONG, "the new handler to run", || {
        (count("new") == 1).then_some(())
    });
    wait_for(LONG, "debug lines after the reload", || {
        a[0].log_text().contains(" DEBUG ").then_some(())
    });
    a[0].wait_push_pulls(2);
    assert_eq!(count("old"), 0, "the old handler must not run any more");

    // Broken TOML: refused, logged, nothing changes.
    std::fs::write(&a[0].config, "tags = { role = \"broken\"\n").unwrap();
    a[0].signal(Signal::SIGHUP);
    wait_for(LONG, "the refusal to be logged", || {
        a[0].log_text()
            .contains("SIGHUP: config not reloaded")
            .then_some(())
    });
    // A valid file with an invalid log level: refused as a whole too.
    let bad_level = c
        .config(&setup("broken", "broken"))
        .replace("log_level = \"info\"", "log_level = \"=[not a filter\"");
    std::fs::write(&a[0].config, bad_level).unwrap();
    a[0].signal(Signal::SIGHUP);
    wait_for(LONG, "the second refusal to be logged", || {
        (a[0]
            .log_text()
            .matches("SIGHUP: config not reloaded")
            .count()
            == 2)
            .then_some(())
    });
    a[0].wait_push_pulls(2);
    a[1].wait_push_pulls(2);
    assert_eq!(
        tags_seen(&a[0], "n1").unwrap(),
        serde_json::json!({"role": "new"})
    );
    assert_eq!(
        tags_seen(&a[1], "n1").unwrap(),
        serde_json::json!({"role": "new"})
    );
    ok(&a[1].cli(&["event", "hup"]));
    wait_for(LONG, "the kept handler to run again", || {
        (count("new") == 2).then_some(())
    });
    a[0].wait_push_pulls(2);
    assert_eq!(count("broken"), 0);
    assert_eq!(count("old"), 0);
}

/// `force-leave` turns a failed (kill -9) member into `left` on every node, also after
/// a restart; unknown and alive members are refused with a clear error.
#[test]
fn force_leave_marks_failed_node_left_everywhere() {
    let c = Cluster::new("77.64");
    let mut a = ops::start_n(&c, 3, |_| String::new());
    let out = a[0].cli(&["force-leave", "nope"]);
    assert!(!out.status.success());
    let err = all_text(&out);
    assert!(err.contains("no member named \"nope\""), "{err}");
    let out = a[0].cli(&["force-leave", "n2"]);
    assert!(!out.status.success());
    let err = all_text(&out);
    assert!(
        err.contains("n2 is alive") && err.contains("failed members"),
        "{err}"
    );

    a[2].kill9();
    for x in &a[..2] {
        wait_for(LONG, &format!("{} to see n3 failed", x.name), || {
            (x.status_of("n3").as_deref() == Some("failed")).then_some(())
        });
    }
    let out = ok(&a[1].cli(&["force-leave", "n3"]));
    assert!(out.contains("n3 marked as left"), "{out}");
    for x in &a[..2] {
        wait_for(LONG, &format!("{} to see n3 left", x.name), || {
            (x.status_of("n3").as_deref() == Some("left")).then_some(())
        });
    }
    let failed = json(&a[0].cli(&["members", "--status", "failed", "--format", "json"]));
    assert_eq!(failed, serde_json::json!([]));

    // The leave record is in the snapshot: a restarted node still says `left`, never
    // `failed` (it used to forget the force-leave and report n3 failed again).
    wait_for(LONG, "n2's state file to record n3's leave", || {
        let text = std::fs::read_to_string(a[1].data_dir.join("state.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["left"].get("n3").map(drop)
    });
    a[1].kill9();
    a[1].spawn();
    wait_for(LONG, "restarted n2 to see n1 alive and n3 left", || {
        let st = a[1].status_of("n3");
        assert_ne!(
            st.as_deref(),
            Some("failed"),
            "restarted n2 forgot the force-leave"
        );
        (a[1].status_of("n1").as_deref() == Some("alive") && st.as_deref() == Some("left"))
            .then_some(())
    });
}

/// A node started with `--join` to an address nobody serves yet keeps retrying with
/// backoff and joins once the peer appears, without a restart.
#[test]
fn retry_join_waits_for_a_late_peer() {
    let c = Cluster::new("77.65");
    let b = c.start(2, &[1], "");
    wait_for(LONG, "b to fail a join attempt", || {
        b.log_text().contains("will retry joining").then_some(())
    });
    assert_eq!(b.alive_count(), 1);
    let pid = b.child.as_ref().unwrap().id();
    let a = c.start(1, &[], "");
    wait_for(LONG, "b to join the late a", || {
        (b.alive_count() == 2 && a.alive_count() == 2).then_some(())
    });
    assert_eq!(b.child.as_ref().unwrap().id(), pid, "same process");
    let log = b.log_text();
    assert!(log.contains("will retry joining"), "{log}");
    assert!(log.contains("joined via push/pull"), "{log}");
}
