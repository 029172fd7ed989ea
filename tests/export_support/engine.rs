//! Helpers for tests against the real Docker engine: availability, test images, containers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use super::archives::stderr;
use crate::common::{output, tar_dir};

// ---------------------------------------------------------------- engine tests

/// Engine tests share the engine's container list; run them one at a time.
pub static ENGINE: Mutex<()> = Mutex::new(());

pub fn docker(args: &[&str]) -> Output {
    output(Command::new("docker").args(args))
}

/// True when an engine answers; false (after saying why) when the user opted out with
/// DROOT_FLEET_TEST_NO_DOCKER=1; panics with the reason otherwise.
pub fn engine_available(test: &str) -> bool {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let why = match Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
    {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!("no Docker engine answers at {host}: {}", stderr(&o).trim()),
        Err(e) => format!("the docker CLI cannot be run ({e}); it is needed to build test images"),
    };
    if std::env::var("DROOT_FLEET_TEST_NO_DOCKER").as_deref() == Ok("1") {
        eprintln!("{test}: NOT RUN: {why} (DROOT_FLEET_TEST_NO_DOCKER=1)");
        return false;
    }
    panic!(
        "{test}: {why}. Start dockerd (or set DOCKER_HOST), or set DROOT_FLEET_TEST_NO_DOCKER=1 to skip engine tests"
    );
}

/// A uniquely named image, removed on drop.
pub struct TestImage(pub String);

impl TestImage {
    /// `docker import`s the tar of `rootfs` with the given `--change`s.
    pub fn import(rootfs: &Path, changes: &[&str]) -> Self {
        let tar = rootfs.with_extension("tar");
        tar_dir(rootfs, &tar);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("droot-fleet-test-{}-{nanos}:v1", std::process::id());
        let mut args = vec!["import".to_string()];
        for c in changes {
            args.push("--change".into());
            args.push(c.to_string());
        }
        args.push(tar.to_string_lossy().into_owned());
        args.push(name.clone());
        let o = output(Command::new("docker").args(&args));
        assert!(o.status.success(), "docker import: {}", stderr(&o));
        TestImage(name)
    }

    /// Containers (any state) made from this image.
    pub fn containers(&self) -> Vec<String> {
        let o = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("ancestor={}", self.0),
        ]);
        assert!(o.status.success(), "docker ps: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = docker(&["rm", "-f", &c]);
        }
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

pub fn helper_containers() -> usize {
    let o = docker(&["ps", "-a", "-q", "--filter", "label=droot-fleet.export"]);
    String::from_utf8_lossy(&o.stdout).lines().count()
}

/// Paths Docker adds to every container (its "init layer"), absent from the image itself.
pub const ENGINE_INIT_PATHS: [&str; 7] = [
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
];
