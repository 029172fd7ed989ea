//! The fleet on separate hosts: five agent containers from `Dockerfile.test` on an
//! `--internal` network of their own, Garage in a container as the store, and the
//! socket-activated test app in a jail on every node (readiness by `READY=1`). A prober
//! GETs every node's app throughout and counts failures.
//!
//! One scenario, each step checked through `query status --format json`, HTTP answers,
//! files on disk and metrics: publish and deploy; a node killed mid-deploy that converges
//! once back; two nodes cut off mid-deploy that converge once reconnected; a broken release
//! stopped at its canary; every agent upgraded in place with no failed request and every
//! jail adopted; a node with the wrong gossip key, a leaked host (right gossip key and
//! identity) gossiping an event signed by an untrusted key, and that key at a fleet node's
//! API, which change nothing; a rollout paused, resumed, and one cancelled. Every node
//! advertises its own container address; each deploy passes readiness (`READY=1`) and a
//! smoke test over the network before the old instance stops.
//!
//! Needs root and a Docker engine: without one it fails naming the reason, unless
//! `DROOT_FLEET_TEST_NO_DOCKER=1` (then it prints NOT RUN). Everything it makes in Docker
//! carries one label and is removed on every exit path, and at the start of the next run.

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/cfleet.rs"]
mod cfleet;
mod common;

use agent_support::wait_for;
use cfleet::{APP, Cfleet, LONG, text};
use common::sockapp::Behaviour;
use serde_json::Value;

const ALL: [u8; 5] = [1, 2, 3, 4, 5];

#[test]
fn a_fleet_of_containers_rides_out_loss_partitions_bad_releases_and_upgrades() {
    common::require_root("the container fleet test (jails in containers)");
    if !common::docker_engine_available("fleet_containers") {
        return;
    }
    let f = Cfleet::start(5);
    first_deploy(&f);
    let mark = f.probe_counts();
    killed_node_converges_once_back(&f);
    cut_off_nodes_converge_once_reconnected(&f);
    broken_release_stops_at_its_canary(&f);
    f.assert_no_failed_request(mark, "node loss, a partition and a broken canary");
    agents_upgrade_in_place(&f);
    outsiders_change_nothing(&f);
    rollout_pause_resume_and_cancel(&f);
}

/// `event deploy demo VERSION EXTRA... --wait` through n1, pinned to the published digest
/// (the CLI reads the URL template from n1's config): (exit code, the JSON report).
fn deploy_wait(f: &Cfleet, version: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["event", "deploy", APP, version];
    args.extend_from_slice(extra);
    args.extend(["--config", "/etc/droot-fleet/agent.toml"]);
    args.extend(["--wait", "--timeout", "150s", "--format", "json"]);
    let out = f.cli(1, &args);
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{args:?}: no JSON report ({e}):\n{}", text(&out)));
    let report = docs.last().cloned().unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report)
}

/// `event deploy demo VERSION EXTRA...` through n1 without waiting: the event id.
fn deploy_start(f: &Cfleet, version: &str, extra: &[&str]) -> String {
    let mut args = vec!["event", "deploy", APP, version];
    args.extend_from_slice(extra);
    args.extend(["--config", "/etc/droot-fleet/agent.toml"]);
    let out = f.cli_ok(1, &args);
    let id = out.lines().next().unwrap_or_default().trim().to_owned();
    assert_eq!(id.len(), 32, "no event id first: {out}");
    id
}

