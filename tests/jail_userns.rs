//! `droot-fleet run --userns`: everything `run` does keeps working in a user namespace, on
//! a busybox store deployed with `deploy --userns` (so `run --userns` finds the range in the
//! store's record). The attacks it stops are in `host_privileges.rs`; the Debian image is in
//! `distro.rs`. Every run checks that no mount is left below the store but its own.

mod common;

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::jail::{assert_no_mounts, stderr, stdout};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A busybox store deployed with `--userns`, and its range's base.
struct Store {
    t: common::TempDir,
    root: PathBuf,
    base: u32,
}

impl Store {
    fn current(&self) -> PathBuf {
        self.root.join("current")
    }
}

/// A busybox rootfs in `t`, changed by `prepare`, as a tar.
fn busybox_tar(t: &common::TempDir, prepare: impl FnOnce(&Path)) -> PathBuf {
    let src = t.path().join("rootfs");
    std::fs::create_dir(&src).unwrap();
    common::busybox_rootfs(&src);
    prepare(&src);
    let tar = t.path().join("rootfs.tar");
    common::tar_dir(&src, &tar);
    tar
}

fn store(what: &str) -> Store {
    common::require_root(what);
    let t = common::tempdir();
    let tar = busybox_tar(&t, |_| {});
    let root = t.path().join("app");
    let out = common::archive::deploy(&root, &tar, &["--userns", "--version", "v1"]);
    common::archive::ok(&out);
    let base = std::fs::metadata(root.join("releases/v1")).unwrap().uid();
    assert!(
        base >= 65536,
        "the release belongs to the range, not to host root"
    );
    let rec = std::fs::read_to_string(root.join(".droot-fleet/userns.json")).unwrap();
    assert_eq!(rec, format!("{{\"base\":{base}}}"));
    Store { t, root, base }
}

/// `droot-fleet run --userns --root ROOT FLAGS -- CMD`.
fn cmd(root: &Path, flags: &[&str], c: &[&str]) -> std::process::Command {
    let mut x = common::cmd();
    x.args(["run", "--userns", "--root"])
        .arg(root)
        .args(flags)
        .arg("--")
        .args(c);
    x
}

/// Runs in the store's current release; checks that no jail left a mount.
fn run(s: &Store, flags: &[&str], c: &[&str]) -> Output {
    let out = common::output(&mut cmd(&s.current(), flags, c));
    assert_no_mounts(&s.root);
    out
}

fn ok(s: &Store, flags: &[&str], c: &[&str]) -> String {
    let o = run(s, flags, c);
    assert!(o.status.success(), "{c:?}: {:?}\n{}", o.status, stderr(&o));
    stdout(&o)
}

