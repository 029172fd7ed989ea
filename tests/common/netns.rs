//! Test hosts as Linux network namespaces, for partition tests of `droot-fleet agent`.
//!
//! [`Net`] builds one "switch" namespace holding two bridges, `br0` (the LAN) and
//! `br1` (the far side of a partition), and one namespace per host, each with an
//! `eth0` (10.213.0.N/24) whose veth peer `pN` sits in the switch. Every interface
//! and address lives only inside namespaces created here: no packet can reach the
//! host's own network. A partition moves some hosts' switch ports from `br0` to
//! `br1`; healing moves them back.
//!
//! Names are unique per run (`dfp-<pid>-<seq>-<N>`, `dfp-<pid>-<seq>-sw`).
//! [`Lab`] owns the namespaces, the agents (one per host, started with
//! `ip netns exec`) and a temp dir; dropping it — also while unwinding from a failed
//! assertion — SIGKILLs the agents, then deletes the namespaces (which destroys their
//! links). Namespaces left by a test process that was itself SIGKILLed are removed
//! by the next run.
//!
//! Without root, or without a working `ip netns`, [`Net::new`] panics with the
//! reason: the test fails, it never passes by skipping.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Gossip port of every agent (each host has its own network stack).
pub const PORT: u16 = 7946;
/// The private test subnet; it exists only on the veths inside the test namespaces.
pub const SUBNET: &str = "10.213.0";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Path of the built `droot-fleet` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_droot-fleet"))
}

/// Copies the binary to `dir` and returns the copy. The cargo target dir may be
/// shared with concurrent builds that replace the binary under a running test (a
/// brief ENOENT/ETXTBSY when spawning); a private copy is immune to that.
fn private_bin(dir: &Path) -> PathBuf {
    let dst = dir.join("droot-fleet");
    let tmp = dir.join("droot-fleet.tmp");
    poll(
        Duration::from_secs(60),
        "a copy of the droot-fleet binary",
        || {
            std::fs::copy(bin(), &tmp).map_err(|e| format!("copy {}: {e}", bin().display()))?;
            let out = Command::new(&tmp)
                .arg("--version")
                .output()
                .map_err(|e| format!("run the copy: {e}"))?;
            if !out.status.success() {
                return Err(format!("the copy does not run: {}", out.status));
            }
            std::fs::rename(&tmp, &dst).map_err(|e| format!("rename the copy: {e}"))
        },
    );
    dst
}

/// Polls `f` every 100 ms until it returns `Ok`, or panics after `timeout` with
/// `what` and the last `Err` (a description of the state that was observed).
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {state}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = ip_output(args);
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn ip_output(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `ip {}`: {e}; this test needs iproute2 (`ip netns`): \
                 apt-get install iproute2",
                args.join(" ")
            )
        })
}

