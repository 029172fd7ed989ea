//! Issue 15, item 5: a jail's output cannot fill the disk. The supervisor runs real busybox
//! jails (the real `droot-fleet run`) whose stdout and stderr reach `STATE/web.log` through a
//! pipe that `run` caps and rotates by rename. Disk use is measured with `du` (blocks
//! really used), not file sizes.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use droot_fleet::deploy::app::parse_apps;
use droot_fleet::deploy::supervisor::proc::{read_pid_file, start_time};
use droot_fleet::deploy::supervisor::{State, Supervisor, SupervisorOptions};

const LONG: Duration = Duration::from_secs(30);

/// An app root with a busybox release `v1` as `current`, and the supervisor's state dir.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

impl Fixture {
    fn new(what: &str) -> Fixture {
        common::require_root(what);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap().join("app");
        let rel = root.join("releases/v1");
        std::fs::create_dir_all(&rel).unwrap();
        common::busybox_rootfs(&rel);
        std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
        let state = tmp.path().join("state");
        Fixture {
            _tmp: tmp,
            root,
            state,
        }
    }

    fn supervisor(&self, log_cap: u64) -> Supervisor {
        let mut opts = SupervisorOptions::new(&self.state).unwrap();
        opts.exe = common::bin();
        opts.log_cap = log_cap;
        Supervisor::new(opts).unwrap()
    }

    /// `[apps.web]` running `sh -c SCRIPT`, with `extra` settings.
    fn app(&self, script: &str, extra: &str) -> droot_fleet::deploy::app::AppConfig {
        let text = format!(
            "[apps.web]\nartifact = \"file:///a/{{version}}.tar\"\nroot = \"{}\"\n\
             command = [\"sh\", \"-c\", {script:?}]\n{extra}",
            self.root.display()
        );
        parse_apps(&text).unwrap().remove("web").unwrap()
    }

    fn log(&self) -> PathBuf {
        self.state.join("web.log")
    }

    fn rotated(&self) -> PathBuf {
        self.state.join("web.log.1")
    }

    /// Both log files' text (rotated first).
    fn log_text(&self) -> String {
        let read = |p: PathBuf| {
            String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
        };
        read(self.rotated()) + &read(self.log())
    }

    /// Bytes of disk the state dir really uses (`du`). A file renamed away while du walks
    /// the dir makes it fail: then it runs again.
    fn disk_use(&self) -> u64 {
        for _ in 0..20 {
            let out = common::output(
                std::process::Command::new("du")
                    .args(["-s", "-B1"])
                    .arg(&self.state),
            );
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("du prints a number");
            }
        }
        panic!("du failed 20 times on {}", self.state.display());
    }
}

/// A test that fails leaves no jail behind (it would hold the test lock's descriptor): the
/// jail its pid file names, and every process under it, are killed.
impl Drop for Fixture {
    fn drop(&mut self) {
        let Ok(Some(rec)) = read_pid_file(&self.state.join("web.pid")) else {
            return;
        };
        // Only the very process recorded, not one that reused its pid.
        if start_time(rec.pid).ok() != Some(rec.start_time) {
            return;
        }
        for p in descendants(rec.pid).into_iter().chain([rec.pid]) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL);
        }
    }
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < LONG, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every descendant of `pid` (the jail's init, its command, ...).
fn descendants(pid: i32) -> Vec<i32> {
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        let kids =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        found.extend(
            kids.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Asserts that no process of the jail under `run_pid` holds a descriptor of `files`.
fn assert_jail_holds_none_of(run_pid: i32, files: &[&Path]) {
    let procs = descendants(run_pid);
    assert!(!procs.is_empty(), "no jail process under run {run_pid}");
    for p in procs {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for fd in dir.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(
                !files.iter().any(|f| target == *f),
                "jail process {p} holds {} as fd {:?}",
                target.display(),
                fd.file_name()
            );
        }
    }
}

/// The attack of issue 15: `ftruncate(1, 3e9)` made the log a 3 GB sparse file that the cap
/// then copied byte for byte into `web.log.1` as root. Now stdout is a pipe: the truncate
/// fails, and only the bytes written reach the disk, under the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jail_that_truncates_its_stdout_to_3gb_cannot_make_the_agent_write_gigabytes() {
    let f = Fixture::new("app log: truncate attack");
    let cap = 1 << 20;
    let sup = f.supervisor(cap);
    let script = "truncate -s 3000000000 /proc/self/fd/1; echo truncate-exit=$?; \
                  dd if=/dev/zero bs=65536 count=80 2>/dev/null | tr '\\000' x; \
                  echo; while :; do echo done-writing; sleep 0.2; done";
    sup.manage(f.app(script, "")).await.unwrap();
    let pid = sup.start("web", None).await.unwrap().pid.unwrap();
    // The line repeats: a slow writer may drop output (and says so), but not every line.
    tokio::task::block_in_place(|| {
        wait_until("the jail to finish writing", || {
            f.log_text().contains("done-writing").then_some(())
        })
    });
    let text = f.log_text();
    assert!(!text.contains("truncate-exit=0"), "the truncate worked");
    assert!(
        f.rotated().exists(),
        "5 MiB written, 1 MiB cap: no rotation"
    );
    let used = f.disk_use();
    assert!(
        used < 2 * cap + (256 << 10),
        "the log dir uses {used} bytes of disk, cap {cap}"
    );
    for p in [f.log(), f.rotated()] {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= cap + 4096, "{} is {len} bytes", p.display());
    }
    assert_jail_holds_none_of(pid, &[&f.log(), &f.rotated()]);
    sup.stop("web").await.unwrap();
    sup.shutdown(false).await;
}

