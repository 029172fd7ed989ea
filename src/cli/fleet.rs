//! The thin fleet commands: each talks to a running agent through the control API
//! (`--rpc` / `DROOT_FLEET_RPC`), except `keygen`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use crate::agent::config::{DEFAULT_RPC_SOCKET, DEV_DATA_DIR, RpcAddr, parse_tag};
use crate::api::QueryRequest;
use crate::api::client::Client;
use crate::deploy::status::STATUS_QUERY;
use crate::durations::parse_duration;
use crate::gossip::Key;

/// How to reach the agent.
#[derive(Debug, Args)]
pub struct RpcArgs {
    /// Agent control API: unix:PATH or tcp:127.0.0.1:PORT.
    /// Default: unix:/run/droot-fleet/agent.sock, else a running --dev agent's socket.
    #[arg(long, env = "DROOT_FLEET_RPC")]
    pub rpc: Option<String>,
    /// Bearer token for a TCP control API.
    #[arg(long, env = "DROOT_FLEET_RPC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl RpcArgs {
    pub(super) fn client(&self) -> anyhow::Result<Client> {
        let addr = match self.rpc.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => RpcAddr::parse(r).map_err(|e| anyhow::anyhow!("--rpc: {e}"))?,
            None => {
                let dev = Path::new(DEV_DATA_DIR).join("agent.sock");
                if !Path::new(DEFAULT_RPC_SOCKET).exists() && dev.exists() {
                    RpcAddr::Unix(dev)
                } else {
                    RpcAddr::Unix(DEFAULT_RPC_SOCKET.into())
                }
            }
        };
        Ok(Client::new(addr, self.token.clone()))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Only members with this status (alive, suspect, left, failed).
    #[arg(long)]
    pub status: Option<String>,
    /// Only members whose tag KEY matches REGEX (KEY=REGEX, repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

/// `event NAME [PAYLOAD]` sends a user event; `event deploy APP VERSION` is the signed deploy
/// event instead (so a plain user event cannot be named `deploy`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EventArgs {
    #[command(subcommand)]
    pub command: Option<EventCommand>,
    /// User event name (handlers see it); `deploy` is the subcommand below.
    #[arg(required = true)]
    pub name: Option<String>,
    #[arg(default_value = "")]
    pub payload: String,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Deploy APP VERSION to the matching nodes: a signed event (see --signing-key) that each
    /// target turns into fetch, activate, restart, health check, or automatic rollback.
    Deploy(super::fleet_deploy::DeployEventArgs),
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Query name; `status` is built in (payload: an app, or empty for all) and is shown
    /// as a table.
    pub name: String,
    #[arg(default_value = "")]
    pub payload: String,
    /// Only nodes whose name matches REGEX (repeatable: any may match).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Only nodes whose tag KEY matches REGEX (KEY=REGEX, repeatable: all must match).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// How long to wait for answers (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Keys installed across the cluster.
    List,
    /// Install a key on every member (accepted, not yet used).
    Install(KeyChange),
    /// Make an installed key the primary on every member.
    Use(KeyChange),
    /// Remove a non-primary key from every member.
    Remove(KeyChange),
}

