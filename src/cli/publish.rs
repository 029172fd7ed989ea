//! `publish SOURCE URL`: export and upload in one pass, then print the pinned deploy line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Args;

use super::bar::Bar;
use super::deploy::FetchArgs;
use super::fleet::{Format, print_json};
use crate::export::{DEFAULT_MAX_BYTES, Source};
use crate::publish::{self, PublishError, PublishOptions, Published};

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// What to publish: a rootfs directory, a `docker save` or OCI archive file (a path
    /// that exists), else an image name or id in the Docker engine.
    pub source: String,
    /// Where: s3://BUCKET/KEY or file:///PATH; `{app}` and `{version}` are filled in from
    /// --app and --version (e.g. s3://artifacts/{app}/{version}.tar.zst).
    pub url: String,
    /// Compress with zstd.
    #[arg(long, conflicts_with = "gzip")]
    pub zstd: bool,
    /// Compress with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Compression level (gzip 0-9, zstd 1-19).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// The app: fills `{app}` and the printed deploy line.
    #[arg(long)]
    pub app: Option<String>,
    /// The release name: fills `{version}` and the printed deploy line.
    #[arg(long)]
    pub version: Option<String>,
    /// With an archive holding several images: which one (repo:tag).
    #[arg(long)]
    pub image_ref: Option<String>,
    /// Replace an artifact already published at URL (published versions are otherwise
    /// immutable).
    #[arg(long)]
    pub force: bool,
    /// Refuse an image whose files add up to more than this many bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// The result as `--format json` prints it.
#[derive(Debug, serde::Serialize)]
struct Report<'a> {
    url: &'a str,
    sha256: String,
    bytes: u64,
    entries: u64,
    source: &'a str,
    deploy: String,
}

pub fn execute(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let url = publish::expand_template(&args.url, args.app.as_deref(), args.version.as_deref())?;
    if let Some(app) = &args.app {
        super::deploy_event::check_app(app)?;
    }
    let opts = PublishOptions {
        output: super::export::output_options(args.gzip, args.zstd, args.level, args.max_bytes)?,
        replace: args.force,
        s3: args.fetch.options(),
        copy_limit: None,
    };
    let source = source_of(&args.source, args.image_ref.clone())?;
    let progress = Arc::new(AtomicU64::new(0));
    let stored = progress.clone();
    let bar = Bar::on_terminal(format!("publishing {url}"), move || {
        stored.load(Ordering::Relaxed)
    });
    let result = publish::publish(&source, &url, &opts, &progress);
    if let Some(bar) = bar {
        bar.stop();
    }
    match result {
        Ok(done) => {
            super::export::report(&done.export);
            print_result(&done, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(PublishError::Exists { url }) => Err(anyhow::anyhow!(
            "{url} already exists: published versions are immutable; publish a new version, \
             or pass --force to replace it"
        )),
        Err(PublishError::Export(e)) => super::export::failed(anyhow::Error::new(e)),
        Err(e) => Err(e.into()),
    }
}

/// A path that exists is a directory or an archive; anything else names an image.
fn source_of(text: &str, image_ref: Option<String>) -> anyhow::Result<Source> {
    let path = Path::new(text);
    match path.metadata() {
        Ok(m) if m.is_dir() => Ok(Source::Directory {
            path: super::absolute(path)?,
        }),
        Ok(_) => Ok(Source::Archive {
            path: PathBuf::from(text),
            image_ref,
        }),
        Err(_) if text.contains('/') && text.starts_with(['.', '/']) => {
            anyhow::bail!("{text}: no such file or directory (a path to publish must exist)")
        }
        Err(_) => {
            anyhow::ensure!(
                image_ref.is_none(),
                "--image-ref picks an image in an archive; {text} is not a file"
            );
            Ok(Source::Engine {
                image: text.to_string(),
            })
        }
    }
}

fn print_result(done: &Published, args: &PublishArgs) -> anyhow::Result<()> {
    let sha = hex::encode(done.sha256);
    let deploy = format!(
        "droot-fleet event deploy {} {} --url {} --sha256 {sha}",
        args.app.as_deref().unwrap_or("APP"),
        args.version.as_deref().unwrap_or("VERSION"),
        done.url
    );
    match args.format {
        Format::Json => print_json(&Report {
            url: &done.url,
            sha256: sha,
            bytes: done.bytes,
            entries: done.export.entries,
            source: &done.export.image,
            deploy,
        }),
        Format::Text => {
            println!("published {} ({} bytes)", done.url, done.bytes);
            println!("sha256 {sha}");
            println!("deploy it with:\n  {deploy}");
            Ok(())
        }
    }
}
