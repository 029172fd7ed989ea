//! `export`: image (engine or archive) to a flat rootfs tar on stdout or `-o`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Image name or id in the Docker engine (DOCKER_HOST honoured).
    #[arg(required_unless_present = "from_archive", conflicts_with = "from_archive")]
    pub image: Option<String>,
    /// Flatten a `docker save` or OCI image-layout tarball instead; no engine needed.
    #[arg(long, value_name = "FILE")]
    pub from_archive: Option<PathBuf>,
    /// With --from-archive: which image in a multi-image archive (repo:tag); default the only one.
    #[arg(long, requires = "from_archive")]
    pub image_ref: Option<String>,
    /// Output file; `-` or absent for stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Compress with gzip.
    #[arg(long, conflicts_with = "zstd")]
    pub gzip: bool,
    /// Compress with zstd.
    #[arg(long)]
    pub zstd: bool,
}

pub fn execute(_args: ExportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("export: not implemented yet")
}
