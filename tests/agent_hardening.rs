//! Regression tests of issue 10 (agent security and resources) on real agent processes,
//! each on its own 127.77.8x.N addresses: keys, far-future Lamport times, connection
//! floods, handler limits and handler spawn faults.

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/ops.rs"]
mod ops;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_support::{PORT, bin, wait_for};
use ops::{ChildGuard, LONG};
use serde_json::Value;

/// An agent started by hand with `args` (after `agent`), its log in `log`; waits for
/// the control socket in `data_dir`.
fn raw_agent(args: &[&str], data_dir: &Path, log: &Path) -> ChildGuard {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(bin());
    cmd.env_remove("RUST_LOG")
        .arg("agent")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut guard = ChildGuard::spawn(&mut cmd);
    let sock = data_dir.join("agent.sock");
    wait_for(
        Duration::from_secs(10),
        "the agent's control socket",
        || {
            if let Some(status) = guard.0.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited early: {status}");
            }
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(drop)
        },
    );
    guard
}

/// `droot-fleet ARGS` against the agent whose data dir is `data_dir`.
fn cli_at(data_dir: &Path, args: &[&str]) -> std::process::Output {
    ops::cli_cmd(args)
        .env(
            "DROOT_FLEET_RPC",
            format!("unix:{}", data_dir.join("agent.sock").display()),
        )
        .output()
        .unwrap()
}

fn members_at(data_dir: &Path) -> Vec<(String, String)> {
    let out = cli_at(data_dir, &["members", "--format", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_owned(),
                m["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A `GET /v1/info` counter of the agent whose data dir is `data_dir`.
fn info_counter(data_dir: &Path, name: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = droot_fleet::api::client::Client::new(
        droot_fleet::agent::config::RpcAddr::Unix(data_dir.join("agent.sock")),
        None,
    );
    let info = rt.block_on(client.info()).expect("info");
    info.counters.get(name).copied().unwrap_or(0)
}

/// Issue 10, item 1: with no keyring an agent refuses to start even on loopback (any
/// local user could join it and fire events); `--dev` makes a fresh 0600 key per run
/// that a second dev agent joins with, and an agent with another key stays out.
#[test]
fn no_keyring_refused_on_loopback_dev_makes_a_fresh_key() {
    let dir = tempfile::tempdir().unwrap();
    let addr = |n: u8| format!("127.77.80.{n}:{PORT}");
    let out = Command::new(bin())
        .env_remove("RUST_LOG")
        .args(["agent", "--node", "x", "--bind", &addr(9), "--data-dir"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without a key on loopback");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keyring") && err.contains("--dev"), "{err}");

    let (d1, d2, d3) = (
        dir.path().join("d1"),
        dir.path().join("d2"),
        dir.path().join("d3"),
    );
    let log1 = dir.path().join("d1.log");
    let a1 = raw_agent(&["--dev", "--node", "d1", "--bind", &addr(1)], &d1, &log1);
    let key = d1.join("dev-keyring.json");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "dev key file mode");
    let first_key = std::fs::read_to_string(&key).unwrap();
    let log = std::fs::read_to_string(&log1).unwrap();
    assert!(
        log.contains(&format!("--keyring {}", key.display())),
        "no hint for a second dev agent: {log}"
    );

    let key_arg = key.to_str().unwrap();
    let _a2 = raw_agent(
        &[
            "--dev",
            "--keyring",
            key_arg,
            "--node",
            "d2",
            "--bind",
            &addr(2),
            "--join",
            &addr(1),
        ],
        &d2,
        &dir.path().join("d2.log"),
    );
    wait_for(LONG, "d1 and d2 to see each other", || {
        (members_at(&d1).iter().filter(|(_, s)| s == "alive").count() == 2).then_some(())
    });
    // A third dev agent has its own fresh key: its packets are refused, it never joins.
    let _a3 = raw_agent(
        &[
            "--dev",
            "--node",
            "d3",
            "--bind",
            &addr(3),
            "--join",
            &addr(1),
        ],
        &d3,
        &dir.path().join("d3.log"),
    );
    assert_ne!(
        std::fs::read_to_string(d3.join("dev-keyring.json")).unwrap(),
        first_key
    );
    wait_for(LONG, "d3's packets dropped by d1", || {
        (info_counter(&d1, "streams_dropped_auth") >= 1).then_some(())
    });
    assert!(
        !members_at(&d1).iter().any(|(n, _)| n == "d3"),
        "{:?}",
        members_at(&d1)
    );
    drop(a1);
}