/// A jail that writes without a newline, forever and as fast as it can: the log is still
/// rotated at the cap (a line is cut like any bytes), the disk use stays under twice the
/// cap, and the jail is never stopped by its own output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jail_that_writes_without_newlines_forever_stays_under_the_cap() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new("app log: endless line");
    let cap = 256 << 10;
    let sup = f.supervisor(cap);
    sup.manage(f.app("exec cat /dev/zero", "")).await.unwrap();
    sup.start("web", None).await.unwrap();
    let mut rotations = std::collections::BTreeSet::new();
    tokio::task::block_in_place(|| {
        wait_until("five rotations", || {
            let used = f.disk_use();
            assert!(
                used <= 2 * cap + (128 << 10),
                "the log dir uses {used} bytes, cap {cap}"
            );
            if let Ok(m) = std::fs::metadata(f.rotated()) {
                assert!(m.len() <= cap, "web.log.1 is {} bytes", m.len());
                // Inode numbers are reused as fast as rotations free them: the inode and
                // its last write time tell rotated files apart.
                rotations.insert((m.ino(), m.mtime(), m.mtime_nsec()));
            }
            (rotations.len() >= 5).then_some(())
        })
    });
    assert_eq!(sup.status("web").await.unwrap().state, State::Running);
    sup.stop("web").await.unwrap();
    sup.shutdown(false).await;
}

/// The highest `line N` in the log files.
fn last_line(f: &Fixture) -> u64 {
    f.log_text()
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// `leave_running`: the jail outlives its supervisor (an agent restart or upgrade). Its
/// `run` process owns the log, so it keeps logging and rotating with no supervisor at all,
/// and after the next supervisor adopted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_running_jail_keeps_logging_and_rotating_across_a_supervisor_restart() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new("app log: leave_running");
    let cap = 4096;
    let script = "i=0; while :; do i=$((i+1)); \
                  echo \"line $i ..........................................................\"; \
                  sleep 0.01; done";
    let app = f.app(script, "leave_running = true\n");
    let first = f.supervisor(cap);
    first.manage(app.clone()).await.unwrap();
    let pid = first.start("web", None).await.unwrap().pid.unwrap();
    tokio::task::block_in_place(|| wait_until("line 5", || (last_line(&f) >= 5).then_some(())));
    first.shutdown(false).await;
    drop(first);

    // No supervisor now: the lines go on, and the file is still rotated.
    let (n0, ino0) = (
        last_line(&f),
        std::fs::metadata(f.rotated()).map(|m| m.ino()).ok(),
    );
    tokio::task::block_in_place(|| {
        wait_until("logging and a rotation with no supervisor", || {
            let ino = std::fs::metadata(f.rotated()).map(|m| m.ino()).ok();
            (last_line(&f) > n0 + 100 && ino.is_some() && ino != ino0).then_some(())
        })
    });
    assert!(
        std::fs::metadata(f.log()).unwrap().len() <= cap,
        "not capped without a supervisor"
    );

    let second = f.supervisor(cap);
    let st = second.manage(app).await.unwrap();
    assert_eq!(
        (st.state, st.pid, st.adopted),
        (State::Running, Some(pid), true)
    );
    let n1 = last_line(&f);
    tokio::task::block_in_place(|| {
        wait_until("logging after the adoption", || {
            (last_line(&f) > n1 + 50).then_some(())
        })
    });
    assert_jail_holds_none_of(pid, &[&f.log(), &f.rotated()]);
    second.stop("web").await.unwrap();
    second.shutdown(false).await;
    common::jail::assert_no_mounts(&f.root);
}

/// An agent started with a descriptor left open by whatever started it (a test harness's
/// lock, a wrapper's pipe) passes it to no jail: a jail that outlives the agent would hold
/// it for good (a leaked test jail held the test suite's lock this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_the_agent_inherited_never_reaches_a_jail() {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let f = Fixture::new("inherited descriptors");
    let marker = f.state.parent().unwrap().join("inherited-marker");
    std::fs::write(&marker, b"x").unwrap();
    // Not close-on-exec: inherited by every child this process spawns.
    let fd = open(&marker, OFlag::O_RDONLY, Mode::empty()).unwrap();
    let sup = f.supervisor(1 << 20);
    sup.manage(f.app("exec sleep 60", "")).await.unwrap();
    let pid = sup.start("web", None).await.unwrap().pid.unwrap();
    let holders: Vec<i32> = std::iter::once(pid)
        .chain(descendants(pid))
        .filter(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == marker))
        })
        .collect();
    drop(fd);
    sup.stop("web").await.unwrap();
    sup.shutdown(false).await;
    assert!(
        holders.is_empty(),
        "processes of the jail hold it: {holders:?}"
    );
}
