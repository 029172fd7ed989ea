//! The fleet deploy pipeline end to end (issue 7), as root, on real parts: five and more
//! `droot-fleet agent` processes on 127.78.x.N, artifacts in a private Garage (s3://), a
//! busybox `httpd` jail per node listening on the node's own address, health over HTTP.
//! The operator side is the real CLI (`event deploy --wait`, `rollback`, `query status`);
//! hostile events are built with the library and handed to `POST /v1/deploy` of an agent
//! that checks nothing (`--dev` without keys), as an attacker's own agent would.
//!
//! Every wait is on a signal (a `--wait` verdict, a status answer, a log line), bounded.
//! The tests run one at a time (each [`Fleet`] holds a lock).

#[path = "common/agent.rs"]
mod agent_support;
mod common;
#[path = "common/fleet.rs"]
mod fleet;

use agent_support::wait_for;
use fleet::{Fleet, Kind, LONG, NodeSpec, current, names, releases, text};
use serde_json::Value;

/// A Garage-backed fleet of five nodes with v1 and v2 published.
fn five_with_v1_v2(net: &str) -> Fleet {
    let mut f = Fleet::with_garage(net);
    f.publish("v1", Kind::Healthy);
    f.publish("v2", Kind::Healthy);
    f.start_all(5);
    f
}

fn node_names(count: u8) -> Vec<String> {
    (1..=count).map(|n| format!("n{n}")).collect()
}

/// Asserts a `--wait` run ended 0 with every node in `nodes` ok.
fn assert_all_ok((code, report): &(i32, Value), version: &str, nodes: &[String]) {
    assert_eq!(*code, 0, "--wait for {version} did not succeed: {report}");
    assert_eq!(report["version"], version, "{report}");
    assert_eq!(names(&report["ok"]), nodes, "{report}");
    for l in ["failed", "rolled_back", "pending"] {
        assert!(names(&report[l]).is_empty(), "{l} not empty: {report}");
    }
}

