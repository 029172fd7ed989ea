//! Image benchmark (issue 9): export and deploy of a real distribution image, droot-fleet
//! against the plain tools, side by side.
//!
//! Run (as root, with a Docker engine and debootstrap):
//! `cargo run --release --example image_bench -- [--runs N] [--dir DIR]`
//!
//! The image is the minimal Debian bookworm of `tests/distro.rs` (`.ci/debian-rootfs.sh` builds
//! and caches it), `docker import`ed with `ENV PATH` and `ENV LANG`. Each run, interleaved:
//! - export: droot-fleet's engine export to a zstd file, against `docker create` + `docker export
//!   | zstd -3` + `docker rm`;
//! - deploy: droot-fleet's deploy (default flags) of that file into a fresh root, against `zstd
//!   -dc | tar -x` into a fresh directory.
//!
//! Every contender ends with its output durable (`fsync` of the file, `syncfs` of the tree;
//! `sync -f` for the tools), since droot-fleet does that before it renames or publishes.
//! Medians are reported; a shared machine is noisy.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use droot_fleet::artifact::UnpackOptions;
use droot_fleet::export::{self, Compression, Source};
use droot_fleet::release::{self, Layout};

const ENV: [&str; 2] = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
];

/// Runs a shell command line, panicking with its stderr when it fails.
fn sh(line: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", line])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The imported image, removed (with any container left from it) on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "docker ps -aq --filter ancestor={0} | xargs -r docker rm -f >/dev/null; \
             docker rmi -f {0} >/dev/null",
            self.0
        ));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn ours_export(image: &str, out: &Path) {
    let file = File::create(out).unwrap();
    let source = Source::Engine {
        image: image.to_string(),
    };
    let (summary, file) = export::export(&source, file, Compression::Zstd.into()).unwrap();
    file.sync_all().unwrap();
    assert!(
        summary.skipped_devices > 0,
        "the Debian image has /dev nodes"
    );
}

fn docker_export(image: &str, out: &Path) {
    sh(&format!(
        "c=$(docker create {image} true) && docker export \"$c\" | zstd -3 -q -f -o {out} && \
         docker rm \"$c\" >/dev/null && sync -f {out}",
        out = out.display()
    ));
}

fn ours_deploy(archive: &Path, root: &Path) {
    let input = File::open(archive).unwrap();
    let opts = UnpackOptions::default();
    release::deploy(&Layout::new(root), input, Some("v1"), 5, &opts).unwrap();
}

fn tar_deploy(archive: &Path, dest: &Path) {
    std::fs::create_dir(dest).unwrap();
    sh(&format!(
        "zstd -dc {} | tar -x -C {dest} && sync -f {dest}",
        archive.display(),
        dest = dest.display()
    ));
}

fn main() {
    let mut runs = 3usize;
    let mut dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--dir" => dir = Some(PathBuf::from(args.next().expect("--dir DIR"))),
            other => panic!("unknown argument {other}; use --runs N --dir DIR"),
        }
    }
    let tmp = tempfile::tempdir_in(dir.unwrap_or_else(|| "/var/tmp".into())).unwrap();
    let work = tmp.path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/debian-rootfs.sh");
    let rootfs = sh(&format!("bash {}", script.display()));
    let name = format!("droot-fleet-image-bench:{}", std::process::id());
    let changes: String = ENV.iter().map(|c| format!(" --change '{c}'")).collect();
    sh(&format!(
        "docker import{changes} {rootfs} {name} >/dev/null"
    ));
    let image = Image(name);

    let (ours_zst, docker_zst) = (work.join("ours.tar.zst"), work.join("docker.tar.zst"));
    let mut times: [Vec<Duration>; 4] = Default::default();
    for run in 0..runs {
        // Alternate who goes first, so neither always meets a cold or a warm cache.
        let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for c in order {
            times[c].push(match c {
                0 => timed(|| ours_export(&image.0, &ours_zst)),
                _ => timed(|| docker_export(&image.0, &docker_zst)),
            });
        }
        for c in order {
            let dest = work.join(format!("deploy-{c}"));
            times[2 + c].push(match c {
                0 => timed(|| ours_deploy(&ours_zst, &dest)),
                _ => timed(|| tar_deploy(&ours_zst, &dest)),
            });
            sh(&format!("rm -rf {}", dest.display()));
        }
        eprintln!("run {} of {runs} done", run + 1);
    }

    let mb = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / 1e6;
    println!(
        "image: Debian bookworm minbase; export output {:.0} MB (droot-fleet) / {:.0} MB (docker \
         export, devices kept) as tar.zst; {runs} interleaved runs",
        mb(&ours_zst),
        mb(&docker_zst)
    );
    println!("| step | contender | median s | ratio |\n|---|---|---:|---:|");
    let rows = [
        ("export", "droot-fleet export --zstd (engine)"),
        (
            "export",
            "`docker create` + `docker export \\| zstd -3` + `docker rm`",
        ),
        ("deploy", "droot-fleet deploy (default flags)"),
        ("deploy", "`zstd -dc \\| tar -x`"),
    ];
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    for (i, (step, who)) in rows.iter().enumerate() {
        let base = medians[i | 1].as_secs_f64();
        let secs = medians[i].as_secs_f64();
        println!("| {step} | {who} | {secs:.2} | {:.2}x |", base / secs);
    }
}
