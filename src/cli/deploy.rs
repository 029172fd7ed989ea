//! `deploy`: flags to [`crate::release`] calls.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::artifact::guard::DEFAULT_MAX_RATIO;
use crate::artifact::{
    DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, UnpackError, UnpackOptions, UnpackStats,
};
use crate::deploy::fetch::{self, FetchOptions, FileRoots};
use crate::release::{self, Layout, layout::display_time};

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
    /// Create device nodes and FIFOs from the archive (by default those under /dev/ are
    /// skipped, since `run` mounts its own /dev, and any others refused).
    #[arg(long)]
    pub allow_devices: bool,
    /// Run the store's jails in a user namespace from now on: its releases are owned by an
    /// unprivileged host id range (older releases are shifted into it now), and later
    /// deploys and `run --userns` use it without the flag. See README "User namespaces".
    #[arg(long, conflicts_with = "list")]
    pub userns: bool,
    /// With --userns: the range's first host id (a multiple of 65536); by default the one the
    /// store recorded, else a free one.
    #[arg(long, value_name = "BASE", requires = "userns")]
    pub userns_base: Option<String>,
    /// Refuse archives that unpack to more than this many bytes of disk (contents in whole
    /// 4 KiB blocks, at least one per entry, sparse files at their full size); default 8 GiB.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
    /// Refuse archives with more than this many entries.
    #[arg(long, default_value_t = DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,
    /// Refuse a compressed archive that expands more than this many times its compressed
    /// size (checked past its first 64 MiB); 0: no limit.
    #[arg(long, default_value_t = DEFAULT_MAX_RATIO)]
    pub max_ratio: u64,
    /// Switch `current` back to the previous release, or to VERSION.
    #[arg(long, value_name = "VERSION", num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["list", "input"])]
    pub rollback: Option<String>,
    /// List releases, marking the current one.
    #[arg(long, conflicts_with = "input")]
    pub list: bool,
    /// With --list: print JSON instead of a table.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Check the artifact's sha256 (64 hex digits) before publishing; on a mismatch nothing
    /// is deployed.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub sha256: Option<[u8; 32]>,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Archive: a file, `-` (default) for stdin, or a URL: s3://BUCKET/KEY, https://...,
    /// http://..., file:///PATH.
    pub input: Option<PathBuf>,
}

/// Settings for `s3://` URLs; the rest comes from the standard AWS chain.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// S3 endpoint for an S3-compatible store (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL", env = "DROOT_FLEET_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: the AWS chain, e.g. AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (default: on when an endpoint is set, off for AWS).
    #[arg(long, value_name = "BOOL")]
    pub s3_path_style: Option<bool>,
}

impl FetchArgs {
    pub fn options(&self) -> FetchOptions {
        FetchOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
            // The operator's own deploy: any file they name (see README, "file://").
            file_roots: FileRoots::Any,
            peers: None,
        }
    }
}

fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    fetch::parse_sha256(text)
}

/// The input as a URL, when it is one.
fn input_url(input: Option<&PathBuf>) -> Option<String> {
    let s = input?.to_str()?;
    s.contains("://").then(|| s.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

fn stdin() -> anyhow::Result<Box<dyn Read + Send>> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!(
            "no archive given: pass FILE, or pipe one in (e.g. `aws s3 cp s3://b/app.tar.gz - | droot-fleet deploy ...`)"
        );
    }
    Ok(Box::new(std::io::stdin()))
}

fn open_input(input: Option<&PathBuf>) -> anyhow::Result<Box<dyn Read + Send>> {
    match input {
        None => stdin(),
        Some(p) if p.as_os_str() == "-" => stdin(),
        Some(p) => {
            let f = std::fs::File::open(p)
                .with_context(|| format!("cannot open archive {}", p.display()))?;
            Ok(Box::new(f))
        }
    }
}

