//! Agent settings: the TOML file, command-line overrides, and validation.
//!
//! [`FileConfig`] mirrors `config/agent.toml` (unknown keys are refused so typos do not
//! pass silently). [`Overrides`] are the command-line flags; a flag always wins over
//! the file. [`Settings::resolve`] merges both and validates everything *before* the
//! agent touches the network, and every [`ConfigError`] names the offending field.
//!
//! Security rule enforced here: an agent refuses to start without a keyring, on any
//! address (loopback too: any local user can start an agent). `--dev` generates a fresh
//! key per run instead; `insecure` is the explicit opt-out (a well-known all-zero key,
//! which authenticates nothing).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::gossip::{EventLogConfig, Tags, validate_node_name};

/// Default gossip port (UDP and TCP).
pub const DEFAULT_PORT: u16 = 7946;
/// Default control socket when no data dir is given.
pub const DEFAULT_RPC_SOCKET: &str = "/run/droot-fleet/agent.sock";
/// Default data dir.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/droot-fleet";
/// Data dir (and socket location) of `--dev` agents.
pub const DEV_DATA_DIR: &str = "/tmp/droot-fleet-dev";

/// Why the settings are unusable. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `config/agent.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node: Option<String>,
    pub bind: Option<String>,
    pub advertise: Option<String>,
    #[serde(default)]
    pub join: Vec<String>,
    pub retry_join: Option<bool>,
    pub retry_interval: Option<String>,
    pub retry_max: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub rpc: Option<String>,
    pub rpc_token: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub keyring: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub log_level: Option<String>,
    pub push_pull_interval: Option<String>,
    pub reconnect_interval: Option<String>,
    pub snapshot_interval: Option<String>,
    pub reap_after: Option<String>,
    pub eager_push: Option<bool>,
    pub eager_push_fanout: Option<usize>,
    pub expected_cluster_size: Option<u32>,
    pub event_log_max_recent: Option<usize>,
    pub event_log_max_age: Option<String>,
    pub event_log_max_ids: Option<usize>,
    pub max_concurrent_handlers: Option<usize>,
    pub blob_query: Option<bool>,
    #[serde(default, rename = "handler")]
    pub handlers: Vec<HandlerFile>,
}

/// One `[[handler]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFile {
    pub event: String,
    pub command: Vec<String>,
    pub timeout: Option<String>,
}

/// Command-line flags of `droot-fleet agent` (each overrides the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub node: Option<String>,
    pub bind: Option<String>,
    pub advertise: Option<String>,
    pub join: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub rpc: Option<String>,
    pub tags: Vec<String>,
    pub keyring: Option<PathBuf>,
    pub insecure: bool,
    pub log_level: Option<String>,
}

/// Where the control API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl RpcAddr {
    /// Parses `unix:PATH` or `tcp:IP:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty unix socket path".into());
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = text.strip_prefix("tcp:") {
            addr.parse()
                .map(Self::Tcp)
                .map_err(|e| format!("{addr:?} is not IP:PORT: {e}"))
        } else {
            Err(format!(
                "{text:?} must start with `unix:` or `tcp:` (e.g. unix:/run/droot-fleet/agent.sock)"
            ))
        }
    }
}

impl std::fmt::Display for RpcAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Which events a handler runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    /// Every user and member event (not queries: those need an answer).
    All,
    /// Every user event, or only one name.
    User(Option<String>),
    /// Every query, or only one name; stdout is the answer.
    Query(Option<String>),
    /// `member-join`, `member-leave`, `member-failed`.
    Member(String),
    /// Every user event whose name starts with this (in-process consumers only,
    /// see [`super::consumers`]; not written in config files).
    UserPrefix(String),
}

impl EventFilter {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "*" => Self::All,
            "user" => Self::User(None),
            "query" => Self::Query(None),
            "member-join" | "member-leave" | "member-failed" => Self::Member(text.to_owned()),
            _ => {
                if let Some(name) = text.strip_prefix("user:") {
                    Self::User(Some(name.to_owned()))
                } else if let Some(name) = text.strip_prefix("query:") {
                    Self::Query(Some(name.to_owned()))
                } else {
                    return Err(format!(
                        "{text:?} is not one of `*`, `user`, `user:NAME`, `query`, `query:NAME`, \
                         `member-join`, `member-leave`, `member-failed`"
                    ));
                }
            }
        })
    }
}

