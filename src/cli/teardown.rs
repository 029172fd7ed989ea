//! `umount` and `rm`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct RootArg {
    /// The root directory (e.g. /var/containers/app).
    #[arg(long)]
    pub root: PathBuf,
}

pub fn umount(args: RootArg) -> anyhow::Result<ExitCode> {
    let root = super::absolute(&args.root)?;
    let n = crate::teardown::umount_all(&root, crate::teardown::StoreMount::Keep)
        .with_context(|| format!("cannot unmount below {}", root.display()))?;
    tracing::info!(root = %root.display(), unmounted = n, "umount done");
    Ok(ExitCode::SUCCESS)
}

pub fn rm(args: RootArg) -> anyhow::Result<ExitCode> {
    let root = super::absolute(&args.root)?;
    // A store's user namespace range goes back to the host's registry with it.
    let claim = root
        .canonicalize()
        .ok()
        .and_then(|c| crate::release::userns::claim_of(&c));
    crate::teardown::remove_root(&root)
        .with_context(|| format!("cannot remove {}", root.display()))?;
    if let Some((record, range)) = claim {
        crate::release::userns::forget(&record, range)?;
    }
    Ok(ExitCode::SUCCESS)
}
