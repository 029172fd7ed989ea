//! Starting and stopping clusters of real agents, and reading their /proc statistics.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use droot_fleet::agent::config::RpcAddr;
use droot_fleet::api::client::Client;

use super::*;

pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

// ---------------------------------------------------------------- processes and /proc

/// One running agent. Killed by [`Cluster`]'s drop.
pub struct Agent {
    pub name: String,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub child: Child,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> Client {
        Client::new(RpcAddr::Unix(self.sock.clone()), None)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// A cluster's agents and temp dir: every agent is SIGKILLed on drop, then the dir goes.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.child.kill();
        }
        for a in &mut self.agents {
            let _ = a.child.wait();
        }
    }
}

/// `utime + stime` of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/PID/status` memory field (`VmRSS`, `RssAnon`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line =
        (status.lines()).find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Host CPU jiffies from `/proc/stat`: (busy, total); iowait counts as idle.
pub fn host_cpu() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle.min(total), total)
}

/// Kernel UDP receive errors (`Udp: InErrors` + `RcvbufErrors`), host-wide.
pub fn udp_rcv_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (udp.next(), udp.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .filter(|(k, _)| *k == "InErrors" || *k == "RcvbufErrors")
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// The agent binary: `--bin`, else `droot-fleet` next to `target/<profile>/examples/`.
pub fn find_bin(opts: &Opts) -> anyhow::Result<PathBuf> {
    if let Some(b) = &opts.bin {
        return Ok(b.clone());
    }
    let exe = std::env::current_exe().context("locating this example")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("example is not in target/<profile>/examples")?;
    let bin = profile_dir.join("droot-fleet");
    if !bin.is_file() {
        bail!(
            "agent binary {} not found: run `cargo build --release` first (or pass --bin)",
            bin.display()
        );
    }
    let profile = profile_dir.file_name().and_then(|s| s.to_str());
    if profile != Some("release") {
        eprintln!("WARNING: benchmarking a {profile:?} build; use --release for real numbers");
    }
    Ok(bin)
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout`.
pub async fn wait_until<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

pub fn spawn_agent(
    bin: &Path,
    dir: &Path,
    i: usize,
    port: u16,
    join: Option<&str>,
) -> anyhow::Result<Agent> {
    let name = format!("n{i}");
    let data_dir = dir.join(&name);
    let log = dir.join(format!("{name}.log"));
    let logf = std::fs::File::create(&log)?;
    let mut cmd = Command::new(bin);
    cmd.env_remove("RUST_LOG")
        .arg("agent")
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .args([
            "--node",
            &name,
            "--bind",
            &format!("127.0.0.{}:{port}", i + 1),
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--keyring")
        .arg(dir.join("keyring.json"));
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    // Spawned from the main thread (current-thread runtime), which outlives all agents.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Agent {
        sock: data_dir.join("agent.sock"),
        name,
        log,
        child,
    })
}

/// Waits until the agents' control sockets accept connections.
pub async fn wait_sockets(agents: &mut [Agent]) -> anyhow::Result<()> {
    for a in agents.iter_mut() {
        let what = format!("{}'s control socket", a.name);
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(20),
            &what,
            async || {
                if let Some(st) = a.child.try_wait()? {
                    bail!("{} exited ({st}); its log:\n{}", a.name, a.log_tail());
                }
                Ok(tokio::net::UnixStream::connect(&a.sock)
                    .await
                    .ok()
                    .map(drop))
            },
        )
        .await?;
    }
    Ok(())
}

/// Starts `n` agents with `eager` push and waits until each sees `n` alive members.
pub async fn start_cluster(
    opts: &Opts,
    bin: &Path,
    n: usize,
    eager: bool,
) -> anyhow::Result<Cluster> {
    let dir = match &opts.tmpdir {
        Some(t) => tempfile::Builder::new()
            .prefix("gossip-bench")
            .tempdir_in(t)?,
        None => tempfile::Builder::new().prefix("gossip-bench").tempdir()?,
    };
    let out = Command::new(bin)
        .arg("keygen")
        .output()
        .context("droot-fleet keygen")?;
    if !out.status.success() {
        bail!(
            "droot-fleet keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = String::from_utf8(out.stdout)?;
    // The agent refuses a keyring other users can read.
    let keyring = dir.path().join("keyring.json");
    std::fs::write(
        &keyring,
        format!("{{\"primary\": \"{}\", \"keys\": []}}", key.trim()),
    )?;
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600))?;
    let mut config = format!(
        "log_level = \"{}\"\nexpected_cluster_size = {n}\neager_push = {eager}\n\
         retry_interval = \"500ms\"\n",
        opts.log_level
    );
    if let Some(f) = opts.fanout {
        config.push_str(&format!("eager_push_fanout = {f}\n"));
    }
    for line in &opts.agent_config {
        config.push_str(line);
        config.push('\n');
    }
    std::fs::write(dir.path().join("agent.toml"), config)?;
    let mut cluster = Cluster {
        agents: Vec::with_capacity(n),
        dir,
    };
    let seed = format!("127.0.0.2:{}", opts.port);
    let dirp = cluster.dir.path().to_owned();
    cluster
        .agents
        .push(spawn_agent(bin, &dirp, 1, opts.port, None)?);
    wait_sockets(&mut cluster.agents).await?;
    // Start the rest in batches so 2 cores are not asked to boot 100 runtimes at once.
    let mut i = 2;
    while i <= n {
        let first = cluster.agents.len();
        for j in i..(i + 10).min(n + 1) {
            cluster
                .agents
                .push(spawn_agent(bin, &dirp, j, opts.port, Some(&seed))?);
        }
        i += 10;
        wait_sockets(&mut cluster.agents[first..]).await?;
    }

    let started = Instant::now();
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    let mut last_report = Instant::now();
    let timeout = Duration::from_secs(opts.join_timeout_secs);
    wait_until(
        timeout,
        Duration::from_millis(500),
        "every agent to see N alive members",
        async || {
            let mut counts = Vec::with_capacity(n);
            for c in &clients {
                counts.push(c.members(Some("alive")).await.map(|m| m.len()).unwrap_or(0));
            }
            let min = counts.iter().copied().min().unwrap_or(0);
            if min == n {
                return Ok(Some(()));
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                let behind = counts.iter().filter(|&&c| c < n).count();
                eprintln!("  … converging: {behind} agents see fewer than {n} alive (min {min})");
            }
            Ok(None)
        },
    )
    .await?;
    eprintln!(
        "  {n} agents started and converged ({:.1} s after the last start)",
        started.elapsed().as_secs_f64()
    );
    Ok(cluster)
}

// ---------------------------------------------------------------- measurement
