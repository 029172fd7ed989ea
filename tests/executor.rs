//! The deploy executor on real parts: artifacts are tar.gz files of a busybox-static rootfs
//! (one via a private Garage over s3://), each release serves `/www` with busybox `httpd`,
//! jails are real `droot-fleet run` processes, and health is checked over HTTP.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use droot_fleet::deploy::activation::Outcome;
use droot_fleet::deploy::app::parse_apps;
use droot_fleet::deploy::executor::{
    Executor, ExecutorError, ExecutorOptions, Finished, SETTLE, Submit,
};
use droot_fleet::deploy::fetch::{FetchOptions, FileRoots};
use droot_fleet::deploy::supervisor::{State, SupervisorOptions};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

type Apps = BTreeMap<String, droot_fleet::deploy::app::AppConfig>;

/// A temp dir with the app root, the supervisor state and the artifact store.
struct Fx {
    tmp: common::TempDir,
    root: PathBuf,
    state: PathBuf,
    arts: PathBuf,
    port: u16,
}

fn fx(what: &str) -> Fx {
    common::require_root(what);
    let tmp = common::tempdir();
    let base = tmp.path().canonicalize().unwrap();
    let arts = base.join("arts");
    std::fs::create_dir_all(&arts).unwrap();
    Fx {
        root: base.join("app"),
        state: base.join("state"),
        arts,
        port: common::unused_port(),
        tmp,
    }
}

/// How a release built by [`Fx::artifact`] behaves.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Serves `/health` and `/version`.
    Healthy,
    /// Serves `/version` only: the health check gets 404.
    NoHealth,
    /// Its start script exits at once.
    Exits,
}

impl Fx {
    /// Writes `arts/VERSION.tar.gz`: a busybox rootfs whose `/start.sh` runs httpd on the
    /// port, serving `/www/version` (the version) and `/www/health` when healthy. Returns
    /// its bytes.
    fn artifact(&self, version: &str, kind: Kind) -> Vec<u8> {
        let script = match kind {
            Kind::Exits => "echo broken >&2; exit 3\n".to_string(),
            _ => format!("exec httpd -f -p 127.0.0.1:{} -h /www\n", self.port),
        };
        common::httpd_artifact(
            &self.tmp.path().join(format!("src-{version}")),
            &self.arts.join(format!("{version}.tar.gz")),
            version,
            kind == Kind::Healthy,
            &script,
        )
    }

    /// [`Fx::artifact`] for each (version, kind).
    fn artifacts(&self, list: &[(&str, Kind)]) {
        for (version, kind) in list {
            self.artifact(version, *kind);
        }
    }

    /// `[apps.web]`: artifacts from `arts/` by file://, `/start.sh` as the command, and the
    /// HTTP health check unless `health` is false. `extra` is appended to the block.
    fn apps(&self, health: bool, extra: &str) -> Apps {
        let mut text = format!(
            "[apps.web]\nartifact = \"file://{}/{{version}}.tar.gz\"\nroot = \"{}\"\n\
             command = [\"sh\", \"/start.sh\"]\nstop_timeout = \"5s\"\n\
             backoff = {{ initial = \"200ms\", max = \"1s\" }}\n{extra}",
            self.arts.display(),
            self.root.display()
        );
        if health {
            text.push_str(&format!(
                "[apps.web.health]\nhttp = \"http://127.0.0.1:{}/health\"\ndeadline = \"3s\"\ninterval = \"100ms\"\n",
                self.port
            ));
        }
        parse_apps(&text).unwrap()
    }

    fn opts(&self) -> ExecutorOptions {
        let mut supervisor = SupervisorOptions::new(&self.state).unwrap();
        supervisor.exe = common::bin();
        ExecutorOptions {
            node: "n1".into(),
            fetch: FetchOptions {
                file_roots: FileRoots::Only(vec![self.arts.clone()]),
                ..FetchOptions::default()
            },
            unpack: Default::default(),
            supervisor,
            agent: None,
        }
    }

