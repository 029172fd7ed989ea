//! The store-to-disk benchmark (issue: artifacts at the floor, goals): one tree, published
//! to a private Garage, deployed by droot-fleet against the seed's pipeline
//! (`aws s3 cp - | gzip -dc | tar -x`), local `zstd -dc FILE | tar -x` and the floor (`tar
//! -x` of the raw tar), interleaved, into one target directory (tmpfs or a disk). Every
//! contender ends with a `syncfs` of the target, as a deploy does before its switch.
//!
//! Not a test: a benchmark, run by hand (root, Garage, awscli):
//!
//! ```sh
//! BENCH_TAR=/path/usr.tar BENCH_DIR=/mnt/bench \
//!   cargo test --release --test s3_bench -- --ignored --nocapture
//! ```
//!
//! `BENCH_RUNS` (default 5) sets the runs per contender; the table gives medians.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::garage::Garage;

struct Contender {
    name: &'static str,
    /// A shell command run with `$DEST` set; droot-fleet's own get `$BIN`.
    script: String,
    /// Deploys into a root (releases and a nosuid mount, removed with `droot-fleet rm`).
    deploy: bool,
    times: Vec<f64>,
}

fn sh(script: &str, env: &[(&str, String)]) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn var(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set: see the module docs"))
}

/// The tree of `tar` unpacked under `dir`, and the compressed copies made from it.
fn inputs(dir: &Path, g: &Garage) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let env = env_of(g, dir);
    sh("tar -xf \"$TAR\" -C \"$WORK/tree\"", &env);
    sh("gzip -c \"$TAR\" > \"$WORK/plain.tar.gz\"", &env);
    sh("zstd -q -c \"$TAR\" > \"$WORK/plain.tar.zst\"", &env);
    let bucket = format!("s3://{}", g.bucket);
    for (key, flag) in [("members.tar.gz", "--gzip"), ("frames.tar.zst", "--zstd")] {
        let out = Command::new(common::bin())
            .envs(g.env())
            .args([
                "publish",
                tree.to_str().unwrap(),
                &format!("{bucket}/{key}"),
                flag,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "publish {key}: {out:?}");
    }
    sh(
        "aws s3 cp --quiet \"$WORK/plain.tar.gz\" \"s3://$BUCKET/plain.tar.gz\"",
        &env,
    );
}

fn env_of(g: &Garage, dir: &Path) -> Vec<(&'static str, String)> {
    let mut env = g.env();
    env.push(("BIN", common::bin().display().to_string()));
    env.push(("TAR", var("BENCH_TAR").display().to_string()));
    env.push(("WORK", dir.display().to_string()));
    env.push(("BUCKET", g.bucket.clone()));
    // awscli v1 takes its region from here only (Garage refuses another's signature).
    env.push(("AWS_DEFAULT_REGION", "garage".into()));
    env
}

fn contenders() -> Vec<Contender> {
    let sync = " && sync -f \"$DEST\"";
    let plain = |name, script: &str| Contender {
        name,
        script: format!("mkdir \"$DEST\" && {script}{sync}"),
        deploy: false,
        times: Vec::new(),
    };
    let deploy = |name, key: &str| Contender {
        name,
        script: format!("\"$BIN\" deploy --root \"$DEST\" \"s3://$BUCKET/{key}\""),
        deploy: true,
        times: Vec::new(),
    };
    vec![
        plain(
            "seed: `aws s3 cp - \\| gzip -dc \\| tar -x`",
            "aws s3 cp --quiet \"s3://$BUCKET/plain.tar.gz\" - | gzip -dc | tar -x -C \"$DEST\"",
        ),
        deploy(
            "`droot-fleet deploy s3://` of a plain tar.gz",
            "plain.tar.gz",
        ),
        deploy(
            "`droot-fleet deploy s3://`, published tar.gz",
            "members.tar.gz",
        ),
        deploy(
            "`droot-fleet deploy s3://`, published tar.zst",
            "frames.tar.zst",
        ),
        plain(
            "local `zstd -dc FILE \\| tar -x`",
            "zstd -dc \"$WORK/plain.tar.zst\" | tar -x -C \"$DEST\"",
        ),
        plain(
            "floor: `tar -x` of the raw tar",
            "tar -x -f \"$TAR\" -C \"$DEST\"",
        ),
    ]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[test]
#[ignore = "a benchmark: see the module docs"]
fn store_to_disk_against_the_seed_pipeline() {
    common::require_root("the store-to-disk benchmark (deploy mounts)");
    let target = var("BENCH_DIR");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let g = Garage::start();
    let work = common::tempdir();
    inputs(work.path(), &g);
    let mut env = env_of(&g, work.path());
    let dest = target.join("droot-fleet-s3-bench");
    env.push(("DEST", dest.display().to_string()));
    let mut all = contenders();
    for _ in 0..runs {
        for c in &mut all {
            sh("sync", &[]);
            let started = Instant::now();
            sh(&c.script, &env);
            c.times.push(started.elapsed().as_secs_f64());
            let rm = if c.deploy {
                "\"$BIN\" rm --root \"$DEST\""
            } else {
                "rm -rf \"$DEST\""
            };
            sh(rm, &env);
        }
    }
    let seed = median(&all[0].times);
    let floor = median(&all[all.len() - 1].times);
    println!("\n{runs} runs into {}, medians:\n", target.display());
    println!("| contender | median s | vs. the seed | time vs. the floor |");
    println!("|---|---:|---:|---:|");
    for c in &all {
        let m = median(&c.times);
        println!(
            "| {} | {m:.2} | {:.2}x | {:.2}x |",
            c.name,
            seed / m,
            m / floor
        );
    }
}