/// `rollout status ID --format json` through n1.
fn progress(f: &Cfleet, id: &str) -> Value {
    let out = f.cli_ok(1, &["rollout", "status", id, "--format", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("rollout status ({e}): {out}"))
}

fn wait_progress(f: &Cfleet, id: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    wait_for(LONG, what, || Some(progress(f, id)).filter(|p| want(p)))
}

fn list(v: &Value) -> Vec<String> {
    let mut l: Vec<String> = (v.as_array().into_iter().flatten())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    l.sort();
    l
}

fn names(nodes: &[u8]) -> Vec<String> {
    nodes.iter().map(|n| cfleet::name(*n)).collect()
}

/// Waits until node `n` runs `version` by every account: `query status` (through n1),
/// `current` on its disk, and its app's answer. On a timeout, the node's log tail.
fn wait_converged(f: &Cfleet, n: u8, version: &str) {
    let deadline = std::time::Instant::now() + LONG;
    let mut last = Value::Null;
    loop {
        last = f.status(1).remove(&cfleet::name(n)).unwrap_or(last);
        let reported = last["version"] == version && last["state"] == "running";
        if reported && f.serves(n).as_deref() == Some(version) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let log = f.agent_log(n);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "n{n} does not run {version} after {LONG:?}: last status {last}\n\
                 n1 lists {:?}\nits agent log, newest first:\n{}",
                f.members(1),
                tail.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(f.current_on_disk(n).as_deref(), Some(version), "n{n}");
}

/// The value of `droot_fleet_deploys_total{app="demo",outcome="ok"}` in node `n`'s metrics.
fn deploys_ok(f: &Cfleet, n: u8) -> u64 {
    let want = format!("droot_fleet_deploys_total{{app=\"{APP}\",outcome=\"ok\"}} ");
    (f.metrics(n).lines())
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Every node lists every member at its own container address (none at loopback, none
/// at another's), so gossip, queries and answers cross the network.
fn members_advertise_their_own_addresses(f: &Cfleet) {
    for n in ALL {
        let addrs = f.member_addrs(n);
        for i in ALL {
            let want = format!("{}:{}", f.ip(i), cfleet::GOSSIP_PORT);
            assert_eq!(
                addrs.get(&cfleet::name(i)),
                Some(&want),
                "as n{n} lists n{i}"
            );
        }
    }
}

/// Step 1: v1..v6 published into Garage from n1 (inside the network); v1 deployed, pinned,
/// to every node (ready by `READY=1`, then its smoke test); then every node's app is probed.
fn first_deploy(f: &Cfleet) {
    members_advertise_their_own_addresses(f);
    for (v, b) in [
        ("v1", Behaviour::Boots(0)),
        ("v2", Behaviour::Boots(2000)),
        ("v3", Behaviour::Boots(1000)),
        ("v4", Behaviour::Exits),
        ("v5", Behaviour::Boots(1500)),
        ("v6", Behaviour::Boots(1500)),
    ] {
        f.release_tree(1, v, b);
        let from = format!("/releases/{v}");
        let to = "s3://artifacts/{app}/{version}.tar.gz";
        let out = f.cli_ok(1, &["publish", &from, to, "--app", APP, "--version", v]);
        assert!(
            out.contains("--sha256"),
            "publish prints the deploy line: {out}"
        );
    }
    let (code, report) = deploy_wait(f, "v1", &[]);
    assert_eq!(code, 0, "deploy v1: {report}");
    assert_eq!(list(&report["ok"]), names(&ALL), "{report}");
    for n in ALL {
        wait_converged(f, n, "v1");
        assert_eq!(deploys_ok(f, n), 1, "n{n}'s metrics count one ok deploy");
        let log = f.agent_log(n);
        let smoke = log
            .lines()
            .any(|l| l.contains("hook passed") && l.contains("after_start"));
        assert!(
            smoke,
            "n{n}: no passed after_start smoke test in its log:\n{log}"
        );
    }
    f.probe(&ALL);
    f.assert_no_failed_request(f.probe_counts(), "the first rounds");
}

/// Step 2: n5 is killed (`docker kill`) while v2 deploys; the rest converge and list it
/// missing; started again, it converges to v2 with no new event.
fn killed_node_converges_once_back(f: &Cfleet) {
    f.probe(&[1, 2, 3, 4]);
    let id = deploy_start(f, "v2", &[]);
    cfleet::docker_ok(&["kill", &cfleet::container(5)]);
    let p = wait_progress(f, &id, "n1-n4 ok", |p| {
        list(&p["ok"]) == names(&[1, 2, 3, 4])
    });
    assert!(list(&p["failed"]).is_empty(), "{p}");
    for n in 1..=4 {
        wait_converged(f, n, "v2");
    }
    f.wait_members(1, "n5 failed", |m| {
        m.get("n5").map(String::as_str) == Some("failed")
    });
    let status = f.status_json(1);
    assert_eq!(list(&status["missing"]), ["n5"], "{status}");

    cfleet::docker_ok(&["start", &cfleet::container(5)]);
    f.start_agent(5, "/usr/bin/droot-fleet");
    wait_converged(f, 5, "v2");
    let p = wait_progress(f, &id, "all ok", |p| list(&p["ok"]) == names(&ALL));
    assert!(list(&p["unreachable"]).is_empty(), "{p}");
    f.probe(&ALL);
}

/// Step 3: n3 and n4 lose the network (the store's too) as v3's deploy starts; the rest
/// converge while the two still run v2 with no v3 on disk; reconnected (same addresses),
/// the two converge to v3.
fn cut_off_nodes_converge_once_reconnected(f: &Cfleet) {
    f.probe(&[1, 2, 5]);
    for n in [3, 4] {
        let c = cfleet::container(n);
        cfleet::docker_ok(&["network", "disconnect", cfleet::NETWORK, &c]);
    }
    let id = deploy_start(f, "v3", &[]);
    let p = wait_progress(f, &id, "n1, n2, n5 ok", |p| {
        names(&[1, 2, 5]).iter().all(|n| list(&p["ok"]).contains(n))
    });
    for n in [1, 2, 5] {
        wait_converged(f, n, "v3");
    }
    for n in [3, 4] {
        assert!(!list(&p["ok"]).contains(&cfleet::name(n)), "{p}");
        assert_eq!(f.current_on_disk(n).as_deref(), Some("v2"), "n{n} cut off");
        let releases = f.releases_on_disk(n);
        assert!(
            !releases.contains(&"v3".to_owned()),
            "n{n} cut off: {releases:?}"
        );
    }
    for n in [3, 4] {
        let ip = f.ip(n);
        let c = cfleet::container(n);
        cfleet::docker_ok(&["network", "connect", "--ip", &ip, cfleet::NETWORK, &c]);
    }
    for n in [3, 4] {
        wait_converged(f, n, "v3");
    }
    wait_progress(f, &id, "all ok", |p| list(&p["ok"]) == names(&ALL));
    f.probe(&ALL);
}

/// Step 4: a release that exits at once, `--canary 1 --max-parallel 2`: the canary rolls
/// back, no other node fetches or starts it.
fn broken_release_stops_at_its_canary(f: &Cfleet) {
    let (code, report) = deploy_wait(f, "v4", &["--canary", "1", "--max-parallel", "2"]);
    assert_ne!(code, 0, "a broken release is a failed deploy: {report}");
    let canary = list(&report["rolled_back"]);
    assert_eq!(canary.len(), 1, "{report}");
    let others: Vec<String> = names(&ALL)
        .into_iter()
        .filter(|n| *n != canary[0])
        .collect();
    assert_eq!(list(&report["halted"]), others, "{report}");
    for n in ALL {
        wait_converged(f, n, "v3");
        let name = cfleet::name(n);
        if name != canary[0] {
            assert!(
                !f.releases_on_disk(n).contains(&"v4".to_owned()),
                "{name} fetched v4"
            );
            // The status a node answers is refreshed on the controller's tick.
            let by = format!("halted by {}", canary[0]);
            wait_for(LONG, &format!("{name}'s phase: {by}"), || {
                let s = f.status(1).remove(&name)?;
                s["phase"].as_str()?.starts_with(&by).then_some(())
            });
        }
    }
}

/// Step 5: each agent in turn is stopped and a new binary started (`leave_running`): the
/// jail keeps serving, the new agent adopts it (same pid, one instance), no request fails.
fn agents_upgrade_in_place(f: &Cfleet) {
    let mark = f.probe_counts();
    for n in ALL {
        let before = f.app_pids(n);
        assert_eq!(before.len(), 1, "n{n}: one app instance before: {before:?}");
        let pid = wait_for(LONG, &format!("n{n}'s status answer"), || {
            f.status(1)
                .remove(&cfleet::name(n))
                .map(|s| s["pid"].clone())
        });
        f.stop_agent(n);
        assert_eq!(f.app_pids(n), before, "n{n}: the jail outlives its agent");
        let next = common::docker::static_binary();
        let to = format!("{}:/usr/bin/droot-fleet-next", cfleet::container(n));
        cfleet::docker_ok(&["cp", next.to_str().unwrap(), &to]);
        f.start_agent(n, "/usr/bin/droot-fleet-next");
        // One status answer says both: a query right after may miss the node's (UDP).
        let s = wait_for(LONG, &format!("n{n}'s new agent to report its app"), || {
            let s = f.status(1).remove(&cfleet::name(n))?;
            (s["state"] == "running").then_some(s)
        });
        assert_eq!(s["pid"], pid, "n{n}: adopted");
        assert_eq!(f.app_pids(n), before, "n{n}: adopted, not doubled");
        assert!(f.agent_log(n).contains("adopt"), "n{n}: {}", f.agent_log(n));
    }
    f.assert_no_failed_request(mark, "the agent upgrades");
}

/// Step 6: outsiders change nothing. A node whose gossip key is wrong (trusting a rogue
/// signing key) accepts its own rogue event but cannot pass it on; a node with the right
/// gossip key and identity but trusting the rogue key (a leaked host) gossips its rogue
/// event, and every fleet node refuses it; the rogue key through a fleet node's API is
/// refused.
fn outsiders_change_nothing(f: &Cfleet) {
    let dropped = |n| auth_drops(f, n);
    let before = dropped(1);
    let rogue_keyring = cfleet::path_in(f, "rogue-keyring.json");
    agent_support::write_keyring(&rogue_keyring);
    let rogue_key = cfleet::path_in(f, "rogue.key");
    let rogue = cfleet::signing_key(&rogue_key);
    f.create_node_with(6, &rogue_keyring, &rogue_key, &rogue);
    f.start_agent(6, "/usr/bin/droot-fleet");
    wait_for(LONG, "n1 to drop n6's packets", || {
        (dropped(1) > before).then_some(())
    });
    let rogue_event = ["event", "deploy", APP, "v9", "--unpinned"];
    let out = f.cli(6, &rogue_event);
    assert!(
        out.status.success(),
        "n6 takes its own key's event: {}",
        text(&out)
    );
    let seen = dropped(1);
    wait_for(LONG, "n6 to keep knocking", || {
        (dropped(1) > seen).then_some(())
    });
    assert!(!f.members(1).contains_key("n6"), "{:?}", f.members(1));

    let refused = |n| f.counter(n, "superseding_refused");
    let before: Vec<u64> = ALL.iter().map(|n| refused(*n)).collect();
    let keyring = cfleet::path_in(f, "keyring.json");
    f.create_node_with(7, &keyring, &rogue_key, &rogue);
    f.start_agent(7, "/usr/bin/droot-fleet");
    f.wait_members(1, "n7 alive", |m| {
        m.get("n7").map(String::as_str) == Some("alive")
    });
    let out = f.cli(7, &rogue_event);
    assert!(
        out.status.success(),
        "n7 takes its own key's event: {}",
        text(&out)
    );
    for (n, before) in ALL.into_iter().zip(before) {
        wait_for(LONG, &format!("n{n} to refuse n7's rogue slot"), || {
            (refused(n) > before).then_some(())
        });
    }

    let to = format!("{}:/etc/droot-fleet/rogue.key", cfleet::container(1));
    cfleet::docker_ok(&["cp", rogue_key.to_str().unwrap(), &to]);
    let out = f.cli(
        1,
        &[
            &rogue_event[..],
            &["--signing-key", "/etc/droot-fleet/rogue.key"],
        ]
        .concat(),
    );
    assert!(
        !out.status.success(),
        "an untrusted key's event: {}",
        text(&out)
    );
    assert!(text(&out).contains("trusted"), "{}", text(&out));

    let status = wait_for(LONG, "every fleet node's status answer", || {
        let s = f.status(1);
        ALL.iter()
            .all(|n| s.contains_key(&cfleet::name(*n)))
            .then_some(s)
    });
    for n in ALL {
        let s = &status[&cfleet::name(n)];
        assert_ne!(s["desired_version"], "v9", "n{n}: {s}");
        assert_eq!(s["version"], "v3", "n{n}: {s}");
        assert_eq!(f.current_on_disk(n).as_deref(), Some("v3"), "n{n}");
    }
    // n7 leaves (no target of later rollouts); n6 never joined.
    f.cli_ok(7, &["leave"]);
    f.wait_members(1, "n7 left", |m| {
        m.get("n7").map(String::as_str) == Some("left")
    });
    for n in [6, 7] {
        cfleet::docker_ok(&["rm", "-f", &cfleet::container(n)]);
    }
}

/// Gossip datagrams and streams node `n` dropped for a wrong key (its metrics).
fn auth_drops(f: &Cfleet, n: u8) -> u64 {
    let metrics = f.metrics(n);
    ["packets", "streams"]
        .iter()
        .map(|kind| {
            let want = format!("droot_fleet_gossip_{kind}_dropped_total{{reason=\"auth\"}} ");
            (metrics.lines())
                .find_map(|l| l.strip_prefix(&want)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Step 7: v5 in waves of two, paused while the first deploys: it finishes, the rest hold;
/// resumed, all go. v6 cancelled while its first wave deploys: that wave finishes, the rest
/// never start. No request fails.
fn rollout_pause_resume_and_cancel(f: &Cfleet) {
    let mark = f.probe_counts();
    let id = deploy_start(f, "v5", &["--max-parallel", "2"]);
    f.cli_ok(1, &["rollout", "pause", &id]);
    let p = wait_progress(f, &id, "wave 1 done, paused", |p| {
        p["control"] == "paused" && list(&p["ok"]).len() == 2
    });
    let held = list(&p["pending"]);
    assert_eq!(held.len(), 3, "{p}");
    // Held over several controller ticks: what must not happen is a start.
    f.probe_rounds(10);
    for node in &held {
        let s = wait_for(LONG, &format!("{node}'s status answer"), || {
            f.status(1).remove(node)
        });
        assert_eq!(s["version"], "v3", "{node} started while paused: {s}");
        assert!(s["phase"].as_str().unwrap_or("").contains("paused"), "{s}");
    }
    f.cli_ok(1, &["rollout", "resume", &id]);
    wait_progress(f, &id, "all ok", |p| list(&p["ok"]) == names(&ALL));
    for n in ALL {
        wait_converged(f, n, "v5");
    }

    let id = deploy_start(f, "v6", &["--max-parallel", "2"]);
    f.cli_ok(1, &["rollout", "cancel", &id]);
    let p = wait_progress(f, &id, "cancelled: wave 1 done, the rest halted", |p| {
        list(&p["ok"]).len() == 2 && list(&p["halted"]).len() == 3
    });
    assert_eq!(p["control"], "cancelled", "{p}");
    for node in list(&p["halted"]) {
        wait_converged(f, cfleet::num(&node), "v5");
    }
    for node in list(&p["ok"]) {
        wait_converged(f, cfleet::num(&node), "v6");
    }
    f.assert_no_failed_request(mark, "a paused, resumed and cancelled rollout");
}
