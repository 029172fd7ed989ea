//! `event deploy`, `rollback` and `query status`: flags to a signed deploy event sent to the
//! local agent, then (with `--wait`) its progress until every target is done.
//!
//! Everything that decides something lives in [`super::deploy_event`], [`super::progress`]
//! and [`super::status`]; this file only reads flags, files and the clock, and talks to the
//! agent. Every argument is checked, and the event signed, before the agent is contacted.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use super::deploy_event::{self, EventSpec};
use super::fleet::{Format, RpcArgs, print_json, runtime, tag_filters};
use super::progress::{self, Counts, Verdict};
use super::signing::SigningKeyArg;
use super::status;
use crate::api::QueryRequest;
use crate::api::client::{Client, ClientError};
use crate::deploy::signed::DeployEvent;
use crate::deploy::status::{Progress, STATUS_QUERY};
use crate::durations::parse_duration;

/// How often `--wait` asks the agent for progress.
const POLL: Duration = Duration::from_millis(250);
/// How long one progress request may take before it is asked again.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `event deploy` waits for the artifact's published digest.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `rollback` waits for `status` answers.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Targeting, rollout, waiting and signing (shared by `event deploy` and `rollback`).
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Only nodes whose whole name matches REGEX (repeatable: any may match).
    #[arg(long = "node", value_name = "REGEX")]
    pub nodes: Vec<String>,
    /// Only nodes whose tag KEY matches REGEX as a whole (KEY=REGEX, repeatable: all must
    /// match).
    #[arg(long = "tag", value_name = "KEY=REGEX")]
    pub tags: Vec<String>,
    /// Waves of at most N nodes, or P% of the targets (default: all at once).
    #[arg(long, value_name = "N|P%")]
    pub max_parallel: Option<String>,
    /// N nodes deploy first, in a wave of their own.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: u32,
    /// Keep at least N targets (or P% of them) in service: the waves hold at most what that
    /// leaves (every target counts, also those whose deploys overlap and never stop serving).
    #[arg(long, value_name = "N|P%")]
    pub min_healthy: Option<String>,
    /// A target that has not reported this long after it could start counts as failed and
    /// halts the waves (e.g. 10m).
    #[arg(long, value_name = "DUR")]
    pub progress_deadline: Option<String>,
    /// Go on when the old release's before_stop hook fails (a broken hook must not block
    /// every deploy).
    #[arg(long)]
    pub ignore_stop_hook_failures: bool,
    /// Follow the rollout until every target is done. Exit 0 only if every target is ok;
    /// 2 if any failed, rolled back or was halted; 3 on timeout.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (e.g. 90s, 10m).
    #[arg(long, default_value = "10m", value_name = "DUR")]
    pub timeout: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub signing: SigningKeyArg,
    /// An agent config file: its `[apps.APP].artifact` resolves the URL of `event deploy`,
    /// and its `signing_key` is the key when neither --signing-key nor
    /// DROOT_FLEET_SIGNING_KEY is given.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

/// `event deploy APP VERSION`.
#[derive(Debug, Args)]
pub struct DeployEventArgs {
    /// The app, as in the agents' `[apps.APP]`.
    pub app: String,
    /// The release name to deploy (e.g. v42).
    pub version: String,
    /// Artifact URL (s3://, https://, http://, file://). Default: the app's `artifact`
    /// template from --config, else each node's own template.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Expected sha256 of the artifact (64 hex digits); a node that gets anything else
    /// activates nothing. Default: the digest `publish` stored with the artifact (one
    /// request: the S3 object's metadata, or the sidecar URL.sha256 beside a file or an
    /// https:// artifact).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Deploy whatever bytes the URL holds, with no digest to check them against.
    #[arg(long, conflicts_with = "sha256")]
    pub unpinned: bool,
    /// Do not pin the artifact's chunk index: every node fetches it all from the store.
    /// (Without it the index is left out anyway when a target runs an agent from before
    /// the fan-out, which would refuse it.)
    #[arg(long)]
    pub no_fanout: bool,
    #[command(flatten)]
    pub fetch: super::deploy::FetchArgs,
    #[command(flatten)]
    pub opts: RolloutArgs,
}

/// `rollback APP`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The app, as in the agents' `[apps.APP]`.
    pub app: String,
    /// The release to go back to. Default: the previous release the targets report (they
    /// must all agree).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    #[command(flatten)]
    pub opts: RolloutArgs,
}

