//! Unpack benchmark: droot-fleet's streaming unpacker against `gzip -dc | tar -x` and
//! `zstd -dc | tar -x`, side by side, on the same generated ~200 MB rootfs-like archive:
//! gzip as one stream and in the parallel layout `publish` writes, zstd, and `tar -x` of
//! the raw tar (the floor).
//!
//! Run: `cargo run --release --example unpack_bench -- [--runs N] [--dir DIR] [--tar FILE]`
//! (`--tar`: a real tree's tar instead of the generated one).
//!
//! Every contender ends with a `syncfs` of the target (droot-fleet does one before it
//! publishes a release; the tar pipelines get `sync -f`), so all pay for durability.
//! Runs are interleaved and the median is reported, since shared machines are noisy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use droot_fleet::artifact::{UnpackOptions, unpack};
use droot_fleet::artifact::{gzip_members, zstd_frames};

/// Deterministic xorshift generator: the archive is identical on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "the",
    "config",
    "static",
    "void",
    "return",
    "import",
    "function",
    "class",
    "module",
    "error",
    "value",
    "string",
    "include",
    "define",
    "license",
    "copyright",
    "software",
    "library",
    "version",
    "install",
    "package",
    "struct",
    "public",
    "private",
    "const",
];

/// Text-like bytes (compress ~4x) or binary-like bytes (compress ~1.5x).
fn content(rng: &mut Rng, len: usize, binary: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        if binary && rng.below(12) == 0 {
            let n = rng.below(24) as usize;
            v.extend((0..n).map(|_| rng.next() as u8));
        } else {
            v.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            v.push(if rng.below(9) == 0 { b'\n' } else { b' ' });
        }
    }
    v.truncate(len);
    v
}

/// A rootfs-like tar: ~40k small files in a deep-ish tree, a few large ones, symlinks.
fn generate_tar() -> Vec<u8> {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut b = tar::Builder::new(Vec::with_capacity(220 << 20));
    let mut dirs = Vec::new();
    let append = |b: &mut tar::Builder<Vec<u8>>, path: &str, kind, data: &[u8], mode| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    for top in [
        "usr/lib",
        "usr/share",
        "usr/bin",
        "etc",
        "var/lib",
        "opt/app",
    ] {
        for i in 0..40 {
            let d = format!("{top}/d{i:02}");
            append(&mut b, &d, tar::EntryType::Directory, &[], 0o755);
            dirs.push(d);
        }
    }
    let mut total = 0usize;
    let mut n = 0;
    while total < 140 << 20 {
        let d = &dirs[rng.below(dirs.len() as u64) as usize];
        // Log-ish size distribution: most files small, some tens of KB.
        let len = match rng.below(10) {
            0..=5 => 100 + rng.below(1_500) as usize,
            6..=8 => 2_000 + rng.below(12_000) as usize,
            _ => 14_000 + rng.below(60_000) as usize,
        };
        let data = content(&mut rng, len, d.contains("lib") || d.contains("bin"));
        append(
            &mut b,
            &format!("{d}/f{n}"),
            tar::EntryType::Regular,
            &data,
            0o644,
        );
        if n % 20 == 0 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, format!("{d}/l{n}"), format!("f{n}"))
                .unwrap();
        }
        total += len;
        n += 1;
    }
    for i in 0..8 {
        let data = content(&mut rng, 10 << 20, true);
        append(
            &mut b,
            &format!("opt/app/big{i}.bin"),
            tar::EntryType::Regular,
            &data,
            0o755,
        );
    }
    b.into_inner().unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}

fn shell(pipeline: &str, archive: &Path, dest: &Path) -> Duration {
    let script = pipeline
        .replace("{archive}", &archive.to_string_lossy())
        .replace("{dest}", &dest.to_string_lossy());
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    let e = t.elapsed();
    assert!(st.success(), "{script} failed");
    e
}

fn ours(archive: &Path, dest: &Path) -> Duration {
    let t = Instant::now();
    let f = std::fs::File::open(archive).unwrap();
    unpack(f, dest, &UnpackOptions::default()).unwrap();
    t.elapsed()
}

