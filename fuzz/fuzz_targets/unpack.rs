//! The unpacker on arbitrary bytes (plain, gzip or zstd tar) into an empty directory next
//! to a directory it must never touch: whatever the archive says (`..`, absolute paths,
//! symlinks or hard links to the outside, by relative or absolute target), the outside keeps
//! its names, modes, times and contents. Seeds point at the outside by its fixed path,
//! `$TMPDIR/droot-fleet-fuzz-unpack/outside`.
//!
//! Run it with `-detect_leaks=0`: the unpacker's decompression thread is detached on purpose
//! (a stalled source must not hang the caller), and LeakSanitizer reports that thread's
//! exit bookkeeping when a run ends while it is finishing its last read.
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use droot_fleet::artifact::{UnpackOptions, unpack};
use libfuzzer_sys::fuzz_target;

/// The fixed base: `outside/` (with a file and a directory) and one destination per process.
static BASE: LazyLock<(PathBuf, Vec<String>)> = LazyLock::new(|| {
    let base = std::env::temp_dir().join("droot-fleet-fuzz-unpack");
    let outside = base.join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    std::fs::write(outside.join("sub/deep"), b"deep").unwrap();
    let before = snapshot(&base);
    (base, before)
});

/// The names in `base` but the destinations (whose coming and going changes its mtime),
/// then everything under `base/outside` (recursively, not following links) with its mode,
/// owner, times, size and (files) contents or (links) target.
fn snapshot(base: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("dest-"))
        .collect();
    out.sort();
    let mut stack = vec![base.join("outside")];
    while let Some(d) = stack.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        let what = if m.is_symlink() {
            format!("-> {:?}", std::fs::read_link(&d).unwrap())
        } else if m.is_file() {
            format!("{:?}", std::fs::read(&d).unwrap())
        } else {
            String::new()
        };
        out.push(format!(
            "{} {:o} {}:{} {}.{} {} {what}",
            d.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            m.len()
        ));
        if m.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (base, before) = &*BASE;
    let dest = base.join(format!("dest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir(&dest).unwrap();
    let opts = UnpackOptions {
        max_bytes: 4 << 20,
        max_entries: 1_000,
        ..UnpackOptions::default()
    };
    let _ = unpack(std::io::Cursor::new(data.to_vec()), &dest, &opts);
    assert_eq!(&snapshot(base), before, "the unpack changed the outside");
    std::fs::remove_dir_all(&dest).unwrap();
});