/// Jail pid per node, from `query status` (asserting each runs `version`).
fn pids_on(f: &Fleet, via: u8, nodes: &[String], version: &str) -> Vec<i64> {
    let st = f.status(via);
    nodes
        .iter()
        .map(|n| {
            let v = st
                .get(n)
                .unwrap_or_else(|| panic!("{n} did not answer: {st:?}"));
            assert_eq!(v["version"], version, "{n}: {v}");
            assert_eq!(v["state"], "running", "{n}: {v}");
            v["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("{n} no pid: {v}"))
        })
        .collect()
}

/// Waits until `query status` via node `via` shows every node of `nodes` with its last outcome for
/// the event `id` (a node's row is refreshed just after its outcome is gossiped), and
/// returns the answers.
fn status_after(
    f: &Fleet,
    via: u8,
    nodes: &[String],
    id: &Value,
) -> std::collections::BTreeMap<String, Value> {
    wait_for(
        LONG,
        &format!("status of {nodes:?} after event {id}"),
        || {
            let st = f.status(via);
            nodes
                .iter()
                .all(|n| {
                    st.get(n)
                        .is_some_and(|v| &v["last_deploy"]["event_id"] == id)
                })
                .then_some(st)
        },
    )
}

/// Each node's status row agrees with its disk: `current`, the release before it, and the
/// jail pid of its pid file.
fn assert_matches_disk(f: &Fleet, st: &std::collections::BTreeMap<String, Value>, count: u8) {
    for n in 1..=count {
        let v = &st[&format!("n{n}")];
        let cur = v["version"].as_str().unwrap();
        assert_eq!(current(&f.root(n)), Some(format!("releases/{cur}")), "n{n}");
        let rels = releases(&f.root(n));
        assert_eq!(v["releases"], serde_json::json!(rels), "n{n}");
        assert!(v["since"].as_u64().is_some_and(|s| s > 0), "n{n}: {v}");
        if let Some(prev) = v["previous"].as_str() {
            assert!(
                rels.iter().any(|r| r == prev),
                "n{n}: {prev} not in {rels:?}"
            );
        }
        let pid_file = f.base.join(format!("n{n}/apps/web.pid"));
        let rec: Value = serde_json::from_slice(&std::fs::read(&pid_file).unwrap()).unwrap();
        assert_eq!(
            (&rec["pid"], &rec["release"]),
            (&v["pid"], &v["version"]),
            "n{n}: {} against the status {v}; its agent's log:\n{}",
            pid_file.display(),
            f.agent(n).log_text()
        );
        let jails = fleet::run_pids(&f.root(n));
        assert_eq!(jails, [rec["pid"].as_u64().unwrap() as u32], "n{n}: jails");
    }
}

/// `query status web` as text: a row per node on `version`, running, and the summary.
fn status_text(f: &Fleet, via: u8, nodes: &[String], version: &str) {
    let out = f.cli(via, &["query", "status", "web"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let summary = format!("{}/{} nodes on web {version}", nodes.len(), nodes.len());
    assert!(t.contains(&summary), "{t}");
    for n in nodes {
        let row = t.lines().find(|l| l.starts_with(&format!("{n} ")));
        let row = row.unwrap_or_else(|| panic!("no row for {n}:\n{t}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        // NODE APP VERSION DESIRED STATE (PID) SINCE ...
        assert_eq!(
            cells[..5],
            [n.as_str(), "web", version, version, "running"],
            "{row}"
        );
    }
}

/// Items 1 and 4: v1 then v2 over s3:// to five nodes; a version already in `releases/`
/// is switched to without a download; the current version is a no-op.
#[test]
fn v1_then_v2_over_s3_then_a_present_version_and_the_current_one() {
    let f = five_with_v1_v2("78.1");
    let all = node_names(5);

    let r = f.deploy_via(1, "v1", &[]);
    assert_all_ok(&r, "v1", &all);
    for n in 1..=5u8 {
        assert_eq!(f.get(n, "/version").as_deref(), Some("v1"), "n{n}");
        assert_eq!(releases(&f.root(n)), ["v1"], "n{n}");
    }
    status_after(&f, 3, &all, &r.1["event_id"]);
    let v1_pids = pids_on(&f, 3, &all, "v1");
    status_text(&f, 3, &all, "v1");

    let r = f.deploy_via(4, "v2", &[]);
    assert_all_ok(&r, "v2", &all);
    let st = status_after(&f, 1, &all, &r.1["event_id"]);
    status_text(&f, 5, &all, "v2");
    assert_matches_disk(&f, &st, 5);
    for (i, n) in all.iter().enumerate() {
        let v = &st[n];
        assert_eq!(
            (&v["version"], &v["previous"]),
            (&"v2".into(), &"v1".into())
        );
        assert_eq!(v["last_deploy"]["outcome"], "ok", "{n}: {v}");
        assert_eq!(v["last_deploy"]["version"], "v2", "{n}: {v}");
        assert_eq!(v["last_deploy"]["event_id"], r.1["event_id"], "{n}: {v}");
        let pid = v["pid"].as_i64().unwrap();
        assert_ne!(pid, v1_pids[i], "{n}: the jail was not restarted");
        assert!(!fleet::alive(v1_pids[i]), "{n}: the v1 jail still runs");
        assert_eq!(f.get(i as u8 + 1, "/version").as_deref(), Some("v2"), "{n}");
        assert_eq!(releases(&f.root(i as u8 + 1)), ["v1", "v2"], "{n}");
    }

    // v1 is on disk everywhere; with its object gone, only a switch can succeed.
    f.unpublish("v1");
    let r = f.cli_wait(2, &["rollback", "web", "--to", "v1"]);
    assert_all_ok(&r, "v1", &all);
    for n in 1..=5u8 {
        assert_eq!(f.get(n, "/version").as_deref(), Some("v1"), "n{n}");
        assert_eq!(current(&f.root(n)).as_deref(), Some("releases/v1"), "n{n}");
    }
    status_after(&f, 2, &all, &r.1["event_id"]);
    let pids = pids_on(&f, 2, &all, "v1");

    // The current version again: ok at once, the same jails.
    let r = f.deploy_via(5, "v1", &[]);
    assert_all_ok(&r, "v1", &all);
    status_after(&f, 1, &all, &r.1["event_id"]);
    assert_eq!(pids_on(&f, 1, &all, "v1"), pids);
    for n in 1..=5u8 {
        assert_eq!(releases(&f.root(n)), ["v1", "v2"], "n{n}");
    }

    // Four deploy events, 20 outcomes: the outcomes travel as superseding slots, so every
    // node's event log (what anti-entropy replays) holds the four deploy events only.
    for a in &f.agents {
        let c = &a.info()["counters"];
        assert_eq!(c["events_delivered"], 4, "{}: {c}", a.name);
        assert_eq!(c["superseding_slots_full"], 0, "{}: {c}", a.name);
    }
}

/// The operator's signing key, as the library reads it.
fn fleet_key(f: &Fleet) -> ed25519_dalek::SigningKey {
    let t = std::fs::read_to_string(&f.key).unwrap();
    droot_fleet::deploy::signed::signing_key_from_text(&t, "the test key").unwrap()
}

/// A `web` deploy event for `version`, issued `age_s` seconds ago, for every node.
fn event(version: &str, age_s: u64) -> droot_fleet::deploy::signed::DeployEvent {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    droot_fleet::deploy::signed::DeployEvent {
        app: "web".into(),
        version: version.into(),
        url: String::new(),
        sha256: None,
        targets: Default::default(),
        rollout: Default::default(),
        issued_at_ms: now_ms - age_s * 1000,
        id: droot_fleet::deploy::signed::DeployEvent::random_id(),
        options: Default::default(),
        chunks: None,
    }
}

fn signed(
    ev: droot_fleet::deploy::signed::DeployEvent,
    key: &ed25519_dalek::SigningKey,
) -> Vec<u8> {
    droot_fleet::deploy::signed::SignedEvent::sign(ev, key)
        .unwrap()
        .encode()
        .unwrap()
}

const REFUSED: &str = "deploy event refused; nothing fetched";

/// Waits until each agent logged a refusal containing every one of `why`.
fn wait_refused(agents: &[agent_support::Agent], why: &[&str]) {
    let mut needles = vec![REFUSED];
    needles.extend_from_slice(why);
    for a in agents {
        wait_for(LONG, &format!("{} to log {needles:?}", a.name), || {
            (fleet::agent_log_lines(a, &needles) > 0).then_some(())
        });
    }
}

/// Item 2: an untrusted signer, a forged body, a stale event, a replay and garbage are each
/// refused on every node with a log line naming why, and nothing is fetched; an agent
/// without trusted keys refuses, a `--dev` agent without keys accepts.
#[test]
fn untrusted_forged_stale_replayed_and_garbage_events_are_refused() {
    let mut f = Fleet::with_garage("78.2");
    for v in ["v1", "v2", "v3"] {
        f.publish(v, Kind::Healthy);
    }
    f.start_all(5);
    let no_keys = NodeSpec {
        trusted: false,
        ..NodeSpec::default()
    };
    // The entry agent checks an event as a receiver would and refuses to gossip what it
    // would not act on; an attacker's own agent does not. n7 plays it: `--dev` without
    // keys (no signature check) and a lax age limit.
    let dev = NodeSpec {
        trusted: false,
        args: vec!["--dev".into()],
        deploy: "max_age = \"1000h\"\n".into(),
        ..NodeSpec::default()
    };
    f.add(6, &[1], no_keys);
    f.add(7, &[1], dev.clone());
    let agents = &f.agents;
    fleet::wait_all_alive(agents, 7);
    agents[0].wait_push_pulls(2);
    let five = &agents[..5];
    let all = node_names(5);
    assert!(fleet::agent_log_lines(&agents[5], &["no trusted_signing_keys"]) > 0);

    // A good event, by the operator's key through the API: the five and the dev node act.
    let key = fleet_key(&f);
    let ev1 = event("v1", 0);
    let e1 = signed(ev1.clone(), &key);
    f.post(1, &e1).expect("the agent takes a signed event");
    for n in [1u8, 2, 3, 4, 5, 7] {
        f.wait_serving(n, "v1");
    }
    assert!(
        fleet::agent_log_lines(&agents[6], &["--dev", "WITHOUT a signature check"]) > 0,
        "{}",
        agents[6].log_text()
    );
    wait_refused(&agents[5..6], &["no trusted signing keys"]);
    assert_eq!(releases(&f.root(6)), Vec::<String>::new());
    assert!(f.get(6, "/version").is_none());

    let r = f.deploy_via(1, "v2", &["--node", "n[1-5]"]);
    assert_all_ok(&r, "v2", &all);

    // Each hostile event would deploy v3 (its artifact is in the bucket) if accepted. A
    // trusted entry agent refuses to send it (400 naming why); sent through n7, it reaches
    // every node, and each refuses it.
    let stranger = droot_fleet::deploy::signed::generate_signing_key();
    let untrusted_ev = event("v3", 0);
    let untrusted = signed(untrusted_ev.clone(), &stranger);
    let e = f.post(2, &untrusted).unwrap_err();
    assert!(e.contains("signature does not verify"), "{e}");
    f.post(7, &untrusted).unwrap();
    wait_refused(five, &[&untrusted_ev.id_hex(), "signature does not verify"]);

    let forged_ev = event("v3", 0);
    let mut forged = signed(forged_ev.clone(), &key);
    let at = forged.windows(2).position(|w| w == b"v3").unwrap();
    forged[at + 1] = b'1'; // "v3" -> "v1" (on disk: accepted, it would switch), signature kept
    let e = f.post(3, &forged).unwrap_err();
    assert!(e.contains("signature does not verify"), "{e}");
    f.post(7, &forged).unwrap();
    wait_refused(five, &[&forged_ev.id_hex(), "signature does not verify"]);

    let stale_ev = event("v3", 2 * 3600);
    let stale = signed(stale_ev.clone(), &key);
    let e = f.post(4, &stale).unwrap_err();
    assert!(e.contains("older than the 3600s allowed"), "{e}");
    f.post(7, &stale).unwrap();
    wait_refused(five, &[&stale_ev.id_hex(), "older than the 3600s allowed"]);

    // A replay handed to an agent that accepted the event is refused at once, not gossiped.
    let e = f.post(5, &e1).unwrap_err();
    assert!(e.contains("already seen (replayed)"), "{e}");
    assert!(e.contains("was not sent"), "{e}");
    assert_eq!(
        fleet::agent_log_lines(&agents[4], &[REFUSED, &ev1.id_hex(), "replayed"]),
        0,
        "n5 gossiped the replay it refused"
    );
    // Gossiped anyway, by an agent that never saw it (a fresh n8, alone until n7 bridges
    // it in), every node refuses it.
    f.inject_through_fresh(8, dev.clone(), 7, &e1);
    let agents = &f.agents;
    let five = &agents[..5];
    wait_refused(five, &[&ev1.id_hex(), "already seen (replayed)"]);

    let out = agents[0].cli(&["event", "_deploy", "garbage, not a deploy event"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_refused(five, &["malformed"]);
    // The API itself refuses what is not a deploy event, naming why.
    let e = f.post(1, b"garbage").unwrap_err();
    assert!(e.contains("malformed"), "{e}");

    for n in 1..=5u8 {
        let a = &agents[usize::from(n) - 1];
        assert_eq!(
            releases(&f.root(n)),
            ["v1", "v2"],
            "n{n}: something fetched"
        );
        assert_eq!(current(&f.root(n)).as_deref(), Some("releases/v2"), "n{n}");
        assert_eq!(f.get(n, "/version").as_deref(), Some("v2"), "n{n}");
        assert_eq!(fleet::agent_log_lines(a, &["deploying", "v3"]), 0, "n{n}");
    }
    assert_eq!(releases(&f.root(6)), Vec::<String>::new());

    // A restarted agent still knows the ids it accepted (they are in its deploy state): the
    // replay is refused as one again, not merely found older than the desired state, both
    // at its API and when it arrives by gossip.
    let replayed = [REFUSED, &ev1.id_hex(), "already seen (replayed)"];
    let before = fleet::agent_log_lines(&f.agents[1], &replayed);
    f.agents[1].kill9();
    f.respawn(2);
    f.agent(2).wait_push_pulls(2);
    let e = f.post(2, &e1).unwrap_err();
    assert!(e.contains("already seen (replayed)"), "{e}");
    f.inject_through_fresh(9, dev, 7, &e1);
    wait_for(LONG, "the restarted n2 to refuse the replay", || {
        (fleet::agent_log_lines(&f.agents[1], &replayed) > before).then_some(())
    });
    assert_eq!(f.get(2, "/version").as_deref(), Some("v2"));
}

/// Item 3: a digest mismatch fails on every node, activates nothing and leaves no staging.
#[test]
fn a_sha256_mismatch_fails_everywhere_and_activates_nothing() {
    let f = five_with_v1_v2("78.3");
    let v1 = std::fs::read(f.arts.join("v1.tar.gz")).unwrap();
    let all = node_names(5);
    let good = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&v1));
    let r = f.deploy_via(1, "v1", &["--sha256", &good]);
    assert_all_ok(&r, "v1", &all);
    status_after(&f, 1, &all, &r.1["event_id"]);
    let pids = pids_on(&f, 1, &all, "v1");

    // v1's digest is a real one, just not v2's.
    let (code, report) = f.deploy_via(2, "v2", &["--sha256", &good]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(names(&report["failed"]), all, "{report}");
    assert!(names(&report["ok"]).is_empty(), "{report}");
    for n in &all {
        let e = report["errors"][n].as_str().unwrap_or_default();
        assert!(e.contains("sha256 mismatch"), "{n}: {report}");
    }
    let st = status_after(&f, 3, &all, &report["event_id"]);
    for n in 1..=5u8 {
        let name = format!("n{n}");
        assert_eq!(releases(&f.root(n)), ["v1"], "{name}");
        assert_eq!(current(&f.root(n)).as_deref(), Some("releases/v1"));
        assert_eq!(fleet::staging_left(&f.root(n)), Vec::<String>::new());
        assert_eq!(f.get(n, "/version").as_deref(), Some("v1"));
        assert_eq!(st[&name]["last_deploy"]["outcome"], "failed", "{name}");
        assert_eq!(st[&name]["version"], "v1", "{name}");
    }
    assert_eq!(pids_on(&f, 4, &all, "v1"), pids, "a jail was restarted");
}

/// Item 5: a node killed during a deploy converges once back, without a new event; a node
/// that joins later converges; a restarted agent adopts its jail and redoes nothing.
#[test]
fn down_and_new_nodes_converge_and_a_restart_redoes_nothing() {
    let mut f = five_with_v1_v2("78.4");
    let r = f.deploy_via(1, "v1", &[]);
    assert_all_ok(&r, "v1", &node_names(5));

    f.agents[4].kill9(); // its jail keeps serving v1
    wait_for(LONG, "n1 to see n5 failed", || {
        (f.agents[0].status_of("n5").as_deref() == Some("failed")).then_some(())
    });
    let r = f.deploy_via(1, "v2", &[]);
    assert_unreachable_only(r.0, &r.1, &node_names(4), "n5");
    assert_eq!(f.get(5, "/version").as_deref(), Some("v1"));

    // Back within one push/pull interval: the join's own exchange brings the desired state.
    f.respawn(5);
    let ms = ms_to_deploying(f.agent(5), "v2");
    assert!(ms < CONVERGE_MS, "n5 started v2 {ms} ms after its restart");
    f.wait_serving(5, "v2");
    let st = status_after(&f, 5, &["n5".into()], &r.1["event_id"]);
    assert_eq!(st["n5"]["version"], "v2", "{st:?}");
    assert!(fleet::agent_log_lines(&f.agents[4], &["adopted a running jail"]) > 0);

    f.add(6, &[2], NodeSpec::default());
    let ms = ms_to_deploying(f.agent(6), "v2");
    assert!(ms < CONVERGE_MS, "n6 started v2 {ms} ms after it joined");
    f.wait_serving(6, "v2");
    assert_eq!(releases(&f.root(6)), ["v2"]);

    status_after(&f, 2, &["n1".into(), "n6".into()], &r.1["event_id"]);
    let pid = pids_on(&f, 2, &["n1".into()], "v2")[0];
    let deploys = fleet::agent_log_lines(&f.agents[0], &["deploying"]);
    assert_eq!(deploys, 2, "{}", f.agents[0].log_text());
    f.agents[0].kill9();
    f.agents[0].join = vec![f.agents[1].addr.clone()]; // n1 was the seed: it joins n2 now
    f.respawn(1);
    wait_for(LONG, "restarted n1 adopts its jail", || {
        (fleet::agent_log_lines(&f.agents[0], &["adopted a running jail"]) == 1).then_some(())
    });
    fleet::wait_all_alive(&f.agents, 6);
    f.agents[0].wait_push_pulls(3); // the desired state came back; nothing is owed
    assert_eq!(pids_on(&f, 1, &["n1".into()], "v2"), [pid]);
    assert_eq!(
        fleet::agent_log_lines(&f.agents[0], &["deploying"]),
        deploys
    );
    assert_eq!(releases(&f.root(1)), ["v1", "v2"]);
}

/// How soon a node that was away must start the desired version, in ms: within one
/// `push_pull_interval` (1 s here) of its (re)start, the join's own exchange bringing the
/// state, plus the controller's sync check (every 500 ms) and a loaded machine's start-up.
const CONVERGE_MS: f64 = 2000.0;

/// Waits until `a` logs that it is deploying `version`, and returns how long after its
/// agent's (last) start that was, in ms, from the agent's own log timestamps.
fn ms_to_deploying(a: &agent_support::Agent, version: &str) -> f64 {
    let needles = [": deploying ", &format!("version={version}")];
    wait_for(
        LONG,
        &format!("{} to start deploying {version}", a.name),
        || (fleet::agent_log_lines(a, &needles) > 0).then_some(()),
    );
    let log = a.log_text();
    let started = log
        .lines()
        .rev()
        .find(|l| l.contains("agent started"))
        .map(fleet::log_ms)
        .expect("an 'agent started' line");
    let deploying = log
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(fleet::log_ms)
        .find(|t| *t >= started || started - *t > 43_200_000.0)
        .expect("a 'deploying' line after the start");
    // Across midnight the clock of the day wraps.
    (deploying - started).rem_euclid(86_400_000.0)
}

/// Waits until node `n`'s log shows it deploying `version` (its activation began).
fn wait_deploying(f: &Fleet, n: u8, version: &str) {
    wait_for(LONG, &format!("n{n} to start deploying {version}"), || {
        (fleet::agent_log_lines(f.agent(n), &[": deploying ", &format!("version={version}")]) > 0)
            .then_some(())
    });
}

/// Item 5, stopped instead of killed. First a node SIGSTOPped before the event is sent:
/// once the others see it failed it is listed unreachable (so `--wait` ends, and not with
/// success), and after SIGCONT it converges without a new event. Then a node SIGSTOPped in
/// the middle of its activation (the new jail up, its health check running): the same, and
/// after SIGCONT it finishes that activation ok.
#[test]
fn a_node_stopped_during_a_deploy_converges_after_sigcont() {
    let f = five_with_v1_v2("78.5");
    f.publish("v3", Kind::Slow(3000));
    let agents = &f.agents;
    let r = f.deploy_via(1, "v1", &[]);
    assert_all_ok(&r, "v1", &node_names(5));
    let others: Vec<String> = ["n1", "n2", "n3", "n5"].map(String::from).to_vec();

    agents[3].signal(nix::sys::signal::Signal::SIGSTOP);
    let (code, report) = f.deploy_via(1, "v2", &[]);
    assert_unreachable_only(code, &report, &others, "n4");
    assert_eq!(f.get(4, "/version").as_deref(), Some("v1"));
    agents[3].signal(nix::sys::signal::Signal::SIGCONT);
    f.wait_serving(4, "v2");
    let st = status_after(&f, 1, &["n4".into()], &report["event_id"]);
    assert_eq!(st["n4"]["version"], "v2", "{st:?}");
    assert_eq!(st["n4"]["last_deploy"]["outcome"], "ok", "{st:?}");
    assert_all_ok_now(&f, &report, 5);

    let (code, report) = std::thread::scope(|s| {
        let wait = s.spawn(|| f.deploy_via(1, "v3", &[]));
        wait_for(LONG, "n4 to run v3, under its health check", || {
            (f.running_on_disk(4).as_deref() == Some("v3")).then_some(())
        });
        agents[3].signal(nix::sys::signal::Signal::SIGSTOP);
        wait.join().unwrap()
    });
    assert_unreachable_only(code, &report, &others, "n4");
    agents[3].signal(nix::sys::signal::Signal::SIGCONT);
    f.wait_serving(4, "v3");
    let st = status_after(&f, 1, &["n4".into()], &report["event_id"]);
    assert_eq!(st["n4"]["last_deploy"]["outcome"], "ok", "{st:?}");
    assert_all_ok_now(&f, &report, 5);
    assert_eq!(
        fleet::agent_log_lines(&agents[3], &[": deploying ", "version=v3"]),
        1,
        "n4 started v3 twice"
    );
}

/// A `--wait` report in which every node of `ok` succeeded and `gone` alone is
/// unreachable (so pending): not a success.
fn assert_unreachable_only(code: i32, report: &Value, ok: &[String], gone: &str) {
    assert_eq!(code, 2, "an unreachable target is not a success: {report}");
    assert_eq!(names(&report["ok"]), ok, "{report}");
    assert_eq!(names(&report["unreachable"]), [gone], "{report}");
    assert_eq!(names(&report["pending"]), [gone], "{report}");
    for l in ["failed", "rolled_back", "halted"] {
        assert!(names(&report[l]).is_empty(), "{l}: {report}");
    }
}

/// The progress of `report`'s event, as n1 sees it now: every one of `count` nodes ok.
fn assert_all_ok_now(f: &Fleet, report: &Value, count: u8) {
    let id = report["event_id"].as_str().unwrap();
    let p = wait_for(LONG, "every node ok in the event's progress", || {
        let p = f.progress(1, id);
        (names(&p["ok"]).len() == usize::from(count)).then_some(p)
    });
    assert!(names(&p["unreachable"]).is_empty(), "{p}");
}

/// Item 5, killed -9 in the middle of a deploy: n3 once the new release's jail runs and its
/// health check runs (`current` still names v1), n4 as soon as it starts deploying. `--wait` lists both as
/// unreachable. Restarted, each is consistent (one complete release per version, nothing
/// staged, exactly one jail, status matching the disk), does the cut-short activation again
/// without a new event and reports ok.
#[test]
fn agents_killed_mid_deploy_restart_consistent() {
    let mut f = five_with_v1_v2("78.6");
    f.publish("v3", Kind::Slow(3000));
    let r = f.deploy_via(1, "v1", &[]);
    assert_all_ok(&r, "v1", &node_names(5));

    let (code, report) = std::thread::scope(|s| {
        let wait = s.spawn(|| f.deploy_via(1, "v3", &[]));
        wait_deploying(&f, 4, "v3");
        f.agents[3].signal(nix::sys::signal::Signal::SIGKILL);
        wait_for(LONG, "n3 to run v3, under its health check", || {
            (f.running_on_disk(3).as_deref() == Some("v3")).then_some(())
        });
        assert_eq!(
            f.current_on_disk(3).as_deref(),
            Some("v1"),
            "switched before the check"
        );
        f.agents[2].signal(nix::sys::signal::Signal::SIGKILL);
        wait.join().unwrap()
    });
    assert_eq!(code, 2, "{report}");
    assert_eq!(names(&report["ok"]), ["n1", "n2", "n5"], "{report}");
    assert_eq!(names(&report["unreachable"]), ["n3", "n4"], "{report}");

    for n in [3u8, 4] {
        f.agents[usize::from(n) - 1].kill9(); // reaps it
        f.respawn(n);
    }
    for n in [3u8, 4] {
        f.wait_serving(n, "v3");
    }
    let st = status_after(&f, 1, &node_names(5), &report["event_id"]);
    assert_matches_disk(&f, &st, 5);
    for n in [3u8, 4] {
        let name = format!("n{n}");
        assert_eq!(st[&name]["last_deploy"]["outcome"], "ok", "{name}: {st:?}");
        assert_eq!(st[&name]["version"], "v3", "{name}");
        assert_eq!(releases(&f.root(n)), ["v1", "v3"], "{name}");
        assert!(
            fleet::staging_left(&f.root(n)).is_empty(),
            "{name} left staging behind"
        );
        let httpd = fleet::httpd_pids(&f.http_addr(n));
        assert_eq!(httpd.len(), 1, "{name}: one jail, not {httpd:?}");
        // The activation cut short is done again, once.
        let deploying = fleet::agent_log_lines(f.agent(n), &[": deploying ", "version=v3"]);
        assert_eq!(deploying, 2, "{name}: {}", f.agent(n).log_text());
    }
    assert_all_ok_now(&f, &report, 5);
}
