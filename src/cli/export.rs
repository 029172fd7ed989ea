//! `export`: image (engine or archive) to a flat rootfs tar on stdout or `-o`.

use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::export::{
    self, Compression, DEFAULT_MAX_BYTES, ExportError, ExportSummary, OutputOptions, Source,
};
use crate::publish::file::FileSink;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Image name or id in the Docker engine (DOCKER_HOST honoured).
    #[arg(
        required_unless_present_any = ["from_archive", "from_dir"],
        conflicts_with_all = ["from_archive", "from_dir"]
    )]
    pub image: Option<String>,
    /// Flatten a `docker save` or OCI image-layout tarball instead; no engine needed.
    #[arg(long, value_name = "FILE", conflicts_with = "from_dir")]
    pub from_archive: Option<PathBuf>,
    /// Write a rootfs directory as it is instead (symlinks kept, never followed).
    #[arg(long, value_name = "DIR")]
    pub from_dir: Option<PathBuf>,
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
    let source = match (&args.image, &args.from_archive, &args.from_dir) {
        (_, Some(path), _) => Source::Archive {
            path: path.clone(),
            image_ref: args.image_ref.clone(),
        },
        (_, _, Some(path)) => Source::Directory { path: path.clone() },
        (Some(image), None, None) => Source::Engine {
            image: image.clone(),
        },
        (None, None, None) => anyhow::bail!("give an IMAGE, --from-archive FILE or --from-dir DIR"),
    };
    let output = output_options(args.gzip, args.zstd, None, args.max_bytes)?;
    let result = match args.output.as_deref() {
        None => to_stdout(&source, output),
        Some(p) if p.as_os_str() == "-" => to_stdout(&source, output),
        Some(p) => to_file(&source, output, &super::absolute(p)?),
    };
    match result {
        Ok(summary) => {
            report(&summary);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => failed(err),
    }
}

/// The compression and byte limit from the flags; a level outside the codec's range, or
/// without a codec, is an error.
pub(super) fn output_options(
    gzip: bool,
    zstd: bool,
    level: Option<i32>,
    max_bytes: u64,
) -> anyhow::Result<OutputOptions> {
    let compression = match (gzip, zstd) {
        (true, _) => Compression::Gzip,
        (_, true) => Compression::Zstd,
        _ => Compression::None,
    };
    let range = match compression {
        Compression::Gzip => Some(0..=9),
        Compression::Zstd => Some(1..=19),
        Compression::None => None,
    };
    match (level, range) {
        (Some(l), None) => anyhow::bail!("--level {l} needs --gzip or --zstd"),
        (Some(l), Some(r)) if !r.contains(&l) => {
            anyhow::bail!("--level {l}: use {}..={}", r.start(), r.end())
        }
        _ => {}
    }
    Ok(OutputOptions {
        compression,
        level,
        max_bytes,
    })
}

/// Logs a finished export and tells about device nodes left out.
pub(super) fn report(summary: &ExportSummary) {
    tracing::info!(image = %summary.image, entries = summary.entries, "export done");
    if summary.skipped_devices > 0 {
        eprintln!(
            "export: left out {} device nodes/FIFOs under /dev/ (run gives the jail its own /dev)",
            summary.skipped_devices
        );
    }
}

/// The exit for a failed export: a signal's exit code when interrupted (after saying so),
/// else the error with a hint for the byte limit.
pub(super) fn failed(err: anyhow::Error) -> anyhow::Result<ExitCode> {
    let export_error = err.chain().find_map(|e| e.downcast_ref::<ExportError>());
    match export_error {
        // Exit like a process killed by that signal would report in a shell.
        Some(ExportError::Interrupted(signal)) => {
            eprintln!("droot-fleet: error: {err:#}");
            Ok(ExitCode::from(if *signal == "SIGINT" { 130 } else { 143 }))
        }
        Some(ExportError::TooLarge { .. }) => {
            Err(err.context("over the byte limit (raise it with --max-bytes)"))
        }
        _ => Err(err),
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
    anyhow::ensure!(
        path.file_name().is_some(),
        "-o {} names no file",
        path.display()
    );
    let sink = FileSink::create(path, true, false)?;
    let (summary, out) = export::export(source, sink.file_writer()?, output)?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the output")?;
    sink.finish(None, None)?;
    Ok(summary)
}
