//! A real distribution end to end (issue 9): a minimal Debian bookworm made by `debootstrap
//! --variant=minbase` (once per machine, cached by `.ci/debian-rootfs.sh`) is exported from the
//! Docker engine and through `docker save` + `--from-archive`, deployed with default flags, and
//! run in the jail as root and as `nobody`: bash, apt-get, dpkg and getent, checking what each
//! prints.
//!
//! Needs root and debootstrap (the cache script names what is missing). The engine test follows
//! the engine convention of `tests/export.rs`: without an engine it fails with the reason, unless
//! DROOT_FLEET_TEST_NO_DOCKER=1, when it prints NOT RUN and returns. The plain-tar test needs no
//! engine.

mod common;
#[path = "export_support/mod.rs"]
mod export_support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::archive::{deploy, ok};
use common::jail;
use common::{cmd, output};
use export_support::engine::{
    ENGINE_INIT_PATHS, TestImage, docker, engine_test, helper_containers,
};

const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Device nodes a debootstrap leaves in /dev (full, null, ptmx, random, tty, urandom, zero,
/// console).
const DEBIAN_DEV_NODES: usize = 8;

/// The cached Debian rootfs tar, built on first use (under a lock) by `.ci/debian-rootfs.sh`.
fn debian_tar() -> PathBuf {
    common::require_root("the Debian rootfs (debootstrap) and the jail");
    common::ci_built("debian-rootfs.sh")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Paths of the entries of a tar, and how many are devices or FIFOs.
fn tar_paths(path: &Path) -> (BTreeSet<String>, usize) {
    let mut paths = BTreeSet::new();
    let mut devices = 0;
    let file = std::fs::File::open(path).unwrap();
    for e in tar::Archive::new(file).entries().unwrap() {
        let e = e.unwrap();
        let t = e.header().entry_type();
        if t.is_character_special() || t.is_block_special() || t.is_fifo() {
            devices += 1;
        }
        let p = e.path().unwrap().to_string_lossy().into_owned();
        paths.insert(p.trim_start_matches("./").trim_end_matches('/').to_string());
    }
    (paths, devices)
}

/// bash, apt-get, dpkg and getent in the release at `root`, as root and as `nobody`, with
/// `env` flags added to every run; users come from the jail's own /etc/passwd (no `--cp`).
fn check_debian_jail(root: &Path, env: &[&str]) {
    let users: [(&[&str], &str); 2] = [
        (&[], "uid=0(root) gid=0(root) groups=0(root)"),
        (
            &["-u", "nobody"],
            "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
        ),
    ];
    for (user, id) in users {
        let flags: Vec<&str> = user.iter().chain(env).copied().collect();
        let script =
            "echo \"LANG=$LANG PATH=$PATH\"; id; echo x >/dev/null; head -c 3 /dev/zero | wc -c";
        let out = jail::ok(root, &flags, &["bash", "-c", script]);
        assert_eq!(
            out,
            format!("LANG=C.UTF-8 PATH={PATH_ENV}\n{id}\n3\n"),
            "{user:?}"
        );
        let out = jail::ok(root, &flags, &["apt-get", "--version"]);
        assert!(out.starts_with("apt 2.6."), "{user:?}: {out}");
        let out = jail::ok(root, &flags, &["dpkg", "-l"]);
        for package in ["base-files", "bash", "dpkg", "apt", "libc6"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&format!("ii  {package} "))
                        || l.starts_with(&format!("ii  {package}:"))),
                "{user:?}: {package} not installed per dpkg -l:\n{out}"
            );
        }
        let out = jail::ok(root, &flags, &["getent", "passwd", "nobody"]);
        assert_eq!(
            out, "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "{user:?}"
        );
    }
    // A user only Debian's own passwd has.
    let flags: Vec<&str> = ["-u", "_apt"].iter().chain(env).copied().collect();
    assert_eq!(jail::ok(root, &flags, &["id", "-u"]), "42\n");
}

/// Deploys `archive` with default flags under `root` and returns deploy's stderr.
fn deploy_default(root: &Path, archive: &Path) -> String {
    let o = deploy(root, archive, &["--version", "v1"]);
    ok(&o);
    assert!(root.join("current/usr/bin/apt-get").exists());
    stderr(&o)
}