fn spec(app: &str, version: &str, o: &RolloutArgs) -> EventSpec {
    EventSpec {
        app: app.into(),
        version: version.into(),
        nodes: o.nodes.clone(),
        tags: o.tags.clone(),
        max_parallel: o.max_parallel.clone(),
        canary: o.canary,
        min_healthy: o.min_healthy.clone(),
        progress_deadline: o.progress_deadline.clone(),
        ignore_stop_hook_failures: o.ignore_stop_hook_failures,
        ..Default::default()
    }
}

pub fn event_deploy(args: DeployEventArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.opts.config {
        Some(p) => Some((
            p.display().to_string(),
            std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?,
        )),
        None => None,
    };
    let url = deploy_event::resolve_url(
        &args.app,
        &args.version,
        args.url.as_deref(),
        config.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
    )?;
    let mut spec = EventSpec {
        sha256: args.sha256.clone(),
        ..spec(&args.app, &args.version, &args.opts)
    };
    if spec.sha256.is_none() && !args.unpinned {
        // Every flag is checked, and the event signed with a stand-in digest (for its
        // size), before the store is asked for the digest.
        let stand_in = EventSpec {
            sha256: Some("0".repeat(64)),
            ..spec.clone()
        };
        let (event, _, key) = checked(&stand_in, url.clone(), &args.opts)?;
        deploy_event::sign(event, &key)?;
        spec.sha256 = Some(hex::encode(published_digest(&args.app, &url, &args.fetch)?));
    }
    let pinned = (spec.sha256.as_deref())
        .filter(|_| !url.is_empty() && !args.no_fanout)
        .map(crate::deploy::fetch::parse_sha256);
    if let Some(Ok(sha256)) = pinned {
        // The index is worth having, but a deploy must not fail for want of it.
        spec.chunks = published_index(&url, &sha256, &args.fetch).unwrap_or_else(|e| {
            eprintln!("no chunk index pinned ({e:#}): each node fetches the whole artifact");
            None
        });
    }
    if spec.chunks.is_some() {
        // As with the index itself, a deploy must not fail for want of the member list.
        let all_read = all_read_chunks(&args.app, &args.opts).unwrap_or_else(|e| {
            eprintln!("no chunk index pinned ({e:#}): each node fetches the whole artifact");
            false
        });
        if !all_read {
            spec.chunks = None;
        }
    }
    if spec.chunks.is_some() {
        eprintln!("pinned its chunk index: nodes take its pieces from each other");
    }
    let what = format!("deploy {} {}", args.app, args.version);
    send(&spec, url, &args.opts, &what)
}

/// Whether every node running `app` that the event may reach runs an agent that reads a
/// pinned chunk index; if not, says which do not (they would refuse the event).
fn all_read_chunks(app: &str, o: &RolloutArgs) -> anyhow::Result<bool> {
    use crate::deploy::signed::FORMAT_CHUNKS;
    let targets = deploy_event::targets(&o.nodes, &o.tags)?;
    let client = o.rpc.client()?;
    let members = runtime()?
        .block_on(async { tokio::time::timeout(ASK_TIMEOUT, client.members(None)).await })
        .map_err(|_| anyhow::anyhow!("the agent listed no members within {ASK_TIMEOUT:?}"))?
        .context("asking the agent which agents the fleet runs")?;
    let below = deploy_event::below_format(app, &targets, &members, FORMAT_CHUNKS);
    if below.is_empty() {
        return Ok(true);
    }
    let mut why = Vec::new();
    if !below.older.is_empty() {
        why.push(format!(
            "{} member(s) the event may reach run an agent that would refuse it ({})",
            below.older.len(),
            some_names(&below.older)
        ));
    }
    if !below.not_known.is_empty() {
        why.push(format!(
            "{} member(s) it may reach have not announced yet which events they read ({})",
            below.not_known.len(),
            some_names(&below.not_known)
        ));
    }
    eprintln!(
        "no chunk index pinned: {}: each node fetches the whole artifact; upgrade older \
         agents (or force-leave those gone for good) to take pieces from each other",
        why.join("; ")
    );
    Ok(false)
}

