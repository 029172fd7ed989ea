//! The fleet simulator: N real agent machines (foca, the gossip core, the agent's
//! rules) over a simulated network on a virtual clock, beside a model of Serf's
//! broadcasts on the same network. Deterministic: one seed, one run.
//!
//! ```text
//! cargo run --release --example sim -- --sizes 100,1000 --loss 0,0.01,0.05
//! ```
//!
//! For every size and loss rate it converges a cluster (every node joins the first and
//! two random earlier ones, 2 ms apart), then measures in turn: idle bytes per node per
//! second (over one push/pull period, from a minute after convergence); `--events` user events from random
//! origins (time until every node delivered, and each arrival); a signed deploy with
//! `--max-parallel 10%` from a random node, through every node's deploy controller (until
//! every node holds it as desired, and until its origin sees every target ok; each
//! activation takes 2-3 s); an event storm (10
//! events/s for 10 s); a tag change
//! reaching every node; a crash (until every other node dropped it) and its restart
//! (until everyone lists it again); a partition into halves and its heal; false
//! failures while 1% of nodes are paused for 2 s, six times a minute. Then the Serf
//! model fires the same number of events on a fresh cluster of the same size and loss.
//!
//! The markdown table goes to stdout; the reach plot to `--svg` (default
//! `target/sim-reach.svg`).

mod plot;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use scenarios::{Plan, Row};

#[global_allocator]
static HEAP: droot_fleet::sim::heap::Counting = droot_fleet::sim::heap::Counting::new();

#[derive(Debug, Parser)]
#[command(about = "A deterministic simulation of droot-fleet's gossip at scale")]
struct Opts {
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sizes: Vec<usize>,
    /// Datagram loss rates, comma-separated (0.01 is 1%).
    #[arg(long, value_delimiter = ',', default_value = "0,0.01,0.05")]
    loss: Vec<f64>,
    /// The run's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Enroll every node (node identities required): what signatures and MACs cost.
    #[arg(long)]
    identities: bool,
    /// Measured events per configuration.
    #[arg(long, default_value_t = 5)]
    events: usize,
    /// Where the reach plot goes.
    #[arg(long, default_value = "target/sim-reach.svg")]
    svg: PathBuf,
    /// Also append each measured row to this file (JSON lines).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Measure nothing: print the table and draw the plot of rows saved by earlier runs.
    #[arg(long, num_args = 1..)]
    from: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    if !opts.from.is_empty() {
        return replot(&opts);
    }
    let mut rows = Vec::new();
    // Each row as soon as it is measured: a large run can be stopped and keep what it has.
    print!("{}", HEADER);
    for &nodes in &opts.sizes {
        anyhow::ensure!(nodes >= 4, "--sizes: at least 4 nodes per cluster");
        for &loss in &opts.loss {
            anyhow::ensure!((0.0..1.0).contains(&loss), "--loss: a rate in 0..1");
            let plan = Plan {
                nodes,
                loss,
                identities: opts.identities,
                seed: opts.seed,
                events: opts.events,
            };
            let row = scenarios::run(&plan);
            print!("{}", line(&row));
            if let Some(path) = &opts.save {
                use std::io::Write as _;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                writeln!(f, "{}", serde_json::to_string(&row)?)?;
            }
            rows.push(row);
            std::fs::write(&opts.svg, plot::svg(&curves(&rows)))?;
        }
    }
    eprintln!("plot: {}", opts.svg.display());
    print!("{}", anti_entropy_line(10_000));
    Ok(())
}

/// The periodic anti-entropy of an idle node in a fleet of `n`, from the real encoders:
/// one exchange it starts and, on average, one it answers, per push/pull period.
fn anti_entropy_line(n: usize) -> String {
    let (request, answer) = droot_fleet::sim::agreeing_exchange_bytes(n);
    let period = 30 * droot_fleet::gossip::limits::push_pull_every(n);
    let per_second = (request + answer) as f64 / f64::from(period);
    format!(
        "\nAnti-entropy at {n} members, views agreeing: a {request} B digest request, a {answer} B answer, every {period} s: {per_second:.0} B/s per node sent\n"
    )
}

