//! Deploys that end (issue 15), on the executor with real parts: busybox releases served
//! by `httpd` in real jails, health over HTTP, and a hostile artifact server in the test.
//!
//! A stuck fetch (a body that drips one byte at a time, never idle long enough for the
//! idle timeout) is ended by `deploy_timeout`, by a newer deploy of the app, and by the
//! executor's shutdown, each leaving nothing behind. Failed releases never push the good
//! rollback targets out of `keep`, and the app's byte cap is named when it is hit.

mod common;
#[path = "common/hostile_http.rs"]
mod hostile_http;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use droot_fleet::deploy::activation::Outcome;
use droot_fleet::deploy::app::parse_apps;
use droot_fleet::deploy::executor::{Executor, ExecutorOptions, Finished, Submit};
use droot_fleet::deploy::fetch::{FetchOptions, FileRoots};
use droot_fleet::deploy::supervisor::SupervisorOptions;
use hostile_http::{Reply, Server, serve};
use tokio::sync::mpsc;

type Apps = BTreeMap<String, droot_fleet::deploy::app::AppConfig>;

struct Fx {
    tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    arts: PathBuf,
    port: u16,
}

fn fx(what: &str) -> Fx {
    common::require_root(what);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let arts = base.join("arts");
    std::fs::create_dir_all(&arts).unwrap();
    let port = common::unused_port();
    Fx {
        root: base.join("app"),
        state: base.join("state"),
        arts,
        port,
        tmp,
    }
}

impl Fx {
    /// `arts/VERSION.tar.gz`: a busybox rootfs serving `/version`, and `/health` when
    /// `healthy`, on the fixture's port.
    fn artifact(&self, version: &str, healthy: bool) {
        common::httpd_artifact(
            &self.tmp.path().join(format!("src-{version}")),
            &self.arts.join(format!("{version}.tar.gz")),
            version,
            healthy,
            &format!("exec httpd -f -p 127.0.0.1:{} -h /www\n", self.port),
        );
    }

    /// `[apps.web]` from `arts/` by file://, an HTTP health check (2 s), plus `extra`.
    fn apps(&self, extra: &str) -> Apps {
        parse_apps(&format!(
            "[apps.web]\nartifact = \"file://{}/{{version}}.tar.gz\"\nroot = \"{}\"\n\
             command = [\"sh\", \"/start.sh\"]\nstop_timeout = \"5s\"\n{extra}\n\
             [apps.web.health]\nhttp = \"http://127.0.0.1:{}/health\"\ndeadline = \"2s\"\n\
             interval = \"100ms\"\n",
            self.arts.display(),
            self.root.display(),
            self.port
        ))
        .unwrap()
    }

    async fn start(&self, extra: &str) -> (Executor, mpsc::Receiver<Finished>) {
        let mut supervisor = SupervisorOptions::new(&self.state).unwrap();
        supervisor.exe = common::bin();
        let opts = ExecutorOptions {
            node: "n1".into(),
            fetch: FetchOptions {
                file_roots: FileRoots::Only(vec![self.arts.clone()]),
                ..FetchOptions::default()
            },
            unpack: Default::default(),
            supervisor,
            agent: None,
        };
        Executor::start(self.apps(extra), opts).await.unwrap()
    }

