//! `droot-fleet run`: the real binary, as root, on a real busybox rootfs: chroot and mount
//! namespace, signals and exit codes, users and groups, capabilities, environment, /dev,
//! the PID namespace, errors. Mounts, binds and `--cp` are in `jail_mounts.rs`.
//!
//! Every test checks, after each run, that no mount is left below the root in the host's
//! mount table.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;

use common::jail::{assert_no_mounts, jail, ok, run, run_cmd, stderr, stdout};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn jailed_process_is_chrooted_in_its_own_mount_namespace_and_gets_sigterm() {
    let j = jail("chroot check");
    let mut child = run_cmd(&j.root, &[], &["sleep", "30"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = common::wait_for_comm(child.id(), "sleep", 2);
    let link = std::fs::read_link(format!("/proc/{sleeper}/root")).unwrap();
    assert_eq!(link, j.root, "the jailed process's root");
    let ns = std::fs::read_link(format!("/proc/{sleeper}/ns/mnt")).unwrap();
    assert_ne!(
        ns,
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "own mount namespace"
    );
    // Its mounts are in its namespace, not in ours.
    let theirs = std::fs::read_to_string(format!("/proc/{sleeper}/mountinfo")).unwrap();
    assert!(theirs.lines().any(|l| l.split(' ').nth(4) == Some("/proc")));
    assert_no_mounts(&j.root);

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(143),
        "SIGTERM forwarded, 128+15 propagated: {st:?}"
    );
    assert!(
        !Path::new(&format!("/proc/{sleeper}")).exists(),
        "jailed sleep is gone"
    );
    assert_no_mounts(&j.root);
}

#[test]
fn other_signals_are_forwarded_too() {
    let j = jail("signal forwarding");
    let script = "trap 'echo got-usr1; exit 3' USR1; echo ready; while true; do sleep 0.05; done";
    let mut child = run_cmd(&j.root, &[], &["sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the trap is installed (the shell printed "ready").
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR1).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "USR1 reached the trap: {status:?}");
    assert_eq!(rest, "got-usr1\n");
    assert_no_mounts(&j.root);
}

#[test]
fn exit_status_is_propagated() {
    let j = jail("exit status");
    let o = run(&j.root, &[], &["sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let o = run(&j.root, &[], &["sh", "-c", "kill -KILL $$"]);
    assert_eq!(o.status.code(), Some(137), "killed by signal 9 → 128+9");
    assert_eq!(o.status.signal(), None);
}

#[test]
fn users_and_groups_from_the_jail() {
    let j = jail("users");
    // A user only the jail knows.
    let passwd = std::fs::read_to_string(j.root.join("etc/passwd")).unwrap();
    std::fs::write(
        j.root.join("etc/passwd"),
        passwd + "jailonly:x:1234:2000::/:/bin/sh\n",
    )
    .unwrap();

    let id = ok(&j.root, &["-u", "app"], &["id"]);
    assert_eq!(
        id.trim(),
        "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"
    );

    let st = ok(
        &j.root,
        &["-u", "1000", "-g", "2000"],
        &["cat", "/proc/self/status"],
    );
    assert_eq!(common::status_field(&st, "Uid"), "1000 1000 1000 1000");
    assert_eq!(common::status_field(&st, "Gid"), "2000 2000 2000 2000");
    assert_eq!(common::status_field(&st, "Groups"), "2000");

    let st = ok(&j.root, &["-u", "jailonly"], &["cat", "/proc/self/status"]);
    assert_eq!(common::status_field(&st, "Uid"), "1234 1234 1234 1234");
    assert_eq!(common::status_field(&st, "Gid"), "2000 2000 2000 2000");

    let st = ok(&j.root, &["-g", "extra"], &["cat", "/proc/self/status"]);
    assert_eq!(common::status_field(&st, "Uid"), "0 0 0 0");
    assert_eq!(common::status_field(&st, "Gid"), "2000 2000 2000 2000");

    // Default: root, with no host supplementary group leaking in.
    let mut c = run_cmd(&j.root, &[], &["cat", "/proc/self/status"]);
    // SAFETY: setgroups only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(4242)])
                .map_err(std::io::Error::from)
        });
    }
    let o = common::output(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(common::status_field(&stdout(&o), "Groups"), "0");
    assert_no_mounts(&j.root);
}

#[test]
fn capabilities_are_cut_unless_no_dropcaps() {
    let j = jail("capabilities");
    let st = ok(&j.root, &[], &["cat", "/proc/self/status"]);
    assert_eq!(common::status_field(&st, "CapBnd"), "00000000000004cf");
    assert_eq!(
        common::status_field(&st, "CapEff"),
        "00000000000004cf",
        "root keeps only the list"
    );
    assert_eq!(common::status_field(&st, "CapInh"), "0000000000000000");
    assert_eq!(common::status_field(&st, "CapAmb"), "0000000000000000");
    assert_eq!(common::status_field(&st, "NoNewPrivs"), "1");

    let st = ok(&j.root, &["-u", "app"], &["cat", "/proc/self/status"]);
    assert_eq!(common::status_field(&st, "CapBnd"), "00000000000004cf");
    assert_eq!(common::status_field(&st, "CapEff"), "0000000000000000");

    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let st = ok(&j.root, &["--no-dropcaps"], &["cat", "/proc/self/status"]);
    assert_eq!(
        common::status_field(&st, "CapBnd"),
        common::status_field(&host, "CapBnd")
    );
    assert_ne!(common::status_field(&st, "CapBnd"), "00000000000004cf");
    assert_eq!(common::status_field(&st, "NoNewPrivs"), "0");
}

#[test]
fn environment_is_drootenv_plus_overrides_only() {
    let j = jail("environment");
    let mut c = run_cmd(
        &j.root,
        &["-e", "EXTRA=a=b", "-e", "GREETING=over=ride"],
        &["env"],
    );
    c.env("HOST_SECRET", "leak");
    let o = common::output(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["EXTRA=a=b", "GREETING=over=ride", "PATH=/bin:/usr/bin"]
    );

    let env = ok(&j.root, &[], &["env"]);
    let mut lines: Vec<&str> = env.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["GREETING=hello=world", "PATH=/bin:/usr/bin"]);
}

