//! Fleet deploys end to end (issue 7): five or more real agents on 127.79.X.N, each running
//! `web` as a busybox `httpd` jail on its own address, artifacts from a private Garage over
//! s3://, signed deploy events from the CLI. Covers rolling waves (`--max-parallel`, `--canary`), a broken release
//! halting the waves, auto-rollback on every node, `rollback`, targeting by tag and node name,
//! and agent restarts (adoption with `leave_running`, restart from `current` without it, a
//! crashed jail restarted). Every wait is on a state (status query, progress, log line).

mod common;

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/fleet.rs"]
mod fleet;

use droot_fleet::deploy::rollout::Plan;
use droot_fleet::deploy::signed::{MaxParallel, Rollout};
use serde_json::Value;

use fleet::{Fleet, Kind, NodeSpec, event_id_bytes, names, num};

fn five() -> Vec<NodeSpec> {
    vec![NodeSpec::default(); 5]
}

/// The plan of event `id` with `--canary 1 --max-parallel 2` over the app nodes.
fn canary_1_by_2(f: &Fleet, id: &str) -> Plan {
    let rollout = Rollout {
        max_parallel: Some(MaxParallel::Count(2)),
        canary: 1,
    };
    Plan::new(&event_id_bytes(id), &f.app_nodes(), &rollout)
}

fn event_id(report: &Value) -> String {
    report["event_id"].as_str().expect("event_id").to_owned()
}

/// With neither flag every node starts at once: each node's "deploying" line comes before
/// any node's "deploy ok" (each release takes two seconds to become healthy).
/// With `--canary 1 --max-parallel 2` the waves are 1, 2, 2 nodes, and no node of a wave
/// starts before every node of the earlier waves finished ok.
#[test]
fn rolling_waves_wait_for_the_earlier_waves() {
    let f = Fleet::start("79.1", five());
    f.publish("v1", Kind::Slow(2000));
    f.publish("v2", Kind::Slow(2000));

    let all = f.deploy_all_ok("v1");
    let id = event_id(&all);
    let first_ok = (1..=5)
        .map(|n| f.log_time(n, "deploy ok", &id))
        .min()
        .unwrap();
    for n in 1..=5 {
        let started = f.log_time(n, "deploying", &id);
        assert!(
            started < first_ok,
            "without rollout flags n{n} started at {started}, after a node finished at {first_ok}"
        );
    }

    let (code, report) = f.deploy("v2", &["--canary", "1", "--max-parallel", "2"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(names(&report["ok"]), f.app_nodes(), "{report}");
    let id = event_id(&report);
    let plan = canary_1_by_2(&f, &id);
    let sizes: Vec<usize> = plan.waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 2, 2], "{plan:?}");
    let mut earlier_done = String::new();
    for (i, wave) in plan.waves.iter().enumerate() {
        let mut done = earlier_done.clone();
        for node in wave {
            let started = f.log_time(num(node), "deploying", &id);
            assert!(
                started >= earlier_done,
                "{node} (wave {i}) started at {started} before the earlier waves finished ({earlier_done})"
            );
            done = done.max(f.log_time(num(node), "deploy ok", &id));
        }
        earlier_done = done;
    }
    for n in 1..=5 {
        f.wait_serving(n, "v2");
        assert_eq!(f.current_on_disk(n).as_deref(), Some("v2"));
    }
    wait_output_on_a_pipe_and_a_terminal_and_a_timeout(&f);
}

