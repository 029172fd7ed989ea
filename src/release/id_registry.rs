//! The host's registry of user namespace ranges: which store holds which [`IdRange`].
//!
//! Two apps whose jails shared a range would be one user to the kernel: each jail's root could
//! signal, trace or read the other's processes and files wherever they meet (System V IPC,
//! abstract sockets, a shared bind). So each range belongs to one store, host-wide, whoever
//! claims it (the agent, `deploy --userns`, several agents on one host):
//! - `REGISTRY/<base>` (under [`REGISTRY_DIR`]) names the record file of the store that holds
//!   the range (`DIR/.droot-fleet/userns.json`). It is created with `O_EXCL` under an
//!   `flock` on the registry directory, so two claims never both win.
//! - An entry whose record file is gone, or records another base, is stale (its store was
//!   removed by hand): it is reclaimed. `rm` of a store removes its entry.
//! - A range holding any id the host already uses is refused or skipped: uids of
//!   `/etc/passwd`, gids of `/etc/group`, the subordinate ranges of `/etc/subuid` and
//!   `/etc/subgid` (rootless containers, Docker's `userns-remap`).
//!
//! Ranges picked automatically come from [`AUTO_FIRST`]..=[`AUTO_LAST`]: inside the band
//! systemd documents for container uids (524288-1879048191), and below 2^31, where some
//! programs still take uids for signed numbers.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::userns::{UsernsError, io_err, read_record};
use crate::id_range::IdRange;

/// Where ranges are registered on this host.
pub const REGISTRY_DIR: &str = "/var/lib/droot-fleet/userns";
/// The first base picked automatically (1073741824).
pub const AUTO_FIRST: u32 = 0x4000_0000;
/// The last base picked automatically (1879048192 - 65536).
pub const AUTO_LAST: u32 = 0x6FFF_0000;

/// The locked registry; the lock goes with it.
pub struct Registry {
    dir: PathBuf,
    _lock: File,
}

impl Registry {
    /// Opens (creating it 0700) and locks the registry at `dir`.
    pub fn lock(dir: &Path) -> Result<Registry, UsernsError> {
        crate::dirs::create_dir_all_mode(dir, 0o755, 0o700)
            .map_err(io_err("cannot create the user namespace registry", dir))?;
        let file = File::open(dir).map_err(io_err("cannot open", dir))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("cannot lock", dir)(io::Error::last_os_error()));
        }
        Ok(Registry {
            dir: dir.to_path_buf(),
            _lock: file,
        })
    }

    fn slot(&self, range: IdRange) -> PathBuf {
        self.dir.join(range.base().to_string())
    }

    /// The record file the entry of `range` names, if it is live (see the module doc).
    fn holder(&self, range: IdRange) -> Result<Option<PathBuf>, UsernsError> {
        let slot = self.slot(range);
        let text = match std::fs::read_to_string(&slot) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &slot)(e)),
        };
        let record = PathBuf::from(text.trim_end_matches('\n'));
        let live = matches!(read_record(&record), Ok(Some(r)) if r == range);
        Ok(live.then_some(record))
    }

    /// Claims `range` for the store whose record file is `record` (already its holder: no
    /// change). Refused when another live store holds it, or the host uses one of its ids.
    pub fn claim(&self, range: IdRange, record: &Path, host: &HostIds) -> Result<(), UsernsError> {
        // Checked on every claim: a host user added into a held range since would otherwise
        // be the jail's user N.
        if let Some(what) = host.conflict(range) {
            return Err(UsernsError::HostIds {
                range: range.to_string(),
                what,
            });
        }
        match self.holder(range)? {
            Some(h) if h == record => return Ok(()),
            Some(h) => {
                return Err(UsernsError::Taken {
                    range: range.to_string(),
                    holder: h,
                    entry: self.slot(range),
                });
            }
            None => {}
        }
        let slot = self.slot(range);
        let bytes = format!("{}\n", record.display());
        crate::atomic_file::write_atomic(&slot, bytes.as_bytes(), 0o600)
            .map_err(io_err("cannot write", &slot))
    }

    /// Picks the first free range of the automatic band for `record`, and claims it.
    pub fn allocate(&self, record: &Path, host: &HostIds) -> Result<IdRange, UsernsError> {
        let mut base = AUTO_FIRST;
        while base <= AUTO_LAST {
            let range = IdRange::new(u64::from(base)).expect("aligned, in bounds");
            base += IdRange::SIZE;
            if host.conflict(range).is_some() {
                continue;
            }
            match self.holder(range)? {
                Some(h) if h != record => continue,
                _ => {}
            }
            self.claim(range, record, host)?;
            return Ok(range);
        }
        Err(UsernsError::Exhausted)
    }

    /// Removes the entry of `range` if `record` holds it (its store is being removed).
    pub fn forget(&self, range: IdRange, record: &Path) -> Result<(), UsernsError> {
        let slot = self.slot(range);
        let named = std::fs::read_to_string(&slot).unwrap_or_default();
        if Path::new(named.trim_end_matches('\n')) == record {
            std::fs::remove_file(&slot).map_err(io_err("cannot remove", &slot))?;
        }
        Ok(())
    }
}

