//! Tag convergence: one agent's tags change by SIGHUP; how long until every agent's
//! `GET /v1/members` shows the new tags (issue 10, item 7: tags travel with gossip).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::*;

/// Changes a random agent's tags (appended to the shared config file, which only that
/// agent re-reads) and returns the ms until the last agent saw them.
pub async fn tag_convergence(
    opts: &Opts,
    cluster: &Cluster,
    n: usize,
    rng: &mut Rng,
) -> anyhow::Result<f64> {
    let k = rng.below(n as u64) as usize;
    let target = &cluster.agents[k];
    let value = format!("changed-{n}-{k}");
    let config = cluster.dir.path().join("agent.toml");
    let mut text = std::fs::read_to_string(&config).context("reading agent.toml")?;
    text.push_str(&format!("\n[tags]\nbench = \"{value}\"\n"));
    std::fs::write(&config, text).context("writing agent.toml")?;
    let t0 = Instant::now();
    // SAFETY: kill(2) on a child we spawned and still hold.
    if unsafe { libc::kill(target.pid() as i32, libc::SIGHUP) } != 0 {
        bail!(
            "SIGHUP to {}: {}",
            target.name,
            std::io::Error::last_os_error()
        );
    }
    let deadline = Duration::from_secs(opts.event_timeout_secs);
    let mut seen = vec![None; n];
    while seen.iter().any(Option::is_none) {
        if t0.elapsed() > deadline {
            let missing = seen.iter().filter(|s| s.is_none()).count();
            bail!(
                "{missing} agents did not see {}'s new tag within {deadline:?}",
                target.name
            );
        }
        for (i, a) in cluster.agents.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            let members = a.client().members(None).await.unwrap_or_default();
            let has = members
                .iter()
                .any(|m| m.name == target.name && m.tags.get("bench").is_some_and(|v| *v == value));
            if has {
                seen[i] = Some(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = seen.into_iter().flatten().max().unwrap_or_default();
    Ok(last.as_secs_f64() * 1e3)
}