/// A validated handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerConfig {
    pub filter: EventFilter,
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// Validated agent settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub join: Vec<String>,
    pub retry_join: bool,
    pub retry_interval: Duration,
    /// 0 = retry forever.
    pub retry_max: u32,
    pub data_dir: PathBuf,
    pub rpc: RpcAddr,
    pub rpc_token: Option<String>,
    pub tags: Tags,
    pub keyring: Option<PathBuf>,
    pub insecure: bool,
    pub dev: bool,
    pub log_level: String,
    pub push_pull_interval: Duration,
    /// How often a random failed member is dialed for a push/pull (and foca announces
    /// to failed members): how soon a healed partition re-merges. Below `reap_after`.
    pub reconnect_interval: Duration,
    pub snapshot_interval: Duration,
    pub reap_after: Duration,
    pub eager_push: bool,
    /// Peers each new event is pushed to; `None` = ln N + 2 for the current cluster size.
    pub eager_push_fanout: Option<usize>,
    pub expected_cluster_size: u32,
    pub event_log: EventLogConfig,
    pub handlers: Vec<HandlerConfig>,
    /// Handler processes running at once; the others wait in arrival order.
    pub max_concurrent_handlers: usize,
    /// Whether the built-in `blob` test query answers (off by default).
    pub blob_query: bool,
    /// The flags (and config file) these settings came from, for SIGHUP reloads.
    pub overrides: Overrides,
}

/// Parses a duration like `500ms`, `30s`, `5m`, `1h 30m` ([`humantime`] syntax; a bare
/// number is seconds). Overflow is an error, never a wrapped value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let parsed = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        humantime::parse_duration(&format!("{t}s"))
    } else {
        humantime::parse_duration(t)
    };
    parsed.map_err(|e| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h: {e}"))
}

fn duration(
    field: &str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => {
            let d = parse_duration(v).map_err(|e| invalid(field, e))?;
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
            Ok(d)
        }
    }
}

fn socket_addr(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    // A bare IP gets the default port.
    text.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| invalid(field, format!("{text:?} is not IP:PORT")))
}

/// Parses `KEY=VALUE`.
pub fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Validates the `[[handler]]` tables.
pub fn handlers(files: &[HandlerFile]) -> Result<Vec<HandlerConfig>, ConfigError> {
    files
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let filter = EventFilter::parse(&h.event)
                .map_err(|e| invalid(format!("handler[{i}].event"), e))?;
            if h.command.is_empty() || h.command[0].is_empty() {
                return Err(invalid(
                    format!("handler[{i}].command"),
                    "must be a non-empty array, e.g. [\"/usr/local/bin/deploy\", \"--now\"]",
                ));
            }
            if h.command[0].starts_with('@') {
                return Err(invalid(
                    format!("handler[{i}].command"),
                    "may not start with '@' (reserved for in-process consumers); name the program by its path",
                ));
            }
            let timeout = duration(
                &format!("handler[{i}].timeout"),
                h.timeout.as_ref(),
                Duration::from_secs(30),
            )?;
            Ok(HandlerConfig {
                filter,
                command: h.command.clone(),
                timeout,
            })
        })
        .collect()
}

fn default_node_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() { "node".into() } else { name }
}