/// Ids the host already uses: (where they come from, first id, count).
#[derive(Debug, Clone, Default)]
pub struct HostIds(pub Vec<(String, u64, u64)>);

impl HostIds {
    /// Reads `/etc/passwd`, `/etc/group`, `/etc/subuid` and `/etc/subgid` (missing files are
    /// empty).
    pub fn read() -> HostIds {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut ids = Vec::new();
        for (file, field) in [("/etc/passwd", 2), ("/etc/group", 2)] {
            for line in read(file).lines() {
                let f: Vec<&str> = line.split(':').collect();
                if let Some(id) = f.get(field).and_then(|s| s.parse::<u64>().ok()) {
                    ids.push((format!("{} of {file}", f[0]), id, 1));
                }
            }
        }
        for file in ["/etc/subuid", "/etc/subgid"] {
            for line in read(file).lines() {
                let f: Vec<&str> = line.split(':').collect();
                let n = |i: usize| f.get(i).and_then(|s| s.trim().parse::<u64>().ok());
                if let (Some(start), Some(count)) = (n(1), n(2)) {
                    ids.push((format!("{} of {file}", f[0]), start, count));
                }
            }
        }
        HostIds(ids)
    }

    /// What in the host's ids overlaps `range`, if anything.
    pub fn conflict(&self, range: IdRange) -> Option<String> {
        self.0
            .iter()
            .find(|(_, start, count)| range.overlaps(*start, *count))
            .map(|(what, start, count)| format!("{what} ({start}, {count} id(s))"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, name: &str, range: Option<IdRange>) -> PathBuf {
        let record = dir.join(name).join("userns.json");
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        if let Some(r) = range {
            super::super::userns::write_record(&record, r).unwrap();
        }
        record
    }

    #[test]
    fn one_range_one_store_and_stale_entries_are_reclaimed() {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::lock(&t.path().join("reg")).unwrap();
        let none = HostIds::default();
        let a = store(t.path(), "a", None);
        let first = reg.allocate(&a, &none).unwrap();
        assert_eq!(first.base(), AUTO_FIRST);
        super::super::userns::write_record(&a, first).unwrap();
        assert_eq!(reg.allocate(&a, &none).unwrap(), first, "idempotent");
        let b = store(t.path(), "b", None);
        let second = reg.allocate(&b, &none).unwrap();
        assert_eq!(second.base(), AUTO_FIRST + IdRange::SIZE);
        let e = reg.claim(first, &b, &none).unwrap_err();
        assert!(matches!(e, UsernsError::Taken { .. }), "{e}");
        assert!(e.to_string().contains(&a.display().to_string()), "{e}");
        // The store of `a` is removed by hand: its entry is stale and can be claimed.
        std::fs::remove_file(&a).unwrap();
        reg.claim(first, &b, &none).unwrap();
        reg.forget(first, &a).unwrap();
        assert!(
            reg.slot(first).exists(),
            "forget only removes the caller's entry"
        );
        reg.forget(first, &b).unwrap();
        assert!(!reg.slot(first).exists());
    }

    #[test]
    fn host_ids_are_never_given_out() {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::lock(&t.path().join("reg")).unwrap();
        let host = HostIds(vec![
            (
                "rootless of /etc/subuid".into(),
                u64::from(AUTO_FIRST) + 10,
                65536,
            ),
            (
                "big of /etc/passwd".into(),
                u64::from(AUTO_FIRST) + 70000,
                1,
            ),
        ]);
        let a = store(t.path(), "a", None);
        let r = reg.allocate(&a, &host).unwrap();
        assert_eq!(r.base(), AUTO_FIRST + 2 * IdRange::SIZE);
        let explicit = IdRange::new(u64::from(AUTO_FIRST)).unwrap();
        let e = reg.claim(explicit, &a, &host).unwrap_err();
        assert!(e.to_string().contains("rootless of /etc/subuid"), "{e}");
    }
}
