//! Regression tests of issue 10 (agent security and resources) on real agent processes,
//! each on its own 127.77.8x.N addresses: no keyring refused, `--dev` keys, `insecure`,
//! an idle control-API connection flood, and gossip TCP needing a small hello.

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
    // A failed start leaves no control socket: the API is bound only once the agent started.
    assert!(!dir.path().join("x/agent.sock").exists());

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
    // A second agent on d1's gossip address fails, naming it, and binds no control socket.
    let busy = dir.path().join("busy");
    let out = Command::new(bin())
        .env_remove("RUST_LOG")
        .args([
            "agent",
            "--dev",
            "--node",
            "b",
            "--bind",
            &addr(1),
            "--data-dir",
        ])
        .arg(&busy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second agent bound {}: {err}",
        addr(1)
    );
    assert!(
        err.contains(&format!("binding gossip UDP {}", addr(1))),
        "{err}"
    );
    assert!(!busy.join("agent.sock").exists());
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

    // The explicit opt-out starts, and says loudly what it means.
    let log = dir.path().join("i.log");
    let _insecure = raw_agent(
        &["--insecure", "--node", "i1", "--bind", &addr(5)],
        &dir.path().join("i"),
        &log,
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("INSECURE") && text.contains("anyone"),
        "{text}"
    );
}

/// Starts agent `nN` of `c` with `config`, its file-descriptor limit set to `nofile`
/// (soft and hard), and waits for its control API (`api`: TCP, else the unix socket).
fn agent_with_nofile(
    c: &agent_support::Cluster,
    n: u8,
    config: &str,
    nofile: u64,
    api: Option<&str>,
) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let name = format!("n{n}");
    let config_path = c.dir.path().join(format!("{name}.toml"));
    agent_support::write_private(&config_path, config);
    let log = std::fs::File::create(c.dir.path().join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(bin());
    cmd.env_remove("RUST_LOG")
        .arg("agent")
        .arg("--config")
        .arg(&config_path)
        .args(["--node", &name, "--bind", &c.addr(n)])
        .arg("--data-dir")
        .arg(c.dir.path().join(&name))
        .arg("--keyring")
        .arg(&c.keyring)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: only an async-signal-safe setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut guard = ChildGuard::spawn(&mut cmd);
    let sock = c.dir.path().join(&name).join("agent.sock");
    wait_for(Duration::from_secs(10), "the agent's control API", || {
        if let Some(status) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("agent {name} exited early: {status}");
        }
        match api {
            Some(a) => std::net::TcpStream::connect(a).ok().map(drop),
            None => std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(drop),
        }
    });
    guard
}

/// Open file descriptors and resident memory (KiB) of a process.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

/// Raises this test process's own descriptor limit so it can hold a flood; returns it.
fn raise_own_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = want.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// Issue 10, item 2: thousands of idle connections without a token took the agent to
/// its descriptor limit; authorised calls timed out, the journal could not be written
/// and an event's handler never ran. Now the connections are capped, the oldest silent
/// one makes room, and a silent connection is closed after the header timeout.
#[test]
fn idle_api_connection_flood_starves_nothing() {
    let c = agent_support::Cluster::new("77.81");
    let api = "127.77.81.1:18781";
    let token = "flood-token";
    let config = c.config("").replace(
        "log_level = \"info\"",
        &format!("log_level = \"info\"\nrpc = \"tcp:{api}\"\nrpc_token = \"{token}\""),
    );
    let agent = agent_with_nofile(&c, 1, &config, 1024, Some(api));
    let pid = agent.id();
    let limit = raise_own_nofile(8192);
    let flood_size = 3000.min(limit as usize - 200);
    assert!(
        flood_size > 1200,
        "this test needs a descriptor limit above 1400, has {limit}"
    );

    let mut flood = Vec::new();
    for _ in 0..flood_size {
        match std::net::TcpStream::connect(api) {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connect #{} failed: {e}", flood.len()),
        }
    }
    // 128 connections and the agent's own files, once evicted ones are reaped.
    wait_for(
        Duration::from_secs(5),
        "the agent to hold ~128 connections",
        || (fds_and_rss(pid).0 < 200).then_some(()),
    );
    let (_, rss) = fds_and_rss(pid);
    assert!(rss < 48 * 1024, "agent RSS {rss} KiB under the flood");

    let rpc = format!("tcp:{api}");
    let call = |args: &[&str]| {
        ops::cli_cmd(args)
            .env("DROOT_FLEET_RPC", &rpc)
            .env("DROOT_FLEET_RPC_TOKEN", token)
            .output()
            .unwrap()
    };
    let start = std::time::Instant::now();
    ops::ok(&call(&["members"]));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "authorised call took {:?}",
        start.elapsed()
    );
    ops::ok(&call(&["event", "during-flood"]));
    wait_for(LONG, "the event's handler to run during the flood", || {
        (c.deliveries("n1", "during-flood").len() == 1).then_some(())
    });
    drop(flood);

    // A connection that never sends its headers is closed by the agent.
    use std::io::Read;
    let mut silent = std::net::TcpStream::connect(api).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let start = std::time::Instant::now();
    let n = silent.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "the agent answered a request that was never sent");
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "silent connection held for {:?}",
        start.elapsed()
    );
}

/// Issue 10, item 2 (gossip TCP): a connection that announced an 8 MiB frame was
/// buffered up to 8 MiB before any key was tried, and every connection got a task. Now
/// the first frame must be a small sealed hello, and at most 64 connections are open.
#[test]
fn gossip_tcp_needs_a_small_hello_and_is_capped() {
    use std::io::{Read, Write};
    let c = agent_support::Cluster::new("77.82");
    let n1 = agent_with_nofile(&c, 1, &c.config(""), 256, None);
    let target = c.addr(1);

    // A huge first frame: closed at once, nothing buffered.
    let mut s = std::net::TcpStream::connect(&target).unwrap();
    s.write_all(&(8_000_000u32).to_be_bytes()).unwrap();
    let _ = s.write_all(&[7u8; 4096]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = std::time::Instant::now();
    match s.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Ok(n) => panic!("the agent answered {n} bytes to garbage"),
        Err(e) => assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "connection still open after {:?}: {e}",
            start.elapsed()
        ),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // 400 silent connections: the agent holds at most 64 of them, and a new member
    // still joins through TCP push/pull meanwhile.
    let flood: Vec<_> = (0..400)
        .map(|_| std::net::TcpStream::connect(&target).unwrap())
        .collect();
    // Evicted connections close as their tasks are reaped: well before the old 10 s
    // stream timeout would have closed them.
    wait_for(
        Duration::from_secs(5),
        "n1 to hold at most ~64 streams",
        || (fds_and_rss(n1.id()).0 < 160).then_some(()),
    );
    let n2 = c.start(2, &[1], "");
    wait_for(LONG, "n2 to join n1 during the flood", || {
        (n2.alive_count() == 2).then_some(())
    });
    drop(flood);
}