/// The debootstrap tar as it is (device nodes in /dev, no /.drootenv) deploys with default
/// flags: the nodes are skipped with a note, and the jail works.
#[test]
fn debian_rootfs_tar_deploys_with_default_flags_and_runs() {
    let tar = debian_tar();
    let t = common::tempdir();
    let root = t.path().join("app");
    let note = deploy_default(&root, &tar);
    assert!(
        note.contains(&format!(
            "{DEBIAN_DEV_NODES} device nodes/FIFOs under /dev/ skipped"
        )),
        "{note}"
    );
    let dev: Vec<_> = std::fs::read_dir(root.join("current/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!dev.contains(&"null".to_string()), "{dev:?}");
    assert!(
        dev.contains(&"fd".to_string()),
        "symlinks in /dev are kept: {dev:?}"
    );
    let env = ["-e", "LANG=C.UTF-8", "-e"];
    let path = format!("PATH={PATH_ENV}");
    check_debian_jail(&root.join("current"), &[env[0], env[1], env[2], &path]);
}

/// Issue 15, item 1: the same rootfs in a store whose jails run in a user namespace, with
/// owners kept as the agent deploys (`--same-owner`): everything is shifted into the range
/// (root's files are host `base`'s, `shadow`'s group is `base + 42`), and bash, apt-get,
/// dpkg and getent work as root and as `nobody`.
#[test]
fn debian_rootfs_runs_in_a_user_namespace() {
    use std::os::unix::fs::MetadataExt;
    let tar = debian_tar();
    let t = common::tempdir();
    let root = t.path().join("app");
    let o = deploy(
        &root,
        &tar,
        &["--userns", "--same-owner", "--version", "v1"],
    );
    ok(&o);
    let rel = root.join("releases/v1");
    let base = std::fs::metadata(&rel).unwrap().uid();
    assert!(base >= 65536, "the release belongs to the range: {base}");
    let bash = std::fs::metadata(rel.join("usr/bin/bash")).unwrap();
    assert_eq!((bash.uid(), bash.gid()), (base, base));
    let shadow = std::fs::metadata(rel.join("etc/shadow")).unwrap();
    assert_eq!(shadow.gid(), base + 42, "group shadow (42) shifted");
    let path = format!("PATH={PATH_ENV}");
    let flags = ["--userns", "-e", "LANG=C.UTF-8", "-e", path.as_str()];
    check_debian_jail(&root.join("current"), &flags);
    // Root in the jail owns what it writes as host `base`.
    let out = jail::ok(
        &root.join("current"),
        &flags,
        &["bash", "-c", "touch /root/made && stat -c %u /root/made"],
    );
    assert_eq!(out, "0\n");
    assert_eq!(
        std::fs::metadata(rel.join("root/made")).unwrap().uid(),
        base
    );
}

/// Issue 9 as a user met it: `docker import` with ENV, export (engine, and `docker save` +
/// `--from-archive`), deploy with default flags, run.
#[test]
fn debian_image_exports_deploys_and_runs_from_engine_and_archive() {
    let tar = debian_tar();
    let Some(_serial) =
        engine_test("debian_image_exports_deploys_and_runs_from_engine_and_archive")
    else {
        return;
    };
    let image = TestImage::import_tar(&tar, &[&format!("ENV PATH={PATH_ENV}"), "ENV LANG=C.UTF-8"]);
    let t = common::tempdir();

    // Uncompressed: zstd built without optimisation (the test profile) takes 10x longer.
    let from_engine = t.path().join("engine.tar");
    let o = output(cmd().args(["export", &image.0, "-o"]).arg(&from_engine));
    assert!(o.status.success(), "engine export: {}", stderr(&o));
    assert!(
        stderr(&o).contains("device nodes/FIFOs under /dev/"),
        "{}",
        stderr(&o)
    );
    assert_eq!(helper_containers(), 0, "engine export left its container");

    let saved = t.path().join("save.tar");
    let o = docker(&["save", &image.0, "-o", saved.to_str().unwrap()]);
    assert!(o.status.success(), "docker save: {}", stderr(&o));
    let from_archive = t.path().join("archive.tar");
    let o = output(
        cmd()
            .args(["export", "--from-archive"])
            .arg(&saved)
            .arg("-o")
            .arg(&from_archive),
    );
    assert!(o.status.success(), "archive export: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "left out {DEBIAN_DEV_NODES} device nodes/FIFOs under /dev/"
        )),
        "{}",
        stderr(&o)
    );

    // Both hold the same tree (bar the engine's init layer), with no device node left.
    let (engine_paths, engine_devices) = tar_paths(&from_engine);
    let (archive_paths, archive_devices) = tar_paths(&from_archive);
    assert_eq!((engine_devices, archive_devices), (0, 0));
    let init: BTreeSet<String> = ENGINE_INIT_PATHS.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        engine_paths.difference(&init).collect::<Vec<_>>(),
        archive_paths.difference(&init).collect::<Vec<_>>()
    );
    let mut drootenv = String::new();
    tar::Archive::new(std::fs::File::open(&from_archive).unwrap())
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap() == Path::new(".drootenv"))
        .expect("no .drootenv in the export")
        .read_to_string(&mut drootenv)
        .unwrap();
    assert_eq!(drootenv, format!("PATH={PATH_ENV}\nLANG=C.UTF-8\n"));

    for (name, export) in [("engine", &from_engine), ("archive", &from_archive)] {
        let root = t.path().join(name);
        let note = deploy_default(&root, export);
        assert!(
            !note.contains("skipped"),
            "{name}: export left devices in: {note}"
        );
        check_debian_jail(&root.join("current"), &[]);
    }
    assert!(
        image.containers().is_empty(),
        "containers left from the image"
    );
}
