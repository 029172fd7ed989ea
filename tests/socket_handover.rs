//! Socket handover and readiness through the supervisor, on real jails: the agent binds
//! the app's socket once and every instance gets it as fd 3 (systemd's protocol), so a
//! deploy that overlaps two instances, a crash and an agent restart drop no request; and
//! `READY=1` counts only from the instance it was asked of.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::Poller;
use common::sockapp::{Behaviour, release};
use droot_fleet::deploy::app::{AppConfig, parse_apps};
use droot_fleet::deploy::supervisor::{Supervisor, SupervisorOptions};

struct Fixture {
    _tmp: common::TempDir,
    root: PathBuf,
    state: PathBuf,
    addr: String,
}

fn fixture(what: &str, releases: &[(&str, Behaviour)]) -> Fixture {
    common::require_root(what);
    let tmp = common::tempdir();
    let root = tmp.path().canonicalize().unwrap().join("app");
    for (v, b) in releases {
        let dir = root.join("releases").join(v);
        std::fs::create_dir_all(&dir).unwrap();
        release(&dir, v, *b);
    }
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let port = common::unused_port();
    Fixture {
        state: tmp.path().join("state"),
        _tmp: tmp,
        root,
        addr: format!("127.0.0.1:{port}"),
    }
}

impl Fixture {
    fn app(&self) -> AppConfig {
        let text = format!(
            "[apps.web]\nartifact = \"file:///a/{{version}}.tar\"\nroot = \"{}\"\n\
             command = [\"/sockapp\"]\nlisten = [\"http=tcp:{}\"]\nstop_timeout = \"5s\"\n\
             leave_running = true\nbackoff = {{ initial = \"200ms\" }}\n\
             [apps.web.health]\nnotify = true\ndeadline = \"20s\"\n",
            self.root.display(),
            self.addr
        );
        parse_apps(&text).unwrap().remove("web").unwrap()
    }

    fn supervisor(&self) -> Supervisor {
        let mut opts = SupervisorOptions::new(&self.state).unwrap();
        opts.exe = common::bin();
        Supervisor::new(opts).unwrap()
    }
}

use common::wait_app_status as wait_for;

/// The socket inode the `run` process `pid` holds at fd 3.
fn socket_at_fd3(pid: i32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/fd/3"))
        .unwrap()
        .ino()
}

/// The pid of the jailed app under `run_pid` (run → init → app).
fn app_pid(run_pid: i32) -> u32 {
    common::wait_for_comm(run_pid as u32, "sockapp", 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_serves_through_an_overlap_a_crash_and_an_agent_restart() {
    let f = fixture(
        "socket handover",
        &[("v1", Behaviour::Boots(0)), ("v2", Behaviour::Boots(800))],
    );
    let sup = f.supervisor();
    sup.manage(f.app()).await.unwrap();
    let mut rx = sup.watch("web").await.unwrap();
    sup.start("web", None).await.unwrap();
    let first = wait_for(&mut rx, "v1 ready", |s| s.ready).await;
    let socket = socket_at_fd3(first.pid.unwrap());
    let environ = std::fs::read(format!("/proc/{}/environ", app_pid(first.pid.unwrap()))).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for var in ["LISTEN_FDS=1", "LISTEN_FDNAMES=http", "LISTEN_PID=2"] {
        assert!(
            environ.contains(var),
            "{var} not in the app's environment: {environ:?}"
        );
    }
    let poller = Poller::start(&f.addr, "/");
    poller.wait_more(5);

    // An overlapping deploy: v2 boots for 0.8 s while v1 serves; then v1 drains and stops.
    let st = sup.start_next("web", "v2").await.unwrap();
    assert_eq!(st.pid, first.pid, "the old instance keeps serving");
    wait_for(&mut rx, "v2 ready", |s| {
        s.next.as_ref().is_some_and(|n| n.ready)
    })
    .await;
    let st = sup.promote("web").await.unwrap();
    assert_eq!((st.release.as_deref(), st.ready), (Some("v2"), true));
    assert!(!common::alive(i64::from(first.pid.unwrap())), "v1 stopped");
    assert_eq!(socket_at_fd3(st.pid.unwrap()), socket, "the same socket");
    let rec = droot_fleet::deploy::supervisor::proc::read_pid_file(&f.state.join("web.pid"));
    assert_eq!(
        rec.unwrap().map(|r| r.pid),
        st.pid,
        "web.pid names the new instance"
    );
    for gone in ["web.next.pid", "web.old.pid"] {
        assert!(!f.state.join(gone).exists(), "{gone} left behind");
    }
    poller.wait_more(5);
    assert_eq!(common::http_get(&f.addr, "/").as_deref(), Some("v2"));

    // A crash: the app is killed; the supervisor restarts it after its backoff while the
    // kernel queues connections on the socket.
    let app = app_pid(st.pid.unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let st = wait_for(&mut rx, "restarted", |s| s.restarts == 1 && s.ready).await;
    poller.wait_more(5);

    // An agent restart with leave_running: the jail stays, and the next supervisor takes
    // the very socket back from it, and hands it to the jail it starts next.
    sup.shutdown(false).await;
    drop(sup);
    poller.wait_more(3);
    let sup = f.supervisor();
    let adopted = sup.manage(f.app()).await.unwrap();
    assert_eq!((adopted.pid, adopted.adopted), (st.pid, true));
    let st = sup.restart("web").await.unwrap();
    assert_ne!(st.pid, adopted.pid);
    assert_eq!(
        socket_at_fd3(st.pid.unwrap()),
        socket,
        "the socket was taken back"
    );
    let mut rx = sup.watch("web").await.unwrap();
    wait_for(&mut rx, "ready after the restart", |s| s.ready).await;
    poller.wait_more(5);
    let (ok, failed) = poller.stop();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    sup.stop("web").await.unwrap();
}

/// READY=1 from anyone but the new instance (here: a host process that found the socket's
/// name in the instance's environment) changes nothing; the instance's own does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_counts_only_from_the_instance_itself() {
    let f = fixture(
        "notify credentials",
        &[("v1", Behaviour::Boots(0)), ("v2", Behaviour::Boots(1500))],
    );
    let sup = f.supervisor();
    sup.manage(f.app()).await.unwrap();
    let mut rx = sup.watch("web").await.unwrap();
    sup.start("web", None).await.unwrap();
    wait_for(&mut rx, "v1 ready", |s| s.ready).await;
    let st = sup.start_next("web", "v2").await.unwrap();
    let run = st.next.unwrap().pid.unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", app_pid(run))).unwrap();
    let name = String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|v| v.strip_prefix("NOTIFY_SOCKET=@").map(str::to_string))
        .expect("NOTIFY_SOCKET in the instance's environment");
    let forger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    forger.send_to_addr(b"READY=1", &addr).unwrap();
    let marker = f.root.join("releases/v2/notifying");
    let st = wait_for(&mut rx, "v2 ready", |s| {
        s.next.as_ref().is_some_and(|n| n.ready)
    })
    .await;
    assert!(
        marker.exists(),
        "ready before the instance notified: the forged READY=1 counted ({st:?})"
    );
    sup.discard("web").await.unwrap();
    sup.stop("web").await.unwrap();
}