    fn releases_on_disk(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn staging_left(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join(".droot-fleet/staging"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn version_served(&self) -> Option<String> {
        common::http_get(&format!("127.0.0.1:{}", self.port), "/version")
    }

    /// `current` is `version`, it is served, and nothing else was left on disk.
    async fn settled_on(&self, ex: &Executor, version: &str, releases: &[&str]) {
        let st = ex.status("web").await.unwrap();
        assert_eq!(st.current.as_deref(), Some(version), "{st:?}");
        assert_eq!(st.activating, None, "{st:?}");
        let t = Instant::now();
        while self.version_served().as_deref() != Some(version) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{version} not served: {:?}",
                self.version_served()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.releases_on_disk(), releases);
        assert_eq!(self.staging_left(), Vec::<String>::new());
    }
}

fn submit(version: &str, url: &str) -> Submit {
    Submit {
        event_id: format!("ev-{version}-{}", rand::random::<u32>()),
        version: version.into(),
        url: url.into(),
        sha256: None,
        chunks: None,
        swarm: Default::default(),
        ignore_stop_hook_failures: false,
        signer: None,
    }
}

/// The next outcome, within `limit`.
async fn next(rx: &mut mpsc::Receiver<Finished>, limit: Duration) -> Outcome {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no outcome within {limit:?}"))
        .expect("outcome channel closed")
        .outcome
}

async fn deploy(ex: &Executor, rx: &mut mpsc::Receiver<Finished>, version: &str) -> Outcome {
    ex.submit("web", submit(version, "")).unwrap();
    next(rx, Duration::from_secs(60)).await
}

fn version_of(o: &Outcome) -> &str {
    match o {
        Outcome::Ok { version, .. }
        | Outcome::Failed { version, .. }
        | Outcome::RolledBack { version, .. } => version,
    }
}

/// Waits until the executor reports `version` being activated.
async fn wait_activating(ex: &Executor, version: &str) {
    let t = Instant::now();
    while ex.status("web").await.unwrap().activating.as_deref() != Some(version) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{version} never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server whose body is an empty tar followed by one byte every 300 ms: the unpack ends,
/// the digest never does, and the idle timeout (60 s) never trips.
fn drip() -> Server {
    serve(Reply::Drip {
        body: vec![0u8; 1024],
        every: Duration::from_millis(300),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_timeout_ends_a_stuck_activation_and_leaves_nothing() {
    let f = fx("deploy_timeout");
    f.artifact("v1", true);
    let (ex, mut rx) = f.start("deploy_timeout = \"5s\"").await;
    assert!(matches!(
        deploy(&ex, &mut rx, "v1").await,
        Outcome::Ok { .. }
    ));
    let server = drip();
    let began = Instant::now();
    ex.submit("web", submit("v2", &server.url)).unwrap();
    match next(&mut rx, Duration::from_secs(60)).await {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version, "v2");
            assert!(error.contains("deploy_timeout of 5s"), "{error}");
        }
        o => panic!("{o:?}"),
    }
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(
        server.ended(Duration::from_secs(10)).is_some(),
        "the fetch still reads the drip"
    );
    f.settled_on(&ex, "v1", &["v1"]).await;
    ex.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_deploy_cancels_a_stuck_fetch_and_succeeds() {
    let f = fx("superseded fetch");
    f.artifact("v1", true);
    f.artifact("v3", true);
    let (ex, mut rx) = f.start("").await;
    assert!(matches!(
        deploy(&ex, &mut rx, "v1").await,
        Outcome::Ok { .. }
    ));
    let server = drip();
    ex.submit("web", submit("v2", &server.url)).unwrap();
    wait_activating(&ex, "v2").await;
    let began = Instant::now();
    ex.submit("web", submit("v3", "")).unwrap();
    match next(&mut rx, Duration::from_secs(20)).await {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version, "v2");
            assert!(error.contains("a deploy of v3 replaced it"), "{error}");
        }
        o => panic!("{o:?}"),
    }
    let o = next(&mut rx, Duration::from_secs(60)).await;
    assert!(
        matches!(&o, Outcome::Ok { version, .. } if version == "v3"),
        "{o:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
    assert!(server.ended(Duration::from_secs(10)).is_some());
    f.settled_on(&ex, "v3", &["v1", "v3"]).await;
    ex.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_stuck_fetch_at_once() {
    let f = fx("shutdown during a fetch");
    f.artifact("v1", true);
    let (ex, mut rx) = f.start("").await;
    assert!(matches!(
        deploy(&ex, &mut rx, "v1").await,
        Outcome::Ok { .. }
    ));
    let server = drip();
    ex.submit("web", submit("v2", &server.url)).unwrap();
    wait_activating(&ex, "v2").await;
    let began = Instant::now();
    ex.shutdown(false).await;
    // Not cut off after the grace period: the fetch itself stopped.
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
    assert!(
        server.ended(Duration::from_secs(10)).is_some(),
        "the fetch outlived the shutdown"
    );
    assert_eq!(f.staging_left(), Vec::<String>::new());
    assert_eq!(f.releases_on_disk(), ["v1"]);
}

/// Regression (issue 15): after three broken deploys with `keep = 2`, the good rollback
/// targets had been pruned (each fetch pruned before its health check failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failed_deploys_do_not_prune_the_good_rollback_targets() {
    let f = fx("failed releases and keep");
    f.artifact("v1", true);
    f.artifact("v2", true);
    for v in ["v3", "v4", "v5"] {
        f.artifact(v, false);
    }
    let (ex, mut rx) = f.start("keep = 2").await;
    for v in ["v1", "v2"] {
        let o = deploy(&ex, &mut rx, v).await;
        assert!(matches!(o, Outcome::Ok { .. }), "{o:?}");
    }
    for bad in ["v3", "v4", "v5"] {
        match deploy(&ex, &mut rx, bad).await {
            Outcome::RolledBack { to, .. } => assert_eq!(to, "v2", "{bad}"),
            o => panic!("{bad}: {o:?}"),
        }
        f.settled_on(&ex, "v2", &["v1", "v2"]).await;
        let st = ex.status("web").await.unwrap();
        assert_eq!(st.previous.as_deref(), Some("v1"), "{bad}: {st:?}");
    }
    // The rollback target is still there: going back to it is a switch, no fetch.
    std::fs::remove_file(f.arts.join("v1.tar.gz")).unwrap();
    let o = deploy(&ex, &mut rx, "v1").await;
    assert!(matches!(o, Outcome::Ok { .. }), "{o:?}");
    f.settled_on(&ex, "v1", &["v1", "v2"]).await;
    ex.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_byte_cap_refuses_a_larger_release_naming_its_key() {
    let f = fx("max_bytes");
    f.artifact("v1", true);
    f.artifact("v2", true);
    let (ex, mut rx) = f.start("max_bytes = \"8MiB\"").await;
    assert!(matches!(
        deploy(&ex, &mut rx, "v1").await,
        Outcome::Ok { .. }
    ));
    ex.shutdown(false).await;
    // The same app with a cap below the release's size (busybox alone is over 1 MiB).
    let (ex, mut rx) = f.start("max_bytes = \"1MiB\"").await;
    let o = deploy(&ex, &mut rx, "v2").await;
    assert_eq!(version_of(&o), "v2");
    match o {
        Outcome::Failed { error, .. } => {
            assert!(error.contains("size limit of 1048576 bytes"), "{error}");
            assert!(error.contains("apps.web.max_bytes"), "{error}");
            assert!(!error.contains("--max-bytes"), "{error}");
        }
        o => panic!("{o:?}"),
    }
    f.settled_on(&ex, "v1", &["v1"]).await;
    ex.shutdown(false).await;
}
