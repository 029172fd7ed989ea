//! Gossip benchmark: user-event delivery latency of real `droot-fleet agent` clusters,
//! with eager push (the default) and without it (gossip ticks only, Serf-like).
//!
//! Run (the agents are the release binary next to this example):
//!
//! ```text
//! cargo build --release
//! cargo run --release --example gossip_bench -- --sizes 10,50,100 --events 40
//! ```
//!
//! For every size N and mode (`eager`, `gossip`) the bench starts N agents on
//! 127.0.0.2 … 127.0.0.(N+1) (one temp data dir each, one shared `droot-fleet keygen`
//! key, all joining the first), waits until every agent lists N alive members, samples
//! idle RSS (`VmRSS`) and CPU (`utime+stime` over `--idle-secs`), then subscribes to
//! every agent's `GET /v1/monitor` stream and fires `--events` user events one at a
//! time from random origins. An event's latency is the time from just before its
//! `POST /v1/event` to the arrival of its `{"type":"event",...}` line from the *last*
//! agent (100% delivery), timestamped in this process. The next event is fired after
//! a quiet gap. Percentiles are linearly interpolated (with 40 samples, p99 sits
//! between the two slowest events).
//!
//! The markdown table goes to stdout and to `<target>/gossip-bench.md`. Every wait has
//! a deadline; agents are SIGKILLed when their cluster guard drops (error, panic,
//! Ctrl-C) and get `PR_SET_PDEATHSIG` so they also die if this process is killed;
//! temp dirs are removed. All traffic stays on 127.0.0.x.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use droot_fleet::agent::config::RpcAddr;
use droot_fleet::api::client::Client;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(about = "User-event latency of real droot-fleet agent clusters")]
struct Opts {
    /// Cluster sizes, comma-separated (at most 250).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    sizes: Vec<usize>,
    /// Modes, comma-separated: `eager` (eager push on) and/or `gossip` (off).
    #[arg(long, value_delimiter = ',', default_value = "eager,gossip")]
    modes: Vec<String>,
    /// Measured events per configuration.
    #[arg(long, default_value_t = 40)]
    events: usize,
    /// `eager_push_fanout` given to the agents (default: the agent's own, ln N + 2).
    #[arg(long)]
    fanout: Option<usize>,
    /// Seconds of idleness over which RSS and CPU are sampled.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Quiet gap between events (ms; up to 200 ms of random jitter is added).
    #[arg(long, default_value_t = 500)]
    gap_ms: u64,
    /// Give up on one event's 100% delivery after this many seconds.
    #[arg(long, default_value_t = 40)]
    event_timeout_secs: u64,
    /// Deadline for all agents to see N alive members.
    #[arg(long, default_value_t = 120)]
    join_timeout_secs: u64,
    /// Gossip port (UDP+TCP) on every 127.0.0.x address.
    #[arg(long, default_value_t = 27946)]
    port: u16,
    /// The agent binary. Default: `droot-fleet` in this example's profile dir.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Parent dir of the temp data dirs (the agents fsync their snapshot there).
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// Markdown output. Default: `<target>/gossip-bench.md`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// RNG seed for origins and jitter (default: time based).
    #[arg(long)]
    seed: Option<u64>,
    /// The agents' `log_level` (their log lines also go through the monitor streams).
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Extra line for every agent's config file (repeatable), e.g.
    /// `--agent-config 'push_pull_interval = "5s"'`.
    #[arg(long)]
    agent_config: Vec<String>,
    /// Keep the temp dirs (agent logs, snapshots) and print where they are.
    #[arg(long)]
    keep_logs: bool,
    /// Print the last nodes of events slower than this (ms).
    #[arg(long, default_value_t = 1000)]
    slow_ms: u64,
}

/// xorshift64*: origins and jitter only, no need for a crypto RNG.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

// ---------------------------------------------------------------- processes and /proc

