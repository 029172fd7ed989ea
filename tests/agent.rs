//! Integration tests of `droot-fleet agent`: real processes on their own 127.x.y.z
//! addresses, real sealed UDP/TCP, driven through the CLI and the control socket.
//! Each test uses its own 127.77.T.0/24 so tests can run in parallel.

#[path = "common/agent.rs"]
mod agent_support;

use std::time::Duration;

use agent_support::{Cluster, wait_for};
use nix::sys::signal::Signal;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

fn start_five(c: &Cluster, extra: impl Fn(u8) -> String) -> Vec<agent_support::Agent> {
    let first = c.start(1, &[], &extra(1));
    let mut agents = vec![first];
    for n in 2..=5 {
        agents.push(c.start(n, &[1], &extra(n)));
    }
    for a in &agents {
        wait_for(LONG, &format!("{} to see 5 alive members", a.name), || {
            (a.alive_count() == 5).then_some(())
        });
    }
    agents
}

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// Join, members, an event delivered exactly once everywhere, a query with a >10 KB
/// answer over TCP and a missing member, size cap, graceful leave and kill -9.
#[test]
fn cluster_events_queries_leave_and_failure() {
    let c = Cluster::new("77.1");
    let big = r#"
[[handler]]
event = "query:big"
command = ["sh", "-c", "head -c 12000 /dev/zero | tr '\\0' y"]
"#;
    let mut agents = start_five(&c, |n| if n == 5 { String::new() } else { big.into() });

    // Human table lists everyone.
    let table = String::from_utf8(agents[0].cli(&["members"]).stdout).unwrap();
    for n in 1..=5 {
        assert!(table.contains(&format!("n{n} ")), "{table}");
    }

    // Event from n2: every node's handler runs exactly once.
    let out = agents[1].cli(&["event", "release", "v1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 1..=5 {
        let node = format!("n{n}");
        wait_for(LONG, &format!("{node} to handle release"), || {
            (!c.deliveries(&node, "release").is_empty()).then_some(())
        });
    }
    for a in &agents {
        a.wait_push_pulls(2); // anti-entropy re-offered the event everywhere
    }
    for n in 1..=5 {
        assert_eq!(
            c.deliveries(&format!("n{n}"), "release").len(),
            1,
            "n{n} exactly once"
        );
    }

    // Too large: a clear error, exit code != 0.
    let huge = "x".repeat(5000);
    let out = agents[0].cli(&["event", "release", &huge]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too large"), "{err}");

    // Query: 4 nodes answer 12000 bytes (over TCP), n5 has no handler → missing.
    let out = agents[0].cli(&["query", "big", "--timeout", "3s", "--format", "json"]);
    let v = json(&out);
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 4, "{v}");
    for a in answers {
        assert_eq!(a["payload"].as_str().unwrap().len(), 12000);
    }
    assert_eq!(v["missing"], serde_json::json!(["n5"]));
    // Filters: built-in ping, only n3 by name.
    let v = json(&agents[0].cli(&["query", "ping", "--node", "n3", "--format", "json"]));
    assert_eq!(
        v["answers"],
        serde_json::json!([{"node": "n3", "payload": "n3"}])
    );
    assert_eq!(v["missing"], serde_json::json!([]));

    // Graceful leave of n4: others see "left"; the process exits by itself.
    let out = agents[3].cli(&["leave"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = agents[3].wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    wait_for(LONG, "n4 reported left", || {
        (agents[0].status_of("n4").as_deref() == Some("left")).then_some(())
    });

    // kill -9 of n5: detected as failed.
    agents[4].kill9();
    wait_for(LONG, "n5 reported failed", || {
        (agents[1].status_of("n5").as_deref() == Some("failed")).then_some(())
    });
    assert_eq!(agents[1].status_of("n4").as_deref(), Some("left"));
    let failed = json(&agents[1].cli(&["members", "--status", "failed", "--format", "json"]));
    assert_eq!(failed.as_array().unwrap().len(), 1);
}

/// Exactly-once across SIGSTOP/SIGCONT (repair by push/pull) and across a restart.
#[test]
fn stopped_node_catches_up_and_restart_does_not_redeliver() {
    let c = Cluster::new("77.2");
    let mut agents = start_five(&c, |_| String::new());

    assert!(agents[0].cli(&["event", "first"]).status.success());
    for n in 1..=5 {
        wait_for(LONG, "first everywhere", || {
            (c.deliveries(&format!("n{n}"), "first").len() == 1).then_some(())
        });
    }

    // n3 frozen while the event goes out.
    agents[2].signal(Signal::SIGSTOP);
    assert!(agents[0].cli(&["event", "second"]).status.success());
    for n in [1, 2, 4, 5] {
        wait_for(LONG, "second on running nodes", || {
            (c.deliveries(&format!("n{n}"), "second").len() == 1).then_some(())
        });
    }
    assert!(
        c.deliveries("n3", "second").is_empty(),
        "a stopped node cannot run handlers"
    );
    agents[2].signal(Signal::SIGCONT);
    wait_for(LONG, "n3 to catch up on second", || {
        (c.deliveries("n3", "second").len() == 1).then_some(())
    });

    // Restart n2 (kill -9, same data dir): it rejoins and runs no old handler again.
    agents[1].kill9();
    agents[1].spawn();
    wait_for(LONG, "restarted n2 alive again", || {
        (agents[0].status_of("n2").as_deref() == Some("alive") && agents[1].alive_count() == 5)
            .then_some(())
    });
    agents[1].wait_push_pulls(3);
    agents[2].wait_push_pulls(2);
    assert_eq!(c.deliveries("n2", "first").len(), 1);
    assert_eq!(c.deliveries("n2", "second").len(), 1);
    assert_eq!(c.deliveries("n3", "second").len(), 1);
    // And it still receives new events.
    assert!(agents[3].cli(&["event", "third"]).status.success());
    wait_for(LONG, "third on restarted n2", || {
        (c.deliveries("n2", "third").len() == 1).then_some(())
    });
}

/// Regression: a crash after a handler started but before the next state snapshot must not
/// run that handler again on restart (the per-event journal records it first).
#[test]
fn crash_before_the_snapshot_does_not_rerun_handlers() {
    let mut c = Cluster::new("77.5");
    c.snapshot_interval = "1h".into();
    let a1 = c.start(1, &[], "");
    let mut a2 = c.start(2, &[1], "");
    wait_for(LONG, "two members", || {
        (a1.alive_count() == 2).then_some(())
    });
    assert!(a1.cli(&["event", "once"]).status.success());
    wait_for(LONG, "once on n2", || {
        (c.deliveries("n2", "once").len() == 1).then_some(())
    });
    a2.kill9();
    a2.spawn();
    wait_for(LONG, "restarted n2 alive again", || {
        (a1.status_of("n2").as_deref() == Some("alive") && a2.alive_count() == 2).then_some(())
    });
    a2.wait_push_pulls(3); // push/pull rounds re-offer the event
    assert_eq!(
        c.deliveries("n2", "once").len(),
        1,
        "handler ran again after the crash"
    );
    assert_eq!(c.deliveries("n1", "once").len(), 1);
}

/// SIGTERM (and SIGINT) leave gracefully: the leave reaches the others before the exit.
#[test]
fn sigterm_and_sigint_leave_gracefully() {
    let c = Cluster::new("77.6");
    let a1 = c.start(1, &[], "");
    let mut a2 = c.start(2, &[1], "");
    let mut a3 = c.start(3, &[1], "");
    wait_for(LONG, "three members", || {
        (a1.alive_count() == 3).then_some(())
    });
    a2.signal(Signal::SIGTERM);
    let status = a2.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM exit: {status}");
    a3.signal(Signal::SIGINT);
    let status = a3.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGINT exit: {status}");
    // "left", not "failed": the leave was sent, not inferred from silence.
    wait_for(LONG, "n2 and n3 reported left", || {
        (a1.status_of("n2").as_deref() == Some("left")
            && a1.status_of("n3").as_deref() == Some("left"))
        .then_some(())
    });
}

/// A node with another key never joins; its packets are counted, not delivered.
#[test]
fn wrong_key_node_cannot_join() {
    let c = Cluster::new("77.3");
    let a1 = c.start(1, &[], "");
    let a2 = c.start(2, &[1], "");
    wait_for(LONG, "two members", || {
        (a1.alive_count() == 2).then_some(())
    });

    let other_key = c.dir.path().join("other.json");
    agent_support::write_keyring(&other_key);
    let bad = c.start_with(3, &[1], "", Some(&other_key));

    // A wrong-key UDP datagram too.
    let ring = droot_fleet::gossip::Keyring::new(droot_fleet::gossip::Key::from_bytes([9; 32]));
    let sealed =
        droot_fleet::gossip::envelope::seal_datagram(&ring, b"\0hello", &mut rand::rng()).unwrap();
    let sock = std::net::UdpSocket::bind("127.77.3.9:0").unwrap();
    sock.send_to(&sealed, c.addr(1)).unwrap();

    wait_for(LONG, "drops counted on n1", || {
        let counters = &a1.info()["counters"];
        let udp = counters["packets_dropped_auth"].as_u64().unwrap_or(0);
        let tcp = counters["streams_dropped_auth"].as_u64().unwrap_or(0);
        (udp >= 1 && tcp >= 1).then_some(())
    });
    a1.wait_push_pulls(2);
    assert!(a1.status_of("n3").is_none(), "{:?}", a1.members());
    assert!(a2.status_of("n3").is_none());
    assert_eq!(bad.alive_count(), 1, "the bad node only knows itself");
}

/// A handler that overruns its timeout is killed and logged; the agent keeps working.
#[test]
fn handler_timeout_kills_and_agent_survives() {
    let c = Cluster::new("77.4");
    let pidfile = c.dir.path().join("slow.pid");
    let extra = format!(
        r#"
[[handler]]
event = "user:slow"
command = ["sh", "-c", "echo $$ > {}; sleep 30"]
timeout = "500ms"
"#,
        pidfile.display()
    );
    let a = c.start(1, &[], &extra);
    assert!(a.cli(&["event", "slow"]).status.success());
    let pid: i32 = wait_for(LONG, "the slow handler to start", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    wait_for(LONG, "the timeout to be logged", || {
        a.log_text().contains("timed out").then_some(())
    });
    wait_for(
        Duration::from_secs(5),
        "the handler process to be gone",
        || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")))
            .then_some(())
        },
    );
    // Other handlers still ran, and the agent still serves requests.
    assert_eq!(c.deliveries("n1", "slow").len(), 1);
    assert!(a.cli(&["event", "after"]).status.success());
    wait_for(LONG, "the next event handled", || {
        (c.deliveries("n1", "after").len() == 1).then_some(())
    });
}

/// Startup refusals and the CLI's no-agent message.
#[test]
fn refusals_are_clear() {
    let out = std::process::Command::new(agent_support::bin())
        .args([
            "agent",
            "--bind",
            "10.1.2.3:7946",
            "--data-dir",
            "/tmp/nonexistent-droot",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keyring") && err.contains("--insecure"),
        "{err}"
    );

    let out = std::process::Command::new(agent_support::bin())
        .args(["members", "--rpc", "unix:/tmp/droot-fleet-no-agent.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no agent at unix:/tmp/droot-fleet-no-agent.sock"),
        "{err}"
    );
    assert!(err.contains("DROOT_FLEET_RPC"), "{err}");
}
