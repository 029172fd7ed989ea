//! `[apps.NAME]`: one application's settings, parsed and validated before anything runs.
//!
//! [`parse_apps`] turns the `apps` table of a TOML document into typed [`AppConfig`]s. Every
//! error names the app and the field (`apps.web.stop_timeout: ...`). The jail settings mean
//! what the flags of `droot-fleet run` mean and are checked by the same validator
//! ([`crate::jail::JailSpec::build`]), so an app that parses here starts the way the same
//! `run` command line would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::deploy::hooks::Hooks;
use crate::deploy::listen::ListenSocket;
use crate::id_range::IdRange;
use crate::jail::launch::{self, Launch};

/// A bad `[apps.NAME]` block. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum AppConfigError {
    #[error("apps config is not valid TOML or has a wrong type: {0}")]
    Toml(String),
    #[error("apps.{app}.{field}: {reason}")]
    Field {
        app: String,
        field: &'static str,
        reason: String,
    },
}

/// When a jail that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    #[default]
    Always,
    /// Only after a non-zero exit, a signal, or an unknown status (an adopted jail).
    OnFailure,
    /// Never: the app stays down.
    Never,
}

/// Exponential restart backoff: `initial`, doubled each consecutive failure, at most `max`;
/// a run that lasted `reset_after` counts as healthy and resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The jail, as `droot-fleet run` flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JailSettings {
    pub command: Vec<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub bind: Vec<String>,
    pub robind: Vec<String>,
    /// `--cp`.
    pub copy_files: bool,
    /// `-e KEY=VALUE`, in key order.
    pub env: Vec<(String, String)>,
    /// `--userns --userns-base BASE`: the range the store holds, once resolved (see
    /// [`AppConfig::userns`]); `None` runs without a user namespace.
    pub userns: Option<IdRange>,
}

impl JailSettings {
    /// What `run` is told to start `command` on `root` with these settings. `with_copy` is
    /// false for health checks: the host files are copied once, at start.
    pub fn launch(&self, root: &Path, command: &[String], with_copy: bool) -> Launch {
        Launch {
            root: root.to_owned(),
            user: self.user.clone(),
            group: self.group.clone(),
            bind: self.bind.clone(),
            robind: self.robind.clone(),
            copy_host_files: self.copy_files && with_copy,
            env: self.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            userns: self.userns.map(launch::Userns::Range),
            command: command.to_vec(),
            ..Launch::default()
        }
    }
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A command run in a fresh jail on the same release (see [`super::health`]); exit 0 passes.
    Exec(Vec<String>),
    /// A TCP connect.
    Tcp(SocketAddr),
    /// An HTTP/1.1 GET expecting 2xx.
    Http(HttpTarget),
    /// `READY=1` by systemd's `sd_notify` protocol, from the instance itself
    /// ([`super::supervisor::notify`]).
    Notify,
}

/// A plain `http://` URL, split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub url: String,
    /// `host:port` to connect to.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// `health`: probe until it passes or `deadline` ends, every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub probe: Probe,
    pub deadline: Duration,
    pub interval: Duration,
}

/// `userns` and `userns_base`: whether the app's jails run in a user namespace, and in
/// which host range (see [`crate::release::userns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Userns {
    /// No user namespace: root in the jail is host root (the default when the key is absent).
    #[default]
    Off,
    /// A user namespace, in the range given, or else the one the store records, or a free one.
    On(Option<IdRange>),
}

/// One app, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub name: String,
    /// URL template with `{app}` and `{version}`.
    pub artifact: String,
    pub root: PathBuf,
    pub keep: usize,
    pub jail: JailSettings,
    pub health: Option<HealthConfig>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    pub backoff: Backoff,
    pub leave_running: bool,
    /// The longest one activation may take, fetch to health check; then it is stopped and
    /// ends failed (or rolled back, once `current` was switched).
    pub deploy_timeout: Duration,
    /// The most bytes a release may unpack to (sparse files at their full size).
    pub max_bytes: u64,
    /// The largest expansion ratio of a compressed artifact (0: none).
    pub max_ratio: u64,
    pub userns: Userns,
    /// Sockets the supervisor binds once and hands to every instance ([`super::listen`]).
    pub listen: Vec<ListenSocket>,
    /// A deploy starts the new instance while the old one serves, and stops the old one
    /// once the new one is ready (on by default with `listen`; apps that bind with
    /// `SO_REUSEPORT` turn it on themselves). Off: the old one stops first.
    pub overlap: bool,
    /// Lifecycle hooks ([`super::hooks`]).
    pub hooks: Hooks,
}

/// Default `deploy_timeout`: 15 minutes (a few GiB over a slow link, plus the health check).
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

impl AppConfig {
    /// Whether an instance is ready once it says so (`health.notify`).
    pub fn ready_by_notify(&self) -> bool {
        self.health
            .as_ref()
            .is_some_and(|h| h.probe == Probe::Notify)
    }

    /// The artifact URL of one version.
    pub fn artifact_url(&self, version: &str) -> String {
        self.artifact
            .replace("{app}", &self.name)
            .replace("{version}", version)
    }
}

/// Parses the `[apps.NAME]` blocks of a TOML document (other top-level keys are ignored).
pub fn parse_apps(text: &str) -> Result<BTreeMap<String, AppConfig>, AppConfigError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| AppConfigError::Toml(e.to_string()))?;
    let mut only = toml::Table::new();
    if let Some(apps) = table.remove("apps") {
        only.insert("apps".into(), apps);
    }
    let doc: Doc = only
        .try_into()
        .map_err(|e: toml::de::Error| AppConfigError::Toml(e.to_string()))?;
    doc.apps
        .into_iter()
        .map(|(name, raw)| Ok((name.clone(), validate(name, raw)?)))
        .collect()
}

mod parse;
use parse::{Doc, validate};

#[cfg(test)]
#[path = "app/tests.rs"]
mod tests;
