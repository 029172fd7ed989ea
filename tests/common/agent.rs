//! Real `droot-fleet agent` processes for the integration tests: each on its own
//! 127.x.y.z address (Linux routes all of 127/8 to lo), with a temp data dir, a shared
//! test key and short intervals. Every child is SIGKILLed when its guard drops, so a
//! failing test never leaves agents behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PORT: u16 = 17946;

/// Path of the built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_droot-fleet"))
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One cluster's shared files.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Second octet group, e.g. `77.3` → agents on 127.77.3.N.
    pub net: String,
    pub keyring: PathBuf,
    pub events_dir: PathBuf,
    /// `snapshot_interval` in the agents' config.
    pub snapshot_interval: String,
    /// `push_pull_interval` in the agents' config.
    pub push_pull_interval: String,
    /// The cluster's enrollment key: agents started here are enrolled.
    pub enrollment: Enrollment,
    /// `require_node_identity`: false by default, so that agents a test spawns by hand
    /// may join unenrolled.
    pub require_identity: bool,
    /// `trusted_signing_keys` (the public key), when a test deploys or changes keys.
    pub trusted_signing_key: Option<String>,
}

impl Cluster {
    pub fn new(net: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = dir.path().join("keyring.json");
        write_keyring(&keyring);
        let events_dir = dir.path().join("events");
        std::fs::create_dir_all(&events_dir).unwrap();
        let enrollment = Enrollment::new(dir.path());
        Self {
            dir,
            net: net.into(),
            keyring,
            events_dir,
            snapshot_interval: "1s".into(),
            push_pull_interval: "1s".into(),
            enrollment,
            require_identity: false,
            trusted_signing_key: None,
        }
    }

    pub fn addr(&self, n: u8) -> String {
        format!("127.{}.{n}:{PORT}", self.net)
    }

    /// Config text shared by the cluster's agents; `extra` is appended.
    pub fn config(&self, extra: &str) -> String {
        format!(
            r#"
push_pull_interval = "{push_pull}"
snapshot_interval = "{snapshot}"
retry_interval = "300ms"
expected_cluster_size = 5
log_level = "info"
enrollment_keys = ["{enrollment}"]
require_node_identity = {required}
{trusted}

[[handler]]
event = "user"
command = ["sh", "-c", "echo \"$DROOT_FLEET_LTIME\" >> {events}/$DROOT_FLEET_NODE.$DROOT_FLEET_USER_EVENT"]
timeout = "5s"
{extra}
"#,
            events = self.events_dir.display(),
            snapshot = self.snapshot_interval,
            push_pull = self.push_pull_interval,
            enrollment = self.enrollment.public,
            required = self.require_identity,
            trusted = self
                .trusted_signing_key
                .as_ref()
                .map(|k| format!("trusted_signing_keys = [\"{k}\"]"))
                .unwrap_or_default(),
        )
    }

    /// Starts agent `n` (named `nN`) joining `join` (agent numbers).
    pub fn start(&self, n: u8, join: &[u8], extra: &str) -> Agent {
        self.start_with(n, join, extra, Some(&self.keyring))
    }

    pub fn start_with(&self, n: u8, join: &[u8], extra: &str, keyring: Option<&Path>) -> Agent {
        self.start_args(n, join, extra, keyring, &[])
    }

