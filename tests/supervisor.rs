//! The jail supervisor and health checks, driven through the library, on real jails
//! (busybox-static rootfs, the real `droot-fleet run` binary as the jail process).

mod common;

use common::Poller;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use droot_fleet::deploy::app::{AppConfig, parse_apps};
use droot_fleet::deploy::health::{ExecContext, wait_healthy};
use droot_fleet::deploy::supervisor::proc::{PidRecord, read_pid_file, start_time, write_pid_file};
use droot_fleet::deploy::supervisor::{AppStatus, State, Supervisor, SupervisorOptions};

/// An app root with one busybox release `v1` as `current`, serving `/www` (with a `health`
/// file) when run with httpd.
struct Fixture {
    _tmp: common::TempDir,
    root: PathBuf,
    state: PathBuf,
    port: u16,
}

fn fixture(what: &str) -> Fixture {
    common::require_root(what);
    let tmp = common::tempdir();
    let root = tmp.path().canonicalize().unwrap().join("app");
    let rel = root.join("releases/v1");
    std::fs::create_dir_all(&rel).unwrap();
    common::busybox_rootfs(&rel);
    std::fs::create_dir_all(rel.join("www")).unwrap();
    std::fs::write(rel.join("www/health"), "ok\n").unwrap();
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let state = tmp.path().join("state");
    let port = common::unused_port();
    Fixture {
        _tmp: tmp,
        root,
        state,
        port,
    }
}

impl Fixture {
    /// An `[apps.web]` block with `extra` settings appended.
    fn app(&self, command: &str, extra: &str) -> AppConfig {
        let text = format!(
            "[apps.web]\nartifact = \"file:///a/{{version}}.tar\"\nroot = \"{}\"\ncommand = {command}\n{extra}",
            self.root.display()
        );
        parse_apps(&text).unwrap().remove("web").unwrap()
    }

    fn httpd(&self) -> String {
        format!(
            "[\"httpd\", \"-f\", \"-p\", \"127.0.0.1:{}\", \"-h\", \"/www\"]",
            self.port
        )
    }

    fn supervisor(&self) -> Supervisor {
        let mut opts = SupervisorOptions::new(&self.state).unwrap();
        opts.exe = common::bin();
        Supervisor::new(opts).unwrap()
    }

    fn exec_ctx(&self, app: &AppConfig) -> ExecContext {
        ExecContext {
            exe: common::bin(),
            root: self.root.join("releases/v1"),
            jail: app.jail.clone(),
        }
    }
}

use common::wait_app_status as wait_for;

