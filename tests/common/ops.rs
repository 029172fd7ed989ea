//! Extra helpers for the agent feature tests (tests/agent_keys.rs, agent_ops.rs,
//! agent_api.rs), on top of `common/agent.rs` (included by the test file as
//! `agent_support`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::agent_support::{Agent, Cluster, bin, wait_for};

pub const LONG: Duration = Duration::from_secs(30);

/// stdout of a successful command (panics with stderr otherwise).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout of a successful command, parsed as JSON.
pub fn json(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// stdout + stderr of a command, for error checks.
pub fn all_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts `n` agents (1..=n, all joining 1) and waits until every one sees `n` alive.
pub fn start_n(c: &Cluster, n: u8, extra: impl Fn(u8) -> String) -> Vec<Agent> {
    let mut agents = vec![c.start(1, &[], &extra(1))];
    for i in 2..=n {
        agents.push(c.start(i, &[1], &extra(i)));
    }
    wait_all_alive(&agents, n as usize);
    agents
}

pub fn wait_all_alive(agents: &[Agent], n: usize) {
    for a in agents {
        wait_for(
            LONG,
            &format!("{} to see {n} alive members", a.name),
            || (a.alive_count() == n).then_some(()),
        );
    }
}

/// A `[tags]` table (it may follow the helper's `[[handler]]` table, unlike bare keys).
pub fn tags_table(tags: &[(&str, &str)]) -> String {
    let mut s = String::from("\n[tags]\n");
    for (k, v) in tags {
        s.push_str(&format!("{k} = \"{v}\"\n"));
    }
    s
}

/// A counter of `GET /v1/info`.
pub fn counter(a: &Agent, name: &str) -> u64 {
    a.info()["counters"][name].as_u64().unwrap_or(0)
}

/// `members --format json` of `a`, as printed (empty when it fails).
pub fn member_json(a: &Agent) -> Vec<Value> {
    let out = a.cli(&["members", "--format", "json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// A child process killed (SIGKILL) when dropped: a `droot-fleet monitor`, or an agent
/// started by hand.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(Some(cmd.spawn().expect("spawn")))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits for the process to exit by itself; returns its output.
    pub fn wait_output(&mut self, timeout: Duration) -> Output {
        let child = self.0.as_mut().expect("running");
        wait_for(timeout, "the process to exit", || {
            child.try_wait().unwrap().map(|_| ())
        });
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `droot-fleet ARGS` with output captured and RUST_LOG removed.
pub fn cli_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("RUST_LOG")
        .env_remove("DROOT_FLEET_RPC")
        .env_remove("DROOT_FLEET_RPC_TOKEN")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Copies the cluster keyring to a per-node file (so each node rewrites its own).
pub fn own_keyring(c: &Cluster, n: u8) -> std::path::PathBuf {
    let p = c.dir.path().join(format!("keyring-n{n}.json"));
    std::fs::copy(&c.keyring, &p).unwrap();
    p
}

/// The primary key of a keyring file.
pub fn primary_key(path: &Path) -> String {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["primary"].as_str().unwrap().to_owned()
}

/// Every distinct key of a keyring file, primary first (`keys` may repeat the primary).
pub fn file_keys(path: &Path) -> Vec<String> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut keys = vec![v["primary"].as_str().unwrap().to_owned()];
    for k in v["keys"].as_array().into_iter().flatten() {
        let k = k.as_str().unwrap().to_owned();
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// A new random key (base64).
/// A new deploy signing key in `dir`: its file and its public half.
pub fn signing_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let path = dir.join("deploy.key");
    let out = cli_cmd(&["keygen", "--signing", "-o", path.to_str().unwrap()])
        .output()
        .unwrap();
    let public = ok(&out).trim().to_owned();
    (path, public)
}

pub fn keygen() -> String {
    ok(&cli_cmd(&["keygen"]).output().unwrap())
        .trim()
        .to_owned()
}

/// Starts agent `nN` of `c` by hand with a full config text and extra environment
/// variables (the shared helper's agents inherit the test's environment only).
/// Waits until `ready` connects: the unix socket, or a TCP control address.
pub fn spawn_agent(
    c: &Cluster,
    n: u8,
    config: &str,
    envs: &[(&str, &str)],
    tcp_ready: Option<&str>,
) -> ChildGuard {
    let name = format!("n{n}");
    let data_dir = c.dir.path().join(&name);
    let config_path = c.dir.path().join(format!("{name}.toml"));
    super::agent_support::write_private(&config_path, config);
    let log = c.dir.path().join(format!("{name}.log"));
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(bin());
    cmd.env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .arg("agent")
        .arg("--config")
        .arg(&config_path)
        .args(["--node", &name, "--bind", &c.addr(n)])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--keyring")
        .arg(&c.keyring)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut guard = ChildGuard::spawn(&mut cmd);
    let sock = data_dir.join("agent.sock");
    wait_for(Duration::from_secs(10), "the agent's control API", || {
        if let Some(status) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("agent {name} exited early: {status}");
        }
        match tcp_ready {
            Some(a) => std::net::TcpStream::connect(a).ok().map(drop),
            None => std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(drop),
        }
    });
    guard
}

/// The agent log of `nN` (for agents from [`spawn_agent`]).
pub fn log_of(c: &Cluster, n: u8) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("n{n}.log"))).unwrap_or_default()
}

/// One raw HTTP/1.1 request over TCP; returns (status, body).
pub fn http(addr: &str, request_head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request_head.as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {buf:?}"));
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}