/// One running agent. Killed by [`Cluster`]'s drop.
struct Agent {
    name: String,
    sock: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> Client {
        Client::new(RpcAddr::Unix(self.sock.clone()), None)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// A cluster's agents and temp dir: every agent is SIGKILLed on drop, then the dir goes.
struct Cluster {
    agents: Vec<Agent>,
    dir: tempfile::TempDir,
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
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `VmRSS` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Host CPU jiffies from `/proc/stat`: (busy, total); iowait counts as idle.
fn host_cpu() -> (u64, u64) {
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
fn udp_rcv_errors() -> u64 {
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
fn find_bin(opts: &Opts) -> anyhow::Result<PathBuf> {
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

fn output_path(opts: &Opts) -> PathBuf {
    if let Some(o) = &opts.out {
        return o.clone();
    }
    let target = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_owned()))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("gossip-bench.md")
}

// ---------------------------------------------------------------- cluster lifecycle

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout`.
async fn wait_until<T>(
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

fn spawn_agent(
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
async fn wait_sockets(agents: &mut [Agent]) -> anyhow::Result<()> {
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
async fn start_cluster(opts: &Opts, bin: &Path, n: usize, eager: bool) -> anyhow::Result<Cluster> {
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
    std::fs::write(
        dir.path().join("keyring.json"),
        format!("{{\"primary\": \"{}\", \"keys\": []}}", key.trim()),
    )?;
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

#[derive(Debug, Default, Clone)]
struct Row {
    n: usize,
    mode: String,
    events: usize,
    complete: usize,
    /// Per event: ms to 100% of nodes (INFINITY if it never got there).
    full_ms: Vec<f64>,
    /// Per event: ms to 90% of nodes.
    p90_nodes_ms: Vec<f64>,
    /// Every (node, event) arrival except the origin's own, ms.
    node_ms: Vec<f64>,
    /// Per event: how long `POST /v1/event` took, ms.
    api_ms: Vec<f64>,
    idle_rss_mib: f64,
    idle_rss_max_mib: f64,
    idle_cpu_pct: f64,
    /// Sum over agents during the event phase, % of one core.
    busy_cpu_pct: f64,
    /// Host CPU busy during the event phase, % of all cores.
    host_busy_pct: f64,
    /// Host CPU busy during the idle window (other load on the machine), % of all cores.
    host_idle_busy_pct: f64,
    udp_errors: u64,
    /// (node, event) deliveries later than 100 ms.
    late_nodes: usize,
    events_pushed: u64,
}

/// Linear-interpolated percentile of a sorted slice (INFINITY stays infinite).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let r = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (r.floor() as usize, r.ceil() as usize);
    if lo == hi || sorted[hi].is_infinite() {
        return sorted[hi];
    }
    sorted[lo] + (sorted[hi] - sorted[lo]) * (r - lo as f64)
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "timeout".into()
    }
}

/// One monitor arrival: (agent index, event name, when).
type Arrival = (usize, String, Instant);

/// Subscribes to every agent's monitor stream; arrivals of user events go to the channel.
fn subscribe(cluster: &Cluster, tx: &mpsc::UnboundedSender<Arrival>) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for (idx, a) in cluster.agents.iter().enumerate() {
        let (client, tx) = (a.client(), tx.clone());
        set.spawn(async move {
            let _ = client
                .monitor(|line| {
                    let now = Instant::now();
                    if !line.contains("\"type\":\"event\"") {
                        return;
                    }
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                        return;
                    };
                    if v["event"] == "user"
                        && let Some(name) = v["name"].as_str()
                    {
                        let _ = tx.send((idx, name.to_owned(), now));
                    }
                })
                .await;
        });
    }
    set
}

/// Fires one event from `origin` and waits for it at every node (or the timeout).
/// Returns each node's delivery time after the fire instant, and the API call time.
async fn fire(
    cluster: &Cluster,
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    origin: usize,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<(Vec<Option<Duration>>, Duration)> {
    while rx.try_recv().is_ok() {} // late arrivals of earlier events
    let n = cluster.agents.len();
    let mut got: Vec<Option<Duration>> = vec![None; n];
    let client = cluster.agents[origin].client();
    let t0 = Instant::now();
    client
        .event(name, "")
        .await
        .with_context(|| format!("POST /v1/event on {}", cluster.agents[origin].name))?;
    let api = t0.elapsed();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut missing = n;
    while missing > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((idx, ev, at))) => {
                if ev == name && got[idx].is_none() {
                    got[idx] = Some(at.saturating_duration_since(t0));
                    missing -= 1;
                }
            }
            Ok(None) => bail!("all monitor streams closed"),
            Err(_) => break,
        }
    }
    Ok((got, api))
}

async fn measure(
    opts: &Opts,
    bin: &Path,
    n: usize,
    mode: &str,
    rng: &mut Rng,
) -> anyhow::Result<Row> {
    let eager = match mode {
        "eager" => true,
        "gossip" => false,
        other => bail!("unknown mode {other:?} (use eager or gossip)"),
    };
    eprintln!("== N={n} mode={mode}: starting agents");
    let cluster = start_cluster(opts, bin, n, eager).await?;
    if opts.keep_logs {
        eprintln!("  keeping {}", cluster.dir.path().display());
    }
    let result = measure_cluster(opts, &cluster, n, mode, rng).await;
    if result.is_err() {
        for a in &cluster.agents {
            let tail = a.log_tail();
            if !tail.is_empty() {
                eprintln!("--- {} log tail:\n{tail}", a.name);
                break;
            }
        }
    }
    if opts.keep_logs {
        let mut cluster = cluster;
        let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir()?);
        let _ = dir.keep();
    }
    result
}

async fn measure_cluster(
    opts: &Opts,
    cluster: &Cluster,
    n: usize,
    mode: &str,
    rng: &mut Rng,
) -> anyhow::Result<Row> {
    let mut row = Row {
        n,
        mode: mode.to_owned(),
        events: opts.events,
        ..Row::default()
    };
    let pids: Vec<u32> = cluster.agents.iter().map(Agent::pid).collect();
    let hz = clock_ticks_per_sec();
    let cpu_sum = |pids: &[u32]| -> u64 { pids.iter().filter_map(|&p| cpu_ticks(p)).sum() };

    // Idle: let the join-time push/pulls settle, then sample.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (h0, c0, t0) = (host_cpu(), cpu_sum(&pids), Instant::now());
    tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
    let (h1, c1, secs) = (host_cpu(), cpu_sum(&pids), t0.elapsed().as_secs_f64());
    row.host_idle_busy_pct = (h1.0 - h0.0) as f64 / (h1.1 - h0.1).max(1) as f64 * 100.0;
    row.idle_cpu_pct = (c1 - c0) as f64 / hz / secs / n as f64 * 100.0;
    let rss: Vec<f64> = pids
        .iter()
        .filter_map(|&p| rss_kib(p))
        .map(|k| k as f64 / 1024.0)
        .collect();
    row.idle_rss_mib = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    row.idle_rss_max_mib = rss.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "  idle: RSS {:.1} MiB/agent (max {:.1}), CPU {:.2}% of a core/agent, host {:.0}% busy",
        row.idle_rss_mib, row.idle_rss_max_mib, row.idle_cpu_pct, row.host_idle_busy_pct
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let _monitors = subscribe(cluster, &tx);
    drop(tx);
    // Warm up until one event reaches every monitor: proves all streams are subscribed
    // (the client gives no signal when the agent has accepted the subscription).
    let timeout = Duration::from_secs(opts.event_timeout_secs);
    let mut ready = false;
    for w in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (got, _) = fire(
            cluster,
            &mut rx,
            0,
            &format!("warmup-{n}-{mode}-{w}"),
            Duration::from_secs(3).min(timeout),
        )
        .await?;
        if got.iter().all(Option::is_some) {
            ready = true;
            break;
        }
    }
    if !ready {
        bail!("no warm-up event reached all {n} monitor streams");
    }

    let gap = Duration::from_millis(opts.gap_ms);
    let (h0, c0, e0) = (host_cpu(), cpu_sum(&pids), udp_rcv_errors());
    let t0 = Instant::now();
    for i in 0..opts.events {
        tokio::time::sleep(gap + Duration::from_millis(rng.below(200))).await;
        let origin = rng.below(n as u64) as usize;
        let name = format!("bench-{n}-{mode}-{i}");
        let (got, api) = fire(cluster, &mut rx, origin, &name, timeout).await?;
        let mut arrived: Vec<f64> = got
            .iter()
            .enumerate()
            .filter(|&(idx, _)| idx != origin)
            .filter_map(|(_, d)| d.map(|d| d.as_secs_f64() * 1e3))
            .collect();
        row.node_ms.extend(&arrived);
        arrived.sort_by(f64::total_cmp);
        let all = got.iter().all(Option::is_some);
        let full = if all {
            row.complete += 1;
            got.iter()
                .flatten()
                .max()
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        } else {
            f64::INFINITY
        };
        let k90 = ((n - 1) as f64 * 0.9).ceil() as usize;
        row.p90_nodes_ms.push(
            arrived
                .get(k90.saturating_sub(1))
                .copied()
                .unwrap_or(f64::INFINITY),
        );
        row.full_ms.push(full);
        row.api_ms.push(api.as_secs_f64() * 1e3);
        row.late_nodes += arrived.iter().filter(|&&x| x > 100.0).count();
        if full > opts.slow_ms as f64 && all {
            let mut last: Vec<(Duration, &str)> = got
                .iter()
                .zip(&cluster.agents)
                .filter_map(|(g, a)| Some(((*g)?, a.name.as_str())))
                .collect();
            last.sort();
            let tail: Vec<String> = last
                .iter()
                .rev()
                .take(3)
                .map(|(d, name)| format!("{name} {:.0} ms", d.as_secs_f64() * 1e3))
                .collect();
            eprintln!("  event {i} (from n{}) slow: last {tail:?}", origin + 1);
        }
        if !all {
            let missing: Vec<&str> = got
                .iter()
                .zip(&cluster.agents)
                .filter(|(g, _)| g.is_none())
                .map(|(_, a)| a.name.as_str())
                .collect();
            eprintln!(
                "  event {i}: not at {} nodes after {timeout:?}: {missing:?}",
                missing.len()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (h1, c1) = (host_cpu(), cpu_sum(&pids));
    row.udp_errors = udp_rcv_errors().saturating_sub(e0);
    row.busy_cpu_pct = (c1 - c0) as f64 / hz / secs * 100.0;
    row.host_busy_pct = (h1.0 - h0.0) as f64 / (h1.1 - h0.1).max(1) as f64 * 100.0;
    for a in &cluster.agents {
        if let Ok(info) = a.client().info().await {
            row.events_pushed += info.counters.get("events_pushed").copied().unwrap_or(0);
        }
    }
    let full = sorted(&row.full_ms);
    eprintln!(
        "  {} events: 100% delivery p50 {} ms, p99 {} ms, max {} ms ({} complete)",
        opts.events,
        ms(pct(&full, 50.0)),
        ms(pct(&full, 99.0)),
        ms(pct(&full, 100.0)),
        row.complete
    );
    Ok(row)
}

// ---------------------------------------------------------------- report

fn report(opts: &Opts, rows: &[Row], bin: &Path) -> String {
    let mut s = String::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(s, "## Gossip benchmark\n");
    let _ = writeln!(
        s,
        "`cargo run --release --example gossip_bench -- {}`  \n\
         agent: `{}`; {cores} CPU cores; {} events per row, fanout {} for eager push; \
         data dirs in `{}`.\n",
        args.join(" "),
        bin.display(),
        opts.events,
        opts.fanout
            .map_or_else(|| "ln N + 2 (agent default)".to_string(), |f| f.to_string()),
        opts.tmpdir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .display()
    );
    if !opts.agent_config.is_empty() {
        let _ = writeln!(
            s,
            "Extra agent config: `{}`.\n",
            opts.agent_config.join("`, `")
        );
    }
    let _ = writeln!(
        s,
        "Latency = fire (`POST /v1/event`) → the event's line on the last node's \
         `/v1/monitor` (100% delivery). Idle = {} s after convergence, mean per agent; \
         CPU in % of one core.\n",
        opts.idle_secs
    );
    let _ = writeln!(
        s,
        "| N | mode | p50 ms | p99 ms | max ms | idle RSS MiB | idle CPU % |\n|---:|---|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let f = sorted(&r.full_ms);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} |",
            r.n,
            if r.mode == "eager" {
                "eager push"
            } else {
                "gossip only"
            },
            ms(pct(&f, 50.0)),
            ms(pct(&f, 99.0)),
            ms(pct(&f, 100.0)),
            r.idle_rss_mib,
            r.idle_cpu_pct
        );
    }
    let _ = writeln!(
        s,
        "\nDetails: complete = events seen by all N within {} s; 90% = time to 90% of nodes \
         (p50 over events); per-node = every (node, event) delivery except the origin's; \
         busy CPU = all agents during the event phase (% of one core; {cores} cores); \
         host busy = whole machine, idle window / event phase (other processes included); \
         UDP errs = host `Udp InErrors+RcvbufErrors` delta; \
         nodes >100 ms = (node, event) deliveries after 100 ms, per event; events >1 s = \
         events whose 100% delivery took over a second; \
         eager pushes = `events_pushed` summed over agents.\n",
        opts.event_timeout_secs
    );
    let _ = writeln!(
        s,
        "| N | mode | complete | 90% p50 ms | per-node p50 ms | per-node p99 ms | nodes >100 ms /event | events >1 s | API p50 ms | busy CPU % | host busy % | UDP errs | eager pushes |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let (p90, node, api) = (
            sorted(&r.p90_nodes_ms),
            sorted(&r.node_ms),
            sorted(&r.api_ms),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {} | {} | {} | {:.2} | {} | {} | {:.0} | {:.0} / {:.0} | {} | {} |",
            r.n,
            r.mode,
            r.complete,
            r.events,
            ms(pct(&p90, 50.0)),
            ms(pct(&node, 50.0)),
            ms(pct(&node, 99.0)),
            r.late_nodes as f64 / r.events.max(1) as f64,
            r.full_ms.iter().filter(|&&x| x > 1000.0).count(),
            ms(pct(&api, 50.0)),
            r.busy_cpu_pct,
            r.host_idle_busy_pct,
            r.host_busy_pct,
            r.udp_errors,
            r.events_pushed
        );
    }
    s
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let bin = find_bin(&opts)?;
    if opts.sizes.iter().any(|&n| !(2..=250).contains(&n)) {
        bail!("--sizes must be between 2 and 250");
    }
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    // A private copy: other builds may replace target/release/droot-fleet mid-run.
    let bin_dir = tempfile::Builder::new()
        .prefix("gossip-bench-bin")
        .tempdir()?;
    let copy = bin_dir.path().join("droot-fleet");
    std::fs::copy(&bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
    eprintln!("agent binary {} (copied), seed {seed}", bin.display());
    let mut rng = Rng(seed | 1);
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        for mode in &opts.modes {
            rows.push(measure(&opts, &copy, n, mode, &mut rng).await?);
        }
    }
    let md = report(&opts, &rows, &bin);
    println!("{md}");
    let out = output_path(&opts);
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("written to {}", out.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    // Current-thread: agents are spawned from the main thread, which their
    // PR_SET_PDEATHSIG is tied to, and dropping `run` on Ctrl-C drops every cluster.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            r = run(opts) => r,
            _ = droot_fleet::agent::termination_signal() => bail!("interrupted; agents killed, temp dirs removed"),
        }
    })
}