/// A plain GET over std, for the poller thread: whether it answered 200.
fn get_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpd_jail_passes_http_tcp_and_exec_checks_then_stops_cleanly() {
    let f = fixture("supervisor http check");
    let checks = format!(
        "stop_timeout = \"5s\"\n[apps.web.health]\nhttp = \"http://127.0.0.1:{}/health\"\ndeadline = \"10s\"\ninterval = \"100ms\"\n",
        f.port
    );
    let app = f.app(&f.httpd(), &checks);
    let sup = f.supervisor();
    assert_eq!(sup.manage(app.clone()).await.unwrap().state, State::Stopped);
    let st = sup.start("web", None).await.unwrap();
    assert_eq!(st.state, State::Running);
    assert_eq!(st.release.as_deref(), Some("v1"));
    let pid = st.pid.unwrap();
    let rec = read_pid_file(&f.state.join("web.pid")).unwrap().unwrap();
    assert_eq!((rec.pid, rec.start_time), (pid, start_time(pid).unwrap()));

    let ctx = f.exec_ctx(&app);
    let http = app.health.clone().unwrap();
    wait_healthy(&http, &ctx).await.expect("http check");
    let tcp = f
        .app(
            &f.httpd(),
            &checks.replace(
                &format!("http = \"http://127.0.0.1:{}/health\"", f.port),
                &format!("tcp = \"127.0.0.1:{}\"", f.port),
            ),
        )
        .health
        .unwrap();
    wait_healthy(&tcp, &ctx).await.expect("tcp check");
    let exec = f
        .app(
            &f.httpd(),
            &checks.replace(
                &format!("http = \"http://127.0.0.1:{}/health\"", f.port),
                &format!(
                    "exec = [\"wget\", \"-q\", \"-O\", \"-\", \"http://127.0.0.1:{}/health\"]",
                    f.port
                ),
            ),
        )
        .health
        .unwrap();
    wait_healthy(&exec, &ctx)
        .await
        .expect("exec check inside a jail");
    let mut missing = http.clone();
    missing.deadline = Duration::from_millis(500);
    if let droot_fleet::deploy::app::Probe::Http(t) = &mut missing.probe {
        t.path = "/missing".into();
    }
    let err = wait_healthy(&missing, &ctx).await.unwrap_err().to_string();
    assert!(
        err.contains("404"),
        "a non-2xx answer fails the check: {err}"
    );

    let st = sup.stop("web").await.unwrap();
    assert_eq!(st.state, State::Stopped);
    assert!(
        st.last_exit.unwrap().contains("143"),
        "httpd ends on SIGTERM"
    );
    assert!(!alive(pid), "run process {pid} still there");
    assert!(read_pid_file(&f.state.join("web.pid")).unwrap().is_none());
    assert!(!get_ok(f.port, "/health"), "app still answers after stop");
    common::jail::assert_no_mounts(&f.root);
    sup.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_end_at_the_deadline_with_the_last_error() {
    let f = fixture("supervisor failing checks");
    let app = f.app(
        "[\"true\"]",
        &format!(
            "[apps.web.health]\nhttp = \"http://127.0.0.1:{}/nothing\"\ndeadline = \"600ms\"\ninterval = \"100ms\"\n",
            f.port
        ),
    );
    let ctx = f.exec_ctx(&app);
    let t0 = Instant::now();
    let err = wait_healthy(app.health.as_ref().unwrap(), &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("connect"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    let exec = f
        .app(
            "[\"true\"]",
            "[apps.web.health]\nexec = [\"sh\", \"-c\", \"echo sick >&2; exit 7\"]\ndeadline = \"1s\"\ninterval = \"200ms\"\n",
        )
        .health
        .unwrap();
    let err = wait_healthy(&exec, &ctx).await.unwrap_err().to_string();
    assert!(err.contains("sick") && err.contains('7'), "{err}");
    common::jail::assert_no_mounts(&f.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_app_is_restarted_with_growing_backoff() {
    let f = fixture("supervisor restart backoff");
    let app = f.app(
        "[\"sh\", \"-c\", \"echo boom-out; echo boom-err >&2; exit 3\"]",
        "restart = \"on-failure\"\nbackoff = { initial = \"200ms\", max = \"2s\" }\n",
    );
    let sup = f.supervisor();
    sup.manage(app).await.unwrap();
    let mut rx = sup.watch("web").await.unwrap();
    sup.start("web", None).await.unwrap();
    // Time spent in `starting` (the backoff) before each restart.
    let mut waits = Vec::new();
    let mut pids = Vec::new();
    for n in 1..=3 {
        let s = wait_for(&mut rx, "starting", |s| {
            s.state == State::Starting && s.restarts == n
        })
        .await;
        assert!(s.last_exit.unwrap().contains("status 3"));
        let t = Instant::now();
        let s = wait_for(&mut rx, "restarted", |s| {
            s.restarts == n && s.state != State::Starting
        })
        .await;
        waits.push(t.elapsed());
        pids.extend(s.pid);
    }
    // Delays of 200, 400 and 800 ms; seeing `starting` late can only shorten a measured wait.
    assert!(waits[1] >= Duration::from_millis(300), "{waits:?}");
    assert!(waits[2] >= Duration::from_millis(600), "{waits:?}");
    assert!(waits[2] > waits[0], "{waits:?}");
    pids.dedup();
    assert!(pids.len() >= 2, "each restart is a new process: {pids:?}");
    let log = std::fs::read_to_string(f.state.join("web.log")).unwrap();
    assert!(
        log.matches("boom-out").count() >= 3,
        "stdout not logged: {log}"
    );
    assert!(log.contains("boom-err"), "stderr not logged: {log}");
    sup.stop("web").await.unwrap();
    sup.shutdown(false).await;
    common::jail::assert_no_mounts(&f.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_the_backoff_cancels_the_restart() {
    let f = fixture("supervisor stop in backoff");
    let app = f.app(
        "[\"sh\", \"-c\", \"exit 3\"]",
        "backoff = { initial = \"1h\", max = \"2h\" }\n",
    );
    let sup = f.supervisor();
    sup.manage(app).await.unwrap();
    let mut rx = sup.watch("web").await.unwrap();
    sup.start("web", None).await.unwrap();
    wait_for(&mut rx, "backoff", |s| s.state == State::Starting).await;
    let st = sup.stop("web").await.unwrap();
    assert_eq!((st.state, st.pid, st.restarts), (State::Stopped, None, 1));
    // A new start is not held back by the old backoff.
    let st = sup.start("web", None).await.unwrap();
    assert_eq!(st.state, State::Running);
    sup.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_stays_down_and_a_clean_exit_is_stopped() {
    let f = fixture("supervisor restart never");
    let sup = f.supervisor();
    sup.manage(f.app("[\"sh\", \"-c\", \"exit 4\"]", "restart = \"never\"\n"))
        .await
        .unwrap();
    let mut rx = sup.watch("web").await.unwrap();
    sup.start("web", None).await.unwrap();
    let s = wait_for(&mut rx, "failed", |s| s.state == State::Failed).await;
    assert_eq!(s.restarts, 0);
    assert!(s.last_exit.unwrap().contains("status 4"));
    assert!(read_pid_file(&f.state.join("web.pid")).unwrap().is_none());
    sup.shutdown(false).await;

    let sup = f.supervisor();
    sup.manage(f.app("[\"true\"]", "restart = \"on-failure\"\n"))
        .await
        .unwrap();
    let mut rx = sup.watch("web").await.unwrap();
    sup.start("web", None).await.unwrap();
    let s = wait_for(&mut rx, "stopped", |s| s.state == State::Stopped).await;
    assert_eq!(
        (s.restarts, s.last_exit.as_deref()),
        (0, Some("exited with status 0"))
    );
    sup.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_the_signal_then_sigkill_after_the_timeout() {
    let f = fixture("supervisor stop timeout");
    let app = f.app(
        "[\"sh\", \"-c\", \"trap '' TERM; touch /tmp/ready; while true; do sleep 1; done\"]",
        "stop_timeout = \"1s\"\n",
    );
    let sup = f.supervisor();
    sup.manage(app).await.unwrap();
    let pid = sup.start("web", None).await.unwrap().pid.unwrap();
    let ready = f.root.join("releases/v1/tmp/ready");
    let t = Instant::now();
    while !ready.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "app never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let init = common::wait_for_comm(pid as u32, "droot-fleet", 1);
    let shell = common::wait_for_comm(init, "sh", 1);
    let t = Instant::now();
    let st = sup.stop("web").await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL came before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(st.state, State::Stopped);
    assert!(st.last_exit.unwrap().contains("signal 9"));
    for p in [pid, init as i32, shell as i32] {
        assert!(!alive(p), "process {p} of the jail survived the stop");
    }
    common::jail::assert_no_mounts(&f.root);
    sup.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signal_kill_ends_the_whole_jail_at_once() {
    let f = fixture("supervisor stop with KILL");
    let app = f.app(
        "[\"sh\", \"-c\", \"trap '' TERM; sleep 60 & wait\"]",
        "stop_signal = \"KILL\"\nstop_timeout = \"30s\"\n",
    );
    let sup = f.supervisor();
    sup.manage(app).await.unwrap();
    let pid = sup.start("web", None).await.unwrap().pid.unwrap();
    let init = common::wait_for_comm(pid as u32, "droot-fleet", 1);
    let shell = common::wait_for_comm(init, "sh", 1);
    let sleeper = common::wait_for_comm(shell, "sleep", 1);
    let t = Instant::now();
    let st = sup.stop("web").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(st.state, State::Stopped);
    for p in [pid, init as i32, shell as i32, sleeper as i32] {
        assert!(!alive(p), "process {p} of the jail survived SIGKILL");
    }
    sup.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_a_missing_current_or_release_naming_the_app() {
    let f = fixture("supervisor start errors");
    let sup = f.supervisor();
    sup.manage(f.app("[\"true\"]", "")).await.unwrap();
    let e = sup.start("web", Some("v9")).await.unwrap_err().to_string();
    assert!(
        e.contains("web") && e.contains("v9") && e.contains("not started"),
        "{e}"
    );
    for bad in ["../releases/v1", "v1/../v1", ""] {
        let e = sup.start("web", Some(bad)).await.unwrap_err().to_string();
        assert!(e.contains("web") && e.contains("not started"), "{bad}: {e}");
    }
    std::fs::remove_file(f.root.join("current")).unwrap();
    let e = sup.start("web", None).await.unwrap_err().to_string();
    assert!(e.contains("web") && e.contains("current"), "{e}");
    assert_eq!(sup.status("web").await.unwrap().state, State::Stopped);
    let e = sup.status("api").await.unwrap_err().to_string();
    assert!(e.contains("api"), "{e}");
    sup.shutdown(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_supervisor_adopts_the_running_jail_without_downtime() {
    let f = fixture("supervisor adoption");
    let app = f.app(&f.httpd(), "leave_running = true\n");
    let first = f.supervisor();
    first.manage(app.clone()).await.unwrap();
    let pid = first.start("web", None).await.unwrap().pid.unwrap();
    let t = Instant::now();
    while !get_ok(f.port, "/health") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "httpd never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let poller = Poller::start(&format!("127.0.0.1:{}", f.port), "/health");
    first.shutdown(false).await;
    drop(first);

    let second = f.supervisor();
    let st = second.manage(app).await.unwrap();
    assert_eq!(
        (st.state, st.pid, st.adopted),
        (State::Running, Some(pid), true)
    );
    // Starting the release it already runs changes nothing: no second copy.
    assert_eq!(second.start("web", None).await.unwrap().pid, Some(pid));
    tokio::task::block_in_place(|| poller.wait_more(10));
    let (_, failed) = poller.stop();
    assert_eq!(failed, 0, "requests failed during handover");

    // The adopted jail is watched: a crash is seen and restarted (status unknown = failure).
    let mut rx = second.watch("web").await.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let s = wait_for(&mut rx, "restarted after the adopted jail died", |s| {
        s.state == State::Running && s.pid != Some(pid)
    })
    .await;
    assert!(!s.adopted && s.restarts == 1);
    second.stop("web").await.unwrap();
    second.shutdown(false).await;
    common::jail::assert_no_mounts(&f.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_pid_is_not_adopted_nor_signalled() {
    let f = fixture("supervisor recycled pid");
    std::fs::create_dir_all(&f.state).unwrap();
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let opid = other.id() as i32;
    let pid_file = f.state.join("web.pid");
    for start in [start_time(opid).unwrap(), start_time(opid).unwrap() + 7] {
        // The right start time but another program, or the right pid but another start.
        write_pid_file(
            &pid_file,
            &PidRecord {
                pid: opid,
                start_time: start,
                release: "v1".into(),
                since: 1,
            },
        )
        .unwrap();
        let sup = f.supervisor();
        let st = sup.manage(f.app(&f.httpd(), "")).await.unwrap();
        assert_eq!((st.state, st.adopted), (State::Stopped, false));
        assert!(
            read_pid_file(&pid_file).unwrap().is_none(),
            "stale pid file kept"
        );
        let st = sup.start("web", None).await.unwrap();
        assert_ne!(st.pid, Some(opid));
        sup.stop("web").await.unwrap();
        sup.shutdown(false).await;
        assert!(alive(opid), "the unrelated process was signalled");
    }
    other.kill().unwrap();
    other.wait().unwrap();
    common::jail::assert_no_mounts(&f.root);
}

/// Not a test on its own: the supervisor process of
/// [`a_restarted_supervisor_process_adopts_after_kill_9`], run as a child of this test binary
/// (`--ignored --exact supervisor_process`). It manages the app of `SUP_CONFIG` in
/// `SUP_STATE`, starts it unless it adopted it, prints `STATUS <json>`, then obeys stdin:
/// `stop` stops the app and prints the status again; EOF ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_restarted_supervisor_process_adopts_after_kill_9 as a child process"]
async fn supervisor_process() {
    let config = std::env::var("SUP_CONFIG")
        .expect("SUP_CONFIG: this is a helper process of a_restarted_supervisor_process_adopts_after_kill_9, not a test to run alone");
    let config = std::fs::read_to_string(config).unwrap();
    let app = parse_apps(&config).unwrap().remove("web").unwrap();
    let mut opts = SupervisorOptions::new(std::env::var("SUP_STATE").unwrap()).unwrap();
    opts.exe = common::bin();
    let sup = Supervisor::new(opts).unwrap();
    let mut st = sup.manage(app).await.unwrap();
    if st.state != State::Running {
        st = sup.start("web", None).await.unwrap();
    }
    let report = |st: &AppStatus| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(std::env::var("SUP_OUT").unwrap())
            .unwrap();
        writeln!(f, "{}", serde_json::to_string(st).unwrap()).unwrap();
    };
    report(&st);
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap() > 0 {
        if line.trim() == "stop" {
            report(&sup.stop("web").await.unwrap());
        }
        line.clear();
    }
}

/// Starts [`supervisor_process`] and returns it with the status it reported first. Statuses
/// come through a file (`SUP_OUT`, one JSON line each), not through libtest's stdout.
fn supervisor_child(
    f: &Fixture,
    config: &Path,
    n: usize,
) -> (std::process::Child, serde_json::Value) {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "supervisor_process",
            "--test-threads=1",
        ])
        .env("SUP_CONFIG", config)
        .env("SUP_STATE", &f.state)
        .env("SUP_OUT", f._tmp.path().join("statuses"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = read_status(f, n);
    (child, status)
}

/// Waits (20 s at most) for the `n`th status line (from 1) and returns it.
fn read_status(f: &Fixture, n: usize) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(f._tmp.path().join("statuses")).unwrap_or_default();
        if let Some(line) = text.lines().nth(n - 1) {
            return serde_json::from_str(line).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no status {n} from the supervisor process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_supervisor_process_adopts_after_kill_9() {
    let f = fixture("supervisor process adoption");
    let config = f._tmp.path().join("apps.toml");
    std::fs::write(
        &config,
        format!(
            "[apps.web]\nartifact = \"file:///a/{{version}}.tar\"\nroot = \"{}\"\ncommand = {}\nleave_running = true\n",
            f.root.display(),
            f.httpd()
        ),
    )
    .unwrap();
    let (mut first, st) = supervisor_child(&f, &config, 1);
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["adopted"], false, "{st}");
    let pid = st["pid"].as_i64().unwrap() as i32;
    let t = Instant::now();
    while !get_ok(f.port, "/health") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "httpd never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let poller = Poller::start(&format!("127.0.0.1:{}", f.port), "/health");
    // The supervisor dies without any shutdown; its jail is reparented and keeps serving.
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut second, st) = supervisor_child(&f, &config, 2);
    assert_eq!(
        (st["state"].as_str(), st["adopted"].as_bool()),
        (Some("running"), Some(true)),
        "{st}"
    );
    assert_eq!(
        st["pid"].as_i64(),
        Some(pid as i64),
        "a second copy was started"
    );
    poller.wait_more(10);
    let (_, failed) = poller.stop();
    assert_eq!(failed, 0, "requests failed during the handover");

    // The adopted jail (not its child) is stopped by the new supervisor.
    second.stdin.as_mut().unwrap().write_all(b"stop\n").unwrap();
    let st = read_status(&f, 3);
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(!alive(pid), "adopted jail {pid} survived stop");
    drop(second.stdin.take());
    assert!(second.wait().unwrap().success());
    common::jail::assert_no_mounts(&f.root);
}

/// A jail starts only once its pid file names it: a supervisor that died between spawning
/// it and recording it would leave a jail nobody can adopt or stop. The jail reads its own
/// pid file through a bind mount as its first act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jail_starts_only_once_its_pid_file_names_it() {
    let f = fixture("supervisor start gate");
    let cmd = r#"["sh", "-c", "cat /state/web.pid > /state/seen.tmp && mv /state/seen.tmp /state/seen; exec sleep 60"]"#;
    let app = f.app(cmd, &format!("bind = [\"{}:/state\"]\n", f.state.display()));
    let sup = f.supervisor();
    sup.manage(app).await.unwrap();
    let mut rx = sup.watch("web").await.unwrap();
    let st = sup.start("web", None).await.unwrap();
    let seen = f.state.join("seen");
    let t = Instant::now();
    while !seen.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the jail never copied its pid file; status {:?}, log:\n{}",
            *rx.borrow(),
            std::fs::read_to_string(f.state.join("web.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec: PidRecord = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(Some(rec.pid), st.pid);
    assert_eq!(rec.release, "v1");
    // The ordering is the gate's (the window is too short to hit by chance): `run` got one.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", rec.pid)).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(
        args[4],
        b"--start-gate",
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let st = wait_for(&mut rx, "still running", |s| s.state == State::Running).await;
    assert_eq!(st.restarts, 0, "{st:?}");
    sup.stop("web").await.unwrap();
    sup.shutdown(false).await;
    common::jail::assert_no_mounts(&f.root);
}

/// `run --start-gate FD` does nothing on EOF (the supervisor died or gave up before
/// recording the jail): exit 125, the command never ran, nothing mounted. One byte lets it
/// run as usual.
#[test]
fn run_on_a_closed_start_gate_starts_nothing() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let f = fixture("run start gate");
    let rel = f.root.join("releases/v1");
    for opened in [false, true] {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let raw = r.as_raw_fd();
        let mut c = common::cmd();
        c.args(["run", "--root"])
            .arg(&rel)
            .args(["--start-gate", "7", "--", "touch", "/ran"]);
        // SAFETY: dup2 and fcntl are async-signal-safe and touch only the child.
        unsafe {
            c.pre_exec(move || {
                if raw != 7 && libc::dup2(raw, 7) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::fcntl(7, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if opened {
            nix::unistd::write(&w, &[1]).unwrap();
        }
        drop(w);
        let out = common::output(&mut c);
        drop(r);
        let err = String::from_utf8_lossy(&out.stderr);
        if opened {
            assert!(out.status.success(), "opened gate: {err}");
        } else {
            assert_eq!(out.status.code(), Some(125), "{err}");
            assert!(err.contains("not started"), "{err}");
        }
        assert_eq!(rel.join("ran").exists(), opened, "opened: {opened}");
        common::jail::assert_no_mounts(&f.root);
    }
}

/// Issue 15, item 1: a userns app under the supervisor. `run` gets `--userns` and the range
/// (the jail's httpd is host `base`), the start gate still holds it until the pid file is
/// written, and an `exec` health check runs in the same kind of jail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_userns_app_runs_in_its_range_and_its_exec_check_too() {
    use droot_fleet::release::{Layout, userns};
    let f = fixture("supervisor with userns");
    let layout = Layout::new(&f.root);
    let range = userns::enable(&layout, None).unwrap();
    assert_eq!(userns::shift_releases(&layout, range).unwrap(), ["v1"]);
    let check = format!(
        "userns = true\n[apps.web.health]\nexec = [\"grep\", \"-q\", \" {} \", \"/proc/self/uid_map\"]\ndeadline = \"5s\"\ninterval = \"100ms\"\n",
        range.base()
    );
    let mut app = f.app(&f.httpd(), &check);
    // What the executor does at start: the store's range goes to `run`.
    app.jail.userns = Some(range);
    let sup = f.supervisor();
    sup.manage(app.clone()).await.unwrap();
    let st = sup.start("web", None).await.unwrap();
    let pid = st.pid.unwrap();
    let httpd = common::wait_for_comm(pid as u32, "httpd", 2);
    let status = std::fs::read_to_string(format!("/proc/{httpd}/status")).unwrap();
    let b = range.base().to_string();
    assert_eq!(
        common::status_field(&status, "Uid"),
        format!("{b} {b} {b} {b}")
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("\0--start-gate\0"), "{cmdline:?}");
    assert!(
        cmdline.contains(&format!("\0--userns\0--userns-base\0{b}\0")),
        "{cmdline:?}"
    );
    let exec = app.health.clone().unwrap();
    wait_healthy(&exec, &f.exec_ctx(&app))
        .await
        .expect("the exec check runs in the app's user namespace");
    let mut plain = f.exec_ctx(&app);
    plain.jail.userns = None;
    let mut quick = exec.clone();
    quick.deadline = Duration::from_millis(300);
    assert!(
        wait_healthy(&quick, &plain).await.is_err(),
        "the same check outside the namespace fails (the check can fail)"
    );
    let st = sup.stop("web").await.unwrap();
    assert_eq!(st.state, State::Stopped);
    assert!(!alive(pid));
    common::jail::assert_no_mounts(&f.root);
    sup.shutdown(false).await;
}
