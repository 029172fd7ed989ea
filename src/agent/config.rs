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
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::durations::parse_duration;
use crate::gossip::{EventLogConfig, Tags};

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
    #[error("the config file holds rpc_token, the control API's secret, but {0}")]
    TokenExposed(crate::secret_file::SecretFileError),
    #[error(transparent)]
    File(crate::secret_file::SecretFileError),
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
    pub metrics_addr: Option<String>,
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
    /// `[apps.NAME]`, carried in [`DeployTables`].
    pub apps: Option<toml::Value>,
    #[serde(default)]
    pub trusted_signing_keys: Vec<String>,
    /// The operator's private deploy signing key file: read by `event deploy` and
    /// `rollback` when given this file with `--config` (the agent never reads it).
    pub signing_key: Option<PathBuf>,
    /// `[deploy]`, carried in [`DeployTables`].
    pub deploy: Option<toml::Value>,
    /// Enrollment public keys whose node certificates this agent trusts.
    #[serde(default)]
    pub enrollment_keys: Vec<String>,
    /// This node's identity file (`droot-fleet enroll node`).
    pub node_identity: Option<PathBuf>,
    /// Whether a name without a verified member card has no voice (default: true when
    /// `enrollment_keys` is set).
    pub require_node_identity: Option<bool>,
}

/// The deploy pipeline's keys of the agent's file, carried as written: the agent neither
/// reads nor validates them. The CLI hands them to the deploy config at start, and
/// checks them again on SIGHUP through a [`TablesCheck`].
#[derive(Debug, Clone, Default)]
pub struct DeployTables {
    /// `[apps.NAME]`.
    pub apps: Option<toml::Value>,
    pub trusted_signing_keys: Vec<String>,
    /// `[deploy]`.
    pub deploy: Option<toml::Value>,
}

/// Validates a reloaded file's [`DeployTables`] before SIGHUP applies anything: an
/// error refuses the reload as a whole, as a bad agent setting does.
pub type TablesCheck = Arc<
    dyn Fn(&DeployTables) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync,
>;

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
    pub node_identity: Option<PathBuf>,
}

pub use crate::wire::RpcAddr;

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
    /// The scrape-only Prometheus listener ([`crate::api::metrics_listener`]), if any.
    pub metrics_addr: Option<SocketAddr>,
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
    /// Apps, trusted signing keys and deploy limits, unparsed ([`DeployTables`]).
    pub deploy: DeployTables,
    /// Enrollment keys, this node's identity, and whether identities are required.
    pub identity: super::identity::IdentitySettings,
    /// The flags (and config file) these settings came from, for SIGHUP reloads.
    pub overrides: Overrides,
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
/// One that holds `rpc_token` is refused when another user can read or change it, or when
/// it belongs to someone other than root or us ([`crate::secret_file`]).
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    use crate::secret_file::{Owner, SecretFileError, check_private, read_with_meta};
    let (text, meta) = read_with_meta(path, "config file").map_err(|e| match e {
        SecretFileError::Read { path, source, .. } => ConfigError::Read { path, source },
        e => ConfigError::File(e),
    })?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if file.rpc_token.as_deref().is_some_and(|t| !t.is_empty()) {
        check_private(path, &meta, "config file", Owner::RootOrMe)
            .map_err(ConfigError::TokenExposed)?;
    }
    Ok(file)
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
}

mod merge;

#[cfg(test)]
mod tests;
