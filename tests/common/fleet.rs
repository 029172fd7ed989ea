//! A fleet for the deploy end-to-end tests: real agents on 127.<net>.N, each with an app
//! `web` whose busybox `httpd` jail listens on the node's own address (so each node's answer
//! can be checked), a deploy signing key, and the artifacts either by file:// from one
//! directory or in a private Garage (s3://, credentials in the agents' environment).
//!
//! Why its own agent config: the deploy keys (`trusted_signing_keys`, `[tags]`, `[apps.web]`)
//! are top-level and must come before any table, which the shared
//! [`Cluster`](super::agent_support) config cannot hold. The [`Agent`] type (CLI, members,
//! logs, SIGKILL on drop) is reused as it is.
//!
//! Include with `mod common;`, `#[path = "common/agent.rs"] mod agent_support;` and
//! `#[path = "common/fleet.rs"] mod fleet;`.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::agent_support::{Agent, Enrollment, PORT, bin, wait_for, write_keyring};
use crate::common::garage::Garage;
pub use crate::common::{alive, http_get, pids_matching};

/// Port of every node's app (each node has its own loopback address).
pub const APP_PORT: u16 = 18080;
/// Long enough for a deploy on a loaded 2-core machine.
pub const LONG: Duration = Duration::from_secs(60);

/// How a release behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Serves `/health` and `/version` right away.
    Healthy,
    /// Sleeps `delay_ms` before serving: its health check passes only after that.
    Slow(u64),
    /// Serves `/version` only: the health check gets 404 until its deadline.
    NoHealth,
}

/// What `[apps.web]` runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WebApp {
    /// busybox httpd started by `/start.sh`, checked over http ([`Fleet::publish`]).
    Httpd,
    /// The socket-activated test app ([`Fleet::publish_sockapp`]), ready by `READY=1`: on
    /// the agent's socket with `listen` (deploys overlap), or binding its port itself:
    /// with `SO_REUSEPORT` and `overlap = true` when `reuseport`, else stop-then-start.
    SockApp { listen: bool, reuseport: bool },
}

/// How a node's agent is set up.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Trust the fleet's signing key (else no `trusted_signing_keys` at all).
    pub trusted: bool,
    /// Extra agent flags (e.g. `--dev`).
    pub args: Vec<String>,
    /// Extra lines in the `[deploy]` table (e.g. `max_age = "1000h"`).
    pub deploy: String,
    /// `[tags]`.
    pub tags: Vec<(String, String)>,
    /// No `[apps.web]` at all.
    pub no_app: bool,
    /// `apps.web.leave_running`.
    pub leave_running: bool,
    /// Top-level agent settings (before any table), e.g. `metrics_addr = "IP:PORT"\n`.
    pub top: String,
    /// Another agent binary (an older release), whose config then leaves out node
    /// identities and file roots.
    pub program: Option<PathBuf>,
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            trusted: true,
            args: Vec::new(),
            deploy: String::new(),
            tags: Vec::new(),
            no_app: false,
            leave_running: false,
            program: None,
            top: String::new(),
        }
    }
}

/// One test's fleet: its files, the store, the signing key and the agents (n1 is
/// `agents[0]`). On drop the agents get SIGTERM, then every process left on the fleet's
/// trees or app addresses is SIGKILLed: no jail of a test outlives it.
pub struct Fleet {
    /// One fleet at a time per test binary: each runs 5+ agents with jails, too much to
    /// overlap on the 2-core machines the suite runs on.
    _serial: std::sync::MutexGuard<'static, ()>,
    pub dir: crate::common::TempDir,
    /// Canonical path of `dir`.
    pub base: PathBuf,
    /// e.g. `78.3` → agents on 127.78.3.N.
    pub net: String,
    pub keyring: PathBuf,
    /// The store (s3://) when there is one, else artifacts by file:// from `arts`.
    pub garage: Option<Garage>,
    /// `arts/VERSION.tar.gz`.
    pub arts: PathBuf,
    /// The operator's signing key file and its public half.
    pub key: PathBuf,
    pub public: String,
    /// `apps.web.health.deadline`.
    pub health_deadline: String,
    pub web_app: WebApp,
    /// TOML appended after `[apps.web]` (e.g. its `[apps.web.hooks.*]` tables).
    pub web_tables: String,
    /// Every node is enrolled, and node identities are required.
    pub enrollment: Enrollment,
    pub specs: Vec<NodeSpec>,
    pub agents: Vec<Agent>,
}

