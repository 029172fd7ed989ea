//! The static binary in an empty image (Dockerfile.test): proves droot-fleet needs nothing
//! from the host — no libc, no shell — and that the fleet test image builds.

mod common;

use std::path::Path;
use std::process::Command;

use common::docker::{docker, static_binary};

#[test]
fn static_binary_runs_in_an_empty_image() {
    let bin = static_binary();
    let file = Command::new("file")
        .arg(&bin)
        .output()
        .expect("`file` is needed to check the static link: apt-get install file");
    let text = String::from_utf8_lossy(&file.stdout);
    assert!(text.contains("static"), "not statically linked: {text}");
    // Its relative relocations are packed (RELR): without, the table is over a megabyte,
    // read at every start and kept resident.
    let sections = Command::new("readelf")
        .args(["-SW"])
        .arg(&bin)
        .output()
        .expect("`readelf` (binutils) is needed to read the sections");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(
        sections.contains(".relr.dyn"),
        "relative relocations not packed (build with .ci/static-build.sh):\n{sections}"
    );
    // `[Nr] Name Type Address Off Size ...`: the size is the fourth field after the name.
    let rela = (sections.lines())
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find_map(|f| {
            let at = f.iter().position(|w| *w == ".rela.dyn")?;
            u64::from_str_radix(f.get(at + 4)?, 16).ok()
        });
    assert!(
        rela.is_none_or(|n| n < 64 << 10),
        "a .rela.dyn of {rela:?} bytes:\n{sections}"
    );
    if !common::docker_engine_available("static_binary_runs_in_an_empty_image") {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, ctx.path().join("droot-fleet")).unwrap();
    std::fs::copy(common::busybox(), ctx.path().join("busybox")).unwrap();
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile.test");
    let tag = format!("droot-fleet-test-host:{}", std::process::id());
    let build = docker(&[
        "build",
        "-q",
        "--label",
        common::docker::LABEL,
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        &tag,
        ctx.path().to_str().unwrap(),
    ]);
    assert!(
        build.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&build.stderr)
    );

    // Inside the empty image: the version, and a real deploy from stdin with rollback.
    let run = |script: &str| {
        docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            &tag,
            "-c",
            script,
        ])
    };
    let out = run("droot-fleet --version");
    let _cleanup = scopeguard(&tag);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("droot-fleet {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(
        "set -e; mkdir -p /src/bin && echo v1 > /src/bin/app && tar -C /src -czf /a.tgz . && \
         droot-fleet deploy --root /srv/app --version v1 < /a.tgz && \
         echo v2 > /src/bin/app && tar -C /src -cf - . | droot-fleet deploy --root /srv/app --version v2 - && \
         droot-fleet deploy --root /srv/app --rollback && cat /srv/app/current/bin/app",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");
}

/// Removes the test image when the test ends, pass or fail.
fn scopeguard(tag: &str) -> impl Drop + '_ {
    struct Rmi<'a>(&'a str);
    impl Drop for Rmi<'_> {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", "-f", self.0]).output();
        }
    }
    Rmi(tag)
}