/// A key change, signed with the deploy signing key: every node checks it against its
/// trusted_signing_keys (a --dev agent that trusts no key takes it unsigned).
#[derive(Debug, Args)]
pub struct KeyChange {
    /// The cluster key (base64, as `droot-fleet keygen` prints it).
    pub key: String,
    #[command(flatten)]
    pub signing: super::signing::SigningKeyArg,
    /// An agent config file whose `signing_key` is the key when neither --signing-key nor
    /// DROOT_FLEET_SIGNING_KEY names one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Send it unsigned: only --dev agents that trust no signing key apply it (agents of
    /// an older release would too, and the cluster would split).
    #[arg(long, conflicts_with = "signing_key")]
    pub unsigned: bool,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub format: Format,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    pub node: String,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

fn now_ms() -> u64 {
    u64::try_from(crate::wall::now().as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

pub(super) fn tag_filters(tags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    tags.iter()
        .map(|t| parse_tag(t).map_err(|e| anyhow::anyhow!("--tag: {e}")))
        .collect()
}

pub(super) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `until YYYY-MM-DD` for a verified identity, `-` for none.
fn identity_text(id: Option<&crate::wire::MemberIdentity>) -> String {
    let Some(id) = id else {
        return "-".into();
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(id.expires);
    let day: String = humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .take(10)
        .collect();
    format!("until {day}")
}

fn fmt_tags(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn members(args: MembersArgs) -> anyhow::Result<ExitCode> {
    let client = args.rpc.client()?;
    let filters: Vec<(String, regex::Regex)> = tag_filters(&args.tags)?
        .into_iter()
        .map(|(k, re)| {
            regex::Regex::new(&format!("^(?:{re})$"))
                .map(|r| (k, r))
                .with_context(|| format!("--tag regex {re:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut list = runtime()?.block_on(client.members(args.status.as_deref()))?;
    list.retain(|m| {
        filters
            .iter()
            .all(|(k, re)| m.tags.get(k).is_some_and(|v| re.is_match(v)))
    });
    match args.format {
        Format::Json => print_json(&list)?,
        Format::Text => {
            let w = list.iter().map(|m| m.name.len()).max().unwrap_or(4).max(4);
            let a = list.iter().map(|m| m.addr.len()).max().unwrap_or(7).max(7);
            println!(
                "{:w$}  {:a$}  {:7}  {:19}  TAGS",
                "NAME", "ADDRESS", "STATUS", "IDENTITY"
            );
            for m in &list {
                println!(
                    "{:w$}  {:a$}  {:7}  {:19}  {}",
                    m.name,
                    m.addr,
                    m.status,
                    identity_text(m.identity.as_ref()),
                    fmt_tags(&m.tags)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `info`: the local agent's name, address, identity and counters, as `serf info` shows.
pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let client = args.rpc.client()?;
    let info = runtime()?.block_on(client.info())?;
    match args.format {
        Format::Json => print_json(&info)?,
        Format::Text => {
            println!("name = {}", info.name);
            println!("addr = {}", info.addr);
            println!("bump = {}", info.bump);
            println!("tags = {}", fmt_tags(&info.tags));
            println!("members_alive = {}", info.members_alive);
            println!("identity_mode = {}", info.identity_mode);
            println!("identity = {}", identity_text(info.identity.as_ref()));
            for (k, v) in &info.counters {
                println!("{k} = {v}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn event(args: EventArgs) -> anyhow::Result<ExitCode> {
    let name = match (args.command, args.name) {
        (Some(EventCommand::Deploy(d)), _) => return super::fleet_deploy::event_deploy(d),
        (None, Some(name)) => name,
        (None, None) => anyhow::bail!("event: give a NAME (or `event deploy APP VERSION`)"),
    };
    let client = args.rpc.client()?;
    let r = runtime()?.block_on(client.event(&name, &args.payload))?;
    println!("event {name} sent (id {}, ltime {})", r.id, r.ltime);
    Ok(ExitCode::SUCCESS)
}

pub fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let client = args.rpc.client()?;
    let timeout = parse_duration(&args.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let req = QueryRequest {
        name: args.name.clone(),
        payload: args.payload,
        nodes: args.nodes,
        tags: tag_filters(&args.tags)?,
        timeout_ms: Some(timeout.as_millis().try_into().unwrap_or(u64::MAX)),
    };
    if req.name == STATUS_QUERY {
        return super::fleet_deploy::query_status(&client, &req, args.format);
    }
    let r = runtime()?.block_on(client.query(&req))?;
    match args.format {
        Format::Json => print_json(&r)?,
        Format::Text => {
            for a in &r.answers {
                let one_line = !a.payload.trim_end().contains('\n');
                if one_line {
                    println!("{}: {}", a.node, a.payload.trim_end());
                } else {
                    println!("{}:\n{}", a.node, a.payload.trim_end());
                }
            }
            println!(
                "{} answer(s), {} missing{}",
                r.answers.len(),
                r.missing.len(),
                if r.missing.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.missing.join(", "))
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let client = args.rpc.client()?;
    let (op, change) = match &args.command {
        KeysCommand::List => ("list", None),
        KeysCommand::Install(c) => ("install", Some(c)),
        KeysCommand::Use(c) => ("use", Some(c)),
        KeysCommand::Remove(c) => ("remove", Some(c)),
    };
    let key = change.map(|c| c.key.as_str());
    let auth = match change {
        Some(c) if !c.unsigned => {
            let signer = c.signing.load(c.config.as_deref()).context(
                "cluster key changes are signed with the deploy signing key (--unsigned only \
                 for --dev agents that trust no key)",
            )?;
            Some(crate::agent::key_auth::sign(op, key, &signer, now_ms()))
        }
        _ => None,
    };
    let r = runtime()?.block_on(client.keys(op, key, auth))?;
    match args.format {
        Format::Json => print_json(&r)?,
        Format::Text => {
            if op == "list" {
                let total = r.results.len() + r.missing.len();
                for (k, n) in &r.keys {
                    let primary = r.primary.get(k).copied().unwrap_or(0);
                    println!("{k}  [{n}/{total} installed, primary on {primary}]");
                }
            }
            for res in r.results.iter().filter(|r| !r.ok) {
                println!(
                    "{}: error: {}",
                    res.node,
                    res.error.as_deref().unwrap_or("?")
                );
            }
            for m in &r.missing {
                println!("{m}: no answer");
            }
        }
    }
    if r.all_ok() {
        if op != "list" && matches!(args.format, Format::Text) {
            println!("{op}: ok on {} node(s)", r.results.len());
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("droot-fleet: error: key {op} did not succeed on every node");
        Ok(ExitCode::from(2))
    }
}

pub fn keygen() -> anyhow::Result<ExitCode> {
    println!("{}", Key::generate(&mut rand::rng()).to_base64());
    Ok(ExitCode::SUCCESS)
}

pub fn leave(args: RpcArgs) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    runtime()?.block_on(client.leave())?;
    println!("agent left the cluster");
    Ok(ExitCode::SUCCESS)
}

pub fn force_leave(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let client = args.rpc.client()?;
    runtime()?.block_on(client.force_leave(&args.node))?;
    println!("{} marked as left", args.node);
    Ok(ExitCode::SUCCESS)
}

pub fn monitor(args: RpcArgs) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    runtime()?.block_on(client.monitor(|line| println!("{line}")))?;
    eprintln!("droot-fleet: the agent closed the monitor stream (it left the cluster)");
    Ok(ExitCode::SUCCESS)
}