/// `--wait` on a pipe (not a terminal) prints a plain progress line per change on stderr
/// and a summary; on a terminal, a live bar. A `--timeout` shorter than the rollout exits
/// 3 naming the pending nodes, and the rollout goes on without the CLI.
fn wait_output_on_a_pipe_and_a_terminal_and_a_timeout(f: &Fleet) {
    f.publish("v3", Kind::Slow(2000));
    let key = f.key.display().to_string();
    let deploy = |version: &str, extra: &[&str]| {
        let mut args = vec!["event", "deploy", "web", version, "--wait", "--unpinned"];
        args.extend_from_slice(extra);
        args.extend(["--signing-key", key.as_str()]);
        let out = f.cli(1, &args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let progress = regex::Regex::new(r"^\d/5 ok(, \d [a-z ]+)*, \d pending$").unwrap();
    let progress_lines = |stderr: &str| -> Vec<String> {
        let lines: Vec<String> = stderr
            .lines()
            .filter(|l| l.ends_with(" pending") && !l.contains("timed out"))
            .map(str::to_owned)
            .collect();
        for l in &lines {
            assert!(
                progress.is_match(l),
                "not a plain progress line: {l:?}\n{stderr}"
            );
        }
        assert!(
            !stderr.contains('\r') && !stderr.contains('\x1b'),
            "terminal codes on a pipe: {stderr:?}"
        );
        lines
    };

    // Five waves of a release that takes 2 s to become healthy: 10 s at least.
    let (code, _, stderr) = deploy("v3", &["--max-parallel", "1", "--timeout", "3s"]);
    assert_eq!(code, Some(3), "a rollout longer than --timeout: {stderr}");
    assert!(
        stderr.contains("timed out after 3s") && stderr.contains("still pending: n"),
        "{stderr}"
    );
    assert!(!progress_lines(&stderr).is_empty(), "{stderr}");
    for n in 1..=5 {
        f.wait_serving(n, "v3");
    }

    f.publish("v4", Kind::Healthy);
    let (code, stdout, stderr) = deploy("v4", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (id, summary) = stdout.trim_end().split_once('\n').unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "the event id first: {stdout}"
    );
    assert_eq!(summary, "deploy web v4: all 5 target(s) ok", "{stderr}");
    let lines = progress_lines(&stderr);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("5/5 ok, 0 pending"),
        "{stderr}"
    );

    // On a terminal (script(1) gives the CLI a pty): one live bar, redrawn in place.
    f.publish("v5", Kind::Healthy);
    let cmd = format!(
        "{} event deploy web v5 --wait --unpinned --signing-key {key}",
        agent_support::bin().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("RUST_LOG")
        .env("DROOT_FLEET_RPC", f.agent(1).rpc())
        .output()
        .expect("script(1) from util-linux");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("\r\x1b[2K[##############################] 5/5 ok, 0 pending"),
        "no live bar ending full: {tty:?}"
    );
    assert!(tty.contains("deploy web v5: all 5 target(s) ok"), "{tty:?}");
}

/// A broken release with `--canary 1 --max-parallel 2`: the canary rolls back (still
/// serving v1), every other node is halted and never starts it, `--wait` fails and the
/// JSON names the canary as rolled back and the others as halted.
#[test]
fn broken_release_stops_at_the_canary() {
    let mut f = Fleet::start("79.2", five());
    f.publish("v1", Kind::Healthy);
    f.publish("v3", Kind::NoHealth);
    f.deploy_all_ok("v1");

    let (code, report) = f.deploy("v3", &["--canary", "1", "--max-parallel", "2"]);
    assert_eq!(code, 2, "a rolled-back canary must fail the wait: {report}");
    assert_eq!(report["result"], "failed", "{report}");
    let canary = names(&report["rolled_back"]);
    assert_eq!(canary.len(), 1, "{report}");
    let canary = &canary[0];
    let others: Vec<String> = f.app_nodes().into_iter().filter(|n| n != canary).collect();
    assert_eq!(names(&report["halted"]), others, "{report}");
    // The halted nodes never got v3: pending, and `halted` says why.
    assert_eq!(names(&report["pending"]), others, "{report}");
    assert!(names(&report["ok"]).is_empty(), "{report}");
    assert!(names(&report["failed"]).is_empty(), "{report}");
    let id = event_id(&report);
    let plan = canary_1_by_2(&f, &id);
    assert_eq!(
        &plan.waves[0],
        std::slice::from_ref(canary),
        "the canary is wave 0"
    );

    let c = num(canary);
    assert_eq!(f.get(c, "/version").as_deref(), Some("v1"));
    assert_eq!(f.current_on_disk(c).as_deref(), Some("v1"));
    let st = f.status(1);
    let cv = &st[canary];
    assert_eq!(cv["phase"], "idle", "{cv}");
    assert_eq!(cv["version"], "v1", "{cv}");
    assert_eq!(cv["state"], "running", "{cv}");
    assert_eq!(cv["last_deploy"]["outcome"], "rolled_back", "{cv}");
    assert_eq!(
        cv["last_deploy"]["event_id"].as_str(),
        Some(id.as_str()),
        "{cv}"
    );
    for o in &others {
        let n = num(o);
        // The canary's outcome reaches each node by gossip: wait for it to show.
        let halted = format!("halted by {canary} (rolled_back)");
        let v = f.wait_status(1, o, &halted, |v| v["phase"] == halted.as_str());
        assert_eq!(v["version"], "v1", "{o}: {v}");
        assert_eq!(v["desired_version"], "v3", "{o}: {v}");
        assert!(
            f.log_lines(n, "deploying", &id).is_empty(),
            "{o} started v3"
        );
        assert_eq!(f.current_on_disk(n).as_deref(), Some("v1"));
        assert_eq!(f.get(n, "/version").as_deref(), Some("v1"));
    }

    // Regression: a halted node whose agent restarts knows only itself until its first
    // push/pull; it must wait for the cluster's state instead of starting the broken
    // release it holds as desired.
    let n = num(&others[0]);
    let i = usize::from(n) - 1;
    f.agents[i].kill9();
    if n == 1 {
        f.agents[i].join = vec![f.addr(2)];
    }
    f.respawn(n);
    f.agent(n).wait_push_pulls(2);
    let halted = format!("halted by {canary} (rolled_back)");
    f.wait_status(n, &others[0], &halted, |v| v["phase"] == halted.as_str());
    assert!(
        f.log_lines(n, "deploying", &id).is_empty(),
        "{} started v3 after its restart",
        others[0]
    );
    assert_eq!(f.current_on_disk(n).as_deref(), Some("v1"));
    assert_eq!(f.get(n, "/version").as_deref(), Some("v1"));
}

/// Without rollout flags a broken release goes to every node at once and every node rolls
/// back by itself. `rollback web` (no --to) then moves the fleet to the release before v2,
/// v1; with nothing before that a second one refuses; `--to v2` and `--to v1` go there.
#[test]
fn auto_rollback_everywhere_then_rollback_commands() {
    let f = Fleet::start("79.3", five());
    for (v, k) in [
        ("v1", Kind::Healthy),
        ("v2", Kind::Healthy),
        ("v3", Kind::NoHealth),
    ] {
        f.publish(v, k);
    }
    f.deploy_all_ok("v1");
    f.deploy_all_ok("v2");

    let (code, report) = f.deploy("v3", &[]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(names(&report["rolled_back"]), f.app_nodes(), "{report}");
    assert!(names(&report["halted"]).is_empty(), "{report}");
    let id = event_id(&report);
    let st = f.status(1);
    for n in 1..=5 {
        assert_eq!(f.log_lines(n, "deploying", &id).len(), 1, "n{n} started v3");
        assert_eq!(f.get(n, "/version").as_deref(), Some("v2"), "n{n}");
        let v = &st[&format!("n{n}")];
        assert_eq!(
            (&v["version"], &v["previous"]),
            (&"v2".into(), &"v1".into()),
            "n{n}: {v}"
        );
    }

    let (code, report) = f.rollback(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["version"], "v1",
        "rollback goes to the previous release: {report}"
    );
    assert_eq!(names(&report["ok"]), f.app_nodes(), "{report}");
    for n in 1..=5 {
        f.wait_serving(n, "v1");
        assert_eq!(f.current_on_disk(n).as_deref(), Some("v1"));
    }

    // The rollback popped v2 off each node's undo history: there is nothing before v1, and
    // `rollback` says so instead of guessing.
    let out = f.cli(1, &["rollback", "web", "--wait"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no previous release") && err.contains("--to"),
        "{err}"
    );

    for v in ["v2", "v1"] {
        let (code, report) = f.rollback(&["--to", v]);
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["version"], v, "{report}");
        assert_eq!(names(&report["ok"]), f.app_nodes(), "{report}");
        for n in 1..=5 {
            f.wait_serving(n, v);
            assert_eq!(f.current_on_disk(n).as_deref(), Some(v));
        }
    }
}

fn tagged(role: &str) -> NodeSpec {
    NodeSpec {
        tags: vec![("role".into(), role.into())],
        ..Default::default()
    }
}

/// `--tag role=web` and `--node REGEX` deploy only to matching nodes that run the app: the
/// progress targets exclude the others, their `current` stays, and they never start. A node
/// without `[apps.web]` is never a target, even when its tags match.
#[test]
fn targeting_by_tag_and_node_name() {
    let mut specs = vec![
        tagged("web"),
        tagged("web"),
        tagged("web"),
        tagged("db"),
        tagged("db"),
    ];
    specs.push(NodeSpec {
        no_app: true,
        ..tagged("web")
    });
    let f = Fleet::start("79.4", specs);
    f.publish("v1", Kind::Healthy);
    f.publish("v2", Kind::Healthy);
    let five: Vec<String> = (1..=5).map(|n| format!("n{n}")).collect();
    assert_eq!(f.app_nodes(), five);

    let report = f.deploy_all_ok("v1");
    let id = event_id(&report);
    assert_eq!(names(&f.progress(1, &id)["targets"]), five, "n6 has no web");
    assert!(f.log_lines(6, "deploying", &id).is_empty());

    let (code, report) = f.deploy("v2", &["--tag", "role=web"]);
    assert_eq!(code, 0, "{report}");
    let web = ["n1", "n2", "n3"].map(String::from).to_vec();
    assert_eq!(names(&report["ok"]), web, "{report}");
    let id = event_id(&report);
    assert_eq!(names(&f.progress(1, &id)["targets"]), web);
    for n in 1..=3 {
        f.wait_serving(n, "v2");
    }
    let st = f.status(1);
    for n in [4, 5, 6] {
        assert!(f.log_lines(n, "deploying", &id).is_empty(), "n{n} deployed");
    }
    for n in [4, 5] {
        let v = &st[&format!("n{n}")];
        assert_eq!(v["version"], "v1", "n{n}: {v}");
        assert_eq!(v["phase"], "not a target", "n{n}: {v}");
        assert_eq!(f.get(n, "/version").as_deref(), Some("v1"));
    }
    assert_eq!(st["n6"], Value::Null, "n6 has no web to report: {st:?}");

    let (code, report) = f.deploy("v2", &["--node", "^n4$"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(names(&report["ok"]), ["n4"], "{report}");
    let id = event_id(&report);
    assert_eq!(names(&f.progress(1, &id)["targets"]), ["n4"]);
    f.wait_serving(4, "v2");
    for n in [1, 2, 3, 5, 6] {
        assert!(f.log_lines(n, "deploying", &id).is_empty(), "n{n} deployed");
    }
    assert_eq!(f.current_on_disk(5).as_deref(), Some("v1"));
    assert_eq!(f.get(5, "/version").as_deref(), Some("v1"));
    assert_eq!(f.status(1)["n5"]["version"], "v1");
}

/// Agent restarts: with `leave_running` (n1) the jail outlives the agent's SIGTERM (same
/// pid, still serving) and the restarted agent adopts it (no second httpd). Without it (n2)
/// the jail stops with the agent and comes back from `current` when the agent starts again.
/// A jail whose httpd is killed (n3) is restarted after the backoff.
#[test]
fn agent_restart_adopts_or_restarts_and_crashed_jails_come_back() {
    let mut specs = five();
    specs[0].leave_running = true;
    let mut f = Fleet::start("79.5", specs);
    f.publish("v1", Kind::Healthy);
    f.deploy_all_ok("v1");
    let st = f.status(2);
    let pid_of = |v: &Value| v["pid"].as_i64().expect("a pid");

    // n1: left running, then adopted, serving every request throughout.
    let p1 = pid_of(&st["n1"]);
    let h1 = fleet::httpd_pids(&f.http_addr(1));
    assert_eq!(h1.len(), 1, "{h1:?}");
    let poller = common::Poller::start(&f.http_addr(1), "/version");
    poller.wait_more(5);
    f.agents[0].signal(nix::sys::signal::Signal::SIGTERM);
    let code = f.agents[0].wait_exit(fleet::LONG);
    assert!(code.success(), "n1 agent exit: {code:?}");
    assert!(fleet::alive(p1), "the jail of n1 stopped with its agent");
    assert_eq!(f.get(1, "/version").as_deref(), Some("v1"));
    assert_eq!(fleet::httpd_pids(&f.http_addr(1)), h1);
    f.agents[0].join = vec![f.addr(2)];
    f.respawn(1);
    let v = f.wait_status(1, "n1", "adopted and running", |v| {
        v["state"] == "running" && v["pid"].as_i64() == Some(p1)
    });
    assert_eq!(v["version"], "v1", "{v}");
    assert!(f.agents[0].log_text().contains("adopted a running jail"));
    assert_eq!(fleet::httpd_pids(&f.http_addr(1)), h1, "a second httpd");
    assert_eq!(f.get(1, "/version").as_deref(), Some("v1"));
    poller.wait_more(5);
    let (served, failed) = poller.stop();
    assert_eq!(
        failed, 0,
        "n1 failed requests across its agent's restart ({served} served)"
    );

    // n2: stopped with the agent, started again from current.
    let p2 = pid_of(&st["n2"]);
    f.agents[1].signal(nix::sys::signal::Signal::SIGTERM);
    let code = f.agents[1].wait_exit(fleet::LONG);
    assert!(code.success(), "n2 agent exit: {code:?}");
    assert!(!fleet::alive(p2), "the jail of n2 outlived its agent");
    assert!(fleet::httpd_pids(&f.http_addr(2)).is_empty());
    assert_eq!(f.get(2, "/version"), None);
    f.respawn(2);
    f.wait_serving(2, "v1");
    let v = f.wait_status(2, "n2", "running again", |v| v["state"] == "running");
    assert_ne!(pid_of(&v), p2, "{v}");
    assert_eq!(v["version"], "v1", "{v}");

    // n3: its httpd killed; restarted after the backoff.
    let p3 = pid_of(&st["n3"]);
    let h3 = fleet::httpd_pids(&f.http_addr(3));
    assert_eq!(h3.len(), 1, "{h3:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h3[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let v = f.wait_status(1, "n3", "restarted", |v| {
        v["state"] == "running"
            && v["restarts"].as_u64() >= Some(1)
            && v["pid"].as_i64() != Some(p3)
    });
    assert_eq!(v["version"], "v1", "{v}");
    f.wait_serving(3, "v1");
    let log = f.agents[2].log_text();
    let ended = log
        .lines()
        .find(|l| l.contains("jail ended") && l.contains(&format!("pid={p3}")))
        .unwrap_or_else(|| panic!("no 'jail ended' line for {p3}:\n{log}"));
    assert!(ended.contains("Restart { delay: 300ms"), "{ended}");
    let ended_at = fleet::log_ms(ended);
    let started_at = log
        .lines()
        .filter(|l| l.contains("jail started"))
        .map(fleet::log_ms)
        .find(|t| *t > ended_at)
        .expect("a 'jail started' line after the crash");
    let waited = started_at - ended_at;
    assert!(
        waited >= 290.0,
        "restarted {waited} ms after the crash, before the 300 ms backoff"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Artifacts from a real S3 store (a private Garage, `[deploy] s3_endpoint`, credentials
/// from the standard AWS environment): v1 with its digest reaches every node; v2 with a
/// wrong `--sha256` fails on every node before anything is activated (v1 stays, v2 is not
/// in any release store).
#[test]
fn deploys_from_s3_with_the_digest_checked() {
    let mut f = Fleet::with_garage("79.6");
    f.start_nodes(five());
    let v1 = f.publish("v1", Kind::Healthy);
    f.publish("v2", Kind::Healthy);

    let (code, report) = f.deploy("v1", &["--sha256", &sha256_hex(&v1)]);
    assert_eq!(code, 0, "{report}\nn1's app log: {}", f.app_log(1));
    assert_eq!(names(&report["ok"]), f.app_nodes(), "{report}");
    for n in 1..=5 {
        f.wait_serving(n, "v1");
    }

    let wrong = sha256_hex(b"not the artifact");
    let (code, report) = f.deploy("v2", &["--sha256", &wrong]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(names(&report["failed"]), f.app_nodes(), "{report}");
    for n in 1..=5 {
        let node = format!("n{n}");
        let err = report["errors"][&node].as_str().unwrap_or("");
        assert!(err.contains(&wrong), "{node}: {err}");
        assert_eq!(f.current_on_disk(n).as_deref(), Some("v1"));
        assert_eq!(f.get(n, "/version").as_deref(), Some("v1"));
        assert!(!f.root(n).join("releases/v2").exists(), "{node} kept v2");
    }
}
