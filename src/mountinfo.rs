//! The mount table, read from `/proc/self/mountinfo`.
//!
//! `umount`, `rm` and rsync-mode deploys must know which paths below a root are mountpoints
//! (a running jail's /proc, /sys, /dev and bind mounts) so they never delete or descend into
//! them. "Below" respects path boundaries: `/var/containers/app2` is not below
//! `/var/containers/app`.

use std::path::{Component, Path, PathBuf};

/// One line of mountinfo, reduced to what droot-fleet needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub mount_point: PathBuf,
    pub fs_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MountInfoError {
    #[error("cannot read /proc/self/mountinfo (is /proc mounted?)")]
    Read(#[source] std::io::Error),
    #[error("malformed mountinfo line {line}: {text:?}")]
    Malformed { line: usize, text: String },
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
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
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of a mountinfo file.
pub fn parse(text: &str) -> Result<Vec<MountEntry>, MountInfoError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || MountInfoError::Malformed {
            line: n + 1,
            text: line.to_string(),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(malformed)?;
        if fields.len() < 5 || sep < 6 || fields.len() < sep + 2 {
            return Err(malformed());
        }
        out.push(MountEntry {
            id: fields[0].parse().map_err(|_| malformed())?,
            parent: fields[1].parse().map_err(|_| malformed())?,
            mount_point: PathBuf::from(unescape(fields[4])),
            fs_type: fields[sep + 1].to_string(),
        });
    }
    Ok(out)
}

/// Reads this process's mount table.
pub fn read() -> Result<Vec<MountEntry>, MountInfoError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountInfoError::Read)?;
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
        let m = parse(SAMPLE).unwrap();
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
    fn rejects_malformed_lines() {
        assert!(matches!(
            parse("1 2 3\n"),
            Err(MountInfoError::Malformed { line: 1, .. })
        ));
        assert!(parse("x 1 0:1 / /a rw - tmpfs t rw\n").is_err());
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
        let m = parse(SAMPLE).unwrap();
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
