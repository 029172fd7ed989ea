//! The wall clock since the UNIX epoch, in the units the crate stores: gossip ticks, tag and
//! slot versions, deploy issue times, supervisor and release timestamps. A clock set before
//! 1970 reads as 0.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the epoch.
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whole seconds since the epoch.
pub fn secs() -> u64 {
    now().as_secs()
}

/// Milliseconds since the epoch.
pub fn millis() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}