impl Settings {
    /// Merges the file named by `flags.config` (if any) with the flags, then validates.
    pub fn resolve(flags: &Overrides) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        Self::merge(file, flags)
    }

    /// Merges an already parsed file with the flags, then validates.
    pub fn merge(file: FileConfig, flags: &Overrides) -> Result<Self, ConfigError> {
        let dev = flags.dev;
        let node = flags
            .node
            .clone()
            .or(file.node)
            .unwrap_or_else(default_node_name);
        validate_node_name(&node).map_err(|e| invalid("node", e.to_string()))?;

        let default_bind = if dev {
            format!("127.0.0.1:{DEFAULT_PORT}")
        } else {
            format!("0.0.0.0:{DEFAULT_PORT}")
        };
        let bind_text = flags.bind.clone().or(file.bind).unwrap_or(default_bind);
        let bind = socket_addr("bind", &bind_text)?;
        let advertise = match flags.advertise.clone().or(file.advertise) {
            Some(a) => socket_addr("advertise", &a)?,
            None if bind.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    format!(
                        "required when bind is {bind} (which address should peers use?); \
                         set advertise = \"IP:PORT\" or bind to a specific IP"
                    ),
                ));
            }
            None => bind,
        };
        if advertise.port() != bind.port() {
            return Err(invalid(
                "advertise",
                format!(
                    "port {} differs from the bind port {}; port mapping is not supported",
                    advertise.port(),
                    bind.port()
                ),
            ));
        }

        let mut join = file.join;
        join.extend(flags.join.iter().cloned());
        for (i, j) in join.iter().enumerate() {
            if j.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(invalid(
                    format!("join[{i}]"),
                    format!("{j:?} is not HOST:PORT"),
                ));
            }
        }

        let data_dir =
            flags.data_dir.clone().or(file.data_dir).unwrap_or_else(|| {
                PathBuf::from(if dev { DEV_DATA_DIR } else { DEFAULT_DATA_DIR })
            });
        let explicit_dir = flags.data_dir.is_some() || dev;
        let rpc = match flags.rpc.clone().or(file.rpc) {
            Some(r) => RpcAddr::parse(&r).map_err(|e| invalid("rpc", e))?,
            None if explicit_dir => RpcAddr::Unix(data_dir.join("agent.sock")),
            None => RpcAddr::Unix(PathBuf::from(DEFAULT_RPC_SOCKET)),
        };
        let rpc_token = file.rpc_token.filter(|t| !t.is_empty());
        if let RpcAddr::Tcp(a) = &rpc {
            if !a.ip().is_loopback() {
                return Err(invalid(
                    "rpc",
                    format!(
                        "{a} is not a loopback address; the control API only listens on loopback TCP"
                    ),
                ));
            }
            if rpc_token.is_none() {
                return Err(invalid(
                    "rpc_token",
                    "required when rpc is tcp: (any local user could otherwise drive the agent)",
                ));
            }
        }

        let mut tags: Tags = file.tags.into_iter().collect();
        for t in &flags.tags {
            let (k, v) = parse_tag(t).map_err(|e| invalid("tag", e))?;
            tags.insert(k, v);
        }

        let size = postcard::to_stdvec(&tags).map_or(usize::MAX, |b| b.len());
        if size > crate::gossip::supersede::MAX_TAGS_ENCODED {
            return Err(invalid(
                "tags",
                format!(
                    "take {size} bytes encoded, at most {} fit the gossip packet that announces them; use fewer or shorter tags",
                    crate::gossip::supersede::MAX_TAGS_ENCODED
                ),
            ));
        }

        let keyring = flags.keyring.clone().or(file.keyring);
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        if keyring.is_none() && !dev && !insecure {
            // Loopback is no exception: any local user can run an agent and join.
            return Err(invalid(
                "keyring",
                format!(
                    "required (gossip address {advertise}): without a key any local user or \
                     anyone on the network can join and send events. Create one with \
                     `droot-fleet keygen` (file: {{\"primary\": \"<key>\", \"keys\": []}}), \
                     try it out with --dev (a fresh key per run), or pass --insecure \
                     (insecure = true) to run with NO authentication"
                ),
            ));
        }

        // Checked here, not only when applied: a SIGHUP with a bad filter must change
        // nothing (tags and handlers included).
        let log_level = flags
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(invalid(
                "log_level",
                format!(
                    "{log_level:?} is not a log filter like \"info\" or \"droot_fleet=debug\" (RUST_LOG overrides it): {e}"
                ),
            ));
        }

        let defaults = EventLogConfig::default();
        let event_log = EventLogConfig {
            max_recent: file.event_log_max_recent.unwrap_or(defaults.max_recent),
            max_recent_age: duration(
                "event_log_max_age",
                file.event_log_max_age.as_ref(),
                defaults.max_recent_age,
            )?,
            max_ids: file.event_log_max_ids.unwrap_or(defaults.max_ids).max(1),
        };
        let fanout = file.eager_push_fanout;
        if fanout == Some(0) {
            return Err(invalid(
                "eager_push_fanout",
                "0 pushes to nobody: set eager_push = false instead, or leave it unset for ln N + 2"
                    .to_string(),
            ));
        }
        let reap_after = duration(
            "reap_after",
            file.reap_after.as_ref(),
            Duration::from_secs(24 * 3600),
        )?;
        let reconnect_interval = duration(
            "reconnect_interval",
            file.reconnect_interval.as_ref(),
            Duration::from_secs(10),
        )?;
        if reconnect_interval >= reap_after {
            return Err(invalid(
                "reconnect_interval",
                format!(
                    "{reconnect_interval:?} is not below reap_after ({reap_after:?}): failed \
                     members would be forgotten before the first reconnect attempt"
                ),
            ));
        }

        Ok(Self {
            node,
            bind,
            advertise,
            join,
            retry_join: file.retry_join.unwrap_or(true),
            retry_interval: duration(
                "retry_interval",
                file.retry_interval.as_ref(),
                Duration::from_secs(5),
            )?,
            retry_max: file.retry_max.unwrap_or(0),
            data_dir,
            rpc,
            rpc_token,
            tags,
            keyring,
            insecure,
            dev,
            log_level,
            push_pull_interval: duration(
                "push_pull_interval",
                file.push_pull_interval.as_ref(),
                Duration::from_secs(30),
            )?,
            reconnect_interval,
            snapshot_interval: duration(
                "snapshot_interval",
                file.snapshot_interval.as_ref(),
                Duration::from_secs(10),
            )?,
            reap_after,
            eager_push: file.eager_push.unwrap_or(true),
            eager_push_fanout: fanout,
            expected_cluster_size: file.expected_cluster_size.unwrap_or(16).max(1),
            event_log,
            handlers: handlers(&file.handlers)?,
            max_concurrent_handlers: file.max_concurrent_handlers.unwrap_or(16).max(1),
            blob_query: file.blob_query.unwrap_or(false),
            overrides: flags.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
