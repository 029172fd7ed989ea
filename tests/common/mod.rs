//! Helpers shared by the integration tests: privilege checks, a busybox rootfs, the binary.
//!
//! Tests that need root or busybox fail loudly with the reason; they never pass by skipping.
#![allow(dead_code)]

pub mod archive;
pub mod garage;
pub mod jail;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
