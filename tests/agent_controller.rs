//! What the deploy controller needs from the agent (issue 10, items 7 and 10), on real
//! agent processes on 127.77.9x.N: an in-process consumer gets each matching event
//! once, across restarts, until it acknowledged it; and a tag changed by SIGHUP
//! reaches every member at gossip speed. Every wait is on a state, bounded.

#[path = "common/agent.rs"]
mod agent_support;

use std::time::{Duration, Instant};

use agent_support::{Cluster, wait_for};

const LONG: Duration = Duration::from_secs(20);

/// `ID NAME PAYLOAD` lines the debug consumer recorded.
fn recorded(file: &std::path::Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let mut next = || it.next().unwrap_or_default().to_owned();
            (next(), next(), next())
        })
        .collect()
}

fn named<'a>(
    lines: &'a [(String, String, String)],
    name: &str,
) -> Vec<&'a (String, String, String)> {
    lines.iter().filter(|l| l.1 == name).collect()
}

/// Item 10: journaled before delivery, acknowledged after. An acknowledged event is
/// not delivered again after a crash; one delivered but not acknowledged when the
/// agent was killed is delivered again after the restart (same id), then no more.
#[test]
fn consumer_gets_each_event_once_until_acknowledged() {
    let mut c = Cluster::new("77.90");
    c.snapshot_interval = "1h".into();
    let file = c.dir.path().join("consumed");
    let spec = format!("deploy-={}", file.display());
    let a1 = c.start(1, &[], "");
    let mut a2 = c.start_args(
        2,
        &[1],
        "",
        Some(&c.keyring.clone()),
        &["--debug-consumer", &spec],
    );
    wait_for(LONG, "two members", || {
        (a1.alive_count() == 2).then_some(())
    });

    for (name, payload) in [("deploy-web", "v42"), ("other", "x"), ("deploy-db", "hold")] {
        assert!(a1.cli(&["event", name, payload]).status.success());
    }
    wait_for(LONG, "both deploy events consumed", || {
        let l = recorded(&file);
        (named(&l, "deploy-web").len() == 1 && named(&l, "deploy-db").len() == 1).then_some(())
    });
    // The shell handler got all three: the consumer only its prefix.
    wait_for(LONG, "other handled by the shell handler", || {
        (c.deliveries("n2", "other").len() == 1).then_some(())
    });
    assert!(named(&recorded(&file), "other").is_empty());

    a2.kill9();
    a2.spawn();
    wait_for(LONG, "the unacknowledged event delivered again", || {
        (named(&recorded(&file), "deploy-db").len() == 2).then_some(())
    });
    a2.wait_push_pulls(3); // push/pull rounds re-offer every event
    let l = recorded(&file);
    assert_eq!(
        named(&l, "deploy-web").len(),
        1,
        "acknowledged, yet delivered again: {l:?}"
    );
    let db = named(&l, "deploy-db");
    assert_eq!(db[0].0, db[1].0, "the same event id");

    // Now acknowledged: a second crash delivers nothing again.
    a2.kill9();
    a2.spawn();
    wait_for(LONG, "restarted n2 alive again", || {
        (a1.status_of("n2").as_deref() == Some("alive") && a2.alive_count() == 2).then_some(())
    });
    a2.wait_push_pulls(3);
    let l = recorded(&file);
    assert_eq!(named(&l, "deploy-db").len(), 2, "{l:?}");
    assert_eq!(named(&l, "deploy-web").len(), 1, "{l:?}");
}

fn tags_table(role: &str) -> String {
    format!("\n[tags]\nrole = \"{role}\"\n")
}

/// Tags of `node` as `a`'s `members --format json` shows them.
fn tags_seen(a: &agent_support::Agent, node: &str) -> Option<serde_json::Value> {
    let out = a.cli(&["members", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    list.as_array()?
        .iter()
        .find(|m| m["name"] == node)
        .map(|m| m["tags"].clone())
}

/// Item 7: tags travel with gossip, not only with push/pull (here once an hour), so
/// a SIGHUP'd change reaches every member within seconds.
#[test]
fn sighup_tag_change_reaches_every_member_in_seconds() {
    let n = 6u8;
    let mut c = Cluster::new("77.91");
    c.push_pull_interval = "1h".into();
    let agents: Vec<_> = (1..=n)
        .map(|i| {
            let join: &[u8] = if i == 1 { &[] } else { &[1] };
            c.start(i, join, &tags_table("old"))
        })
        .collect();
    wait_for(LONG, "every agent sees every member", || {
        agents
            .iter()
            .all(|a| a.alive_count() == usize::from(n))
            .then_some(())
    });
    wait_for(LONG, "every agent knows n3's first tags", || {
        agents
            .iter()
            .all(|a| tags_seen(a, "n3") == Some(serde_json::json!({"role": "old"})))
            .then_some(())
    });

    std::fs::write(&agents[2].config, c.config(&tags_table("web"))).unwrap();
    agents[2].signal(nix::sys::signal::Signal::SIGHUP);
    let t0 = Instant::now();
    wait_for(LONG, "every agent sees n3's new tags", || {
        agents
            .iter()
            .all(|a| tags_seen(a, "n3") == Some(serde_json::json!({"role": "web"})))
            .then_some(())
    });
    let took = t0.elapsed();
    eprintln!("tag change reached {n} agents in {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
