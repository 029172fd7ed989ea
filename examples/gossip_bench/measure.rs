//! Firing events and timing their arrival on every agent's monitor stream.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;

use super::*;

#[derive(Debug, Default, Clone)]
pub struct Row {
    pub n: usize,
    pub mode: String,
    pub events: usize,
    pub complete: usize,
    /// Per event: ms to 100% of nodes (INFINITY if it never got there).
    pub full_ms: Vec<f64>,
    /// Per event: ms to 90% of nodes.
    pub p90_nodes_ms: Vec<f64>,
    /// Every (node, event) arrival except the origin's own, ms.
    pub node_ms: Vec<f64>,
    /// Per event: how long `POST /v1/event` took, ms.
    pub api_ms: Vec<f64>,
    pub idle_rss_mib: f64,
    pub idle_rss_max_mib: f64,
    /// The anonymous part of the RSS (heap, stacks): what the agent's state costs, without
    /// the binary's code pages (shared, clean page cache, flat in N).
    pub idle_anon_mib: f64,
    pub idle_cpu_pct: f64,
    /// Sum over agents during the event phase, % of one core.
    pub busy_cpu_pct: f64,
    /// Host CPU busy during the event phase, % of all cores.
    pub host_busy_pct: f64,
    /// Host CPU busy during the idle window (other load on the machine), % of all cores.
    pub host_idle_busy_pct: f64,
    pub udp_errors: u64,
    /// (node, event) deliveries later than 100 ms.
    pub late_nodes: usize,
    pub events_pushed: u64,
    /// ms until every agent saw one agent's SIGHUP'd tag change.
    pub tag_ms: f64,
}

/// Linear-interpolated percentile of a sorted slice (INFINITY stays infinite).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
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

pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

pub fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "timeout".into()
    }
}

/// One monitor arrival: (agent index, event name, when).
pub type Arrival = (usize, String, Instant);

/// Subscribes to every agent's monitor stream; arrivals of user events go to the channel.
pub fn subscribe(
    cluster: &Cluster,
    tx: &mpsc::UnboundedSender<Arrival>,
) -> tokio::task::JoinSet<()> {
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
pub async fn fire(
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

pub async fn measure(
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

pub async fn measure_cluster(
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
    let mib = |field: &str| -> Vec<f64> {
        (pids.iter())
            .filter_map(|&p| status_kib(p, field))
            .map(|k| k as f64 / 1024.0)
            .collect()
    };
    let (rss, anon) = (mib("VmRSS"), mib("RssAnon"));
    row.idle_rss_mib = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    row.idle_rss_max_mib = rss.iter().copied().fold(0.0, f64::max);
    row.idle_anon_mib = anon.iter().sum::<f64>() / anon.len().max(1) as f64;
    eprintln!(
        "  idle: RSS {:.1} MiB/agent (max {:.1}; anonymous {:.1}), CPU {:.2}% of a core/agent, host {:.0}% busy",
        row.idle_rss_mib,
        row.idle_rss_max_mib,
        row.idle_anon_mib,
        row.idle_cpu_pct,
        row.host_idle_busy_pct
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
    row.tag_ms = tag_convergence(opts, cluster, n, rng).await?;
    eprintln!(
        "  tag change seen by all {n} agents in {:.0} ms",
        row.tag_ms
    );
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
