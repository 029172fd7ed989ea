//! Issue 15, item 8: a cluster of the previous release upgrades host by host to node
//! identities, with no outage: real agents of both releases in one cluster (127.77.95.N).
//!
//! The previous release is built once per machine from this repository's history by
//! `.ci/previous-release.sh` (the commit before node identities). The steps are the
//! README's: replace the binary host by host; enroll each host with
//! `require_node_identity = false`; once every member shows an identity, require it
//! (SIGHUP). At every step every member sees every other alive, and a user event from an
//! old agent and from a new one reaches each node exactly once.

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/attacker.rs"]
mod attacker;
mod common;
#[path = "common/ops.rs"]
mod ops;

use std::path::Path;

use agent_support::{Agent, Cluster, wait_for};
use common::previous_release;
use ops::{LONG, ok, wait_all_alive};

/// The cluster's config without the identity keys (the previous release refuses keys it
/// does not know).
fn legacy_config(c: &Cluster) -> String {
    c.config("")
        .lines()
        .filter(|l| !l.starts_with("enrollment_keys") && !l.starts_with("require_node_identity"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn old_agent(c: &Cluster, n: u8, program: &Path) -> Agent {
    let name = format!("n{n}");
    let config = c.dir.path().join(format!("{name}.toml"));
    std::fs::write(&config, legacy_config(c)).unwrap();
    let mut a = Agent {
        addr: c.addr(n),
        data_dir: c.dir.path().join(&name),
        config,
        join: if n == 1 { vec![] } else { vec![c.addr(1)] },
        keyring: Some(c.keyring.clone()),
        identity: None,
        program: Some(program.to_owned()),
        log: c.dir.path().join(format!("{name}.log")),
        args: Vec::new(),
        child: None,
        name,
    };
    a.spawn();
    a
}

/// Stops `a` as an SRE would (SIGTERM: it leaves), then starts it again: this build, with
/// `config` (and enrolled, when `enrolled`).
fn restart_upgraded(c: &Cluster, a: &mut Agent, config: &str, enrolled: bool) {
    a.signal(nix::sys::signal::Signal::SIGTERM);
    a.wait_exit(LONG);
    std::fs::write(&a.config, config).unwrap();
    a.program = None;
    a.identity = enrolled.then(|| c.enrollment.identity(&a.name));
    a.spawn();
}

/// A user event from `from` reaches every node exactly once.
fn event_reaches_all(c: &Cluster, agents: &[Agent], from: usize, name: &str) {
    ok(&agents[from].cli(&["event", name, "x"]));
    for a in agents {
        wait_for(LONG, &format!("{} to run {name} once", a.name), || {
            (c.deliveries(&a.name, name).len() == 1).then_some(())
        });
    }
}

fn identities_seen(a: &Agent) -> usize {
    let out = a.cli(&["members", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|l| l.iter().filter(|m| m["identity"].is_object()).count())
        .unwrap_or(0)
}

#[test]
fn a_cluster_of_the_previous_release_upgrades_to_node_identities_host_by_host() {
    let old = previous_release();
    let c = Cluster::new("77.95");
    let mut a: Vec<Agent> = (1..=3).map(|n| old_agent(&c, n, &old)).collect();
    wait_all_alive(&a, 3);

    // 1. The binary, host by host, with the config as it was.
    restart_upgraded(&c, &mut a[0], &legacy_config(&c), false);
    wait_all_alive(&a, 3);
    event_reaches_all(&c, &a, 1, "from-old-1");
    event_reaches_all(&c, &a, 0, "from-new-1");

    // 2. Enrollment, host by host, identities not yet required; n3 is still old.
    let transition = c.config("");
    restart_upgraded(&c, &mut a[0], &transition, true);
    restart_upgraded(&c, &mut a[1], &transition, true);
    wait_all_alive(&a, 3);
    wait_for(LONG, "n1 to hold n1's and n2's identities", || {
        (identities_seen(&a[0]) == 2).then_some(())
    });
    event_reaches_all(&c, &a, 2, "from-old-2");
    event_reaches_all(&c, &a, 0, "from-enrolled-2");

    // 3. The last host, then identities required everywhere by SIGHUP.
    restart_upgraded(&c, &mut a[2], &transition, true);
    wait_all_alive(&a, 3);
    let required = transition.replace(
        "require_node_identity = false",
        "require_node_identity = true",
    );
    for agent in &a {
        std::fs::write(&agent.config, &required).unwrap();
        agent.signal(nix::sys::signal::Signal::SIGHUP);
    }
    for agent in &a {
        wait_for(
            LONG,
            &format!("{} to hold every identity", agent.name),
            || (identities_seen(agent) == 3).then_some(()),
        );
    }
    wait_all_alive(&a, 3);
    event_reaches_all(&c, &a, 1, "from-required-3");

    // A holder of the gossip key alone is no member now.
    let ghost = attacker::Attacker::new(&c.keyring, "ghost", "127.77.95.66:17946");
    let members = vec![foca::Member::alive(ghost.id.clone())];
    ghost.push(&c.addr(1), ghost.state(&[], members)).unwrap();
    a[0].wait_push_pulls(2);
    assert!(a[0].status_of("ghost").is_none(), "{:?}", a[0].members());
}
