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
//! Last, one random agent's tags change by SIGHUP, and the bench times how long until
//! every agent's `GET /v1/members` shows them (polled; an upper bound).
//!
//! The markdown table goes to stdout and to `<target>/gossip-bench.md`. Every wait has
//! a deadline; agents are SIGKILLed when their cluster guard drops (error, panic,
//! Ctrl-C) and get `PR_SET_PDEATHSIG` so they also die if this process is killed;
//! temp dirs are removed. All traffic stays on 127.0.0.x.

mod cluster;
mod measure;
mod report;
mod tags;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;

use cluster::*;
use measure::*;
use report::*;
use tags::*;

#[derive(Debug, Parser)]
#[command(about = "User-event latency of real droot-fleet agent clusters")]
pub struct Opts {
    /// Cluster sizes, comma-separated (at most 250).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    pub sizes: Vec<usize>,
    /// Modes, comma-separated: `eager` (eager push on) and/or `gossip` (off).
    #[arg(long, value_delimiter = ',', default_value = "eager,gossip")]
    pub modes: Vec<String>,
    /// Measured events per configuration.
    #[arg(long, default_value_t = 40)]
    pub events: usize,
    /// `eager_push_fanout` given to the agents (default: the agent's own, ln N + 2).
    #[arg(long)]
    pub fanout: Option<usize>,
    /// Seconds of idleness over which RSS and CPU are sampled.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Quiet gap between events (ms; up to 200 ms of random jitter is added).
    #[arg(long, default_value_t = 500)]
    pub gap_ms: u64,
    /// Give up on one event's 100% delivery after this many seconds.
    #[arg(long, default_value_t = 40)]
    pub event_timeout_secs: u64,
    /// Deadline for all agents to see N alive members.
    #[arg(long, default_value_t = 120)]
    pub join_timeout_secs: u64,
    /// Gossip port (UDP+TCP) on every 127.0.0.x address.
    #[arg(long, default_value_t = 27946)]
    pub port: u16,
    /// The agent binary. Default: `droot-fleet` in this example's profile dir.
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Parent dir of the temp data dirs (the agents fsync their snapshot there).
    #[arg(long)]
    pub tmpdir: Option<PathBuf>,
    /// Markdown output. Default: `<target>/gossip-bench.md`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// RNG seed for origins and jitter (default: time based).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The agents' `log_level` (their log lines also go through the monitor streams).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Extra line for every agent's config file (repeatable), e.g.
    /// `--agent-config 'push_pull_interval = "5s"'`.
    #[arg(long)]
    pub agent_config: Vec<String>,
    /// Keep the temp dirs (agent logs, snapshots) and print where they are.
    #[arg(long)]
    pub keep_logs: bool,
    /// Print the last nodes of events slower than this (ms).
    #[arg(long, default_value_t = 1000)]
    pub slow_ms: u64,
}

/// xorshift64*: origins and jitter only, no need for a crypto RNG.
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