/// The first five names, and how many more.
fn some_names(names: &[String]) -> String {
    let shown = names.iter().take(5).map(String::as_str).collect::<Vec<_>>();
    match names.len() - shown.len() {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// The digest `publish` stored with the artifact at `url`, which the event then pins.
fn published_digest(
    app: &str,
    url: &str,
    fetch: &super::deploy::FetchArgs,
) -> anyhow::Result<[u8; 32]> {
    anyhow::ensure!(
        !url.is_empty(),
        "no artifact URL to read the published digest from (each node would use its own \
         [apps.{app}].artifact template): pass --url, or --config with the app's template; \
         or --sha256 HEX; or --unpinned to deploy without a digest"
    );
    let opts = fetch.options();
    let found = ask_store(url, crate::deploy::fetch::digest::published(url, &opts))
        .context("reading the artifact's published digest (or pass --sha256 HEX)")?;
    let Some(sha) = found else {
        anyhow::bail!(
            "{url} carries no published digest (it was not uploaded with `droot-fleet \
             publish`): pass --sha256 HEX, or --unpinned to deploy whatever it holds"
        );
    };
    eprintln!(
        "pinned to sha256 {}, published with {url}",
        hex::encode(sha)
    );
    Ok(sha)
}

/// The digest of the chunk index published beside the artifact, which lets nodes take its
/// pieces from each other; `None` (each node fetches it all from the store) when there is
/// none for this artifact.
fn published_index(
    url: &str,
    sha256: &[u8; 32],
    fetch: &super::deploy::FetchArgs,
) -> anyhow::Result<Option<[u8; 32]>> {
    let opts = fetch.options();
    let lookup = crate::deploy::fetch::digest::published_index(url, sha256, &opts);
    ask_store(url, lookup).context("reading the artifact's chunk index")
}

/// Runs one lookup in the artifact store, within [`DIGEST_TIMEOUT`].
fn ask_store<T>(
    url: &str,
    lookup: impl Future<Output = Result<T, crate::deploy::fetch::FetchError>>,
) -> anyhow::Result<T> {
    runtime()?
        .block_on(async { tokio::time::timeout(DIGEST_TIMEOUT, lookup).await })
        .map_err(|_| anyhow::anyhow!("{url}: no answer within {DIGEST_TIMEOUT:?}"))
        .and_then(|r| Ok(r?))
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    deploy_event::check_app(&args.app)?;
    if args.to.is_none() {
        // Every flag is checked before the fleet is asked anything.
        let o = &args.opts;
        deploy_event::targets(&o.nodes, &o.tags)?;
        deploy_event::rollout(o.max_parallel.as_deref(), o.canary)?;
        deploy_event::options(&spec(&args.app, "v", o))?;
        parse_duration(&o.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
        o.signing.load(o.config.as_deref())?;
    }
    let version = match &args.to {
        Some(v) => v.clone(),
        None => previous_version(&args.app, &args.opts)?,
    };
    let what = format!("rollback {} to {version}", args.app);
    send(
        &spec(&args.app, &version, &args.opts),
        String::new(),
        &args.opts,
        &what,
    )
}

/// Asks the targets for their status and picks the release they all report as previous.
fn previous_version(app: &str, o: &RolloutArgs) -> anyhow::Result<String> {
    let req = QueryRequest {
        name: STATUS_QUERY.into(),
        payload: app.into(),
        nodes: o.nodes.clone(),
        tags: tag_filters(&o.tags)?,
        timeout_ms: Some(STATUS_TIMEOUT.as_millis() as u64),
    };
    let r = runtime()?
        .block_on(o.rpc.client()?.query(&req))
        .context("asking the targets for their status (or pass --to VERSION)")?;
    let answers = status::parse(&r, Some(app));
    let version = status::rollback_version(&answers, app)?;
    if !answers.missing.is_empty() {
        eprintln!(
            "droot-fleet: warning: {} target(s) did not answer the status query: {}",
            answers.missing.len(),
            answers.missing.join(", ")
        );
    }
    eprintln!("rolling {app} back to {version}, the previous release the targets report");
    Ok(version)
}

/// The event, the `--wait` timeout and the signing key: every flag checked.
fn checked(
    spec: &EventSpec,
    url: String,
    o: &RolloutArgs,
) -> anyhow::Result<(DeployEvent, Duration, ed25519_dalek::SigningKey)> {
    let event = deploy_event::build(spec, url, DeployEvent::random_id(), crate::wall::millis())?;
    let timeout = parse_duration(&o.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let key = o.signing.load(o.config.as_deref())?;
    Ok((event, timeout, key))
}

/// Builds, signs and sends the event; with `--wait` follows it.
fn send(spec: &EventSpec, url: String, o: &RolloutArgs, what: &str) -> anyhow::Result<ExitCode> {
    let (event, timeout, key) = checked(spec, url, o)?;
    let (signed, bytes) = deploy_event::sign(event, &key)?;
    let ev = &signed.event;
    let id = ev.id_hex();
    let client = o.rpc.client()?;
    let rt = runtime()?;
    let accepted = rt
        .block_on(client.deploy(&bytes))
        .with_context(|| format!("{what}: the agent did not take the event"))?;
    if let Some(theirs) = accepted.event_id.as_ref().filter(|t| **t != id) {
        tracing::warn!(ours = %id, agent = %theirs, "the agent reports another event id");
    }
    // The event id comes first, with --wait too: a script can follow or stop the rollout.
    let sent = serde_json::json!({
        "event_id": id, "app": ev.app, "version": ev.version, "ltime": accepted.ltime,
    });
    match (o.format, o.wait) {
        (Format::Json, false) => print_json(&sent)?,
        (Format::Json, true) => println!("{sent}"),
        (Format::Text, _) => {
            println!("{id}");
            eprintln!(
                "{what}: sent as event {id} (ltime {}); see `droot-fleet query status {}`",
                accepted.ltime, ev.app
            );
        }
    }
    if !o.wait {
        return Ok(ExitCode::SUCCESS);
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    let (last, verdict) = rt.block_on(follow(&client, &id, timeout))?;
    match o.format {
        Format::Json => print_json(&progress::report(
            &id,
            &ev.app,
            &ev.version,
            last.as_ref(),
            verdict,
        ))?,
        Format::Text => {
            let lines = progress::summary(what, last.as_ref(), verdict, timeout);
            for l in lines {
                if verdict == Verdict::Success {
                    println!("{l}");
                } else {
                    eprintln!("{l}");
                }
            }
        }
    }
    Ok(ExitCode::from(verdict.exit_code()))
}

/// Polls progress until the verdict; draws the bar on a terminal, else a line per change.
async fn follow(
    client: &Client,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<(Option<Progress>, Verdict)> {
    let deadline = Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    let mut last: Option<Progress> = None;
    let mut shown: Option<Counts> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ask = ASK_TIMEOUT.min(left.max(POLL));
        match tokio::time::timeout(ask, client.deploy_progress(id)).await {
            Ok(Ok(Some(p))) => last = Some(p),
            Ok(Ok(None)) => {}
            // The agent may be restarting (an upgrade) or stopped: ask again until the deadline.
            Ok(Err(e @ (ClientError::NoAgent { .. } | ClientError::Http { .. }))) => {
                tracing::warn!("asking for progress: {e}");
            }
            Ok(Err(e)) => return Err(e).context("asking the agent for the deploy's progress"),
            Err(_) => tracing::warn!("the agent did not answer within {ask:?}"),
        }
        let counts = last.as_ref().map(Counts::of);
        if tty {
            let text = match &counts {
                Some(c) => progress::bar(c, 30),
                None => format!("waiting for the agent to report event {id}"),
            };
            eprint!("\r\x1b[2K{text}");
            let _ = std::io::stderr().flush();
        } else if let Some(c) = counts.filter(|c| shown != Some(*c)) {
            eprintln!("{}", progress::line(&c));
            shown = Some(c);
        }
        if let Some(v) = progress::verdict(last.as_ref(), Instant::now() >= deadline) {
            if tty {
                eprintln!();
            }
            return Ok((last, v));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `query status [APP]`: the answers as a table, or JSON.
pub fn query_status(
    client: &Client,
    req: &QueryRequest,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let r = rt.block_on(client.query(req))?;
    // The answers stand without the member list; only the down nodes would be missed.
    let down = rt
        .block_on(client.members(Some("failed")))
        .unwrap_or_else(|e| {
            eprintln!("droot-fleet: warning: nodes that are down are not listed: {e}");
            Vec::new()
        });
    let app = Some(req.payload.as_str()).filter(|a| !a.is_empty());
    let mut answers = status::parse(&r, app);
    status::add_down(&mut answers, &down, req);
    match format {
        Format::Json => print_json(&super::status_json::view(&answers))?,
        Format::Text => print!("{}", status::render(&answers, crate::wall::secs())),
    }
    Ok(ExitCode::SUCCESS)
}