impl Fleet {
    /// A fleet without agents whose artifacts are served by file://.
    pub fn new(net: &str) -> Fleet {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        crate::common::require_root("the fleet deploy tests (jails)");
        crate::common::busybox();
        let dir = crate::common::tempdir();
        let base = dir.path().canonicalize().unwrap();
        let keyring = base.join("keyring.json");
        write_keyring(&keyring);
        let arts = base.join("arts");
        std::fs::create_dir_all(&arts).unwrap();
        let key = base.join("deploy.key");
        let out = Command::new(bin())
            .env_remove("RUST_LOG")
            .args(["keygen", "--signing", "-o"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "keygen --signing: {}", text(&out));
        let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!public.is_empty(), "keygen --signing printed no public key");
        let enrollment = Enrollment::new(&base);
        Fleet {
            _serial: serial,
            dir,
            base,
            net: net.into(),
            keyring,
            garage: None,
            arts,
            key,
            public,
            health_deadline: "4s".into(),
            web_app: WebApp::Httpd,
            web_tables: String::new(),
            enrollment,
            specs: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// A fleet without agents whose artifacts are in a private Garage.
    pub fn with_garage(net: &str) -> Fleet {
        let mut f = Fleet::new(net);
        f.garage = Some(Garage::start());
        f.health_deadline = "20s".into();
        f
    }

    /// [`Fleet::new`] with a private Garage as the store (s3://), then
    /// [`Fleet::start_nodes`]. The health deadline stays short: broken releases roll back
    /// within seconds.
    pub fn start(net: &str, specs: Vec<NodeSpec>) -> Fleet {
        let mut f = Fleet::new(net);
        f.garage = Some(Garage::start());
        f.start_nodes(specs);
        f
    }

    /// Starts one agent per spec (n1..), all joining n1, and waits until every agent sees
    /// every member alive and has merged two push/pulls since (so every node knows which
    /// nodes run `web`).
    pub fn start_nodes(&mut self, specs: Vec<NodeSpec>) {
        for spec in specs {
            let n = self.agents.len() as u8 + 1;
            let join: &[u8] = if n == 1 { &[] } else { &[1] };
            self.add(n, join, spec);
        }
        wait_all_alive(&self.agents, self.agents.len());
        for a in &self.agents {
            a.wait_push_pulls(2);
        }
    }

    /// [`Fleet::start_nodes`] with `count` default nodes.
    pub fn start_all(&mut self, count: u8) {
        self.start_nodes(vec![NodeSpec::default(); usize::from(count)]);
    }

    /// Starts node `n` (the next one, named `nN`) joining the agents `join`.
    pub fn add(&mut self, n: u8, join: &[u8], spec: NodeSpec) {
        assert_eq!(
            usize::from(n),
            self.agents.len() + 1,
            "nodes are added in order"
        );
        self.specs.push(spec);
        let name = format!("n{n}");
        let config = self.base.join(format!("{name}.toml"));
        std::fs::write(&config, self.config(n)).unwrap();
        let mut a = Agent {
            data_dir: self.base.join(&name),
            addr: self.addr(n),
            config,
            join: join.iter().map(|j| self.addr(*j)).collect(),
            keyring: Some(self.keyring.clone()),
            identity: None,
            program: self.specs[usize::from(n) - 1].program.clone(),
            log: self.base.join(format!("{name}.log")),
            args: self.specs[usize::from(n) - 1].args.clone(),
            child: None,
            name,
        };
        self.spawn(&mut a);
        self.agents.push(a);
    }

    /// (Re)spawns `a`'s process with the store's credentials in its environment.
    fn spawn(&self, a: &mut Agent) {
        spawn(self.garage.as_ref(), a);
    }

    /// Starts node `n`'s agent again (after it was killed or stopped).
    pub fn respawn(&mut self, n: u8) {
        spawn(self.garage.as_ref(), &mut self.agents[usize::from(n) - 1]);
    }

    /// Hands `event` to a new agent `n` that never saw anything (started alone, with
    /// `spec`), so its entry check passes, then bridges it into the fleet: node `bridge`
    /// restarts joining it and node 1. Its push/pulls carry `n`'s event log to everyone,
    /// as an attacker's gossip would.
    pub fn inject_through_fresh(&mut self, n: u8, spec: NodeSpec, bridge: u8, event: &[u8]) {
        self.add(n, &[], spec);
        self.post(n, event)
            .expect("an agent that never saw the event gossips it");
        let (fresh, first) = (self.addr(n), self.addr(1));
        let b = &mut self.agents[usize::from(bridge) - 1];
        b.kill9();
        b.join = vec![fresh, first];
        self.respawn(bridge);
    }

    pub fn agent(&self, n: u8) -> &Agent {
        &self.agents[usize::from(n) - 1]
    }

    pub fn ip(&self, n: u8) -> String {
        format!("127.{}.{n}", self.net)
    }

    /// Node `n`'s gossip address.
    pub fn addr(&self, n: u8) -> String {
        format!("{}:{PORT}", self.ip(n))
    }

    /// `127.<net>.N:18080`.
    pub fn http_addr(&self, n: u8) -> String {
        format!("{}:{APP_PORT}", self.ip(n))
    }

    /// The app root of node `n`.
    pub fn root(&self, n: u8) -> PathBuf {
        self.base.join(format!("n{n}-web"))
    }

    /// Node `n`'s agent config: `[tags]`, the `[deploy]` store, and `web` on its address.
    pub fn config(&self, n: u8) -> String {
        let spec = &self.specs[usize::from(n) - 1];
        let mut text = String::from(
            "push_pull_interval = \"1s\"\nsnapshot_interval = \"1s\"\n\
             retry_interval = \"300ms\"\nexpected_cluster_size = 5\nlog_level = \"info\"\n",
        );
        if spec.program.is_none() {
            text.push_str(&format!(
                "enrollment_keys = [\"{}\"]\nnode_identity = \"{}\"\n",
                self.enrollment.public,
                self.enrollment.identity(&format!("n{n}")).display()
            ));
        }
        if spec.trusted {
            text.push_str(&format!("trusted_signing_keys = [\"{}\"]\n", self.public));
        }
        text.push_str(&spec.top);
        text.push_str("[tags]\n");
        for (k, v) in &spec.tags {
            text.push_str(&format!("{k} = \"{v}\"\n"));
        }
        text.push_str("[deploy]\n");
        let artifact = match &self.garage {
            Some(g) => {
                text.push_str(&format!(
                    "s3_endpoint = \"{}\"\ns3_region = \"garage\"\n",
                    g.endpoint
                ));
                format!("s3://{}/{{app}}/{{version}}.tar.gz", g.bucket)
            }
            None => format!("file://{}/{{version}}.tar.gz", self.arts.display()),
        };
        // file:// through an agent reads only beneath its file roots (which the previous
        // release does not know).
        if spec.program.is_none() {
            text.push_str(&format!("file_roots = [\"{}\"]\n", self.arts.display()));
        }
        text.push_str(&spec.deploy);
        if let (false, WebApp::SockApp { listen, reuseport }) = (spec.no_app, self.web_app) {
            let addr = self.http_addr(n);
            let socket = match (listen, reuseport) {
                (true, _) => format!("listen = [\"tcp:{addr}\"]"),
                (false, true) => {
                    format!("overlap = true\nenv = {{ BIND = \"{addr}\", REUSEPORT = \"1\" }}")
                }
                (false, false) => format!("env = {{ BIND = \"{addr}\" }}"),
            };
            text.push_str(&format!(
                "[apps.web]\nartifact = \"{artifact}\"\nroot = \"{root}\"\n\
                 command = [\"/sockapp\"]\n{socket}\nstop_timeout = \"5s\"\n\
                 leave_running = {leave}\nbackoff = {{ initial = \"300ms\", max = \"2s\" }}\n\
                 [apps.web.health]\nnotify = true\ndeadline = \"{deadline}\"\n",
                root = self.root(n).display(),
                leave = spec.leave_running,
                deadline = self.health_deadline,
            ));
            text.push_str(&self.web_tables);
        } else if !spec.no_app {
            let addr = self.http_addr(n);
            text.push_str(&format!(
                "[apps.web]\nartifact = \"{artifact}\"\nroot = \"{root}\"\n\
                 command = [\"sh\", \"/start.sh\"]\nenv = {{ ADDR = \"{addr}\" }}\n\
                 stop_timeout = \"5s\"\nleave_running = {leave}\n\
                 backoff = {{ initial = \"300ms\", max = \"2s\" }}\n\
                 [apps.web.health]\nhttp = \"http://{addr}/health\"\ndeadline = \"{deadline}\"\n\
                 interval = \"100ms\"\n",
                root = self.root(n).display(),
                leave = spec.leave_running,
                deadline = self.health_deadline,
            ));
        }
        text
    }

    /// Builds `arts/VERSION.tar.gz` (a busybox rootfs whose `/start.sh` runs httpd on
    /// `$ADDR`, serving `/www/version` and, unless `NoHealth`, `/www/health`), uploads it as
    /// `web/VERSION.tar.gz` when the fleet has a Garage, and returns its bytes.
    pub fn publish(&self, version: &str, kind: Kind) -> Vec<u8> {
        let delay = match kind {
            Kind::Slow(ms) => format!("sleep {}.{:03}\n", ms / 1000, ms % 1000),
            _ => String::new(),
        };
        let bytes = crate::common::httpd_artifact(
            &self.base.join(format!("src-{version}")),
            &self.arts.join(format!("{version}.tar.gz")),
            version,
            kind != Kind::NoHealth,
            &format!("{delay}exec httpd -f -p \"$ADDR\" -h /www\n"),
        );
        if let Some(g) = &self.garage {
            g.put(&format!("web/{version}.tar.gz"), bytes.clone());
        }
        bytes
    }

    /// Builds and uploads `VERSION.tar.gz` of the socket-activated test app.
    pub fn publish_sockapp(&self, version: &str, behaviour: crate::common::sockapp::Behaviour) {
        self.publish_sockapp_with(version, behaviour, &[]);
    }

    /// [`Fleet::publish_sockapp`] with `extra` files (name, content) in the release.
    pub fn publish_sockapp_with(
        &self,
        version: &str,
        behaviour: crate::common::sockapp::Behaviour,
        extra: &[(&str, &str)],
    ) {
        let src = self.base.join(format!("src-{version}"));
        crate::common::sockapp::release_with(&src, version, behaviour, extra);
        let out = self.arts.join(format!("{version}.tar.gz"));
        let st = Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-czf")
            .arg(&out)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(st.success(), "tar failed");
        std::fs::remove_dir_all(&src).unwrap();
        if let Some(g) = &self.garage {
            g.put(
                &format!("web/{version}.tar.gz"),
                std::fs::read(&out).unwrap(),
            );
        }
    }

    /// Removes `VERSION.tar.gz` from the store (and checks it is gone).
    pub fn unpublish(&self, version: &str) {
        match &self.garage {
            Some(g) => g.delete(&format!("web/{version}.tar.gz")),
            None => std::fs::remove_file(self.arts.join(format!("{version}.tar.gz"))).unwrap(),
        }
    }

    /// Runs the CLI against node `via` with the signing key in the environment.
    /// With a Garage, the CLI gets its credentials and endpoint (for `publish` and the
    /// digest `event deploy` reads).
    pub fn cli(&self, via: u8, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        if let Some(g) = &self.garage {
            cmd.envs(g.env());
        }
        cmd.env_remove("RUST_LOG")
            .env("DROOT_FLEET_RPC", self.agent(via).rpc())
            .env("DROOT_FLEET_SIGNING_KEY", &self.key)
            .args(args)
            .output()
            .expect("run cli")
    }

    /// `event deploy web VERSION EXTRA... --wait` through node `via`: (exit code, report).
    /// Unpinned unless EXTRA gives `--sha256`: the nodes' templates name the artifact.
    pub fn deploy_via(&self, via: u8, version: &str, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["event", "deploy", "web", version];
        args.extend_from_slice(extra);
        if !extra.contains(&"--sha256") {
            args.push("--unpinned");
        }
        self.cli_wait(via, &args)
    }

    /// [`Fleet::deploy_via`] n1.
    pub fn deploy(&self, version: &str, extra: &[&str]) -> (i32, Value) {
        self.deploy_via(1, version, extra)
    }

    /// `rollback web EXTRA... --wait` through n1.
    pub fn rollback(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["rollback", "web"];
        args.extend_from_slice(extra);
        self.cli_wait(1, &args)
    }

    /// Runs a signed CLI command (`event deploy` / `rollback`) through node `via` with
    /// `--wait --format json --signing-key KEY`: (exit code, the JSON report).
    pub fn cli_wait(&self, via: u8, args: &[&str]) -> (i32, Value) {
        let (code, report, _) = self.cli_wait_stderr(via, args);
        (code, report)
    }

    /// [`Fleet::cli_wait`], with what the command printed on stderr.
    pub fn cli_wait_stderr(&self, via: u8, args: &[&str]) -> (i32, Value, String) {
        let key = self.key.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--wait", "--timeout", "120s", "--format", "json"]);
        all.extend(["--signing-key", &key]);
        let out = self.cli(via, &all);
        // First a line naming the event (printed at once), then the report.
        let docs: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{all:?}: no JSON report ({e}):\n{}", text(&out)));
        let [sent, report] = &docs[..] else {
            panic!("{all:?}: not an event line and a report:\n{}", text(&out));
        };
        assert_eq!(sent["event_id"], report["event_id"], "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), report.clone(), stderr)
    }

    /// `query status web --format json` through node `via`, as printed.
    pub fn status_json(&self, via: u8) -> Value {
        let out = self.cli(via, &["query", "status", "web", "--format", "json"]);
        assert!(out.status.success(), "query status: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("query status JSON ({e}): {}", text(&out)))
    }

    /// `query status web --format json` through node `via`: node → its `apps.web` (`Null`
    /// when the node has no such app). Asked again until every agent this fleet runs
    /// answered (on a loaded machine one may be briefly suspect, so not asked).
    pub fn status(&self, via: u8) -> BTreeMap<String, Value> {
        let running: Vec<&str> = self
            .agents
            .iter()
            .filter(|a| a.child.is_some())
            .map(|a| a.name.as_str())
            .collect();
        wait_for(LONG, &format!("status answers from {running:?}"), || {
            let v = self.status_json(via);
            let mut m = BTreeMap::new();
            for r in v["responses"].as_array().expect("responses") {
                let node = r["node"].as_str().expect("node").to_owned();
                m.insert(node, r["apps"]["web"].clone());
            }
            running.iter().all(|n| m.contains_key(*n)).then_some(m)
        })
    }

    /// Deploys `version` to every node at once and asserts it went ok everywhere.
    pub fn deploy_all_ok(&self, version: &str) -> Value {
        let (code, v) = self.deploy(version, &[]);
        assert_eq!(
            code,
            0,
            "deploy {version}: {v}\nn1's app log:\n{}",
            self.app_log(1)
        );
        let want: Vec<String> = self.app_nodes();
        assert_eq!(names(&v["ok"]), want, "deploy {version}: {v}");
        for n in &want {
            self.wait_serving(num(n), version);
        }
        v
    }

    /// Names of the nodes that have `[apps.web]`, sorted.
    pub fn app_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .specs
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.no_app)
            .map(|(i, _)| format!("n{}", i + 1))
            .collect();
        v.sort();
        v
    }

    /// `GET /v1/deploy/progress?event=ID` at node `via`.
    pub fn progress(&self, via: u8, event_id: &str) -> Value {
        self.try_progress(via, event_id)
            .expect("the agent knows the event")
    }

    /// [`Fleet::progress`], `None` while node `via` has not seen the event.
    pub fn try_progress(&self, via: u8, event_id: &str) -> Option<Value> {
        let client = droot_fleet::api::client::Client::new(
            droot_fleet::agent::config::RpcAddr::Unix(self.agent(via).sock()),
            None,
        );
        let p = rt()
            .block_on(client.deploy_progress(event_id))
            .expect("progress")?;
        Some(serde_json::to_value(p).unwrap())
    }

    /// `POST /v1/deploy` of raw bytes through node `via`'s control socket.
    pub fn post(&self, via: u8, bytes: &[u8]) -> Result<(), String> {
        let client = droot_fleet::api::client::Client::new(
            droot_fleet::agent::config::RpcAddr::Unix(self.agent(via).sock()),
            None,
        );
        rt().block_on(client.deploy(bytes))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Waits until `status` through `via` satisfies `f` for node `node`'s `web` view.
    pub fn wait_status(
        &self,
        via: u8,
        node: &str,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(LONG, &format!("{node}: {what}"), || {
            self.status(via).remove(node).filter(|v| f(v))
        })
    }

    /// The release `current` of node `n` points at (read on disk).
    pub fn current_on_disk(&self, n: u8) -> Option<String> {
        let target = std::fs::read_link(self.root(n).join("current")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// The release node `n`'s `web` jail runs, as its supervisor's pid file records it.
    pub fn running_on_disk(&self, n: u8) -> Option<String> {
        let pid_file = self.agent(n).data_dir.join("apps/web.pid");
        let record: Value = serde_json::from_slice(&std::fs::read(pid_file).ok()?).ok()?;
        Some(record["release"].as_str()?.to_owned())
    }

    /// The jail output of node `n`'s `web` (for failure messages).
    pub fn app_log(&self, n: u8) -> String {
        std::fs::read_to_string(self.agent(n).data_dir.join("apps/web.log")).unwrap_or_default()
    }

    /// A GET of node `n`'s app: the body when the answer is 200.
    pub fn get(&self, n: u8, path: &str) -> Option<String> {
        http_get(&self.http_addr(n), path)
    }

    /// Waits until node `n` serves `version` on `/version`.
    pub fn wait_serving(&self, n: u8, version: &str) {
        wait_for(LONG, &format!("n{n} to serve {version}"), || {
            (self.get(n, "/version").as_deref() == Some(version)).then_some(())
        });
    }

    /// Log lines of node `n`'s agent with `message` for event `event_id`, as
    /// (timestamp, line). Timestamps are the fmt layer's RFC 3339 UTC ones, which sort as text.
    pub fn log_lines(&self, n: u8, message: &str, event_id: &str) -> Vec<(String, String)> {
        self.agent(n)
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!(": {message} ")) && l.contains(event_id))
            .map(|l| {
                (
                    l.split_whitespace().next().unwrap_or("").to_owned(),
                    l.to_owned(),
                )
            })
            .collect()
    }

    /// The single timestamp of `message` for `event_id` on node `n`.
    pub fn log_time(&self, n: u8, message: &str, event_id: &str) -> String {
        let lines = self.log_lines(n, message, event_id);
        assert_eq!(
            lines.len(),
            1,
            "n{n}: want one {message:?} line for {event_id}, got {lines:?}"
        );
        lines[0].0.clone()
    }
}

impl Drop for Fleet {
    /// Jails outlive a SIGKILLed agent (that is what adoption is for), so the agents get
    /// SIGTERM first (they stop their jails), then every process left that runs on this
    /// fleet's trees or app addresses is SIGKILLed.
    fn drop(&mut self) {
        for a in &self.agents {
            if a.child.is_some() {
                a.signal(nix::sys::signal::Signal::SIGCONT);
                a.signal(nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        for a in &mut self.agents {
            if let Some(c) = a.child.as_mut() {
                while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            a.kill9();
        }
        let base = self.base.display().to_string();
        let addrs: Vec<String> = (1..=self.agents.len() as u8)
            .map(|n| self.http_addr(n))
            .collect();
        for pid in pids_matching(|args| {
            args.iter()
                .any(|a| a.contains(&base) || addrs.iter().any(|x| a == x))
        }) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Spawns `a` with `garage`'s credentials (if any) in its environment.
fn spawn(garage: Option<&Garage>, a: &mut Agent) {
    let creds = garage.map(Garage::credentials).unwrap_or_default();
    let env: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
    a.spawn_env(&env);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The number (N of nN) of a node name.
pub fn num(node: &str) -> u8 {
    node.trim_start_matches('n').parse().expect("node name nN")
}

/// Waits until every agent sees `count` members alive.
pub fn wait_all_alive(agents: &[Agent], count: usize) {
    for a in agents {
        wait_for(LONG, &format!("{} to see {count} alive", a.name), || {
            (a.alive_count() == count).then_some(())
        });
    }
}

/// Live listening `httpd` processes whose command line names `addr`. busybox httpd forks a
/// child per connection with the same command line; those children (whose parent is one of
/// the matches) are left out, so a poller's requests never look like a second server.
pub fn httpd_pids(addr: &str) -> Vec<u32> {
    let all = pids_matching(|args| {
        args.first().is_some_and(|a| a == "httpd") && args.iter().any(|a| a == addr)
    });
    all.iter()
        .copied()
        .filter(|pid| parent_pid(*pid).is_none_or(|ppid| !all.contains(&ppid)))
        .collect()
}

/// The `droot-fleet run` processes (jails) whose root is under `app_root`: supervised or
/// not, so an orphan shows. A jail's init is a fork of `run` (same command line): left out.
pub fn run_pids(app_root: &Path) -> Vec<u32> {
    let root = app_root.to_string_lossy().into_owned();
    let all = pids_matching(|args| {
        args.get(1).is_some_and(|a| a == "run") && args.get(3).is_some_and(|r| r.starts_with(&root))
    });
    let mut pids: Vec<u32> = all
        .iter()
        .copied()
        .filter(|pid| parent_pid(*pid).is_none_or(|ppid| !all.contains(&ppid)))
        .collect();
    pids.sort();
    pids
}

/// The parent pid of `pid` (field 4 of `/proc/PID/stat`), if it is still there.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A JSON array of strings, as a sorted vector.
pub fn names(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a name").to_owned())
        .collect();
    out.sort();
    out
}

/// The 16 bytes of a hex event id.
pub fn event_id_bytes(hex: &str) -> [u8; 16] {
    assert_eq!(hex.len(), 32, "event id {hex:?}");
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex event id");
    }
    out
}

pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Entries of `dir`, sorted (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Release directories of an app root, sorted.
pub fn releases(root: &Path) -> Vec<String> {
    entries(&root.join("releases"))
}

/// Entries left in the app's staging dir.
pub fn staging_left(root: &Path) -> Vec<String> {
    entries(&root.join(".droot-fleet/staging"))
}

/// What `current` points at (`releases/V`), or None.
pub fn current(root: &Path) -> Option<String> {
    std::fs::read_link(root.join("current"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Log lines of `a` that contain every one of `needles`.
pub fn agent_log_lines(a: &Agent, needles: &[&str]) -> usize {
    a.log_text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Milliseconds since midnight of a log line's RFC 3339 UTC timestamp (the fmt layer's
/// `2026-12-04T22:18:59.479639Z`; comparisons within one day are enough in the tests).
pub fn log_ms(line: &str) -> f64 {
    let ts = line.split_whitespace().next().unwrap_or_default();
    let hms = ts
        .get(11..ts.len().saturating_sub(1))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let mut it = hms
        .split(':')
        .map(|p| p.parse::<f64>().expect("a timestamp field"));
    let (h, m, s) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    ((h * 60.0 + m) * 60.0 + s) * 1000.0
}
