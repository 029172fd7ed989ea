//! `droot-fleet history` end to end (issue 17), as root, on real parts: `droot-fleet agent`
//! processes on 127.86.7.N, artifacts by file://, a busybox `httpd` jail per node, health
//! over HTTP. Two deploys and a rollback through the real CLI, then the history as the
//! operator reads it, from every node, before and after an agent restart.
//!
//! Every wait is on a signal (a `--wait` verdict, an answer holding what is expected),
//! bounded.

#[path = "common/agent.rs"]
mod agent_support;
mod common;
#[path = "common/fleet.rs"]
mod fleet;

use agent_support::wait_for;
use fleet::{Fleet, Kind, LONG, NodeSpec, names, text};
use serde_json::Value;

/// `history web --format json` through node `via`, asked again until each of `nodes`
/// answered with at least `count` entries.
fn history(f: &Fleet, via: u8, nodes: &[&str], count: usize) -> Value {
    wait_for(
        LONG,
        &format!("{count} history entries from {nodes:?}"),
        || {
            let out = f.cli(via, &["history", "web", "--format", "json"]);
            assert!(out.status.success(), "history: {}", text(&out));
            let h: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("history JSON ({e}): {}", text(&out)));
            let of = |n: &str| {
                let rows = h["entries"].as_array().unwrap();
                rows.iter().filter(|e| e["node"] == n).count()
            };
            nodes.iter().all(|n| of(n) >= count).then_some(h)
        },
    )
}

/// Event ids of the `--wait` reports, newest first.
fn ids(reports: &[&Value]) -> Vec<String> {
    let mut v: Vec<String> = reports
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect();
    v.reverse();
    v
}

/// Checks one node's three entries (newest first): the rollback to v1, v2, v1; signed by the
/// fleet's key; the phases each ran.
fn assert_entries(h: &Value, node: &str, want_ids: &[String], signer: &str) {
    let rows: Vec<&Value> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"] == node)
        .collect();
    let got: Vec<&str> = rows
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, want_ids, "{node}: {h:#}");
    let steps: Vec<(&str, &Value, &str)> = rows
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                &e["from"],
                e["to"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("rollback", &Value::from("v2"), "v1"),
            ("deploy", &Value::from("v1"), "v2"),
            ("deploy", &Value::Null, "v1"),
        ],
        "{node}: {h:#}"
    );
    for (i, e) in rows.iter().enumerate() {
        assert_eq!(e["outcome"], "ok", "{node}: {e}");
        assert_eq!(e["error"], Value::Null, "{node}: {e}");
        assert_eq!(e["signer"], signer, "{node}: {e}");
        assert!(e["at"].as_u64().is_some_and(|t| t > 1_600_000_000), "{e}");
        let phases = e["phases_ms"].as_object().unwrap();
        let mut have: Vec<&str> = phases.keys().map(String::as_str).collect();
        have.sort();
        // The rollback's release was on disk: nothing fetched or unpacked.
        let want: &[&str] = match i {
            0 => &["health", "start"],
            _ => &["fetch", "health", "start", "unpack"],
        };
        assert_eq!(have, want, "{node}: {e}");
        // Without READY=1 the health check waits for the jail's httpd: never instant.
        assert!(phases["health"].as_u64().unwrap() > 0, "{node}: {e}");
    }
}

/// Two deploys and a rollback: `history` lists them newest first on every node with their
/// event ids, signer, from/to, outcome and phase durations, and each node's releases and
/// rollback target; a restarted agent still has its history; a node without the app says so.
#[test]
fn history_lists_two_deploys_and_a_rollback_and_survives_a_restart() {
    let mut f = Fleet::new("86.7");
    f.publish("v1", Kind::Healthy);
    f.publish("v2", Kind::Healthy);
    f.start_nodes(vec![
        NodeSpec::default(),
        NodeSpec::default(),
        NodeSpec {
            no_app: true,
            ..NodeSpec::default()
        },
    ]);
    let r1 = f.deploy_all_ok("v1");
    let r2 = f.deploy_all_ok("v2");
    let (code, r3) = f.rollback(&[]);
    assert_eq!(code, 0, "rollback: {r3}");
    assert_eq!(r3["version"], "v1", "{r3}");
    assert_eq!(names(&r3["ok"]), ["n1", "n2"], "{r3}");
    let want = ids(&[&r1, &r2, &r3]);
    let signer = &f.public[..10].to_owned();

    let h = history(&f, 3, &["n1", "n2"], 3);
    // Newest first across the nodes.
    let times: Vec<u64> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["at"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{h:#}");
    assert_eq!(times.len(), 6, "{h:#}");
    for n in ["n1", "n2"] {
        assert_entries(&h, n, &want, signer);
    }
    // What each node holds, and where a rollback goes: as `query status` says.
    let st = f.status(1);
    for held in h["nodes"].as_array().unwrap() {
        let n = held["node"].as_str().unwrap();
        assert_eq!(held["releases"], serde_json::json!(["v1", "v2"]), "{held}");
        assert_eq!(held["current"], "v1", "{held}");
        assert_eq!(
            held["rollback_to"], st[n]["previous"],
            "{n}: {held} {:?}",
            st[n]
        );
    }
    assert_eq!(names(&h["without_app"]), ["n3"], "{h:#}");
    assert_eq!(names(&h["missing"]), Vec::<String>::new(), "{h:#}");

    // The table: a row per deploy, newest first, then what each node holds.
    let out = f.cli(1, &["history", "web", "--node", "n2", "--limit", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let rows: Vec<&str> = t.lines().skip(1).take(2).collect();
    assert!(
        rows[0].contains("rollback") && rows[0].contains(&want[0]),
        "{t}"
    );
    assert!(
        rows[0].contains("v2 -> v1") && rows[0].contains(signer),
        "{t}"
    );
    assert!(
        rows[1].contains("deploy") && rows[1].contains(&want[1]),
        "{t}"
    );
    assert!(rows.iter().all(|r| r.contains(" n2 ")), "{t}");
    assert!(t.contains("n2: v1* v2 -> rollback to"), "{t}");
    assert!(t.contains("1 node(s) answered, 0 did not"), "{t}");

    // The journal is on disk, in the store's state dir, and survives a restart.
    let journal = f.root(2).join(".droot-fleet/deploys.jsonl");
    let lines = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(lines.lines().count(), 3, "{lines}");
    f.agents[1].kill9();
    f.respawn(2);
    f.agent(2).wait_push_pulls(2);
    let h = history(&f, 2, &["n1", "n2"], 3);
    assert_entries(&h, "n2", &want, signer);
}
