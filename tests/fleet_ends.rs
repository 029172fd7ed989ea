//! Deploys that end, through real agents and signed events (issue 15): a signed
//! `file://` URL outside the agent's `file_roots` (`/dev/zero`, `/etc/shadow`) is refused at
//! once and quotes nothing of the file, and an agent stuck in a fetch (a hostile server that
//! drips one byte at a time) exits promptly on SIGTERM.

#[path = "common/agent.rs"]
mod agent_support;
mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/hostile_http.rs"]
mod hostile_http;

use std::time::{Duration, Instant};

use fleet::{Fleet, Kind, LONG, NodeSpec, names, releases};
use hostile_http::{Reply, serve};

/// n1 with the app, n2 without (a lone agent has no peer to push/pull with).
fn one_app_node() -> Vec<NodeSpec> {
    vec![
        NodeSpec::default(),
        NodeSpec {
            no_app: true,
            ..NodeSpec::default()
        },
    ]
}

/// Regression (issue 15): a signed `file:///dev/zero` kept the activation running forever
/// at one core, and a signed `file:///etc/shadow` printed its first bytes fleet-wide.
#[test]
fn a_signed_file_url_outside_file_roots_is_refused_and_quotes_nothing() {
    let mut f = Fleet::new("81.1");
    f.publish("v1", Kind::Healthy);
    f.start_nodes(one_app_node());
    f.deploy_all_ok("v1");
    let pid = f.status(1)["n1"]["pid"].as_i64().expect("v1 runs");
    let secret = f.base.join("shadow");
    std::fs::write(
        &secret,
        "root:*:19000:0:99999:7:::\nsvc:$6$pepper$hash:1:::\n",
    )
    .unwrap();
    let shadow = format!("file://{}", secret.display());
    for (version, url) in [("v2", "file:///dev/zero"), ("v3", shadow.as_str())] {
        let began = Instant::now();
        let (code, report) = f.deploy(version, &["--url", url]);
        assert_ne!(code, 0, "{report}");
        assert_eq!(names(&report["failed"]), ["n1"], "{report}");
        let error = report["errors"]["n1"].as_str().unwrap_or_default();
        assert!(error.contains("file_roots"), "{error}");
        for needle in ["root:", "pepper", "72 6f 6f 74"] {
            assert!(!error.contains(needle), "{needle:?} in {error}");
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{url}: {:?}",
            began.elapsed()
        );
        assert_eq!(releases(&f.root(1)), ["v1"]);
        assert_eq!(f.current_on_disk(1).as_deref(), Some("v1"));
        f.wait_serving(1, "v1");
        assert!(fleet::alive(pid), "the v1 jail was stopped");
    }
    // Inside the root it is read.
    f.publish("v4", Kind::Healthy);
    let inside = format!("file://{}/v4.tar.gz", f.arts.display());
    let (code, report) = f.deploy("v4", &["--url", &inside]);
    assert_eq!(code, 0, "{report}");
    f.wait_serving(1, "v4");
}

/// Regression (issue 15): the agent ignored SIGTERM while a fetch was stuck (12 minutes
/// until SIGKILL).
#[test]
fn sigterm_to_an_agent_stuck_in_a_fetch_exits_within_its_stop_timeout() {
    let mut f = Fleet::new("81.2");
    f.publish("v1", Kind::Healthy);
    f.start_nodes(one_app_node());
    f.deploy_all_ok("v1");
    let server = serve(Reply::Drip {
        body: vec![0u8; 1024],
        every: Duration::from_millis(300),
    });
    let key = f.key.display().to_string();
    let out = f.cli(
        1,
        &[
            "event",
            "deploy",
            "web",
            "v2",
            "--url",
            &server.url,
            "--unpinned",
            "--signing-key",
            &key,
        ],
    );
    assert!(out.status.success(), "{}", fleet::text(&out));
    assert!(server.requested(LONG), "the agent never fetched");
    f.wait_status(1, "n1", "activating v2", |v| v["phase"] == "activating v2");
    let began = Instant::now();
    f.agents[0].signal(nix::sys::signal::Signal::SIGTERM);
    // The jail's stop_timeout is 5 s; the agent must not wait on the fetch at all.
    let status = f.agents[0].wait_exit(Duration::from_secs(20));
    let took = began.elapsed();
    assert!(took < Duration::from_secs(15), "exit took {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(
        server.ended(Duration::from_secs(5)).is_some(),
        "the fetch outlived the agent"
    );
    assert_eq!(fleet::staging_left(&f.root(1)), Vec::<String>::new());
    assert_eq!(releases(&f.root(1)), ["v1"]);
    assert_eq!(f.current_on_disk(1).as_deref(), Some("v1"));
}