#[test]
fn dev_has_working_devices() {
    let j = jail("/dev");
    let zeros = ok(
        &j.root,
        &[],
        &["sh", "-c", "head -c 16 /dev/zero | od -An -tx1"],
    );
    let bytes: Vec<&str> = zeros.split_whitespace().collect();
    assert_eq!(bytes, vec!["00"; 16], "/dev/zero must yield zeros");
    let null = ok(
        &j.root,
        &[],
        &["sh", "-c", "echo hi > /dev/null && wc -c < /dev/null"],
    );
    assert_eq!(null.trim(), "0");
    let rnd = ok(
        &j.root,
        &[],
        &["sh", "-c", "head -c 32 /dev/urandom | wc -c"],
    );
    assert_eq!(rnd.trim(), "32");
    let o = run(&j.root, &[], &["sh", "-c", "echo x > /dev/full"]);
    assert!(!o.status.success(), "writing /dev/full must fail");
    let ls = ok(
        &j.root,
        &["-u", "app"],
        &[
            "sh",
            "-c",
            "test -d /dev/pts && test -c /dev/pts/ptmx && test -L /dev/ptmx && test -d /dev/shm && echo hi > /dev/shm/x && stat -c %a /dev/null /dev/zero /dev/tty /dev/shm && readlink /dev/fd && readlink /dev/stderr",
        ],
    );
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        vec![
            "666",
            "666",
            "666",
            "1777",
            "/proc/self/fd",
            "/proc/self/fd/2"
        ]
    );
    // Nothing of the host's /dev.
    let o = run(&j.root, &[], &["ls", "/dev/sda", "/dev/mem"]);
    assert!(!o.status.success());
}

