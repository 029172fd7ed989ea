//! `droot-fleet run`: mounts inside the jail — /sys and /proc, binds, `--cp` — and the
//! symlink escapes a hostile rootfs could try through them.
//!
//! Every test checks, after each run, that no mount is left below the root in the host's
//! mount table.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::jail::{assert_no_mounts, jail, ok, run, stderr, stdout};

#[test]
fn sys_is_read_only_and_proc_is_fresh() {
    let j = jail("/sys");
    let o = run(
        &j.root,
        &[],
        &["sh", "-c", "touch /sys/x; echo 1 > /sys/kernel/profiling"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    let m = ok(&j.root, &[], &["cat", "/proc/self/mountinfo"]);
    let sys_lines: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| p == "/sys" || p.starts_with("/sys/"))
        })
        .collect();
    assert!(!sys_lines.is_empty());
    for l in sys_lines {
        let opts = l.split(' ').nth(5).unwrap();
        assert!(opts.split(',').any(|o| o == "ro"), "not read-only: {l}");
    }
}

#[test]
fn binds_rw_ro_and_file_with_created_targets() {
    let j = jail("binds");
    let host = tempfile::tempdir().unwrap();
    let rw = host.path().join("rw");
    let ro = host.path().join("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("data"), "readme").unwrap();
    let file = host.path().join("app.conf");
    std::fs::write(&file, "conf=1").unwrap();
    let b_rw = format!("{}:/srv/new/rw", rw.display());
    let b_ro = format!("{}:/srv/ro", ro.display());
    let b_file = format!("{}:/etc/app/app.conf", file.display());
    let out = ok(
        &j.root,
        &["-b", &b_rw, "--robind", &b_ro, "-b", &b_file],
        &[
            "sh",
            "-c",
            "echo written > /srv/new/rw/out && cat /srv/ro/data /etc/app/app.conf && if echo x > /srv/ro/data; then echo RO-WRITE-OK; fi",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "written\n"
    );
    assert!(out.contains("readmeconf=1"), "{out}");
    assert!(
        !out.contains("RO-WRITE-OK"),
        "write to the read-only bind succeeded"
    );
    assert_eq!(std::fs::read_to_string(ro.join("data")).unwrap(), "readme");
    assert!(j.root.join("srv/new/rw").is_dir(), "dir target created");
    assert!(
        j.root.join("etc/app/app.conf").is_file(),
        "file target created"
    );
    assert_eq!(
        std::fs::read_to_string(j.root.join("etc/app/app.conf")).unwrap(),
        "",
        "created empty; content was the bind"
    );

    // -b without DST uses SRC inside the jail.
    let same = ok(
        &j.root,
        &["-b", rw.to_str().unwrap()],
        &["cat", &format!("{}/out", rw.display())],
    );
    assert_eq!(same, "written\n");
}

#[test]
fn bind_and_system_targets_through_symlinks_are_refused() {
    let j = jail("symlink targets");
    let outside = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    symlink(outside.path(), j.root.join("escape")).unwrap();
    let b = format!("{}:/escape/x", src.path().display());
    let o = run(&j.root, &["-b", &b], &["true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("symlink") && stderr(&o).contains("escape"),
        "{}",
        stderr(&o)
    );
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing created outside the root"
    );

    // A relative link inside the root is refused as well, as is the last component.
    symlink("tmp", j.root.join("tmplink")).unwrap();
    let b = format!("{}:/tmplink", src.path().display());
    let o = run(&j.root, &["-b", &b], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));

    // A hostile rootfs whose /proc points at the host.
    std::fs::remove_dir(j.root.join("proc")).unwrap();
    symlink(outside.path(), j.root.join("proc")).unwrap();
    let o = run(&j.root, &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("\"proc\" is a symlink"),
        "{}",
        stderr(&o)
    );
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(&outside.path().display().to_string()));
}

#[test]
fn cp_copies_host_files_and_never_writes_through_jail_symlinks() {
    let j = jail("--cp");
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), "do not touch").unwrap();
    std::fs::remove_file(j.root.join("etc/hosts")).ok();
    symlink(victim.path(), j.root.join("etc/hosts")).unwrap();
    let out = ok(
        &j.root,
        &["--cp"],
        &["cat", "/etc/resolv.conf", "/etc/hosts"],
    );
    let expected = std::fs::read_to_string("/etc/resolv.conf").unwrap()
        + &std::fs::read_to_string("/etc/hosts").unwrap();
    assert_eq!(out, expected);
    assert_eq!(
        std::fs::read_to_string(victim.path()).unwrap(),
        "do not touch"
    );
    assert!(
        !j.root.join("etc/hosts").is_symlink(),
        "the link was replaced, not followed"
    );
    assert_eq!(
        std::fs::read(j.root.join("etc/passwd")).unwrap(),
        std::fs::read("/etc/passwd").unwrap()
    );
}

#[test]
fn cp_refuses_a_symlinked_etc() {
    let j = jail("--cp etc symlink");
    let outside = tempfile::tempdir().unwrap();
    std::fs::rename(j.root.join("etc"), outside.path().join("etc")).unwrap();
    symlink(outside.path().join("etc"), j.root.join("etc")).unwrap();
    let before = std::fs::read_to_string(outside.path().join("etc/passwd")).unwrap();
    let o = run(&j.root, &["--cp"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("\"etc\" is a symlink"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("etc/passwd")).unwrap(),
        before
    );
}

/// The host's resolv.conf is often a link into /run: run with a private /etc in which it is.
#[test]
fn cp_follows_a_symlinked_host_resolv_conf() {
    let j = jail("--cp host symlink");
    let fake = tempfile::tempdir().unwrap();
    let etc = fake.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    for f in ["passwd", "group", "hosts", "ld.so.cache"] {
        if Path::new("/etc").join(f).exists() {
            std::fs::copy(Path::new("/etc").join(f), etc.join(f)).unwrap();
        }
    }
    std::fs::write(
        fake.path().join("stub-resolv.conf"),
        "nameserver 192.0.2.53\n",
    )
    .unwrap();
    symlink(
        fake.path().join("stub-resolv.conf"),
        etc.join("resolv.conf"),
    )
    .unwrap();
    let script = format!(
        "mount --bind {} /etc && exec {} run --root {} --cp -- cat /etc/resolv.conf",
        etc.display(),
        common::bin().display(),
        j.root.display()
    );
    let o = common::output(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env_remove("RUST_LOG"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "nameserver 192.0.2.53\n");
    let copied = j.root.join("etc/resolv.conf");
    assert!(!copied.is_symlink());
    assert_eq!(
        std::fs::read_to_string(copied).unwrap(),
        "nameserver 192.0.2.53\n"
    );
    assert_no_mounts(&j.root);
}

#[test]
fn bind_source_inside_the_root_is_resolved_safely() {
    let j = jail("bind source in root");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "host secret").unwrap();
    symlink(outside.path(), j.root.join("data")).unwrap();
    let b = format!("{}:/mnt/data", j.root.join("data").display());
    let o = run(&j.root, &["-b", &b], &["cat", "/mnt/data/secret"]);
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("host secret"));

    std::fs::write(j.root.join("home/app/note"), "inside").unwrap();
    let b = format!("{}:/mnt/home", j.root.join("home/app").display());
    assert_eq!(
        ok(&j.root, &["--robind", &b], &["cat", "/mnt/home/note"]),
        "inside"
    );
}