/// The table and plot of rows saved by earlier runs (`--save`), in the order given.
fn replot(opts: &Opts) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for path in &opts.from {
        let text = std::fs::read_to_string(path)?;
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            rows.push(serde_json::from_str(l)?);
        }
    }
    print!("{HEADER}");
    rows.iter().for_each(|r| print!("{}", line(r)));
    std::fs::write(&opts.svg, plot::svg(&curves(&rows)))?;
    eprintln!("plot: {}", opts.svg.display());
    Ok(())
}

/// The reach curves of the rows without identities (those with them are a cost
/// comparison, in the table).
fn curves(rows: &[Row]) -> Vec<plot::Curve> {
    rows.iter()
        .filter(|r| !r.identities)
        .flat_map(|r| {
            let ours = plot::Curve {
                nodes: r.nodes,
                loss: r.loss,
                serf: false,
                arrivals: r.arrivals.clone(),
            };
            let serf = plot::Curve {
                nodes: r.nodes,
                loss: r.loss,
                serf: true,
                arrivals: r.serf_arrivals.clone(),
            };
            [ours, serf]
        })
        .collect()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("not reached".into(), |d| {
        format!("{:.0}", d.as_secs_f64() * 1000.0)
    })
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not reached".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// The median and the slowest of `v` (any `None` makes the slowest "not reached").
fn median_max(v: &[Option<Duration>]) -> String {
    let mut got: Vec<Duration> = v.iter().flatten().copied().collect();
    got.sort();
    let med = got.get(got.len() / 2).copied();
    let max = if got.len() == v.len() {
        got.last().copied()
    } else {
        None
    };
    format!("{} / {}", ms(med), ms(max))
}

/// The median and the most of the per-event hop counts ("–": not recorded).
fn hops(v: &[Option<u32>]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let mut got: Vec<u32> = v.iter().flatten().copied().collect();
    got.sort();
    let med = got
        .get(got.len() / 2)
        .map_or("not reached".into(), u32::to_string);
    let max = (got.len() == v.len())
        .then(|| got.last().map(u32::to_string))
        .flatten()
        .unwrap_or("not reached".into());
    format!("{med} / {max}")
}

/// [`median_max`], and the share of (node, event) arrivals made when not all were.
fn median_max_delivered(full: &[Option<Duration>], arrivals: &[Option<Duration>]) -> String {
    let made = arrivals.iter().flatten().count();
    let cell = median_max(full);
    if made == arrivals.len() {
        return cell;
    }
    let share = made as f64 / arrivals.len() as f64 * 100.0;
    format!("{cell} ({share:.2}% delivered)")
}

/// The p50 and p99 of every single arrival.
fn arrival_percentiles(v: &[Option<Duration>]) -> String {
    let mut got: Vec<Duration> = v.iter().flatten().copied().collect();
    got.sort();
    let at = |q: f64| {
        got.get(((got.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    format!("{} / {}", ms(at(0.5)), ms(at(0.99)))
}

const HEADER: &str = "| N | loss | identities | converge s | event to 100%: median / max ms | hops to 100%: median / max | arrivals p50 / p99 ms | Serf model to 100%: median / max ms | Serf model hops: median / max | tags to 100% ms | deploy desired to 100% ms | 10% waves done s (waves) | crash noticed s | restart rejoined s | partition healed s | idle B/s/node | storm B/s/node (Serf model) | false failures, 1% paused 2 s | heap KiB/node | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

fn line(r: &Row) -> String {
    format!(
        "| {} | {:.0}% | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {:.0} | {:.0} ({:.0}) | {} ({} slow) | {:.0} | {:.0} |\n",
        r.nodes,
        r.loss * 100.0,
        if r.identities { "on" } else { "off" },
        secs(r.converge),
        median_max(&r.event_full),
        hops(&r.event_hops),
        arrival_percentiles(&r.arrivals),
        median_max_delivered(&r.serf_full, &r.serf_arrivals),
        hops(&r.serf_hops),
        ms(r.tags),
        ms(r.deploy_desired),
        secs(r.deploy_done),
        r.deploy_waves,
        secs(r.crash_noticed),
        secs(r.rejoined),
        secs(r.healed),
        r.idle_bytes,
        r.storm_bytes,
        r.serf_storm_bytes,
        r.false_failures,
        r.slow_nodes,
        r.heap_per_node / 1024.0,
        r.wall.as_secs_f64(),
    )
}
