//! A fleet of `Dockerfile.test` containers (the static binary and busybox, FROM scratch) on
//! an `--internal` Docker network of its own, with Garage in a FROM-scratch container on it
//! as the store, and a prober container that GETs every node's app in a loop.
//!
//! Each node is a container with its own network stack, filesystem and address on the
//! test's subnet: its agent binds and advertises that address, its app `demo` (the
//! socket-activated test app) listens on it through the agent's socket, and its data dir and
//! app root are volumes, so a `docker kill` and `docker start` keep them as a reboot keeps
//! a disk. The agent is not the container's PID 1 (`--init` runs `sleep`): it is started
//! with `docker exec`, as systemd would, so it can be stopped and upgraded while the jail
//! it leaves running stays. The containers get only what chroot and namespaces need.
//!
//! Include with `mod common;`, `#[path = "common/agent.rs"] mod agent_support;` and
//! `#[path = "common/cfleet.rs"] mod cfleet;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::agent_support::{Enrollment, bin, wait_for, write_keyring};
pub use crate::common::docker::ok as docker_ok;
use crate::common::docker::{self, Cleanup, LABEL, exec, ok};

pub const HOST_IMAGE: &str = "droot-fleet-test-host:fleet-containers";
const GARAGE_IMAGE: &str = "droot-fleet-test-garage:fleet-containers";
pub const NETWORK: &str = "droot-fleet-test-net";
/// Candidate /24s for the test network, tried in order.
const SUBNETS: &[&str] = &["10.231.77", "172.30.231", "192.168.231"];
pub const GOSSIP_PORT: u16 = 7946;
pub const APP_PORT: u16 = 8080;
pub const METRICS_PORT: u16 = 9946;
const S3_PORT: u16 = 3900;
const BUCKET: &str = "artifacts";
pub const APP: &str = "demo";
/// What chroot, mounts and namespaces need (`--privileged` is refused on these machines).
const PRIVILEGES: &[&str] = &[
    "--cap-add=SYS_ADMIN",
    "--cap-add=SYS_CHROOT",
    "--cap-add=MKNOD",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
];
/// Long enough for a deploy on a loaded 2-core machine.
pub const LONG: Duration = Duration::from_secs(90);
/// Where a node's container keeps its agent's pid (the shell's, which `exec`s the agent).
const AGENT_PID: &str = "/run/droot-fleet-agent.pid";

/// The fleet's shared files and the store's credentials. Everything it made in Docker is
/// removed when it drops (and by the reaper if the test process dies).
pub struct Cfleet {
    /// Host-side files: keys, configs, release trees.
    pub dir: tempfile::TempDir,
    /// `A.B.C` of the network's /24.
    pub subnet: String,
    pub nodes: u8,
    enrollment: Enrollment,
    signing_public: String,
    key_id: String,
    secret: String,
    _cleanup: Cleanup,
}

impl Cfleet {
    /// Builds the images, the network, Garage, the prober and `nodes` agents, and waits
    /// until every agent sees every other alive.
    pub fn start(nodes: u8) -> Cfleet {
        let cleanup = Cleanup::start();
        docker::build_host_image(HOST_IMAGE);
        let garage = crate::common::garage::garage_bin();
        docker::build_scratch_image(GARAGE_IMAGE, &garage, &["/var/lib/garage"]);
        let subnet = docker::internal_network(NETWORK, SUBNETS);
        let dir = tempfile::tempdir().unwrap();
        write_keyring(&dir.path().join("keyring.json"));
        let signing_public = signing_key(&dir.path().join("deploy.key"));
        let enrollment = Enrollment::new(dir.path());
        let mut f = Cfleet {
            dir,
            subnet,
            nodes,
            enrollment,
            signing_public,
            key_id: String::new(),
            secret: String::new(),
            _cleanup: cleanup,
        };
        f.start_garage();
        f.start_prober();
        for n in 1..=nodes {
            f.create_node(n);
            f.start_agent(n, "/usr/bin/droot-fleet");
        }
        for n in 1..=nodes {
            f.wait_members(n, "every member alive", |m| {
                (1..=nodes).all(|i| m.get(&name(i)).map(String::as_str) == Some("alive"))
            });
        }
        f
    }

    pub fn ip(&self, n: u8) -> String {
        format!("{}.{}", self.subnet, 10 + u16::from(n))
    }

    fn garage_ip(&self) -> String {
        format!("{}.2", self.subnet)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{S3_PORT}", self.garage_ip())
    }

