//! Releases under an application root: deploy, switch, roll back, list, prune, rsync.
//!
//! Symlink mode (the default) follows Capistrano: each deploy unpacks into a fresh 0700
//! staging directory on the same filesystem, is made durable with `syncfs`, then renamed
//! into `releases/<version>`; `current` is switched with rename(2) (see [`switch`]).
//! Guarantees: `current` always resolves (the one exception, [`clear_current`], is the fleet
//! pipeline's after the only release failed its health check); a refused or failed deploy leaves `current`
//! untouched and no partial release behind; pruning never removes the current release or
//! its rollback target, removes releases whose activation failed first (they never count
//! towards `keep`, see [`history`]), and never follows a symlink out of the root.
//!
//! Rsync mode ([`rsync`]) updates the root in place instead, for roots that other tools
//! expect to be a plain directory.
//!
//! Either way the store gives other host users nothing: it is out of their reach and
//! mounted `nosuid,nodev` ([`protect`]). A store may also run its jails in a user namespace:
//! its releases are then owned by the namespace's unprivileged host range ([`userns`]).

pub mod history;
pub mod id_registry;
pub mod layout;
pub mod protect;
pub mod rsync;
pub mod shift;
pub mod switch;
mod symlink_mode;
pub mod userns;

use std::io;
use std::path::PathBuf;

pub use layout::{InvalidVersion, Layout};
pub use symlink_mode::{
    Deployed, ReleaseInfo, Staged, clear_current, deploy, deploy_verified, judge, list, prune,
    rollback, stage, switch_to,
};

use crate::artifact::{UnpackError, UnpackOptions};
use crate::teardown::TeardownError;

/// Why a [`deploy_verified`] check refused an unpacked tree.
pub type VerifyFailed = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    InvalidVersion(#[from] InvalidVersion),
    #[error("deploy refused, current is unchanged and no release was created")]
    Unpack(#[source] UnpackError),
    #[error("deploy refused before publishing, current is unchanged and no release was created")]
    Verify(#[source] VerifyFailed),
    #[error(
        "release {0} already exists; roll back to it with --rollback {0}, or pick another --version"
    )]
    Exists(String),
    #[error("no release named {0} (see --list)")]
    NoSuchRelease(String),
    #[error("nothing to roll back to: {0}")]
    NoPrevious(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Teardown(#[from] TeardownError),
    #[error(transparent)]
    Userns(#[from] userns::UsernsError),
}

/// `opts` for a deploy into the store of `layout`: shifted into its user namespace range
/// when it records one, whatever the caller asked.
pub(crate) fn store_unpack_options(
    layout: &Layout,
    opts: &UnpackOptions,
) -> Result<UnpackOptions, ReleaseError> {
    Ok(UnpackOptions {
        id_shift: userns::recorded(layout)?,
        ..opts.clone()
    })
}

impl ReleaseError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ReleaseError::Io { what, path, source }
    }
}

/// A tar holding one file, `marker`, whose text is `marker` (for unit tests of the store).
#[cfg(test)]
pub(crate) fn marker_tar(marker: &str) -> std::io::Cursor<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(marker.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "marker", marker.as_bytes()).unwrap();
    std::io::Cursor::new(b.into_inner().unwrap())
}