#[test]
fn pid_namespace_has_init_and_reaps_orphans() {
    let j = jail("--pid-ns");
    let pid = ok(&j.root, &["--pid-ns"], &["sh", "-c", "echo $$"]);
    assert_eq!(pid.trim(), "2", "init is 1, the command 2");

    let pids = ok(
        &j.root,
        &["--pid-ns"],
        &["sh", "-c", "ls /proc | grep -E '^[0-9]+$'"],
    );
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        pids.contains(&1) && pids.len() <= 5 && pids.iter().all(|p| *p < 10),
        "{pids:?}"
    );

    // The subshell exits at once, orphaning `sleep 0.8` to our init, which must reap it.
    let script = "(sleep 0.8 &); cat /proc/[0-9]*/stat; echo ---; sleep 2; cat /proc/[0-9]*/stat";
    let out = ok(&j.root, &["--pid-ns"], &["sh", "-c", script]);
    let (before, after) = out.split_once("---").unwrap();
    // (pid, comm, state, ppid) of each process.
    let stats = |text: &str| -> Vec<(u32, String, String, u32)> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let open = l.find('(').unwrap();
                let close = l.rfind(')').unwrap();
                let mut rest = l[close + 2..].split(' ');
                let state = rest.next().unwrap().to_string();
                let ppid = rest.next().unwrap().parse().unwrap();
                (
                    l[..open].trim().parse().unwrap(),
                    l[open + 1..close].to_string(),
                    state,
                    ppid,
                )
            })
            .collect()
    };
    // Before: init (1), the shell (2), cat (its child), and the orphan, adopted by init
    // (its name may still be busybox's while it execs `sleep`).
    let before = stats(before);
    let orphans: Vec<_> = before.iter().filter(|p| p.3 == 1 && p.0 != 2).collect();
    assert_eq!(orphans.len(), 1, "one orphan adopted by init: {before:?}");
    // After: the orphan is gone, not a zombie; only init and cat (exec'd by the shell) remain.
    let after = stats(after);
    assert!(
        !after.iter().any(|p| p.0 == orphans[0].0),
        "orphan not reaped: {after:?}"
    );
    assert!(!after.iter().any(|p| p.2 == "Z"), "zombie left: {after:?}");
    assert_eq!(after.len(), 2, "{after:?}");

    let o = run(&j.root, &["--pid-ns"], &["sh", "-c", "exit 9"]);
    assert_eq!(o.status.code(), Some(9));
}

#[test]
fn pid_namespace_forwards_sigterm() {
    let j = jail("--pid-ns signals");
    let mut child = run_cmd(&j.root, &["--pid-ns"], &["sleep", "30"])
        .spawn()
        .unwrap();
    let sleeper = common::wait_for_comm(child.id(), "sleep", 2);
    assert_eq!(
        std::fs::read_link(format!("/proc/{sleeper}/root")).unwrap(),
        j.root
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(143));
    assert!(!Path::new(&format!("/proc/{sleeper}")).exists());
    assert_no_mounts(&j.root);
}

#[test]
fn errors_are_clear_with_docker_exit_codes() {
    let j = jail("errors");
    let o = run(&j.root, &[], &["no-such-cmd"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr(&o).contains("\"no-such-cmd\" not found") && stderr(&o).contains("/bin:/usr/bin"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stderr(&o).lines().count(),
        1,
        "one error line: {}",
        stderr(&o)
    );

    std::fs::write(j.root.join("bin/noexec"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        j.root.join("bin/noexec"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = run(&j.root, &["-u", "app"], &["noexec"]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be executed"), "{}", stderr(&o));

    let o = run(&j.root, &["-u", "nobody-such"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("unknown user \"nobody-such\""),
        "{}",
        stderr(&o)
    );

    let o = run(&j.root, &["-g", "nogroup-such"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("unknown group \"nogroup-such\""),
        "{}",
        stderr(&o)
    );

    let missing = j.root.join("does-not-exist");
    let o = run(&missing, &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("does not exist") && stderr(&o).contains("does-not-exist"),
        "{}",
        stderr(&o)
    );

    let o = run(&j.root.join("bin/busybox"), &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));

    let o = run(&j.root, &["-b", "/no/such/source:/x"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("/no/such/source"), "{}", stderr(&o));

    let o = run(&j.root, &["-e", "NOEQUALS"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("NOEQUALS"), "{}", stderr(&o));
}

#[test]
fn non_root_is_refused_with_the_reason() {
    common::require_root("non-root check (needs root to drop to nobody)");
    let tmp = tempfile::tempdir().unwrap();
    let mut c = run_cmd(tmp.path(), &[], &["true"]);
    c.uid(65534).gid(65534);
    let o = common::output(&mut c);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
}

#[test]
fn host_descriptors_do_not_leak_into_the_jail() {
    let j = jail("fd leak");
    let mut c = run_cmd(
        &j.root,
        &[],
        &[
            "sh",
            "-c",
            "ls /proc/self/fd/9 >/dev/null 2>&1 && echo LEAK || echo clean",
        ],
    );
    // SAFETY: open + dup2 between fork and exec; fd 9 is left open without CLOEXEC on purpose.
    unsafe {
        c.pre_exec(|| {
            let fd = libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            if fd < 0 || libc::dup2(fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = common::output(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "clean",
        "a host directory fd reached the jail"
    );
    assert_no_mounts(&j.root);
}