    /// The executor on `apps` with [`Fx::opts`].
    async fn start(&self, apps: Apps) -> (Executor, mpsc::Receiver<Finished>) {
        Executor::start(apps, self.opts()).await.unwrap()
    }

    /// [`Fx::start`] on `web` with its health check.
    async fn start_web(&self) -> (Executor, mpsc::Receiver<Finished>) {
        self.start(self.apps(true, "")).await
    }

    /// [`Fx::apps`] with health, its deadline set to `deadline`.
    fn apps_with_deadline(&self, deadline: Duration) -> Apps {
        let mut apps = self.apps(true, "");
        let health = apps.get_mut("web").unwrap().health.as_mut().unwrap();
        health.deadline = deadline;
        apps
    }

    /// Shuts the executor down with its jails and checks that no mount is left.
    async fn stop(&self, ex: Executor) {
        ex.shutdown(false).await;
        common::jail::assert_no_mounts(&self.root);
    }

    fn releases_on_disk(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn staging_is_empty(&self) -> bool {
        std::fs::read_dir(self.root.join(".droot-fleet/staging"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }

    fn get(&self, path: &str) -> Option<String> {
        get(self.port, path)
    }

    /// Waits (10 s at most) until `/version` answers `version`.
    async fn wait_serving(&self, version: &str) {
        let t = std::time::Instant::now();
        while self.get("/version").as_deref() != Some(version) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{version} never served; last answer {:?}",
                self.get("/version")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A GET of `127.0.0.1:PORT`: the body when the answer is 200.
fn get(port: u16, path: &str) -> Option<String> {
    common::http_get(&format!("127.0.0.1:{port}"), path)
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn submit(version: &str, sha256: Option<[u8; 32]>) -> Submit {
    Submit {
        event_id: format!("ev-{version}-{}", rand::random::<u32>()),
        version: version.into(),
        url: String::new(),
        sha256,
        chunks: None,
        swarm: Default::default(),
        ignore_stop_hook_failures: false,
        signer: None,
    }
}

/// The next outcome (60 s at most).
async fn next(rx: &mut mpsc::Receiver<Finished>) -> Finished {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no outcome within 60 s")
        .expect("outcome channel closed")
}

/// Submits and waits for the outcome of that very event.
async fn deploy(
    ex: &Executor,
    rx: &mut mpsc::Receiver<Finished>,
    version: &str,
    sha256: Option<[u8; 32]>,
) -> Outcome {
    let req = submit(version, sha256);
    ex.submit("web", req.clone()).unwrap();
    let f = next(rx).await;
    assert_eq!(f.app, "web");
    let id = match &f.outcome {
        Outcome::Ok { event_id, .. }
        | Outcome::Failed { event_id, .. }
        | Outcome::RolledBack { event_id, .. } => event_id,
    };
    assert_eq!(id, &req.event_id, "{:?}", f.outcome);
    f.outcome
}

/// Deploys `version` and asserts it went ok.
async fn deploy_ok(ex: &Executor, rx: &mut mpsc::Receiver<Finished>, version: &str) {
    assert_ok(&deploy(ex, rx, version, None).await, version);
}

fn assert_ok(o: &Outcome, version: &str) {
    assert!(
        matches!(o, Outcome::Ok { version: v, .. } if v == version),
        "expected ok for {version}: {o:?}"
    );
}

/// Asserts a failed outcome whose error names `needle`.
fn assert_failed(o: Outcome, needle: &str) {
    match o {
        Outcome::Failed { error, .. } => assert!(error.contains(needle), "{error}"),
        o => panic!("expected failed: {o:?}"),
    }
}

/// Asserts a rollback to `to` whose error names every one of `needles`.
/// `current` names `version` and the jail runs it.
async fn assert_current_and_running(ex: &Executor, version: &str) {
    let st = ex.status("web").await.unwrap();
    assert_eq!(
        (st.current.as_deref(), st.jail.release.as_deref()),
        (Some(version), Some(version)),
        "{st:?}"
    );
}

fn assert_rolled_back(o: Outcome, to: &str, needles: &[&str]) {
    match o {
        Outcome::RolledBack { to: t, error, .. } => {
            assert_eq!(t, to);
            for n in needles {
                assert!(error.contains(n), "{n:?} not in {error}");
            }
        }
        o => panic!("expected rolled_back: {o:?}"),
    }
}

/// Waits until `version` runs and is being checked (its activation not yet finished).
async fn wait_checking(ex: &Executor, version: &str) {
    let t = std::time::Instant::now();
    loop {
        let st = ex.status("web").await.unwrap();
        let v = Some(version);
        if st.activating.as_deref() == v && st.jail.release.as_deref() == v {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{version} never started: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: i32) -> bool {
    common::alive(pid.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_upgrade_and_a_broken_release_rolled_back() {
    let f = fx("executor deploy and rollback");
    f.artifacts(&[
        ("v1", Kind::Healthy),
        ("v2", Kind::Healthy),
        ("v3", Kind::NoHealth),
    ]);
    let (ex, mut rx) = f.start_web().await;
    assert_eq!(ex.apps(), ["web"]);
    let st = ex.status("web").await.unwrap();
    assert_eq!((st.current, st.jail.state), (None, State::Stopped));

    deploy_ok(&ex, &mut rx, "v1").await;
    let st = ex.status("web").await.unwrap();
    assert_eq!(st.current.as_deref(), Some("v1"));
    assert_eq!(st.activating, None);
    assert_eq!(
        (st.jail.state, st.jail.release.as_deref()),
        (State::Running, Some("v1"))
    );
    let p1 = st.jail.pid.unwrap();
    assert_eq!(f.get("/version").as_deref(), Some("v1"));

    deploy_ok(&ex, &mut rx, "v2").await;
    let st = ex.status("web").await.unwrap();
    assert_eq!(
        (st.current.as_deref(), st.previous.as_deref()),
        (Some("v2"), Some("v1"))
    );
    let p2 = st.jail.pid.unwrap();
    assert!(p2 != p1 && !alive(p1), "the v1 jail {p1} still runs");
    assert_eq!(f.get("/version").as_deref(), Some("v2"));

    match deploy(&ex, &mut rx, "v3", None).await {
        Outcome::RolledBack {
            version, to, error, ..
        } => {
            assert_eq!((version.as_str(), to.as_str()), ("v3", "v2"));
            assert!(error.contains("404"), "the health error: {error}");
        }
        o => panic!("expected rolled_back: {o:?}"),
    }
    let st = ex.status("web").await.unwrap();
    assert_eq!(
        (st.current.as_deref(), st.previous.as_deref()),
        (Some("v2"), Some("v1"))
    );
    assert_eq!(
        (st.jail.state, st.jail.release.as_deref()),
        (State::Running, Some("v2"))
    );
    assert_eq!(common::archive::current_target(&f.root), "releases/v2");
    // The rolled-back release is started, not checked: wait for it to serve.
    f.wait_serving("v2").await;
    // The failed release is pruned once the activation has ended (issue 15).
    assert_eq!(st.releases, ["v1", "v2"]);

    let pid = st.jail.pid.unwrap();
    f.stop(ex).await;
    assert!(!alive(pid), "the jail survived the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_activates_nothing_present_versions_switch_and_current_is_a_no_op() {
    let f = fx("executor mismatch and present versions");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::Healthy)]);
    let v3 = f.artifact("v3", Kind::Healthy);
    let (ex, mut rx) = f.start_web().await;
    deploy_ok(&ex, &mut rx, "v1").await;
    deploy_ok(&ex, &mut rx, "v2").await;
    let pid = ex.status("web").await.unwrap().jail.pid.unwrap();

    let mut wrong = sha(&v3);
    wrong[0] ^= 1;
    assert_failed(
        deploy(&ex, &mut rx, "v3", Some(wrong)).await,
        "sha256 mismatch",
    );
    assert_eq!(f.releases_on_disk(), ["v1", "v2"]);
    assert!(f.staging_is_empty(), "staging left behind");
    let st = ex.status("web").await.unwrap();
    assert_eq!(
        (st.current.as_deref(), st.jail.pid),
        (Some("v2"), Some(pid))
    );

    // v1 is on disk: switched to without a fetch (its artifact is gone).
    std::fs::remove_file(f.arts.join("v1.tar.gz")).unwrap();
    deploy_ok(&ex, &mut rx, "v1").await;
    let st = ex.status("web").await.unwrap();
    assert_eq!(st.current.as_deref(), Some("v1"));
    assert_eq!(f.get("/version").as_deref(), Some("v1"));
    let pid = st.jail.pid.unwrap();

    // The current version: ok at once, no restart.
    deploy_ok(&ex, &mut rx, "v1").await;
    assert_eq!(ex.status("web").await.unwrap().jail.pid, Some(pid));

    // Bad input: a failed outcome naming it, or an error for an unknown app.
    assert_failed(deploy(&ex, &mut rx, "../v2", None).await, "../v2");
    let e = ex.submit("api", submit("v1", None)).unwrap_err();
    assert!(matches!(e, ExecutorError::UnknownApp(_)), "{e}");
    assert!(ex.status("api").await.is_none());
    // A missing artifact fails naming the URL, and leaves v1 serving.
    assert_failed(deploy(&ex, &mut rx, "v9", None).await, "v9.tar.gz");
    assert_eq!(ex.status("web").await.unwrap().jail.pid, Some(pid));
    f.stop(ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_executor_adopts_the_running_jail() {
    let f = fx("executor adoption");
    f.artifact("v1", Kind::Healthy);
    let (ex, mut rx) = f.start_web().await;
    deploy_ok(&ex, &mut rx, "v1").await;
    let pid = ex.status("web").await.unwrap().jail.pid.unwrap();
    ex.shutdown(true).await;
    assert!(alive(pid));
    assert_eq!(f.get("/version").as_deref(), Some("v1"));

    let (ex, mut rx) = f.start_web().await;
    let st = ex.status("web").await.unwrap();
    assert_eq!(
        (st.jail.state, st.jail.pid, st.jail.adopted),
        (State::Running, Some(pid), true)
    );
    assert_eq!(st.current.as_deref(), Some("v1"));
    deploy_ok(&ex, &mut rx, "v1").await;
    assert_eq!(ex.status("web").await.unwrap().jail.pid, Some(pid));
    f.stop(ex).await;
    assert!(!alive(pid), "the adopted jail survived the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_executor_starts_current_when_the_jail_is_gone() {
    let f = fx("executor start at boot");
    f.artifact("v1", Kind::Healthy);
    let (ex, mut rx) = f.start_web().await;
    deploy_ok(&ex, &mut rx, "v1").await;
    ex.shutdown(false).await;
    assert!(f.get("/version").is_none(), "still serving after a stop");
    let (ex, _rx) = f.start_web().await;
    let st = ex.status("web").await.unwrap();
    assert_eq!(
        (st.jail.state, st.jail.release.as_deref(), st.jail.adopted),
        (State::Running, Some("v1"), false)
    );
    f.stop(ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_health_check_a_jail_that_exits_at_once_is_rolled_back() {
    let f = fx("executor settle");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::Exits)]);
    let (ex, mut rx) = f.start(f.apps(false, "")).await;
    let t = std::time::Instant::now();
    deploy_ok(&ex, &mut rx, "v1").await;
    assert!(t.elapsed() >= SETTLE, "ok before the settle time");
    assert_rolled_back(deploy(&ex, &mut rx, "v2", None).await, "v1", &["status 3"]);
    assert_current_and_running(&ex, "v1").await;
    f.wait_serving("v1").await;
    f.stop(ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_version_is_brought_up_and_hand_switches_are_seen() {
    let f = fx("executor current honoured");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::Healthy)]);
    let apps = f.apps(true, "restart = \"never\"\n");
    let (ex, mut rx) = f.start(apps).await;
    deploy_ok(&ex, &mut rx, "v1").await;
    deploy_ok(&ex, &mut rx, "v2").await;

    // An operator rolls back by hand: the jail still runs v2, `current` says v1.
    let layout = droot_fleet::release::Layout::new(&f.root);
    droot_fleet::release::rollback(&layout, Some("v1")).unwrap();
    assert_eq!(
        ex.status("web").await.unwrap().current.as_deref(),
        Some("v1"),
        "status reads the disk"
    );
    deploy_ok(&ex, &mut rx, "v1").await;
    assert_current_and_running(&ex, "v1").await;
    f.wait_serving("v1").await;
    // And the machine follows: v2 is a real deploy again, not a no-op.
    deploy_ok(&ex, &mut rx, "v2").await;
    assert_eq!(f.get("/version").as_deref(), Some("v2"));

    // The jail dies and is not restarted (`restart = never`): deploying the current
    // version starts it again.
    let pid = ex.status("web").await.unwrap().jail.pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let t = std::time::Instant::now();
    while ex.status("web").await.unwrap().jail.state == State::Running {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the kill was not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deploy_ok(&ex, &mut rx, "v2").await;
    let st = ex.status("web").await.unwrap();
    assert_eq!(st.jail.state, State::Running);
    assert_ne!(st.jail.pid, Some(pid));
    f.wait_serving("v2").await;
    f.stop(ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_cut_off_by_a_restart_is_checked_again_not_taken_as_done() {
    let f = fx("executor interrupted activation");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::NoHealth)]);
    let (ex, mut rx) = f
        .start(f.apps_with_deadline(Duration::from_secs(120)))
        .await;
    deploy_ok(&ex, &mut rx, "v1").await;
    ex.submit("web", submit("v2", None)).unwrap();
    // v2 never passes its check: stop the agent while it is being checked.
    wait_checking(&ex, "v2").await;
    ex.shutdown(true).await;

    // The next agent finds v2 current but never verified: it goes back to v1 before
    // anything else (the unverified v2 does not run on), and the same deploy is done in full.
    let (ex, mut rx) = f.start_web().await;
    assert_current_and_running(&ex, "v1").await;
    f.wait_serving("v1").await;
    match deploy(&ex, &mut rx, "v2", None).await {
        Outcome::RolledBack { to, error, .. } => {
            assert_eq!(to, "v1");
            assert!(error.contains("404"), "{error}");
        }
        o => panic!("an unverified release was taken as deployed: {o:?}"),
    }
    assert_eq!(
        ex.status("web").await.unwrap().current.as_deref(),
        Some("v1")
    );
    f.wait_serving("v1").await;
    assert!(
        !f.root.join(".droot-fleet/activating.json").exists(),
        "the activation record outlived the outcome"
    );
    f.stop(ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_health_check_rolls_back_at_once() {
    let f = fx("executor crash while checking");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::Exits)]);
    let (ex, mut rx) = f.start(f.apps_with_deadline(Duration::from_secs(60))).await;
    deploy_ok(&ex, &mut rx, "v1").await;
    let t = std::time::Instant::now();
    let o = deploy(&ex, &mut rx, "v2", None).await;
    assert_rolled_back(o, "v1", &["ended while being checked", "status 3"]);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the crash was not seen before the health deadline"
    );
    f.wait_serving("v1").await;
    f.stop(ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_interrupted_activation_the_release_before_it_can_be_deployed() {
    let f = fx("executor interrupted then previous");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::Healthy)]);
    let (ex, mut rx) = f.start_web().await;
    deploy_ok(&ex, &mut rx, "v1").await;
    deploy_ok(&ex, &mut rx, "v2").await;
    ex.shutdown(true).await;
    // What an agent killed while checking v2 leaves: v2 current and running, unverified.
    let record = f.root.join(".droot-fleet/activating.json");
    std::fs::write(&record, r#"{"version":"v2","from":"v1"}"#).unwrap();

    let (ex, mut rx) = f.start_web().await;
    // Undone at start: v1 is current and serving, the record is gone, and deploying v1 is
    // a no-op.
    assert_current_and_running(&ex, "v1").await;
    assert!(!record.exists(), "the activation record outlived the undo");
    f.wait_serving("v1").await;
    deploy_ok(&ex, &mut rx, "v1").await;
    assert_eq!(
        ex.status("web").await.unwrap().current.as_deref(),
        Some("v1")
    );
    f.stop(ex).await;
}

/// A first deploy cut off by the agent's end has no release to go back to: the restarted
/// agent removes `current` (the unverified release does not run), and deploying that
/// version again is a full activation with a health check. So is one after a first deploy
/// that failed its check: it leaves no `current` that a restarted agent would start, and
/// its release, judged failed, is pruned (issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_deploy_cut_off_or_failed_leaves_nothing_to_start() {
    let f = fx("executor interrupted first deploy");
    f.artifacts(&[("v1", Kind::NoHealth)]);
    let (ex, rx) = f
        .start(f.apps_with_deadline(Duration::from_secs(120)))
        .await;
    ex.submit("web", submit("v1", None)).unwrap();
    wait_checking(&ex, "v1").await;
    ex.shutdown(true).await;
    let record = f.root.join(".droot-fleet/activating.json");
    assert!(
        record.exists(),
        "no activation record left by the cut-off deploy"
    );
    let unverified = |ex_st: &droot_fleet::deploy::executor::AppRuntime, on_disk: &[&str]| {
        assert_eq!(ex_st.jail.state, State::Stopped, "{ex_st:?}");
        assert_eq!(ex_st.current, None, "{ex_st:?}");
        assert!(std::fs::symlink_metadata(f.root.join("current")).is_err());
        assert!(f.get("/").is_none(), "the unverified release still serves");
        assert!(!record.exists(), "the activation record outlived the undo");
        assert_eq!(f.releases_on_disk(), on_disk);
    };

    // The restart undoes it: no current, nothing running, the release kept on disk.
    let (ex, mut rx2) = f.start(f.apps_with_deadline(Duration::from_secs(3))).await;
    drop(rx);
    unverified(&ex.status("web").await.unwrap(), &["v1"]);
    // Deployed again: the full activation fails its check again, and leaves nothing.
    match deploy(&ex, &mut rx2, "v1", None).await {
        Outcome::Failed { error, .. } => assert!(error.contains("404"), "{error}"),
        o => panic!("an unverified first release was taken as deployed: {o:?}"),
    }
    unverified(&ex.status("web").await.unwrap(), &[]);
    f.stop(ex).await;
    // And a restart after that failure starts nothing either.
    let (ex, _rx) = f.start(f.apps_with_deadline(Duration::from_secs(3))).await;
    unverified(&ex.status("web").await.unwrap(), &[]);
    f.stop(ex).await;
}

/// An artifact server that accepts connections and never answers, until dropped.
fn stalled_server() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fetch_of_one_app_does_not_hold_another() {
    let f = fx("executor independence");
    f.artifact("v1", Kind::Healthy);
    let (listener, stalled) = stalled_server();
    let mut apps = f.apps(true, "");
    let slow_root = f.tmp.path().join("slow");
    let slow = format!(
        "[apps.slow]\nartifact = \"http://127.0.0.1:{stalled}/{{version}}.tar.gz\"\nroot = \"{}\"\ncommand = [\"true\"]\ndeploy_timeout = \"10s\"\n",
        slow_root.display()
    );
    apps.extend(parse_apps(&slow).unwrap());
    let (ex, mut rx) = f.start(apps).await;
    assert_eq!(ex.apps(), ["slow", "web"]);
    let first = submit("v1", None);
    ex.submit("slow", first.clone()).unwrap();
    // Wait until the fetch is under way: its connection is accepted.
    let conn = tokio::task::spawn_blocking(move || listener.accept().unwrap().0)
        .await
        .unwrap();
    assert_eq!(
        ex.status("slow").await.unwrap().activating.as_deref(),
        Some("v1")
    );
    deploy_ok(&ex, &mut rx, "v1").await;
    assert_eq!(f.get("/version").as_deref(), Some("v1"));
    // The same event again while it is being activated: it is not done twice.
    ex.submit("slow", first.clone()).unwrap();
    // Ending the stalled transfer leaves a store that refuses connections: tried again
    // until the app's deploy_timeout, then the deploy fails naming the URL.
    drop(conn);
    let done = next(&mut rx).await;
    assert_eq!(done.app, "slow");
    match done.outcome {
        Outcome::Failed {
            error, event_id, ..
        } => {
            assert_eq!(event_id, first.event_id);
            assert!(error.contains(&stalled.to_string()), "{error}")
        }
        o => panic!("expected failed: {o:?}"),
    }
    // The next outcome of `slow` is that of a new event, not a second one of the first.
    let second = submit("v2", None);
    ex.submit("slow", second.clone()).unwrap();
    let done = next(&mut rx).await;
    match done.outcome {
        Outcome::Failed { event_id, .. } => assert_eq!(event_id, second.event_id),
        o => panic!("expected failed: {o:?}"),
    }
    assert!(!slow_root.join("current").exists());
    f.stop(ex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_from_s3_with_the_digest_checked() {
    let f = fx("executor s3");
    let g = common::garage::Garage::start();
    let v1 = f.artifact("v1", Kind::Healthy);
    g.put_async("web/v1.tar.gz", v1.clone()).await;
    // The fetcher takes credentials from the standard AWS chain, i.e. this environment.
    g.export_credentials();
    let mut opts = f.opts();
    opts.fetch.s3_endpoint = Some(g.endpoint.clone());
    opts.fetch.s3_region = Some("garage".into());
    let mut apps = f.apps(true, "");
    apps.get_mut("web").unwrap().artifact = format!("s3://{}/{{app}}/{{version}}.tar.gz", g.bucket);
    let (ex, mut rx) = Executor::start(apps, opts).await.unwrap();
    assert_ok(&deploy(&ex, &mut rx, "v1", Some(sha(&v1))).await, "v1");
    assert_eq!(f.get("/version").as_deref(), Some("v1"));
    assert_failed(deploy(&ex, &mut rx, "v2", None).await, "no such key");
    f.stop(ex).await;
}

/// Issue 15, item 1: an app whose config turns `userns = true` on. At the next start its
/// store, left open and unmounted by an older version, is tightened (0700) and mounted
/// `nosuid,nodev`; the jail left running from before is restarted, its older release
/// shifted into a range, and it runs there; the next deploy is unpacked shifted. Turning it off again is refused: the files are the
/// range's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_turned_to_userns_is_protected_shifted_and_jailed_at_the_next_start() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = fx("executor with userns");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::Healthy)]);
    let (ex, mut rx) = f.start_web().await;
    deploy_ok(&ex, &mut rx, "v1").await;
    let old_pid = ex.status("web").await.unwrap().jail.pid.unwrap();
    // Left running, as for an agent upgrade: the next agent adopts it, sees it runs without
    // the user namespace its config now asks for, and restarts it in one.
    ex.shutdown(true).await;
    assert!(alive(old_pid));
    assert_eq!(
        std::fs::metadata(f.root.join("releases/v1")).unwrap().uid(),
        0
    );
    // As an older version left it: open to all, not mounted.
    let st = std::process::Command::new("umount")
        .arg(&f.root)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(&f.root, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (ex, mut rx) = f.start(f.apps(true, "userns = true\n")).await;
    f.wait_serving("v1").await;
    let mode = std::fs::metadata(&f.root).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "tightened at start");
    let mounts = common::mounts_below(&f.root);
    assert!(
        mounts.iter().any(|l| l.split(' ').nth(4) == f.root.to_str()
            && l.split(' ').nth(5).unwrap().contains("nosuid,nodev")),
        "mounted nosuid,nodev at start: {mounts:#?}"
    );
    let base = std::fs::metadata(f.root.join("releases/v1")).unwrap().uid();
    assert!(base >= 65536, "v1 shifted into a range: {base}");
    let httpd_in_range = |run_pid: i32| {
        let httpd = common::wait_for_comm(run_pid as u32, "httpd", 2);
        let map = std::fs::read_to_string(format!("/proc/{httpd}/uid_map")).unwrap();
        map.split_whitespace().nth(1).map(str::to_string)
    };
    let st = ex.status("web").await.unwrap();
    assert_eq!(httpd_in_range(st.jail.pid.unwrap()), Some(base.to_string()));

    assert!(
        !alive(old_pid),
        "the adopted jail without a user namespace was stopped"
    );
    assert!(!st.jail.adopted);

    deploy_ok(&ex, &mut rx, "v2").await;
    assert_eq!(f.get("/version").as_deref(), Some("v2"));
    let v2 = std::fs::metadata(f.root.join("releases/v2/www/version")).unwrap();
    assert_eq!((v2.uid(), v2.gid()), (base, base), "unpacked shifted");
    let st = ex.status("web").await.unwrap();
    assert_eq!(httpd_in_range(st.jail.pid.unwrap()), Some(base.to_string()));
    f.stop(ex).await;

    let e = match Executor::start(f.apps(true, ""), f.opts()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("userns turned off on a shifted store must be refused"),
    };
    assert!(e.contains("runs its jails in user namespace range"), "{e}");
    assert!(e.contains("app web"), "{e}");
}

/// Each outcome carries the durations of the phases that ran, and is in the app's journal
/// (kind, signer, from/to, outcome) before it is reported; a new executor reads it back
/// (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_carry_their_phase_times_and_are_journalled() {
    use droot_fleet::deploy::executor::Phase;
    use droot_fleet::deploy::status::Result as Res;
    let f = fx("executor phases and journal");
    f.artifacts(&[("v1", Kind::Healthy), ("v2", Kind::NoHealth)]);
    let (ex, mut rx) = f.start_web().await;
    ex.submit("web", submit("v1", None)).unwrap();
    let done = next(&mut rx).await;
    assert_ok(&done.outcome, "v1");
    let ran: Vec<&str> = done.phases.iter().map(|(p, _)| p).collect();
    assert_eq!(ran, ["fetch", "unpack", "start", "health"], "{done:?}");
    assert!(done.phases.get(Phase::Health) > Some(Duration::ZERO));

    let mut req = submit("v2", None);
    req.signer = Some("KeyId00001".into());
    ex.submit("web", req.clone()).unwrap();
    let done = next(&mut rx).await;
    assert_rolled_back(done.outcome.clone(), "v1", &["404"]);
    // The new release's steps are timed; the rollback's are not added to them.
    let ran: Vec<&str> = done.phases.iter().map(|(p, _)| p).collect();
    assert_eq!(ran, ["fetch", "unpack", "start", "health"], "{done:?}");

    let h = ex.history("web").unwrap();
    let rows: Vec<_> = h
        .iter()
        .map(|e| {
            (
                e.from.as_deref(),
                e.to.as_str(),
                e.outcome,
                e.signer.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (None, "v1", Res::Ok, None),
            (Some("v1"), "v2", Res::RolledBack, Some("KeyId00001")),
        ]
    );
    assert_eq!(h[1].event_id, req.event_id);
    assert!(h[1].error.as_deref().is_some_and(|e| e.contains("404")));
    assert_eq!(h[1].phases_ms, done.phases);
    f.stop(ex).await;

    let (ex, _rx) = f.start_web().await;
    let again = ex.history("web").unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(again[1].event_id, req.event_id);
    assert_eq!(again[1].phases_ms.iter().count(), 4);
    f.stop(ex).await;
}