fn main() {
    let mut runs = 5;
    let mut dir = PathBuf::from("target/unpack-bench");
    let mut from = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--dir" => dir = PathBuf::from(args.next().expect("--dir DIR")),
            "--tar" => from = Some(PathBuf::from(args.next().expect("--tar FILE"))),
            other => panic!("unknown argument {other}; use --runs N --dir DIR [--tar FILE]"),
        }
    }
    for tool in ["gzip", "zstd", "tar"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} is needed for the comparison: apt-get install {tool}"
        );
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tar = match &from {
        Some(path) => std::fs::read(path).expect("read --tar FILE"),
        None => generate_tar(),
    };
    let raw_mb = tar.len() as f64 / 1e6;
    let gz_path = dir.join("rootfs.tar.gz");
    let members_path = dir.join("rootfs.members.tar.gz");
    let zst_path = dir.join("rootfs.tar.zst");
    let frames_path = dir.join("rootfs.frames.tar.zst");
    let tar_path = dir.join("rootfs.tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(&gz_path, &gz).unwrap();
    let mut members = gzip_members::writer(Vec::new(), flate2::Compression::new(6)).unwrap();
    members.write_all(&tar).unwrap();
    std::fs::write(&members_path, members.finish().unwrap()).unwrap();
    std::fs::write(&zst_path, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
    let mut frames = zstd_frames::writer(Vec::new(), 3).unwrap();
    frames.write_all(&tar).unwrap();
    std::fs::write(&frames_path, frames.finish().unwrap()).unwrap();
    std::fs::write(&tar_path, &tar).unwrap();
    let entries = tar::Archive::new(&tar[..]).entries().unwrap().count();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / 1e6;
    println!(
        "archive: {raw_mb:.0} MB unpacked, {entries} entries; gzip {:.0} MB (in members {:.0} MB), \
         zstd {:.0} MB (in frames {:.0} MB); {runs} runs each, interleaved",
        gz.len() as f64 / 1e6,
        size(&members_path),
        size(&zst_path),
        size(&frames_path)
    );
    drop(tar);

    let dest = dir.join("out");
    let pipe = |cmd: &'static str, archive: PathBuf| -> Box<dyn Fn() -> Duration + '_> {
        let dest = &dest;
        Box::new(move || shell(cmd, &archive, dest))
    };
    let ours_on = |archive: PathBuf| -> Box<dyn Fn() -> Duration + '_> {
        let dest = &dest;
        Box::new(move || ours(&archive, dest))
    };
    // (name, the contender its ratio is against, run)
    type Contender<'a> = (&'a str, usize, Box<dyn Fn() -> Duration + 'a>);
    let contenders: Vec<Contender> = vec![
        (
            "gzip -dc | tar -x",
            0,
            pipe(
                "gzip -dc {archive} | tar -x -C {dest} && sync -f {dest}",
                gz_path.clone(),
            ),
        ),
        (
            "droot-fleet unpack (tar.gz, one stream)",
            0,
            ours_on(gz_path.clone()),
        ),
        (
            "droot-fleet unpack (tar.gz, members: publish's layout)",
            0,
            ours_on(members_path.clone()),
        ),
        (
            "zstd -dc | tar -x",
            3,
            pipe(
                "zstd -qdc {archive} | tar -x -C {dest} && sync -f {dest}",
                zst_path.clone(),
            ),
        ),
        (
            "droot-fleet unpack (tar.zst, one frame)",
            3,
            ours_on(zst_path.clone()),
        ),
        (
            "droot-fleet unpack (tar.zst, frames: publish's layout)",
            3,
            ours_on(frames_path.clone()),
        ),
        (
            "tar -x of the raw tar (the floor)",
            6,
            pipe(
                "tar -x -f {archive} -C {dest} && sync -f {dest}",
                tar_path.clone(),
            ),
        ),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    for _ in 0..runs {
        for (i, (_, _, run)) in contenders.iter().enumerate() {
            fresh(&dest);
            times[i].push(run());
        }
    }
    fresh(&dest);
    let secs: Vec<f64> = (times.into_iter())
        .map(|t| median(t).as_secs_f64())
        .collect();
    println!(
        "\n| contender | median s | median MB/s | speed vs. its tar pipeline | time vs. the floor |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, base, _)) in contenders.iter().enumerate() {
        println!(
            "| {name} | {:.2} | {:.0} | {:.2}x | {:.2}x |",
            secs[i],
            raw_mb / secs[i],
            secs[*base] / secs[i],
            secs[i] / secs[6]
        );
    }
}
