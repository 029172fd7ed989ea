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

/// Serialises the engine tests and checks the engine (`common::docker_engine_available`); `None`
/// means the test was deliberately not run and returns.
pub fn engine_test(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let serial = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    crate::common::docker_engine_available(test).then_some(serial)
}

/// A uniquely named image, removed on drop.
pub struct TestImage(pub String);

impl TestImage {
    /// `docker import`s the tar of `rootfs` with the given `--change`s.
    pub fn import(rootfs: &Path, changes: &[&str]) -> Self {
        let tar = rootfs.with_extension("tar");
        tar_dir(rootfs, &tar);
        Self::import_tar(&tar, changes)
    }

    /// `docker import`s the rootfs tar `tar` with the given `--change`s.
    pub fn import_tar(tar: &Path, changes: &[&str]) -> Self {
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
