//! The markdown tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::*;

pub fn report(opts: &Opts, rows: &[Row], bin: &Path) -> String {
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
        "| N | mode | p50 ms | p99 ms | max ms | tag change ms | idle RSS MiB (anonymous) | idle CPU % |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let f = sorted(&r.full_ms);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1} ({:.1}) | {:.2} |",
            r.n,
            if r.mode == "eager" {
                "eager push"
            } else {
                "gossip only"
            },
            ms(pct(&f, 50.0)),
            ms(pct(&f, 99.0)),
            ms(pct(&f, 100.0)),
            ms(r.tag_ms),
            r.idle_rss_mib,
            r.idle_anon_mib,
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

pub fn output_path(opts: &Opts) -> PathBuf {
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
