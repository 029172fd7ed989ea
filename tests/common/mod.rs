//! Helpers shared by the integration tests: privilege checks, a busybox rootfs, the binary.
//!
//! Tests that need root or busybox fail loudly with the reason; they never pass by skipping.
#![allow(dead_code)]

pub mod archive;
pub mod docker;
pub mod garage;
pub mod jail;
pub mod sockapp;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What one of the `.ci/` scripts that build a test input once per machine printed: the
/// path of what it built.
pub fn ci_built(script: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".ci")
        .join(script);
    let o = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        o.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

/// The previous release's agent binary, built once per machine.
pub fn previous_release() -> PathBuf {
    ci_built("previous-release.sh")
}

/// A loopback TCP port that no socket holds now, for a program under test to bind. It lies
/// below the kernel's ephemeral range, from which `bind` to port 0 and outgoing connections
/// take theirs: a port taken that way could be in use again before the program binds it
/// (only another test picking the same port at random can take this one).
pub fn unused_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
    let ephemeral_low = (range.ok())
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000;
    assert!(
        ephemeral_low > low + 1_000,
        "the ephemeral port range starts at {ephemeral_low}: the tests need ports {low}.. \
         below it (net.ipv4.ip_local_port_range)"
    );
    (0..1_000)
        .map(|_| rand::random_range(low..ephemeral_low))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .unwrap_or_else(|| panic!("no free loopback port in {low}..{ephemeral_low} in 1000 tries"))
}

/// Path of the built `droot-fleet` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_droot-fleet"))
}

/// A `droot-fleet` command with logging kept quiet.
pub fn cmd() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("RUST_LOG");
    c
}

/// A tool a test needs, or a failure naming the Debian package that brings it.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (bash .ci/test.sh does)"
    );
}

/// Panics with a clear reason unless the test runs as root.
pub fn require_root(what: &str) {
    if !nix::unistd::geteuid().is_root() {
        panic!("{what} needs root (mounts, chroot, mknod); run the suite as root, see README");
    }
}

/// Locates Debian's busybox-static, or panics telling how to install it.
pub fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = PathBuf::from(p);
        if p.exists() {
            let out = Command::new(&p)
                .arg("--help")
                .output()
                .expect("run busybox");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                !text.is_empty(),
                "{} exists but prints nothing; install busybox-static",
                p.display()
            );
            return p;
        }
    }
    panic!("busybox not found: apt-get install busybox-static (the README test command does)");
}

/// Builds a tiny rootfs under `dir`: busybox (static) with its applet links in /bin,
/// /etc/passwd and /etc/group with an `app` user (uid 1000, groups app and extra),
/// and a `/.drootenv`.
pub fn busybox_rootfs(dir: &Path) {
    let bb = busybox();
    for d in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/app", "var",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(&bb, dir.join("bin/busybox")).unwrap();
    let out = Command::new(&bb).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    std::fs::write(
        dir.join(".drootenv"),
        "PATH=/bin:/usr/bin\nGREETING=hello=world\n",
    )
    .unwrap();
}

/// Writes the release artifact `out` (tar.gz) and returns its bytes: a busybox rootfs built
/// in `src` (removed after) with `/www/version` holding `version`, `/www/health` (`ok`) when
/// `health`, and `/start.sh` = `start` (e.g. `exec httpd -f -p ADDR -h /www`).
pub fn httpd_artifact(src: &Path, out: &Path, version: &str, health: bool, start: &str) -> Vec<u8> {
    httpd_rootfs(src, version, health, start);
    let st = Command::new("tar")
        .arg("-C")
        .arg(src)
        .arg("-czf")
        .arg(out)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar failed");
    std::fs::remove_dir_all(src).unwrap();
    std::fs::read(out).unwrap()
}

/// The rootfs of [`httpd_artifact`] at `src`, not packed.
pub fn httpd_rootfs(src: &Path, version: &str, health: bool, start: &str) {
    busybox_rootfs(src);
    std::fs::create_dir_all(src.join("www")).unwrap();
    std::fs::write(src.join("www/version"), version).unwrap();
    if health {
        std::fs::write(src.join("www/health"), "ok\n").unwrap();
    }
    std::fs::write(src.join("start.sh"), start).unwrap();
}

/// A GET of `http://ADDR/PATH` over std: the body when the answer is 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

/// GETs `path` from `addr` every 10 ms on a thread, counting answers (200) and failures,
/// until [`Poller::stop`]: proof that an app served throughout a handover.
pub struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU32>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: std::thread::JoinHandle<()>,
}