/// The jail's root is host `base`, its own mount and PID namespaces stay, SIGTERM is
/// forwarded (143), and nothing stays mounted.
#[test]
fn uid_0_in_the_jail_is_the_base_on_the_host_and_signals_reach_it() {
    let s = store("userns chroot");
    let out = ok(&s, &[], &["sh", "-c", "id -u; touch /made"]);
    assert_eq!(out, "0\n");
    let made = std::fs::metadata(s.current().join("made")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (s.base, s.base),
        "owned by the base on the host"
    );

    let mut child = cmd(&s.current(), &[], &["sleep", "30"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = common::wait_for_comm(child.id(), "sleep", 2);
    let map = std::fs::read_to_string(format!("/proc/{sleeper}/uid_map")).unwrap();
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields, vec!["0", &s.base.to_string(), "65536"]);
    let st = std::fs::read_to_string(format!("/proc/{sleeper}/status")).unwrap();
    let b = s.base.to_string();
    assert_eq!(
        common::status_field(&st, "Uid"),
        [b.as_str(); 4].join("\t").replace('\t', " ")
    );
    for ns in ["user", "mnt", "pid"] {
        assert_ne!(
            std::fs::read_link(format!("/proc/{sleeper}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "own {ns} namespace"
        );
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{sleeper}/root")).unwrap(),
        s.root.join("releases/v1")
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(!Path::new(&format!("/proc/{sleeper}")).exists());
    assert_no_mounts(&s.root);
    drop(s.t);
}

#[test]
fn exit_codes_and_forwarded_signals() {
    let s = store("userns exit codes");
    assert_eq!(run(&s, &[], &["sh", "-c", "exit 7"]).status.code(), Some(7));
    let o = run(&s, &[], &["sh", "-c", "kill -KILL $$"]);
    assert_eq!(o.status.code(), Some(137));
    let o = run(&s, &["--host-pid"], &["sh", "-c", "exit 9"]);
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    let o = run(&s, &[], &["no-such-command"]);
    assert_eq!(o.status.code(), Some(127));

    let script = "trap 'echo got-usr1; exit 3' USR1; echo ready; while true; do sleep 0.05; done";
    let mut child = cmd(&s.current(), &["-u", "app"], &["sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR1).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(3));
}

#[test]
fn users_groups_capabilities_and_seccomp() {
    let s = store("userns users");
    let id = ok(&s, &["-u", "app"], &["id"]);
    assert_eq!(
        id.trim(),
        "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"
    );
    let st = ok(
        &s,
        &["-u", "1000", "-g", "2000"],
        &["cat", "/proc/self/status"],
    );
    assert_eq!(common::status_field(&st, "Uid"), "1000 1000 1000 1000");
    assert_eq!(common::status_field(&st, "Gid"), "2000 2000 2000 2000");
    assert_eq!(common::status_field(&st, "Groups"), "2000");
    let st = ok(&s, &[], &["cat", "/proc/self/status"]);
    assert_eq!(common::status_field(&st, "CapBnd"), "00000000000004cf");
    assert_eq!(common::status_field(&st, "NoNewPrivs"), "1");
    assert_eq!(common::status_field(&st, "Seccomp"), "2");
    assert_eq!(common::status_field(&st, "Groups"), "0");
    // Even with every capability (of its namespace) and no filter, the jail cannot mount:
    // its mount namespace belongs to the host's user namespace.
    let o = run(
        &s,
        &["--no-dropcaps", "--seccomp", "unconfined"],
        &[
            "sh",
            "-c",
            "mount -t tmpfs t /tmp || umount /proc || echo refused",
        ],
    );
    assert_eq!(stdout(&o), "refused\n", "{}", stderr(&o));
}

#[test]
fn proc_sys_and_dev_are_the_jails_own() {
    let s = store("userns /proc /sys /dev");
    let pid = ok(
        &s,
        &[],
        &["sh", "-c", "echo $$; ls /proc | grep -c -E '^[0-9]+$'"],
    );
    let lines: Vec<&str> = pid.lines().collect();
    assert_eq!(lines[0], "2", "init is 1, the command 2");
    assert!(lines[1].parse::<u32>().unwrap() <= 4, "{pid}");
    let o = run(
        &s,
        &[],
        &[
            "sh",
            "-c",
            "echo x > /proc/sys/kernel/hostname || touch /sys/x || echo refused",
        ],
    );
    assert_eq!(stdout(&o), "refused\n");
    let zeros = ok(
        &s,
        &["-u", "app"],
        &["sh", "-c", "head -c 4 /dev/zero | od -An -tx1"],
    );
    assert_eq!(zeros.split_whitespace().collect::<Vec<_>>(), vec!["00"; 4]);
    let devs = ok(
        &s,
        &["-u", "app"],
        &[
            "sh",
            "-c",
            "echo hi > /dev/null && head -c 8 /dev/urandom | wc -c && test -c /dev/pts/ptmx \
             && test -L /dev/ptmx && echo hi > /dev/shm/x && stat -c '%a %u' /dev/null /dev /dev/shm",
        ],
    );
    assert_eq!(
        devs.lines().collect::<Vec<_>>(),
        vec!["8", "666 0", "755 0", "1777 0"],
        "/dev belongs to the jail's root"
    );
    let o = run(&s, &[], &["sh", "-c", "echo x > /dev/full"]);
    assert!(!o.status.success());
}

#[test]
fn binds_robinds_and_cp() {
    let s = store("userns binds");
    let data = s.t.path().join("data");
    let ro = s.t.path().join("ro");
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("f"), "read me\n").unwrap();
    // A writable bind must belong to the range: here to the jail's `app`.
    std::os::unix::fs::chown(&data, Some(s.base + 1000), Some(s.base + 1000)).unwrap();
    let b = format!("{}:/data", data.display());
    let r = format!("{}:/ro", ro.display());
    let out = ok(
        &s,
        &["-u", "app", "-b", &b, "--robind", &r],
        &[
            "sh",
            "-c",
            "echo w > /data/new && cat /ro/f && (echo x > /ro/g || echo ro-refused)",
        ],
    );
    assert_eq!(out, "read me\nro-refused\n");
    let new = std::fs::metadata(data.join("new")).unwrap();
    assert_eq!(new.uid(), s.base + 1000, "the jail's app wrote it");

    let out = ok(
        &s,
        &["--cp"],
        &[
            "sh",
            "-c",
            "stat -c '%u %g' /etc/hosts /etc/resolv.conf && echo '# jail' >> /etc/hosts",
        ],
    );
    assert!(
        out.lines().all(|l| l == "0 0"),
        "--cp files belong to the jail's root: {out}"
    );
}

/// A terminal on stdin: the jail's own pty, given to the user, in the jail's `tty` group.
#[test]
fn the_pty_works_in_the_namespace() {
    let s = store("userns pty");
    let line = format!(
        "{} run --userns --root {} -u app -- sh -c 'tty; stat -c \"%u %g\" $(tty)'",
        common::bin().display(),
        s.current().display()
    );
    // No input for the terminal: `script` forwards its stdin, and a stray byte there is
    // echoed into the transcript (CI once saw a NUL as "^@").
    let o = common::output(
        std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::null()),
    );
    let text = stdout(&o).replace(['\r', '\0'], "").replace("^@", "");
    assert!(
        text.contains("/dev/pts/0\n1000 5\n"),
        "{text:?} {}",
        stderr(&o)
    );
    assert_no_mounts(&s.root);
}

/// Refusals name the problem: a root outside the range (a release not shifted), and
/// `--userns` on a root of no such store without a base.
#[test]
fn a_root_outside_the_range_or_with_no_range_is_refused() {
    let s = store("userns refusals");
    let plain = s.t.path().join("rootfs");
    let o = common::output(
        common::cmd()
            .args(["run", "--userns", "--root"])
            .arg(&plain)
            .args(["--", "true"]),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--userns-base"), "{}", stderr(&o));
    let o = common::output(
        common::cmd()
            .args([
                "run",
                "--userns",
                "--userns-base",
                &s.base.to_string(),
                "--root",
            ])
            .arg(&plain)
            .args(["--", "true"]),
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("outside the jail's id range"),
        "{}",
        stderr(&o)
    );
    let o = common::output(
        common::cmd()
            .args(["run", "--userns", "--userns-base", "1000", "--root"])
            .arg(s.current())
            .args(["--", "true"]),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("multiple of 65536"), "{}", stderr(&o));
    assert_no_mounts(&s.root);
}

/// A release unpacked before the store turned user namespaces on is shifted into the range
/// when it does (its files keep their jail owners), and runs under `--userns` after a
/// rollback to it. Later deploys are shifted without the flag.
#[test]
fn older_releases_are_shifted_when_the_store_turns_user_namespaces_on() {
    common::require_root("shifting releases");
    let t = common::tempdir();
    let tar = busybox_tar(&t, |src| {
        std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    });
    let root = t.path().join("app");
    common::archive::ok(&common::archive::deploy(&root, &tar, &["--version", "v1"]));
    let o = common::output(
        common::cmd()
            .arg("run")
            .arg("--root")
            .arg(root.join("current"))
            .args(["-u", "app", "--", "touch", "/tmp/mine"]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(root.join("releases/v1/tmp/mine"))
            .unwrap()
            .uid(),
        1000
    );

    let o = common::archive::deploy(&root, &tar, &["--userns", "--version", "v2"]);
    common::archive::ok(&o);
    assert!(
        stderr(&o).contains("1 older release(s) shifted into it: v1"),
        "{}",
        stderr(&o)
    );
    let base = std::fs::metadata(root.join("releases/v2")).unwrap().uid();
    let v1 = root.join("releases/v1");
    assert_eq!(std::fs::metadata(&v1).unwrap().uid(), base);
    assert_eq!(
        std::fs::metadata(v1.join("tmp/mine")).unwrap().uid(),
        base + 1000
    );
    assert_eq!(
        std::fs::metadata(v1.join("bin/busybox")).unwrap().uid(),
        base
    );
    let mode = std::fs::metadata(v1.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o1777, "modes are kept");

    common::archive::ok(&common::archive::deploy(&root, &tar, &["--version", "v3"]));
    assert_eq!(
        std::fs::metadata(root.join("releases/v3/bin"))
            .unwrap()
            .uid(),
        base
    );
    common::archive::ok(&common::output(
        common::cmd()
            .args(["deploy", "--rollback", "v1", "--root"])
            .arg(&root),
    ));
    let s = Store { t, root, base };
    let out = ok(
        &s,
        &["-u", "app"],
        &["sh", "-c", "rm /tmp/mine && echo removed"],
    );
    assert_eq!(out, "removed\n");
}

/// A range belongs to one store: another store asking for it is refused, naming the
/// holder, and a store asked for another base than the one it records is refused too.
#[test]
fn a_range_held_by_another_store_is_refused_naming_it() {
    let s = store("userns registry");
    let base = s.base.to_string();
    let other = s.t.path().join("other");
    let tar = s.t.path().join("rootfs.tar");
    let o = common::archive::deploy(&other, &tar, &["--userns", "--userns-base", &base]);
    assert!(!o.status.success());
    let held_by = s.root.join(".droot-fleet/userns.json");
    assert!(
        stderr(&o).contains("already held by the store recorded in"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(&held_by.display().to_string()),
        "{}",
        stderr(&o)
    );
    assert!(!other.join("current").exists(), "nothing deployed");

    let next = (s.base + 65536).to_string();
    let o = common::archive::deploy(&s.root, &tar, &["--userns", "--userns-base", &next]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("runs its jails in user namespace range"),
        "{}",
        stderr(&o)
    );
    // `rm` gives the range back: the other store may have it now.
    common::archive::ok(&common::output(
        common::cmd().args(["rm", "--root"]).arg(&s.root),
    ));
    let o = common::archive::deploy(&other, &tar, &["--userns", "--userns-base", &base]);
    common::archive::ok(&o);
    assert_eq!(
        std::fs::metadata(other.join("current/bin")).unwrap().uid(),
        s.base
    );
}

/// Rsync mode: the root itself is the jail's `/`; `--userns` records the range in the state
/// directory beside it, the root and its tree are the range's, and `run --userns` finds it.
#[test]
fn an_rsync_root_runs_in_a_user_namespace() {
    common::require_root("rsync mode with userns");
    let t = common::tempdir();
    let tar = busybox_tar(&t, |_| {});
    let root = t.path().join("live");
    let o = common::archive::deploy(&root, &tar, &["--mode", "rsync", "--userns"]);
    common::archive::ok(&o);
    let base = std::fs::metadata(&root).unwrap().uid();
    assert!(base >= 65536, "{base}");
    assert_eq!(
        std::fs::metadata(root.join("bin/busybox")).unwrap().uid(),
        base
    );
    assert!(t.path().join(".live.droot-fleet/userns.json").exists());
    let o = common::output(
        common::cmd()
            .args(["run", "--userns", "--root"])
            .arg(&root)
            .args(["--", "sh", "-c", "touch /made && id -u"]),
    );
    assert_eq!(stdout(&o), "0\n", "{}", stderr(&o));
    assert_eq!(std::fs::metadata(root.join("made")).unwrap().uid(), base);
    assert_no_mounts(&root);
    // The next deploy (no flag) keeps the tree in the range; `made` is not in the archive.
    common::archive::ok(&common::archive::deploy(&root, &tar, &["--mode", "rsync"]));
    assert!(!root.join("made").exists());
    assert_eq!(
        std::fs::metadata(root.join("etc/passwd")).unwrap().uid(),
        base
    );
}

/// The credential switch into the namespace clears the parent-death signal; the jail's init
/// sets it again, so a `run` killed with SIGKILL still takes the whole jail with it.
#[test]
fn a_killed_run_takes_its_userns_jail_with_it() {
    let s = store("userns parent death");
    let mut child = cmd(&s.current(), &[], &["sleep", "30"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = common::wait_for_comm(child.id(), "sleep", 2);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let t = std::time::Instant::now();
    while common::alive(sleeper.into()) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "the jail outlived its run"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_no_mounts(&s.root);
}
