//! `deploy`: flags to [`crate::release`] calls.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `releases/<version>/` plus an atomically switched `current` symlink.
    Symlink,
    /// Update the root in place like `rsync -a --delete`, sparing mountpoints.
    Rsync,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The application root (e.g. /var/containers/app).
    #[arg(long)]
    pub root: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Symlink)]
    pub mode: Mode,
    /// How many releases to keep; the current one and the one before it are never pruned.
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
    /// Release name; default a UTC timestamp like 20261129081500.
    #[arg(long)]
    pub version: Option<String>,
    /// Keep uid/gid and setuid/setgid bits from the archive.
    #[arg(long)]
    pub same_owner: bool,
    /// Allow device nodes and FIFOs in the archive.
    #[arg(long)]
    pub allow_devices: bool,
    /// Refuse archives that unpack to more than this many bytes.
    #[arg(long, default_value_t = 64 << 30)]
    pub max_bytes: u64,
    /// Refuse archives with more than this many entries.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_entries: u64,
    /// Switch `current` back to the previous release, or to VERSION.
    #[arg(long, value_name = "VERSION", num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["list", "input"])]
    pub rollback: Option<String>,
    /// List releases, marking the current one.
    #[arg(long, conflicts_with = "input")]
    pub list: bool,
    /// Archive file, or `-` (default) for stdin.
    pub input: Option<PathBuf>,
}

pub fn execute(_args: DeployArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("deploy: not implemented yet")
}
