//! The mount table, read from `/proc/self/mountinfo` as bytes (a mount point need not be UTF-8).
//!
//! `umount`, `rm` and rsync-mode deploys must know which paths below a root are mountpoints
//! (a running jail's /proc, /sys, /dev and bind mounts) so they never delete or descend into
//! them. "Below" respects path boundaries: `/var/containers/app2` is not below
//! `/var/containers/app`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// One line of mountinfo, reduced to what droot-fleet needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    /// `major:minor` of the filesystem.
    pub device: String,
    /// The directory of the filesystem that is the root of this mount (`/` unless a bind).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,relatime`).
    pub options: String,
    pub fs_type: String,
}

impl MountEntry {
    /// Whether the per-mount options include `opt` (e.g. `nosuid`).
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.split(',').any(|o| o == opt)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountInfoError {
    #[error("cannot read /proc/self/mountinfo (is /proc mounted?)")]
    Read(#[source] std::io::Error),
    #[error("malformed mountinfo line {line}: {text:?}")]
    Malformed { line: usize, text: String },
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
/// The result is raw bytes: a mount point need not be UTF-8.
fn unescape(field: &[u8]) -> Vec<u8> {
    let b = field;
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4);
        if b[i] == b'\\' {
            let digits = oct.filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            let value = digits.map(|d| d.iter().fold(0u16, |v, c| v * 8 + u16::from(c - b'0')));
            if let Some(v) = value.and_then(|v| u8::try_from(v).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn number(field: &[u8]) -> Option<u64> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Parses the bytes of a mountinfo file. Mount points are taken as bytes (the kernel writes
/// whatever the path is, octal-escaping only space, tab, newline and backslash), so a
/// non-UTF-8 mount point anywhere on the host never makes the table unreadable.
pub fn parse(text: &[u8]) -> Result<Vec<MountEntry>, MountInfoError> {
    let mut out = Vec::new();
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let malformed = || MountInfoError::Malformed {
            line: n + 1,
            text: String::from_utf8_lossy(line).into_owned(),
        };
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == b"-")
            .ok_or_else(malformed)?;
        if fields.len() < 5 || sep < 6 || fields.len() < sep + 2 {
            return Err(malformed());
        }
        out.push(MountEntry {
            id: number(fields[0]).ok_or_else(malformed)?,
            parent: number(fields[1]).ok_or_else(malformed)?,
            device: String::from_utf8_lossy(fields[2]).into_owned(),
            root: PathBuf::from(OsString::from_vec(unescape(fields[3]))),
            mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
            options: String::from_utf8_lossy(fields[5]).into_owned(),
            fs_type: String::from_utf8_lossy(fields[sep + 1]).into_owned(),
        });
    }
    Ok(out)
}

/// Reads this process's mount table.
pub fn read() -> Result<Vec<MountEntry>, MountInfoError> {
    let text = std::fs::read("/proc/self/mountinfo").map_err(MountInfoError::Read)?;
    parse(&text)
}

/// Whether `path` is `root` or lies below it, comparing whole components.
pub fn is_at_or_below(path: &Path, root: &Path) -> bool {
    let mut p = path.components().filter(|c| *c != Component::CurDir);
    for rc in root.components().filter(|c| *c != Component::CurDir) {
        if p.next() != Some(rc) {
            return false;
        }
    }
    true
}

/// Mountpoints at or below `root`, deepest first (children before parents, later mounts
/// stacked on the same point before earlier ones), each listed once per mount.
pub fn mounts_at_or_below(entries: &[MountEntry], root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(usize, usize, &Path)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| is_at_or_below(&e.mount_point, root))
        .map(|(i, e)| {
            (
                e.mount_point.components().count(),
                i,
                e.mount_point.as_path(),
            )
        })
        .collect();
    // Deepest first; for equal depth, the later line (mounted on top) first.
    found.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    found.into_iter().map(|(_, _, p)| p.to_path_buf()).collect()
}

/// Whether `e` is a bind mount of a directory onto itself: mounted where its own directory
/// lies in the mount below it (same filesystem, same directory), as the release store's
/// `nosuid,nodev` mount is (see `release::protect`).
pub fn is_self_bind(entries: &[MountEntry], e: &MountEntry) -> bool {
    let Some(parent) = entries.iter().find(|p| p.id == e.parent && p.id != e.id) else {
        return false;
    };
    let Ok(below) = e.mount_point.strip_prefix(&parent.mount_point) else {
        return false;
    };
    parent.device == e.device && parent.root.join(below) == e.root
}

/// Whether the topmost mount at `path` is the release store's own mount: a bind of `path`
/// onto itself, `nosuid` and `nodev`. `umount` leaves it; `rm` takes it away with the rest.
pub fn is_store_mount(entries: &[MountEntry], path: &Path) -> bool {
    entries
        .iter()
        .rev()
        .find(|e| e.mount_point == path)
        .is_some_and(|e| {
            e.has_option("nosuid") && e.has_option("nodev") && is_self_bind(entries, e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:5 / /var/containers/app/proc rw master:2 - proc proc rw
31 22 0:6 / /var/containers/app/dev rw - tmpfs tmpfs rw,size=64k
32 31 0:7 / /var/containers/app/dev/pts rw - devpts devpts rw
33 22 0:8 / /var/containers/app2/proc rw - proc proc rw
34 22 8:1 /data /var/containers/app/mnt/my\\040data rw - ext4 /dev/vda rw
35 22 0:9 / /var/containers/app rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(m.len(), 7);
        assert_eq!(m[1].mount_point, Path::new("/var/containers/app/proc"));
        assert_eq!(m[1].fs_type, "proc");
        assert_eq!(m[3].parent, 31);
        assert_eq!(
            m[5].mount_point,
            Path::new("/var/containers/app/mnt/my data")
        );
    }

    #[test]
    fn a_bind_of_a_directory_onto_itself_is_recognised() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 8:2 / /var rw,relatime - ext4 /dev/vdb rw
40 23 8:2 /containers/app /var/containers/app rw,nosuid,nodev - ext4 /dev/vdb rw
41 23 8:2 /elsewhere /var/containers/other rw,nosuid,nodev - ext4 /dev/vdb rw
42 22 0:9 / /srv/app rw,nosuid,nodev - tmpfs tmpfs rw
";
        let m = parse(text.as_bytes()).unwrap();
        assert!(is_self_bind(&m, &m[2]));
        assert!(m[2].has_option("nosuid") && m[2].has_option("nodev"));
        assert!(!m[2].has_option("nosu"));
        assert!(!is_self_bind(&m, &m[3]), "a bind of another directory");
        assert!(!is_self_bind(&m, &m[4]), "another filesystem");
        assert!(!is_self_bind(&m, &m[0]), "the root has no parent here");
        assert!(is_store_mount(&m, Path::new("/var/containers/app")));
        assert!(!is_store_mount(&m, Path::new("/var/containers/other")));
        assert!(!is_store_mount(&m, Path::new("/var")));
    }

    #[test]
    fn non_utf8_mount_points_are_kept_as_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let text = b"40 22 0:9 / /srv/caf\xe9\\040x rw - tmpfs tmpfs rw\n";
        let m = parse(text).unwrap();
        assert_eq!(m[0].mount_point.as_os_str().as_bytes(), b"/srv/caf\xe9 x");
        assert_eq!(m[0].fs_type, "tmpfs");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(matches!(
            parse(b"1 2 3\n"),
            Err(MountInfoError::Malformed { line: 1, .. })
        ));
        assert!(parse(b"x 1 0:1 / /a rw - tmpfs t rw\n").is_err());
    }

    #[test]
    fn below_respects_component_boundaries() {
        let app = Path::new("/var/containers/app");
        assert!(is_at_or_below(Path::new("/var/containers/app"), app));
        assert!(is_at_or_below(Path::new("/var/containers/app/proc"), app));
        assert!(!is_at_or_below(Path::new("/var/containers/app2/proc"), app));
        assert!(!is_at_or_below(Path::new("/var/containers"), app));
        assert!(is_at_or_below(Path::new("/anything"), Path::new("/")));
    }

    #[test]
    fn deepest_first_and_excludes_siblings() {
        let m = parse(SAMPLE.as_bytes()).unwrap();
        let got = mounts_at_or_below(&m, Path::new("/var/containers/app"));
        let got: Vec<_> = got.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                "/var/containers/app/mnt/my data",
                "/var/containers/app/dev/pts",
                "/var/containers/app/dev",
                "/var/containers/app/proc",
                "/var/containers/app",
            ]
        );
    }
}
