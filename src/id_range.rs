//! The host uid/gid range one app's jail maps to, when it runs in a user namespace.
//!
//! Root in the jail (uid and gid 0) is host id `base`, the jail's id N is host `base + N`,
//! for N below [`IdRange::SIZE`] (65536, every 16-bit id an image may use). The same range
//! serves uids and gids. A base is a multiple of 65536 and at least 65536, so a range never
//! holds the host's own system and regular users (0-65535), and two ranges either are the
//! same or do not overlap; the last valid base is `0xFFFE_0000` (the id `0xFFFF_FFFF` is
//! `(uid_t) -1`, which no file may have).
//!
//! A leaf module: the jail, the unpacker and the release store share it.

use std::fmt;

/// 65536 host ids starting at `base`, for a jail's 0..65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdRange {
    base: u32,
}

/// Why a base is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdRangeError {
    #[error(
        "user namespace base {0} is not usable: it must be a multiple of 65536 between 65536 \
         and 4294836224 (0xFFFE0000), e.g. 1073741824"
    )]
    Base(u64),
    #[error("user namespace base {0:?} is not a number")]
    NotANumber(String),
}

impl IdRange {
    /// How many ids a range holds.
    pub const SIZE: u32 = 65536;
    /// The highest valid base.
    pub const LAST_BASE: u32 = 0xFFFE_0000;

    /// The range at `base`, checked.
    pub fn new(base: u64) -> Result<IdRange, IdRangeError> {
        let ok = base >= u64::from(Self::SIZE)
            && base <= u64::from(Self::LAST_BASE)
            && base.is_multiple_of(u64::from(Self::SIZE));
        if !ok {
            return Err(IdRangeError::Base(base));
        }
        Ok(IdRange { base: base as u32 })
    }

    /// Parses a decimal base.
    pub fn parse(text: &str) -> Result<IdRange, IdRangeError> {
        let n: u64 = text
            .trim()
            .parse()
            .map_err(|_| IdRangeError::NotANumber(text.to_string()))?;
        Self::new(n)
    }

    /// The host id of the jail's root.
    pub fn base(self) -> u32 {
        self.base
    }

    /// The last host id of the range.
    pub fn last(self) -> u32 {
        self.base + (Self::SIZE - 1)
    }

    /// The host id of the jail's id `id`; `None` when `id` is beyond the range.
    pub fn to_host(self, id: u32) -> Option<u32> {
        (id < Self::SIZE).then(|| self.base + id)
    }

    /// The jail's id of host id `host`; `None` when `host` is outside the range.
    pub fn to_jail(self, host: u32) -> Option<u32> {
        self.contains(host).then(|| host - self.base)
    }

    /// Whether the host id `host` is in the range.
    pub fn contains(self, host: u32) -> bool {
        host >= self.base && host <= self.last()
    }

    /// Whether `[start, start + count)` shares an id with this range.
    pub fn overlaps(self, start: u64, count: u64) -> bool {
        let end = start.saturating_add(count);
        count > 0 && start <= u64::from(self.last()) && end > u64::from(self.base)
    }

    /// The `uid_map`/`gid_map` line: `0 BASE 65536`.
    pub fn map_line(self) -> String {
        format!("0 {} {}\n", self.base, Self::SIZE)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.base, self.last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_aligned_and_above_the_host_users() {
        for ok in [65536u64, 0x4000_0000, 0xFFFE_0000] {
            assert_eq!(IdRange::new(ok).unwrap().base() as u64, ok);
        }
        for bad in [0u64, 1000, 65535, 65537, 100_000, 0xFFFF_0000, 1 << 32] {
            assert_eq!(IdRange::new(bad), Err(IdRangeError::Base(bad)), "{bad}");
        }
        assert!(IdRange::parse("x").is_err());
        assert_eq!(IdRange::parse(" 131072 ").unwrap().base(), 131072);
    }

    #[test]
    fn ids_map_both_ways_within_the_range_only() {
        let r = IdRange::new(0x4000_0000).unwrap();
        assert_eq!(r.to_host(0), Some(0x4000_0000));
        assert_eq!(r.to_host(65535), Some(0x4000_FFFF));
        assert_eq!(r.to_host(65536), None);
        assert_eq!(r.to_jail(0x4000_03E8), Some(1000));
        assert_eq!(r.to_jail(0x3FFF_FFFF), None);
        assert_eq!(r.to_jail(0x4001_0000), None);
        assert_eq!(r.map_line(), "0 1073741824 65536\n");
        assert_eq!(r.to_string(), "1073741824-1073807359");
    }

    #[test]
    fn overlaps_are_found_at_both_edges() {
        let r = IdRange::new(131072).unwrap();
        assert!(r.overlaps(131072, 1));
        assert!(r.overlaps(100_000, 65536), "a typical /etc/subuid entry");
        assert!(r.overlaps(196607, 10));
        assert!(!r.overlaps(196608, 10));
        assert!(!r.overlaps(0, 131072));
        assert!(!r.overlaps(131072, 0));
    }
}