    /// The store's credentials and region, as the AWS chain reads them.
    fn aws_env(&self) -> Vec<String> {
        vec![
            format!("AWS_ACCESS_KEY_ID={}", self.key_id),
            format!("AWS_SECRET_ACCESS_KEY={}", self.secret),
            "AWS_REGION=garage".into(),
            "AWS_EC2_METADATA_DISABLED=true".into(),
        ]
    }

    /// Garage in its FROM-scratch image, its data in a volume; one bucket and one key.
    fn start_garage(&mut self) {
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let config = self.dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"/var/lib/garage/meta\"\ndata_dir = \"/var/lib/garage/data\"\n\
                 db_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:3901\"\nrpc_public_addr = \"127.0.0.1:3901\"\n\
                 rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"garage\"\n\
                 api_bind_addr = \"{ip}:{S3_PORT}\"\n",
                ip = self.garage_ip()
            ),
        )
        .unwrap();
        docker::volume("droot-fleet-test-garage");
        let ip = self.garage_ip();
        create(
            "dft-garage",
            &ip,
            &[
                "-e",
                "RUST_LOG=warn",
                "-v",
                "droot-fleet-test-garage:/var/lib/garage",
                GARAGE_IMAGE,
                "-c",
                "/etc/garage.toml",
                "server",
            ],
        );
        ok(&[
            "cp",
            config.to_str().unwrap(),
            "dft-garage:/etc/garage.toml",
        ]);
        ok(&["start", "dft-garage"]);
        let garage = |args: &[&str]| {
            let mut all = vec!["/garage", "-c", "/etc/garage.toml"];
            all.extend_from_slice(args);
            exec("dft-garage", &[], &all)
        };
        wait_for(LONG, "garage answers `status`", || {
            garage(&["status"]).status.success().then_some(())
        });
        let id = stdout(&garage(&["node", "id", "-q"]));
        let id = id.split('@').next().unwrap().to_owned();
        let run = |args: &[&str]| {
            let out = garage(args);
            assert!(out.status.success(), "garage {args:?}: {}", text(&out));
            text(&out)
        };
        run(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        run(&["layout", "apply", "--version", "1"]);
        run(&["bucket", "create", BUCKET]);
        let key = run(&["key", "create", "fleet"]);
        self.key_id = field(&key, "Key ID:");
        self.secret = field(&key, "Secret key:");
        run(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "fleet",
        ]);
    }

    /// The prober (`tests/support/probe.c`): GETs `/` of every address in
    /// `/probe/targets`, round after round, and keeps `ROUND OK FAILED` in `/probe/counts`
    /// and each failure in `/probe/fails`.
    fn start_prober(&self) {
        let probe = crate::common::jail::build_static_c(
            self.dir.path(),
            "probe",
            include_str!("../support/probe.c"),
        );
        let ip = format!("{}.3", self.subnet);
        create(
            "dft-probe",
            &ip,
            &[
                "--init",
                "--entrypoint",
                "/bin/sh",
                HOST_IMAGE,
                "-c",
                "mkdir -p /probe && exec /usr/bin/probe loop /probe",
            ],
        );
        ok(&["cp", probe.to_str().unwrap(), "dft-probe:/usr/bin/probe"]);
        ok(&["start", "dft-probe"]);
    }

    /// Node `n`'s agent config: gossip, identity, the trusted key, metrics, the store and
    /// `demo` on its own address: ready by `READY=1`, then a smoke test (an `after_start`
    /// hook in the new release's jail) GETs the app through the node's address before the
    /// old instance stops.
    pub fn config(&self, n: u8, trusted: &str) -> String {
        let ip = self.ip(n);
        format!(
            "push_pull_interval = \"1s\"\nsnapshot_interval = \"1s\"\nretry_interval = \"300ms\"\n\
             expected_cluster_size = 5\nlog_level = \"info\"\n\
             enrollment_keys = [\"{enroll}\"]\nnode_identity = \"/etc/droot-fleet/node.identity\"\n\
             trusted_signing_keys = [\"{trusted}\"]\nmetrics_addr = \"{ip}:{METRICS_PORT}\"\n\
             [tags]\nrole = \"web\"\n\
             [deploy]\ns3_endpoint = \"{endpoint}\"\ns3_region = \"garage\"\n\
             [apps.{APP}]\nartifact = \"s3://{BUCKET}/{{app}}/{{version}}.tar.gz\"\n\
             root = \"/srv/{APP}\"\ncommand = [\"/sockapp\"]\nlisten = [\"tcp:{ip}:{APP_PORT}\"]\n\
             stop_timeout = \"5s\"\nleave_running = true\n\
             backoff = {{ initial = \"300ms\", max = \"2s\" }}\n\
             [apps.{APP}.health]\nnotify = true\ndeadline = \"20s\"\n\
             [apps.{APP}.hooks.after_start]\ntimeout = \"10s\"\n\
             command = [\"/bin/wget\", \"-q\", \"-O\", \"/dev/null\", \"http://{ip}:{APP_PORT}/\"]\n",
            enroll = self.enrollment.public,
            endpoint = self.endpoint(),
        )
    }

    /// Creates node `n`'s container (not its agent) in the fleet: its keyring, trusting
    /// the fleet's signing key (which the operator holds there too), and starts it.
    pub fn create_node(&self, n: u8) {
        let keys = self.dir.path();
        let public = self.signing_public.clone();
        self.create_node_with(
            n,
            &keys.join("keyring.json"),
            &keys.join("deploy.key"),
            &public,
        );
    }

    /// [`Cfleet::create_node`] with `keyring`, the signing key `key` and trusting
    /// `trusted` to sign deploys.
    pub fn create_node_with(&self, n: u8, keyring: &Path, key: &Path, trusted: &str) {
        let (c, ip) = (container(n), self.ip(n));
        let etc = self.dir.path().join(format!("etc-{n}"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("agent.toml"), self.config(n, trusted)).unwrap();
        for (from, to) in [
            (keyring.to_owned(), "keyring.json"),
            (self.enrollment.identity(&name(n)), "node.identity"),
            (key.to_owned(), "deploy.key"),
        ] {
            std::fs::copy(&from, etc.join(to)).unwrap();
        }
        let (data, srv) = (format!("{c}-data"), format!("{c}-srv"));
        docker::volume(&data);
        docker::volume(&srv);
        let (data, srv) = (
            format!("{data}:/var/lib/droot-fleet"),
            format!("{srv}:/srv"),
        );
        let mut args = vec![
            "--hostname",
            &c,
            "--init",
            "--tmpfs",
            "/run",
            "-v",
            &data,
            "-v",
            &srv,
        ];
        args.extend_from_slice(PRIVILEGES);
        args.extend(["--entrypoint", "/bin/sleep", HOST_IMAGE, "2147483647"]);
        create(&c, &ip, &args);
        let from = format!("{}/.", etc.display());
        ok(&["cp", &from, &format!("{c}:/etc/droot-fleet")]);
        ok(&["start", &c]);
    }

    /// Starts node `n`'s agent with `program`, joining every other node, its output
    /// appended to `/var/lib/droot-fleet/agent.log`; waits for its control socket.
    pub fn start_agent(&self, n: u8, program: &str) {
        let joins: String = (1..=self.nodes.max(n))
            .filter(|i| *i != n)
            .map(|i| format!(" --join {}:{GOSSIP_PORT}", self.ip(i)))
            .collect();
        let line = format!(
            "echo $$ > {AGENT_PID}; exec {program} agent --config /etc/droot-fleet/agent.toml --node {name} \
             --bind {ip}:{GOSSIP_PORT}{joins} --keyring /etc/droot-fleet/keyring.json \
             >>/var/lib/droot-fleet/agent.log 2>&1",
            name = name(n),
            ip = self.ip(n),
        );
        let mut args = vec!["exec".to_owned(), "-d".to_owned()];
        for e in self.aws_env() {
            args.extend(["-e".to_owned(), e]);
        }
        args.extend([container(n), "/bin/sh".into(), "-c".into(), line]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&args);
        wait_for(LONG, &format!("n{n}'s control socket"), || {
            self.cli(n, &["members", "--format", "json"])
                .status
                .success()
                .then_some(())
        });
    }

    /// SIGTERMs node `n`'s agent and waits until it is gone.
    pub fn stop_agent(&self, n: u8) {
        let out = self.sh(n, &format!("kill -TERM $(cat {AGENT_PID})"));
        assert!(out.status.success(), "n{n}: kill: {}", text(&out));
        wait_for(LONG, &format!("n{n}'s agent to exit"), || {
            let alive = self.sh(n, &format!("kill -0 $(cat {AGENT_PID})"));
            (!alive.status.success()).then_some(())
        });
    }

    /// `sh -c SCRIPT` in node `n`'s container.
    pub fn sh(&self, n: u8, script: &str) -> Output {
        exec(&container(n), &[], &["/bin/sh", "-c", script])
    }

    /// The CLI in node `n`'s container, as the operator runs it there: the signing key,
    /// the store's credentials and endpoint in the environment.
    pub fn cli(&self, n: u8, args: &[&str]) -> Output {
        let mut env = self.aws_env();
        env.push(format!("DROOT_FLEET_S3_ENDPOINT={}", self.endpoint()));
        env.push("DROOT_FLEET_SIGNING_KEY=/etc/droot-fleet/deploy.key".into());
        let mut all = vec!["droot-fleet"];
        all.extend_from_slice(args);
        exec(&container(n), &env, &all)
    }

    /// [`Cfleet::cli`], which must succeed: its stdout.
    pub fn cli_ok(&self, n: u8, args: &[&str]) -> String {
        let out = self.cli(n, args);
        assert!(out.status.success(), "n{n}: {args:?}: {}", text(&out));
        stdout(&out)
    }

    /// Members as node `n` lists them: name → status.
    pub fn members(&self, n: u8) -> BTreeMap<String, String> {
        self.member_field(n, "status")
    }

    /// Members as node `n` lists them: name → the address each advertises.
    pub fn member_addrs(&self, n: u8) -> BTreeMap<String, String> {
        self.member_field(n, "addr")
    }

    /// Name → `field` of each member in node `n`'s `members --format json`.
    fn member_field(&self, n: u8, field: &str) -> BTreeMap<String, String> {
        let out = self.cli(n, &["members", "--format", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (v.as_array().into_iter().flatten())
            .filter_map(|m| Some((m["name"].as_str()?.into(), m[field].as_str()?.into())))
            .collect()
    }

    /// Counter `name` of node `n`'s agent (`info --format json`).
    pub fn counter(&self, n: u8, name: &str) -> u64 {
        let out = self.cli_ok(n, &["info", "--format", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("info ({e}): {out}"));
        v["counters"][name].as_u64().unwrap_or(0)
    }

    /// Waits until node `n`'s member list satisfies `want`.
    pub fn wait_members(
        &self,
        n: u8,
        what: &str,
        want: impl Fn(&BTreeMap<String, String>) -> bool,
    ) {
        wait_for(LONG, &format!("n{n}: {what}"), || {
            want(&self.members(n)).then_some(())
        });
    }

    /// `query status demo --format json` through node `via`.
    pub fn status_json(&self, via: u8) -> Value {
        let out = self.cli_ok(via, &["query", "status", APP, "--format", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON ({e}): {out}"))
    }

    /// Node → its `apps.demo` view, from [`Cfleet::status_json`].
    pub fn status(&self, via: u8) -> BTreeMap<String, Value> {
        let v = self.status_json(via);
        (v["responses"].as_array().into_iter().flatten())
            .map(|r| {
                (
                    r["node"].as_str().unwrap_or("").to_owned(),
                    r["apps"][APP].clone(),
                )
            })
            .collect()
    }

    /// Builds the test app's release tree for `version` on the host and copies it into
    /// node `n` at `/releases/VERSION`.
    pub fn release_tree(&self, n: u8, version: &str, b: crate::common::sockapp::Behaviour) {
        let tree = self.dir.path().join(format!("release-{version}"));
        crate::common::sockapp::release(&tree, version, b);
        self.sh(n, "mkdir -p /releases");
        let to = format!("{}:/releases/{version}", container(n));
        ok(&["cp", tree.to_str().unwrap(), &to]);
    }

    /// The release `current` names on node `n`'s disk.
    pub fn current_on_disk(&self, n: u8) -> Option<String> {
        let out = self.sh(n, &format!("readlink /srv/{APP}/current"));
        let link = stdout(&out);
        (out.status.success() && !link.is_empty())
            .then(|| link.rsplit('/').next().unwrap_or_default().to_owned())
    }

    /// The release directories on node `n`'s disk.
    pub fn releases_on_disk(&self, n: u8) -> Vec<String> {
        let out = self.sh(n, &format!("ls /srv/{APP}/releases"));
        stdout(&out).split_whitespace().map(str::to_owned).collect()
    }

    /// Pids of the test app's processes in node `n`'s container.
    pub fn app_pids(&self, n: u8) -> Vec<String> {
        let out = self.sh(n, "pidof sockapp");
        stdout(&out).split_whitespace().map(str::to_owned).collect()
    }

    /// A GET of `http://ADDR/PATH` from the prober: the body when it answered.
    pub fn get(&self, addr: &str, path: &str) -> Option<String> {
        let out = exec("dft-probe", &[], &["/usr/bin/probe", "get", addr, path]);
        out.status.success().then(|| stdout(&out))
    }

    /// What node `n`'s app serves.
    pub fn serves(&self, n: u8) -> Option<String> {
        self.get(&format!("{}:{APP_PORT}", self.ip(n)), "/")
    }

    /// Node `n`'s metrics, scraped from its `metrics_addr` by the prober.
    pub fn metrics(&self, n: u8) -> String {
        let addr = format!("{}:{METRICS_PORT}", self.ip(n));
        self.get(&addr, "/metrics")
            .unwrap_or_else(|| panic!("n{n}: no answer from metrics_addr {addr}"))
    }

    /// Has the prober GET the apps of `nodes` (and no others) from its next round on.
    pub fn probe(&self, nodes: &[u8]) {
        let list: Vec<String> = (nodes.iter())
            .map(|n| format!("{}:{APP_PORT}", self.ip(*n)))
            .collect();
        let script = format!(
            "echo '{}' > /probe/t && mv /probe/t /probe/targets",
            list.join(" ")
        );
        let out = exec("dft-probe", &[], &["/bin/sh", "-c", &script]);
        assert!(out.status.success(), "probe targets: {}", text(&out));
        // The round under way may still use the old list: start from the one after it.
        self.probe_rounds(2);
    }

    /// The prober's `(rounds, ok, failed)` so far.
    pub fn probe_counts(&self) -> (u64, u64, u64) {
        let out = exec("dft-probe", &[], &["cat", "/probe/counts"]);
        let v: Vec<u64> = (stdout(&out).split_whitespace())
            .filter_map(|w| w.parse().ok())
            .collect();
        match v[..] {
            [r, o, f] => (r, o, f),
            _ => (0, 0, 0),
        }
    }

    /// Waits until the prober finished `k` more rounds: the counts then.
    pub fn probe_rounds(&self, k: u64) -> (u64, u64, u64) {
        let from = self.probe_counts().0;
        wait_for(LONG, &format!("{k} more prober rounds"), || {
            Some(self.probe_counts()).filter(|c| c.0 >= from + k)
        })
    }

    /// Asserts that no GET failed since `mark` (a [`Cfleet::probe_counts`]), after two
    /// more rounds, and that some succeeded: the failures if any.
    pub fn assert_no_failed_request(&self, mark: (u64, u64, u64), during: &str) {
        let now = self.probe_rounds(2);
        let fails = stdout(&exec("dft-probe", &[], &["cat", "/probe/fails"]));
        assert_eq!(
            now.2 - mark.2,
            0,
            "failed requests during {during} (round: address):\n{fails}"
        );
        assert!(now.1 > mark.1, "no request answered during {during}");
    }

    /// Node `n`'s agent log.
    pub fn agent_log(&self, n: u8) -> String {
        stdout(&self.sh(n, "cat /var/lib/droot-fleet/agent.log"))
    }
}

pub fn name(n: u8) -> String {
    format!("n{n}")
}

/// `docker create` of container `name`, labelled, on the test network at `ip`, with `rest`
/// (options, then the image and its arguments).
fn create(name: &str, ip: &str, rest: &[&str]) {
    let mut args = vec![
        "create",
        "--name",
        name,
        "--label",
        LABEL,
        "--network",
        NETWORK,
        "--ip",
        ip,
    ];
    args.extend_from_slice(rest);
    ok(&args);
}

/// The number of node `nN`.
pub fn num(node: &str) -> u8 {
    node.trim_start_matches('n')
        .parse()
        .expect("a node name nN")
}

pub fn container(n: u8) -> String {
    format!("dft-n{n}")
}

/// A new deploy signing key at `path`: its public half.
pub fn signing_key(path: &Path) -> String {
    let out = std::process::Command::new(bin())
        .env_remove("RUST_LOG")
        .args(["keygen", "--signing", "-o"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen --signing: {}", text(&out));
    stdout(&out)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The value after `label` on the line that has it (`Key ID: GK...`).
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} in garage output:\n{out}"))
}

/// A file in the host-side dir (for a second keyring, a rogue key).
pub fn path_in(f: &Cfleet, name: &str) -> PathBuf {
    f.dir.path().join(name)
}