impl Poller {
    pub fn start(addr: &str, path: &str) -> Poller {
        use std::sync::atomic::Ordering::SeqCst;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (s, o, fl) = (stop.clone(), ok.clone(), failed.clone());
        let (addr, path) = (addr.to_owned(), path.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(SeqCst) {
                let c = if http_get(&addr, &path).is_some() {
                    &o
                } else {
                    &fl
                };
                c.fetch_add(1, SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        Poller {
            stop,
            ok,
            failed,
            thread,
        }
    }

    /// Answers so far.
    pub fn ok(&self) -> u32 {
        self.ok.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u32 {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (up to 10 s) for `n` more answers than `ok()` gave before.
    pub fn wait_more(&self, n: u32) {
        let want = self.ok() + n;
        let t = std::time::Instant::now();
        while self.ok() < want {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "the app stopped answering ({} failed requests)",
                self.failed.load(std::sync::atomic::Ordering::SeqCst)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stops polling: (answers, failures).
    pub fn stop(self) -> (u32, u32) {
        use std::sync::atomic::Ordering::SeqCst;
        self.stop.store(true, SeqCst);
        self.thread.join().unwrap();
        (self.ok.load(SeqCst), self.failed.load(SeqCst))
    }
}

/// Live processes whose command line satisfies `f`.
pub fn pids_matching(f: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if f(&args) && alive(pid as i64) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Writes a tar (uncompressed) of `dir` to `out` with the system tar.
pub fn tar_dir(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar failed");
}

/// Runs a command, returning its output; panics with stderr when it cannot be spawned.
pub fn output(c: &mut Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("spawn {c:?}: {e}"))
}

/// Mounts a fresh tmpfs at `at` (created if missing).
pub fn mount_tmpfs(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs at {}", at.display());
}

/// A temporary directory for tests that deploy release stores into it: the product mounts
/// each store `nosuid,nodev` onto itself, and a mountpoint cannot be removed, so the drop
/// first unmounts everything at or below the directory (deepest first, detached), then
/// removes it.
pub struct TempDir(Option<tempfile::TempDir>);

pub fn tempdir() -> TempDir {
    TempDir(Some(tempfile::tempdir().expect("tempdir")))
}

impl std::ops::Deref for TempDir {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        self.0.as_ref().expect("live")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let Some(t) = self.0.take() else { return };
        let dir = t
            .path()
            .canonicalize()
            .unwrap_or_else(|_| t.path().to_path_buf());
        if let Ok(table) = droot_fleet::mountinfo::read() {
            for mp in droot_fleet::mountinfo::mounts_at_or_below(&table, &dir) {
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        drop(t);
    }
}

/// Lines of /proc/self/mountinfo whose mount point is at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    // Bytes: a mount point elsewhere on the host need not be UTF-8.
    let text =
        String::from_utf8_lossy(&std::fs::read("/proc/self/mountinfo").unwrap()).into_owned();
    let d = dir.to_string_lossy().to_string();
    text.lines()
        .filter(|l| {
            let mp = l.split(' ').nth(4).unwrap_or("");
            mp == d || mp.starts_with(&format!("{d}/"))
        })
        .map(str::to_string)
        .collect()
}

/// [`mounts_below`], leaving out the release store's own mount at `dir` itself (a bind of
/// `dir` onto itself, `nosuid,nodev`), which `umount` keeps.
pub fn mounts_below_but_store(dir: &Path) -> Vec<String> {
    let table = droot_fleet::mountinfo::read().expect("mount table");
    let store = droot_fleet::mountinfo::is_store_mount(&table, dir);
    let d = dir.to_string_lossy().to_string();
    mounts_below(dir)
        .into_iter()
        .filter(|l| !(store && l.split(' ').nth(4) == Some(d.as_str())))
        .collect()
}

/// The value of `key:` in a /proc/PID/status text.
pub fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pids whose parent is `ppid` (host view).
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let parent: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if parent == ppid {
            out.push(pid);
        }
    }
    out
}

/// Waits until a descendant (child, or grandchild with `depth` 2) of `pid` runs `comm`.
pub fn wait_for_comm(pid: u32, comm: &str, depth: usize) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut level = vec![pid];
        for _ in 0..depth {
            level = level.iter().flat_map(|p| children_of(*p)).collect();
        }
        for p in level {
            let c = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if c.trim() == comm {
                return p;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {comm} under pid {pid}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether a Docker engine answers on `DOCKER_HOST`. Without one the test fails with the
/// reason, unless `DROOT_FLEET_TEST_NO_DOCKER=1` says the machine has none on purpose: then
/// it prints `NOT RUN` with the reason (also appended to `$DROOT_FLEET_TEST_NOT_RUN_LOG`
/// if set) and the caller returns.
pub fn docker_engine_available(test: &str) -> bool {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let why = match Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
    {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "no Docker engine answers at {host}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("the docker CLI cannot be run ({e}); it is needed to build test images"),
    };
    if std::env::var("DROOT_FLEET_TEST_NO_DOCKER").as_deref() == Ok("1") {
        let line = format!("{test}: NOT RUN: {why} (DROOT_FLEET_TEST_NO_DOCKER=1)");
        eprintln!("{line}");
        // The harness hides a passing test's output: .ci/test.sh counts these as skipped.
        if let Some(log) = std::env::var_os("DROOT_FLEET_TEST_NOT_RUN_LOG") {
            use std::io::Write as _;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log);
            if let Ok(mut f) = f {
                let _ = writeln!(f, "{line}");
            }
        }
        return false;
    }
    panic!(
        "{test}: {why}. Start dockerd (or set DOCKER_HOST), or set DROOT_FLEET_TEST_NO_DOCKER=1 to skip engine tests"
    );
}

/// Waits (30 s at most) for an app status of the supervisor that satisfies `want`.
pub async fn wait_app_status(
    rx: &mut tokio::sync::watch::Receiver<droot_fleet::deploy::supervisor::AppStatus>,
    what: &str,
    want: impl FnMut(&droot_fleet::deploy::supervisor::AppStatus) -> bool,
) -> droot_fleet::deploy::supervisor::AppStatus {
    let limit = std::time::Duration::from_secs(30);
    let got = match tokio::time::timeout(limit, rx.wait_for(want)).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    got.unwrap_or_else(|| panic!("{what}: not reached; last status {:?}", *rx.borrow()))
}