pub fn execute(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(super::absolute(&args.root)?);
    if args.mode == Mode::Rsync && (args.rollback.is_some() || args.list) {
        anyhow::bail!("--rollback and --list need symlink mode: rsync mode keeps no releases");
    }
    if args.userns {
        enable_userns(&layout, &args)?;
    }
    if args.list {
        print_list(&layout, args.format)?;
    } else if let Some(target) = &args.rollback {
        rollback(&layout, target)?;
    } else {
        let opts = UnpackOptions {
            same_owner: args.same_owner,
            allow_devices: args.allow_devices,
            max_bytes: args.max_bytes,
            max_entries: args.max_entries,
            max_ratio: args.max_ratio,
            // Set by the store itself when it records a user namespace range.
            id_shift: None,
            ..Default::default()
        };
        match input_url(args.input.as_ref()) {
            Some(url) => deploy_url(&layout, &url, &args, &opts),
            None => deploy_stream(&layout, &args, &opts),
        }
        .map_err(limit_hint)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Names the flag that raises the limit an archive hit (the library's errors name none).
fn limit_hint(e: anyhow::Error) -> anyhow::Error {
    let hit = e
        .chain()
        .find_map(|c| match c.downcast_ref::<UnpackError>() {
            Some(UnpackError::TooLarge { .. }) => Some("--max-bytes"),
            Some(UnpackError::TooManyEntries { .. }) => Some("--max-entries"),
            Some(UnpackError::Expansion { .. }) => Some("--max-ratio"),
            _ => None,
        });
    match hit {
        Some(flag) => e.context(format!("over a limit (raise it with {flag})")),
        None => e,
    }
}

/// `--userns`: claims and records the store's range, then shifts its older releases into it.
fn enable_userns(layout: &Layout, args: &DeployArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let requested = args
        .userns_base
        .as_deref()
        .map(crate::id_range::IdRange::parse)
        .transpose()?;
    let layout = match args.mode {
        Mode::Symlink => layout.clone(),
        Mode::Rsync => Layout::in_place(&layout.root)
            .with_context(|| format!("cannot create {}", layout.root.display()))?,
    };
    let range = release::userns::enable(&layout, requested)?;
    let shifted = release::userns::shift_releases(&layout, range)?;
    eprintln!(
        "user namespace: jails of {} run as host ids {range}{}",
        layout.root.display(),
        match shifted.len() {
            0 => String::new(),
            n => format!(
                " ({n} older release(s) shifted into it: {})",
                shifted.join(", ")
            ),
        }
    );
    Ok(())
}

/// `--list`: the releases, oldest first, as a table or JSON.
fn print_list(layout: &Layout, format: Format) -> anyhow::Result<()> {
    let rows = release::list(layout)?;
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no releases under {}", layout.root.display());
    } else {
        for r in rows {
            let when = if r.deployed_at == 0 {
                "unknown".to_string()
            } else {
                display_time(r.deployed_at)
            };
            let mark = if r.current { "*" } else { " " };
            let tail = if r.current { "  (current)" } else { "" };
            println!("{mark} {:<24} {when}{tail}", r.version);
        }
    }
    Ok(())
}

/// `--rollback [VERSION]` (empty: the release before the current one).
fn rollback(layout: &Layout, target: &str) -> anyhow::Result<()> {
    let target = (!target.is_empty()).then_some(target);
    let (from, to) = release::rollback(layout, target)?;
    eprintln!(
        "current: {to} (was {})",
        from.as_deref().unwrap_or("nothing")
    );
    Ok(())
}

/// An archive fetched from `url`, its digest checked before it is published.
fn deploy_url(
    layout: &Layout,
    url: &str,
    args: &DeployArgs,
    opts: &UnpackOptions,
) -> anyhow::Result<()> {
    if args.mode == Mode::Rsync {
        anyhow::bail!("a URL needs symlink mode: the digest is checked before publishing");
    }
    let before = fetch::stream::fetched_bytes();
    let fetched = move || fetch::stream::fetched_bytes() - before;
    let bar = super::bar::Bar::on_terminal(format!("fetching {url}"), fetched);
    let f = fetch::deploy(
        layout,
        url,
        args.sha256,
        args.version.as_deref(),
        args.keep,
        opts,
        &args.fetch.options(),
    );
    if let Some(bar) = bar {
        bar.stop();
    }
    let f = f?;
    print_deployed(&f.deployed);
    eprintln!("sha256 {} ({} bytes)", hex::encode(f.sha256), f.bytes);
    Ok(())
}

/// An archive from a file or stdin, as a new release or synced in place.
fn deploy_stream(layout: &Layout, args: &DeployArgs, opts: &UnpackOptions) -> anyhow::Result<()> {
    if args.sha256.is_some() {
        anyhow::bail!("--sha256 needs a URL (s3://, https://, http://, file://) as the archive");
    }
    let input = open_input(args.input.as_ref())?;
    match args.mode {
        Mode::Symlink => {
            let d = release::deploy(layout, input, args.version.as_deref(), args.keep, opts)?;
            print_deployed(&d);
        }
        Mode::Rsync => {
            if args.version.is_some() {
                anyhow::bail!("--version needs symlink mode: rsync mode keeps no releases");
            }
            let (u, s) = release::rsync::deploy(layout, input, opts)?;
            eprintln!(
                "synced {} ({} entries{}): {} updated, {} unchanged, {} deleted, {} mountpoints spared",
                layout.root.display(),
                u.entries,
                skipped_note(&u),
                s.updated,
                s.unchanged,
                s.deleted,
                s.skipped_mounts
            );
        }
    }
    Ok(())
}

fn print_deployed(d: &release::Deployed) {
    eprintln!(
        "deployed {} ({}, {} entries, {} bytes{}); current: {} (was {}){}",
        d.version,
        d.stats.compression,
        d.stats.entries,
        d.stats.bytes,
        skipped_note(&d.stats),
        d.version,
        d.previous.as_deref().unwrap_or("nothing"),
        if d.pruned.is_empty() {
            String::new()
        } else {
            format!("; pruned {}", d.pruned.join(", "))
        }
    );
}

/// `", N device nodes/FIFOs under /dev/ skipped"` when there were any.
fn skipped_note(stats: &UnpackStats) -> String {
    match stats.skipped_devices {
        0 => String::new(),
        n => format!(", {n} device nodes/FIFOs under /dev/ skipped (run mounts its own /dev)"),
    }
}