/// Panics with a clear reason unless we are root and `ip netns` is usable.
pub fn require_netns() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "the partition test needs root: it creates network namespaces, veth pairs and \
             bridges with `ip netns`/`ip link`; run it as root (see README)"
        );
    }
    let out = ip_output(&["-V"]);
    assert!(
        out.status.success(),
        "`ip -V` failed: {}; install iproute2",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ip_output(&["netns", "list"]);
    assert!(
        out.status.success(),
        "`ip netns list` failed: {}; this iproute2 or kernel lacks network namespaces",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Names of existing network namespaces.
fn netns_names() -> Vec<String> {
    let out = ip_output(&["netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Deletes `dfp-<pid>-…` namespaces whose test process no longer exists (it was
/// killed before its guard could run).
fn remove_stale() {
    for name in netns_names() {
        let Some(rest) = name.strip_prefix("dfp-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip_output(&["netns", "delete", &name]);
        }
    }
}

/// The namespaces and links of one test; deleted on drop.
pub struct Net {
    /// Host namespaces, index 0 is host 1.
    pub hosts: Vec<String>,
    /// The namespace holding the bridges.
    pub switch: String,
    created: Vec<String>,
}

impl Net {
    /// Creates the switch and `n` hosts (1..=n, at most 200), all on `br0`.
    pub fn new(n: usize) -> Self {
        assert!((1..=200).contains(&n));
        require_netns();
        remove_stale();
        let prefix = format!(
            "dfp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            hosts: (1..=n).map(|i| format!("{prefix}-{i}")).collect(),
            switch: format!("{prefix}-sw"),
            created: Vec::new(),
        };
        // Record each namespace before creating links in it, so a failure half-way
        // still deletes everything.
        let sw = net.switch.clone();
        net.add_ns(&sw);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        for br in ["br0", "br1"] {
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                br,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ]);
            ip(&["-n", &sw, "link", "set", br, "up"]);
        }
        for i in 1..=n {
            let host = net.hosts[i - 1].clone();
            net.add_ns(&host);
            let port = format!("p{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{SUBNET}.{i}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &host, "link", "set", "eth0", "up"]);
        }
        net
    }

    fn add_ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.created.push(name.to_owned());
    }

    /// `10.213.0.N:PORT` of host `n` (1-based).
    pub fn addr(&self, n: usize) -> String {
        format!("{SUBNET}.{n}:{PORT}")
    }

    /// Cuts hosts `far` (1-based) off from the others: their switch ports move to
    /// `br1`, where they still reach each other but nobody else. Frames to the
    /// other side are silently dropped, as in a real partition.
    pub fn partition(&self, far: &[usize]) {
        for &i in far {
            self.set_bridge(i, "br1");
        }
    }

    /// Puts every host back on `br0`.
    pub fn heal(&self) {
        for i in 1..=self.hosts.len() {
            self.set_bridge(i, "br0");
        }
    }

    fn set_bridge(&self, n: usize, br: &str) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("p{n}"),
            "master",
            br,
        ]);
    }

    /// A command that runs `program` inside host `n`'s namespace.
    pub fn exec(&self, n: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[n - 1]]).arg(program);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Hosts first: deleting a namespace destroys its end of each veth pair, and
        // with it the peer in the switch.
        for name in self.created.iter().rev() {
            let out = ip_output(&["netns", "delete", name]);
            if !out.status.success() {
                eprintln!(
                    "warning: `ip netns delete {name}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}

/// One `droot-fleet agent` running inside a host namespace; SIGKILLed on drop.
pub struct NsAgent {
    pub name: String,
    /// The binary the agent runs, also used for CLI calls.
    pub bin: PathBuf,
    /// 1-based host number.
    pub host: usize,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NsAgent {
    pub fn sock(&self) -> PathBuf {
        self.data_dir.join("agent.sock")
    }

    /// Runs a CLI command against this agent's control socket (from the host side:
    /// a unix socket is a file, reachable from any network namespace).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .env_remove("RUST_LOG")
            .env("DROOT_FLEET_RPC", format!("unix:{}", self.sock().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run droot-fleet cli")
    }

    /// How many push/pull states this agent has merged (`/v1/info` counters).
    pub fn push_pulls(&self) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = droot_fleet::api::client::Client::new(
            droot_fleet::wire::RpcAddr::Unix(self.sock()),
            None,
        );
        let info = rt.block_on(client.info()).expect("info");
        info.counters.get("push_pulls_merged").copied().unwrap_or(0)
    }

    /// `members --format json` as (name, status) pairs.
    pub fn members(&self) -> Result<Vec<(String, String)>, String> {
        let out = self.cli(&["members", "--format", "json"]);
        if !out.status.success() {
            return Err(format!(
                "{}: members failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{}: members output is not JSON: {e}", self.name))?;
        let list = v
            .as_array()
            .ok_or_else(|| format!("{}: members output is not an array: {v}", self.name))?;
        Ok(list
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_owned(),
                    m["status"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Namespaces + agents + files of one test. Field order is drop order: agents are
/// killed before their namespaces go away, and the temp dir goes last.
pub struct Lab {
    pub agents: Vec<NsAgent>,
    pub net: Net,
    /// Private copy of the binary.
    pub bin: PathBuf,
    pub keyring: PathBuf,
    pub events_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// `n` host namespaces on one LAN, a fresh shared key, no agents yet.
    pub fn new(n: usize) -> Self {
        let net = Net::new(n);
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = private_bin(dir.path());
        let keyring = dir.path().join("keyring.json");
        let out = Command::new(&bin)
            .arg("keygen")
            .arg("-o")
            .arg(&keyring)
            .output()
            .expect("run keygen");
        assert!(out.status.success(), "droot-fleet keygen -o failed");
        let events_dir = dir.path().join("events");
        std::fs::create_dir_all(&events_dir).unwrap();
        Lab {
            agents: Vec::new(),
            net,
            bin,
            keyring,
            events_dir,
            dir,
        }
    }

    /// Config shared by all agents: short intervals (push/pull and reconnect every
    /// second), a handler that appends the
    /// Lamport time of each user event to `events/<node>.<event>`, and one that
    /// appends the name of each member reported failed to `events/<node>.member-failed`.
    pub fn config(&self, cluster_size: usize) -> String {
        format!(
            r#"
push_pull_interval = "1s"
reconnect_interval = "1s"
snapshot_interval = "1s"
retry_interval = "300ms"
expected_cluster_size = {cluster_size}
log_level = "info"

[[handler]]
event = "user"
command = ["sh", "-c", "echo \"$DROOT_FLEET_LTIME\" >> {events}/$DROOT_FLEET_NODE.$DROOT_FLEET_USER_EVENT"]
timeout = "5s"

[[handler]]
event = "member-failed"
command = ["sh", "-c", "echo \"$DROOT_FLEET_MEMBER\" >> {events}/$DROOT_FLEET_NODE.member-failed"]
timeout = "5s"
"#,
            events = self.events_dir.display()
        )
    }

    /// Starts agent `name` in host `host` (1-based), joining hosts `join`, and waits
    /// for its control socket.
    pub fn start(&mut self, name: &str, host: usize, join: &[usize]) -> usize {
        let data_dir = self.dir.path().join(name);
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, self.config(self.net.hosts.len())).unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let addr = self.net.addr(host);
        let mut cmd = self.net.exec(host, &self.bin);
        cmd.env_remove("RUST_LOG")
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .args(["--node", name, "--bind", &addr])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--keyring")
            .arg(&self.keyring);
        for j in join {
            cmd.args(["--join", &self.net.addr(*j)]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let child = cmd
            .spawn()
            .expect("start `ip netns exec … droot-fleet agent`");
        self.agents.push(NsAgent {
            name: name.to_owned(),
            bin: self.bin.clone(),
            host,
            addr,
            data_dir,
            log,
            child: Some(child),
        });
        let idx = self.agents.len() - 1;
        let agent = &mut self.agents[idx];
        let sock = agent.sock();
        poll(
            Duration::from_secs(15),
            &format!("{name}'s control socket"),
            || {
                if !agent.running() {
                    panic!("agent {name} exited at startup:\n{}", agent.log_text());
                }
                std::os::unix::net::UnixStream::connect(&sock)
                    .map(drop)
                    .map_err(|e| format!("{}: {e}", sock.display()))
            },
        );
        idx
    }

    pub fn agent(&self, name: &str) -> &NsAgent {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// Lines the handlers appended for (node, event).
    pub fn lines(&self, node: &str, event: &str) -> Vec<String> {
        std::fs::read_to_string(self.events_dir.join(format!("{node}.{event}")))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// How many times `node` ran the user-event handler for `event`.
    pub fn deliveries(&self, node: &str, event: &str) -> usize {
        self.lines(node, event).len()
    }

    /// Every agent's member list, for failure messages.
    pub fn views(&self) -> String {
        self.agents
            .iter()
            .map(|a| match a.members() {
                Ok(m) => format!(
                    "{} sees [{}]",
                    a.name,
                    m.iter()
                        .map(|(n, s)| format!("{n}={s}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Err(e) => e,
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The agents' logs explain most failures; print their tails.
            for a in &self.agents {
                let text = a.log_text();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("----- log of agent {} (last 40 lines) -----", a.name);
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        for a in &mut self.agents {
            a.kill9();
        }
        // DFP_KEEP_LOGS=DIR keeps the agents' logs and handler files for a look.
        if let Some(keep) = std::env::var_os("DFP_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(keep.join("events"));
            for a in &self.agents {
                let _ = std::fs::copy(&a.log, keep.join(format!("{}.log", a.name)));
            }
            for e in std::fs::read_dir(&self.events_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::copy(e.path(), keep.join("events").join(e.file_name()));
            }
            eprintln!("logs kept in {}", keep.display());
        }
        // Then `net` (namespaces) and `dir` drop, in field order.
    }
}