    /// [`Cluster::start_with`] plus extra command-line arguments.
    pub fn start_args(
        &self,
        n: u8,
        join: &[u8],
        extra: &str,
        keyring: Option<&Path>,
        args: &[&str],
    ) -> Agent {
        let name = format!("n{n}");
        let data_dir = self.dir.path().join(&name);
        let config = self.dir.path().join(format!("{name}.toml"));
        write_private(&config, &self.config(extra));
        let identity = Some(self.enrollment.identity(&name));
        let mut agent = Agent {
            name,
            addr: self.addr(n),
            data_dir,
            config,
            join: join.iter().map(|j| self.addr(*j)).collect(),
            keyring: keyring.map(Path::to_owned),
            identity,
            program: None,
            log: self.dir.path().join(format!("n{n}.log")),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        agent.spawn();
        agent
    }

    /// Lines of the file the user-event handler appends to for (node, event).
    pub fn deliveries(&self, node: &str, event: &str) -> Vec<String> {
        std::fs::read_to_string(self.events_dir.join(format!("{node}.{event}")))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// A fleet's enrollment key (`enroll init`) and the node identities it issues.
pub struct Enrollment {
    pub key: PathBuf,
    /// Its public half, for `enrollment_keys`.
    pub public: String,
    dir: PathBuf,
}

impl Enrollment {
    /// A new enrollment key in `dir`.
    pub fn new(dir: &Path) -> Self {
        let key = dir.join("enrollment.key");
        let out = Command::new(bin())
            .env_remove("RUST_LOG")
            .args(["enroll", "init", "-o"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self {
            key,
            public,
            dir: dir.to_owned(),
        }
    }

    /// The identity file of node `name` (made by `enroll node` the first time).
    pub fn identity(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.identity"));
        if !path.exists() {
            let out = Command::new(bin())
                .env_remove("RUST_LOG")
                .args(["enroll", "node", name, "--enrollment-key"])
                .arg(&self.key)
                .arg("-o")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "enroll node: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        path
    }
}

/// Writes a fresh random keyring file (0600, as the agent requires: `keygen -o`).
pub fn write_keyring(path: &Path) {
    let out = Command::new(bin())
        .arg("keygen")
        .arg("-o")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keygen -o: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a file only its owner can read (a config that may hold `rpc_token`).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A running agent; SIGKILLed on drop.
pub struct Agent {
    pub name: String,
    pub addr: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub join: Vec<String>,
    pub keyring: Option<PathBuf>,
    /// Its node identity file (`--node-identity`), when not in its config.
    pub identity: Option<PathBuf>,
    /// The binary to run, when not this build's (an older release's).
    pub program: Option<PathBuf>,
    pub log: PathBuf,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    pub child: Option<Child>,
}

impl Agent {
    pub fn spawn(&mut self) {
        self.spawn_env(&[]);
    }

    /// [`Agent::spawn`] with `env` added to the agent's environment.
    pub fn spawn_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(self.program.clone().unwrap_or_else(bin));
        cmd.env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .arg("agent")
            .arg("--config")
            .arg(&self.config)
            .args(["--node", &self.name, "--bind", &self.addr])
            .arg("--data-dir")
            .arg(&self.data_dir);
        for j in &self.join {
            cmd.args(["--join", j]);
        }
        if let Some(k) = &self.keyring {
            cmd.arg("--keyring").arg(k);
        }
        if let Some(id) = &self.identity {
            cmd.arg("--node-identity").arg(id);
        }
        cmd.args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // The agent dies with the test process even when that is SIGKILLed and no guard
        // drops. SAFETY: die_with_parent only calls prctl.
        unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, die_with_parent) };
        self.child = Some(cmd.spawn().expect("start agent"));
        let sock = self.sock();
        wait_for(
            Duration::from_secs(20),
            "the agent's control socket",
            || std::os::unix::net::UnixStream::connect(&sock).ok(),
        );
    }

    pub fn sock(&self) -> PathBuf {
        self.data_dir.join("agent.sock")
    }

    pub fn rpc(&self) -> String {
        format!("unix:{}", self.sock().display())
    }

    /// Runs a CLI command against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .env_remove("RUST_LOG")
            .env("DROOT_FLEET_RPC", self.rpc())
            .args(args)
            .output()
            .expect("run cli")
    }

    /// `members --format json` as (name → status).
    pub fn members(&self) -> Vec<(String, String)> {
        let out = self.cli(&["members", "--format", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap_or("").to_owned(),
                            m["status"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn status_of(&self, node: &str) -> Option<String> {
        self.members()
            .into_iter()
            .find(|(n, _)| n == node)
            .map(|(_, s)| s)
    }

    pub fn alive_count(&self) -> usize {
        self.members().iter().filter(|(_, s)| s == "alive").count()
    }

    /// `GET /v1/info` counters through the CLI-less client.
    pub fn info(&self) -> Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = droot_fleet::api::client::Client::new(
            droot_fleet::agent::config::RpcAddr::Unix(self.sock()),
            None,
        );
        serde_json::to_value(rt.block_on(client.info()).expect("info")).unwrap()
    }

    /// Waits until this agent merged `rounds` more push/pull states than now: the
    /// signal that anti-entropy ran (instead of a sleep that passes if none did).
    pub fn wait_push_pulls(&self, rounds: u64) {
        let count = || {
            self.info()["counters"]["push_pulls_merged"]
                .as_u64()
                .unwrap_or(0)
        };
        let target = count() + rounds;
        wait_for(
            Duration::from_secs(30),
            &format!("{} to merge {rounds} more push/pull states", self.name),
            || (count() >= target).then_some(()),
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for(timeout, "the agent to exit", || child.try_wait().unwrap());
        self.child = None;
        status
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A SIGSTOPped agent must be continued to die promptly on SIGKILL — it does,
            // but continue it anyway so `wait` never hangs.
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
        self.kill9();
    }
}

/// For `pre_exec`: the child gets SIGKILL when the thread that spawned it ends.
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; async-signal-safe.
    match unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
