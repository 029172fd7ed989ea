//! Capabilities and `NO_NEW_PRIVS`.
//!
//! The bounding set is cut to droot's list ([`KEEP`]) while we still hold `CAP_SETPCAP`, i.e.
//! before `setuid`. Inheritable and ambient sets are cleared, so nothing is handed to the
//! command beyond what exec grants from the bounding set (all of [`KEEP`] for uid 0, nothing
//! for other users). `PR_SET_NO_NEW_PRIVS` stops setuid binaries and file capabilities from
//! raising privileges again. `--no-dropcaps` skips all of it.

use caps::{CapSet, Capability};

use super::JailError;

/// Capabilities left in the bounding set (droot's list).
pub const KEEP: [Capability; 7] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_NET_BIND_SERVICE,
];

/// The bit mask of [`KEEP`], as `CapBnd` in `/proc/PID/status` shows it.
pub fn keep_mask() -> u64 {
    KEEP.iter().fold(0, |m, c| m | c.bitmask())
}

fn caps_err(op: &str, e: impl std::fmt::Display) -> JailError {
    JailError::Capabilities {
        op: op.to_string(),
        reason: e.to_string(),
    }
}

/// Cuts the bounding set to [`KEEP`] and clears the inheritable and ambient sets.
pub fn restrict() -> Result<(), JailError> {
    let bounding =
        caps::read(None, CapSet::Bounding).map_err(|e| caps_err("read bounding set", e))?;
    for cap in bounding {
        if !KEEP.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| caps_err(&format!("drop {cap} from bounding set"), e))?;
        }
    }
    caps::clear(None, CapSet::Inheritable).map_err(|e| caps_err("clear inheritable set", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("clear ambient set", e))?;
    Ok(())
}

/// Sets `PR_SET_NO_NEW_PRIVS`.
pub fn no_new_privs() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(caps_err(
            "PR_SET_NO_NEW_PRIVS",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_mask_matches_droot_list() {
        // CHOWN 0, DAC_OVERRIDE 1, DAC_READ_SEARCH 2, FOWNER 3, SETGID 6, SETUID 7, NET_BIND_SERVICE 10
        assert_eq!(keep_mask(), 0x4cf);
    }
}
