//! `export`: image (engine or archive) to a flat rootfs tar on stdout or `-o`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::export::{
    self, Compression, DEFAULT_MAX_BYTES, ExportError, ExportSummary, OutputOptions, Source,
};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Image name or id in the Docker engine (DOCKER_HOST honoured).
    #[arg(
        required_unless_present = "from_archive",
        conflicts_with = "from_archive"
    )]
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
    /// Refuse an image whose files add up to more than this many bytes (sparse files at
    /// their full size, as the output holds them whole); default 8 GiB, what `deploy`
    /// accepts by default.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

pub fn execute(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let source = match (&args.image, &args.from_archive) {
        (_, Some(path)) => Source::Archive {
            path: path.clone(),
            image_ref: args.image_ref.clone(),
        },
        (Some(image), None) => Source::Engine {
            image: image.clone(),
        },
        (None, None) => anyhow::bail!("give an IMAGE or --from-archive FILE"),
    };
    let compression = match (args.gzip, args.zstd) {
        (true, _) => Compression::Gzip,
        (_, true) => Compression::Zstd,
        _ => Compression::None,
    };
    let output = OutputOptions {
        compression,
        max_bytes: args.max_bytes,
    };
    let result = match args.output.as_deref() {
        None => to_stdout(&source, output),
        Some(p) if p.as_os_str() == "-" => to_stdout(&source, output),
        Some(p) => to_file(&source, output, &super::absolute(p)?),
    };
    match result {
        Ok(summary) => {
            tracing::info!(image = %summary.image, entries = summary.entries, "export done");
            if summary.skipped_devices > 0 {
                eprintln!(
                    "export: left out {} device nodes/FIFOs under /dev/ (run gives the jail its own /dev)",
                    summary.skipped_devices
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => match err.downcast_ref::<ExportError>() {
            // Exit like a process killed by that signal would report in a shell.
            Some(ExportError::Interrupted(signal)) => {
                eprintln!("droot-fleet: error: {err:#}");
                Ok(ExitCode::from(if *signal == "SIGINT" { 130 } else { 143 }))
            }
            Some(ExportError::TooLarge { .. }) => {
                Err(err.context("over the byte limit (raise it with --max-bytes)"))
            }
            _ => Err(err),
        },
    }
}

fn to_stdout(source: &Source, output: OutputOptions) -> anyhow::Result<ExportSummary> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        anyhow::bail!("refusing to write a tar to a terminal: use -o FILE or redirect stdout");
    }
    // An owned descriptor, so a blocked writer thread never holds the stdout lock.
    let fd = stdout
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stdout")?;
    let out = BufWriter::with_capacity(256 << 10, File::from(fd));
    let (summary, _) = export::export(source, out, output)?;
    Ok(summary)
}

/// Writes beside `path` under a temporary name and renames on success, so `path` is
/// either the complete new tar or untouched.
fn to_file(source: &Source, output: OutputOptions, path: &Path) -> anyhow::Result<ExportSummary> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .with_context(|| format!("-o {} names no file", path.display()))?;
    let mut partial = Partial {
        path: dir.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        )),
        renamed: false,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&partial.path)
        .with_context(|| {
            format!(
                "creating {} (is the directory writable?)",
                partial.path.display()
            )
        })?;
    let out = BufWriter::with_capacity(256 << 10, file);
    let (summary, out) = export::export(source, out, output)?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the output")?;
    file.sync_all().context("syncing the output to disk")?;
    std::fs::rename(&partial.path, path)
        .with_context(|| format!("renaming {} to {}", partial.path.display(), path.display()))?;
    partial.renamed = true;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(summary)
}

/// A temporary output file, removed unless the export succeeded and renamed it.
struct Partial {
    path: PathBuf,
    renamed: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
