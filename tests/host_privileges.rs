//! Issue 15, item 1: a jail never gives host users privileges. Real busybox jails, as root;
//! the host user is `nobody` (65534), reached with `runuser` (which drops every capability;
//! `setpriv` would keep them).
//!
//! The attack: root in an app's jail makes a file of its own release setuid, and a host
//! user runs it through `ROOT/current/...`. Each fence is asserted on its own: the store
//! out of reach (0700), the store mounted `nosuid,nodev`, and (the real fix) the jail in a
//! user namespace, where its root is an unprivileged host uid.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::archive::ok as ok_out;
use common::jail::{build_static_c, stderr, stdout};

/// Prints the effective uid it runs with; the payload a jail would make setuid.
const EUID_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("euid=%d\n", (int)geteuid()); return 0; }
"#;

/// A store deployed from a busybox rootfs that holds `/tool` (the euid printer, root-owned,
/// 0755). The temp dir is opened to others, so only the store's own fences count.
struct Store {
    t: common::TempDir,
    root: PathBuf,
}

fn store(extra_deploy_flags: &[&str]) -> Store {
    common::require_root("a jail planting setuid files");
    let t = common::tempdir();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = t.path().join("rootfs");
    std::fs::create_dir(&src).unwrap();
    common::busybox_rootfs(&src);
    let tool = build_static_c(t.path(), "euid", EUID_C);
    std::fs::copy(&tool, src.join("tool")).unwrap();
    let tar = t.path().join("app.tar");
    common::tar_dir(&src, &tar);
    let root = t.path().join("app");
    ok_out(&common::archive::deploy(&root, &tar, extra_deploy_flags));
    Store { t, root }
}

/// Runs `cmd` in the store's current release as the jail's root.
fn jail(root: &Path, flags: &[&str], cmd: &[&str]) -> Output {
    common::output(
        common::cmd()
            .arg("run")
            .arg("--root")
            .arg(root.join("current"))
            .args(flags)
            .arg("--")
            .args(cmd),
    )
}

/// Runs `path` as the host user nobody (uid 65534), with no capability.
fn as_nobody(path: &Path) -> Output {
    common::output(
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(path),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Without a user namespace, root in the jail is host root on its release: it can make a
/// root-owned file setuid. The store's reach (0700) and its `nosuid,nodev` mount each stop a
/// host user from getting euid 0 through it; with neither, the attack works (the test can
/// fail).
#[test]
fn jail_root_plants_a_setuid_root_file_and_a_host_user_gains_nothing() {
    let s = store(&[]);
    let out = jail(&s.root, &[], &["chmod", "4755", "/tool"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planted = s.root.join("current/tool");
    assert_eq!(
        mode(&planted),
        0o4755,
        "the jail's root planted the setuid bit"
    );
    assert_eq!(std::fs::metadata(&planted).unwrap().uid(), 0);

    // Fence 1: the store is out of reach.
    assert_eq!(mode(&s.root), 0o700, "the store is 0700");
    let out = as_nobody(&planted);
    assert!(!out.status.success(), "nobody ran it: {}", stdout(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    // Fence 2: the store is mounted nosuid,nodev, whatever the modes (opened here as an
    // older version left it).
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_nobody(&planted);
    assert_eq!(stdout(&out), "euid=65534\n", "{}", stderr(&out));

    // Neither fence: the attack of the issue works.
    let st = Command::new("umount").arg(&s.root).status().unwrap();
    assert!(st.success());
    let out = as_nobody(&planted);
    assert_eq!(stdout(&out), "euid=0\n", "{}", stderr(&out));
    drop(s.t);
}

/// A store an older version created 0755 and never mounted is tightened and mounted by the
/// next deploy (and by the agent when it starts the app, see the executor tests).
#[test]
fn an_open_store_from_an_older_version_is_tightened_and_mounted_on_the_next_deploy() {
    let s = store(&["--version", "v1"]);
    let st = Command::new("umount").arg(&s.root).status().unwrap();
    assert!(st.success());
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(common::mounts_below(&s.root).is_empty());
    let tar = s.t.path().join("app.tar");
    ok_out(&common::archive::deploy(
        &s.root,
        &tar,
        &["--version", "v2"],
    ));
    assert_eq!(mode(&s.root), 0o700);
    let lines = common::mounts_below(&s.root);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let opts = lines[0].split(' ').nth(5).unwrap();
    assert!(opts.contains("nosuid") && opts.contains("nodev"), "{opts}");
    // `umount` keeps the store's own mount; `rm` removes it with everything else.
    ok_out(&common::output(
        common::cmd().args(["umount", "--root"]).arg(&s.root),
    ));
    assert_eq!(common::mounts_below(&s.root).len(), 1);
    ok_out(&common::output(
        common::cmd().args(["rm", "--root"]).arg(&s.root),
    ));
    assert!(common::mounts_below(&s.root).is_empty());
    assert!(!s.root.exists());
}

/// In a user namespace the jail's root is host `base`: the file it makes setuid is `base`'s
/// on the host, so even with both fences down (store opened, mount gone) a host user who
/// runs it gets euid `base`, never 0.
#[test]
fn a_setuid_file_made_by_a_userns_jail_gives_a_host_user_nothing() {
    let s = store(&["--userns"]);
    let out = jail(&s.root, &["--userns"], &["chmod", "4755", "/tool"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planted = s.root.join("current/tool");
    let meta = std::fs::metadata(&planted).unwrap();
    assert_eq!(mode(&planted), 0o4755);
    let base = meta.uid();
    assert!(
        base >= 65536,
        "owned by the range's root, not host root: {base}"
    );
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("umount").arg(&s.root).status().unwrap();
    assert!(st.success());
    let out = as_nobody(&planted);
    assert_eq!(stdout(&out), format!("euid={base}\n"), "{}", stderr(&out));
    drop(s.t);
}

/// A host file owned by host root, bound into the jail (even read-write): root in a user
/// namespace can neither write, chmod, chown nor remove it. Without the namespace the same
/// script changes it (the test can fail).
#[test]
fn a_userns_jail_cannot_change_a_host_root_file_bound_into_it() {
    let s = store(&["--userns"]);
    let host = s.t.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let file = host.join("passwd");
    let reset = || {
        std::fs::write(&file, "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    reset();
    let bind = format!("{}:/hostdir", host.display());
    let script = "for t in 'echo evil >> /hostdir/passwd' 'chmod 4777 /hostdir/passwd' \
                  'chown 1000:1000 /hostdir/passwd' 'touch /hostdir/new' 'rm /hostdir/passwd'; do \
                    sh -c \"$t\" 2>/dev/null && echo \"done: $t\" || echo \"refused: $t\"; \
                  done";
    let out = jail(&s.root, &["--userns", "-b", &bind], &["sh", "-c", script]);
    let refused = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("refused"))
        .count();
    assert_eq!(refused, 5, "{}", stdout(&out));
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.gid(), mode(&file)), (0, 0, 0o644));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    assert!(!host.join("new").exists());

    // Without a user namespace, root in the jail is host root on the bound file.
    let plain = s.t.path().join("plain-rootfs");
    std::fs::create_dir(&plain).unwrap();
    common::busybox_rootfs(&plain);
    let out = common::output(
        common::cmd()
            .arg("run")
            .arg("--root")
            .arg(&plain)
            .args(["-b", &bind, "--", "sh", "-c", script]),
    );
    let done = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("done"))
        .count();
    assert_eq!(done, 5, "{}", stdout(&out));
}
