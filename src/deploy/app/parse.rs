//! The `[apps.NAME]` block as written ([`RawApp`]) and its validation into an
//! [`AppConfig`]: every error names the app and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

use super::*;
use crate::artifact::guard::DEFAULT_MAX_RATIO;
use crate::deploy::activation::HookPoint;
use crate::deploy::hooks::{DEFAULT_TIMEOUT as DEFAULT_HOOK_TIMEOUT, Hook, HookPlace, Hooks};
use crate::deploy::listen::{ListenAddr, ListenSocket};
use crate::id_range::IdRange;
use crate::jail::JailSpec;
use crate::jail::launch::MAX_LISTEN_FDS;
use crate::sizes::parse_size;
use std::net::SocketAddr;

#[derive(Deserialize)]
pub(super) struct Doc {
    #[serde(default)]
    pub(super) apps: BTreeMap<String, RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    artifact: String,
    root: PathBuf,
    #[serde(default)]
    keep: Option<usize>,
    command: Vec<String>,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    bind: Vec<String>,
    #[serde(default)]
    robind: Vec<String>,
    #[serde(default)]
    copy_files: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    health: Option<RawHealth>,
    stop_signal: Option<String>,
    stop_timeout: Option<String>,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    backoff: Option<RawBackoff>,
    #[serde(default)]
    leave_running: bool,
    deploy_timeout: Option<String>,
    max_bytes: Option<RawSize>,
    max_ratio: Option<u64>,
    #[serde(default)]
    userns: bool,
    userns_base: Option<u64>,
    #[serde(default)]
    listen: Vec<String>,
    overlap: Option<bool>,
    hooks: Option<RawHooks>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    before_start: Option<RawHook>,
    after_start: Option<RawHook>,
    before_stop: Option<RawHook>,
    after_stop: Option<RawHook>,
    on_rollback: Option<RawHook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    command: Vec<String>,
    #[serde(rename = "where")]
    place: Option<String>,
    timeout: Option<String>,
}

/// A size as a number of bytes or a string like `"8GiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    exec: Option<Vec<String>>,
    tcp: Option<String>,
    http: Option<String>,
    #[serde(default)]
    notify: bool,
    deadline: Option<String>,
    interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial: Option<String>,
    max: Option<String>,
    reset_after: Option<String>,
}

pub(super) fn validate(name: String, raw: RawApp) -> Result<AppConfig, AppConfigError> {
    let err = |field: &'static str, reason: String| AppConfigError::Field {
        app: name.clone(),
        field,
        reason,
    };
    if !is_app_name(&name) {
        return Err(err("name", "use letters, digits, '-', '_' and '.'".into()));
    }
    check_template(&raw.artifact).map_err(|r| err("artifact", r))?;
    if !raw.root.is_absolute() {
        return Err(err("root", "must be an absolute path".into()));
    }
    let keep = raw.keep.unwrap_or(5);
    if keep < 2 {
        return Err(err(
            "keep",
            "must be at least 2 (current and rollback)".into(),
        ));
    }
    let env: Vec<(String, String)> = raw.env.into_iter().collect();
    let jail = JailSettings {
        command: raw.command,
        user: raw.user,
        group: raw.group,
        bind: raw.bind,
        robind: raw.robind,
        copy_files: raw.copy_files,
        env,
        userns: None,
    };
    check_jail(&raw.root, &jail, &jail.command).map_err(|r| err("command", r))?;
    let health = match raw.health {
        Some(h) => Some(health(&raw.root, &jail, h).map_err(|(f, r)| err(f, r))?),
        None => None,
    };
    let stop_signal = match raw.stop_signal.as_deref() {
        None => Signal::SIGTERM,
        Some(s) => stop_signal(s).map_err(|r| err("stop_signal", r))?,
    };
    let stop_timeout =
        duration(raw.stop_timeout.as_deref(), 10).map_err(|r| err("stop_timeout", r))?;
    let backoff = backoff(raw.backoff).map_err(|(f, r)| err(f, r))?;
    let check = health.as_ref().map_or(SETTLE_BOUND, |h| h.deadline);
    let deploy_timeout = deploy_timeout(raw.deploy_timeout.as_deref(), check)
        .map_err(|r| err("deploy_timeout", r))?;
    let max_bytes = max_bytes(raw.max_bytes).map_err(|r| err("max_bytes", r))?;
    let userns = userns(raw.userns, raw.userns_base).map_err(|r| err("userns_base", r))?;
    let listen = listen(&raw.listen, &name).map_err(|r| err("listen", r))?;
    let overlap = raw.overlap.unwrap_or(!listen.is_empty());
    overlap_check(health.as_ref(), &listen, overlap).map_err(|r| err("health", r))?;
    let hooks = (raw.hooks.map(|h| hooks(&raw.root, &jail, h)))
        .transpose()
        .map_err(|(f, r)| err(f, r))?
        .unwrap_or_default();
    Ok(AppConfig {
        name,
        artifact: raw.artifact,
        root: raw.root,
        keep,
        jail,
        health,
        stop_signal,
        stop_timeout,
        restart: raw.restart,
        backoff,
        leave_running: raw.leave_running,
        deploy_timeout,
        max_bytes,
        max_ratio: raw.max_ratio.unwrap_or(DEFAULT_MAX_RATIO),
        userns,
        listen,
        overlap,
        hooks,
    })
}

/// Letters, digits, '-', '_' and '.', not empty and not starting with '.'.
fn is_app_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !name.is_empty() && !name.starts_with('.') && name.chars().all(allowed)
}

fn backoff(raw: Option<RawBackoff>) -> Result<Backoff, (&'static str, String)> {
    let d = Backoff::default();
    let Some(b) = raw else {
        return Ok(d);
    };
    let backoff = Backoff {
        initial: dur_or(b.initial.as_deref(), d.initial).map_err(|r| ("backoff.initial", r))?,
        max: dur_or(b.max.as_deref(), d.max).map_err(|r| ("backoff.max", r))?,
        reset_after: dur_or(b.reset_after.as_deref(), d.reset_after)
            .map_err(|r| ("backoff.reset_after", r))?,
    };
    if backoff.initial.is_zero() || backoff.max < backoff.initial {
        return Err(("backoff", "needs 0 < initial <= max".into()));
    }
    Ok(backoff)
}

/// The activation deadline: longer than the check it must wait for (`check`).
fn deploy_timeout(raw: Option<&str>, check: Duration) -> Result<Duration, String> {
    let timeout = dur_or(raw, DEFAULT_DEPLOY_TIMEOUT)?;
    if timeout <= check {
        return Err(format!(
            "must be longer than the health check's deadline ({})",
            humantime::format_duration(check)
        ));
    }
    Ok(timeout)
}

fn max_bytes(raw: Option<RawSize>) -> Result<u64, String> {
    let max = match raw {
        None => crate::artifact::DEFAULT_MAX_BYTES,
        Some(RawSize::Bytes(n)) => n,
        Some(RawSize::Text(t)) => parse_size(&t)?,
    };
    if max == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(max)
}

/// A bound on the check of an app without a health check (the executor's settle time).
const SETTLE_BOUND: Duration = Duration::from_secs(2);

fn userns(on: bool, base: Option<u64>) -> Result<Userns, String> {
    match (on, base) {
        (false, None) => Ok(Userns::Off),
        (false, Some(_)) => Err("needs userns = true".into()),
        (true, base) => Ok(Userns::On(
            base.map(IdRange::new)
                .transpose()
                .map_err(|e| e.to_string())?,
        )),
    }
}

fn hooks(root: &Path, jail: &JailSettings, raw: RawHooks) -> Result<Hooks, (&'static str, String)> {
    let all = [
        (
            HookPoint::BeforeStart,
            "hooks.before_start",
            raw.before_start,
        ),
        (HookPoint::AfterStart, "hooks.after_start", raw.after_start),
        (HookPoint::BeforeStop, "hooks.before_stop", raw.before_stop),
        (HookPoint::AfterStop, "hooks.after_stop", raw.after_stop),
        (HookPoint::OnRollback, "hooks.on_rollback", raw.on_rollback),
    ];
    let mut hooks = Hooks::default();
    for (point, field, h) in all {
        let Some(h) = h else { continue };
        hooks
            .0
            .insert(point, hook(root, jail, h).map_err(|r| (field, r))?);
    }
    Ok(hooks)
}

fn hook(root: &Path, jail: &JailSettings, h: RawHook) -> Result<Hook, String> {
    if h.command.first().is_none_or(|c| c.is_empty()) {
        return Err("command must name a program".into());
    }
    let place = match h.place.as_deref() {
        None | Some("jail") => HookPlace::Jail,
        Some("host") => HookPlace::Host,
        Some(other) => return Err(format!("where = {other:?}: use \"jail\" or \"host\"")),
    };
    match place {
        HookPlace::Jail => check_jail(root, jail, &h.command)?,
        // Looked up relative to anything, it could be a file of the release: the artifact's
        // author would run code as root on the host.
        HookPlace::Host if !h.command[0].starts_with('/') => {
            return Err(format!(
                "where = \"host\" needs an absolute program path, not {:?}",
                h.command[0]
            ));
        }
        HookPlace::Host => {}
    }
    let timeout = dur_or(h.timeout.as_deref(), DEFAULT_HOOK_TIMEOUT)?;
    if timeout.is_zero() {
        return Err("timeout must be above zero".into());
    }
    Ok(Hook {
        command: h.command,
        place,
        timeout,
    })
}

fn listen(raw: &[String], app: &str) -> Result<Vec<ListenSocket>, String> {
    if raw.len() > MAX_LISTEN_FDS {
        return Err(format!("at most {MAX_LISTEN_FDS} sockets"));
    }
    let sockets = raw
        .iter()
        .map(|s| ListenSocket::parse(s, app))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, s) in sockets.iter().enumerate() {
        if sockets[..i].iter().any(|o| o.addr == s.addr) {
            return Err(format!("{} is listed twice", s.addr));
        }
    }
    Ok(sockets)
}

/// While two instances overlap, the old one answers on every shared address: a tcp or http
/// check there would pass for the new one whatever state it is in. Such a check is refused.
fn overlap_check(
    h: Option<&HealthConfig>,
    listen: &[ListenSocket],
    overlap: bool,
) -> Result<(), String> {
    let Some(h) = h else { return Ok(()) };
    let target = match &h.probe {
        Probe::Tcp(a) => *a,
        Probe::Http(t) => match t.authority.parse::<SocketAddr>() {
            Ok(a) => a,
            // A host name: nothing to compare, the operator vouches for it.
            Err(_) => return Ok(()),
        },
        Probe::Exec(_) | Probe::Notify => return Ok(()),
    };
    if !overlap {
        return Ok(());
    }
    let shared = listen.iter().any(|l| match &l.addr {
        ListenAddr::Tcp(a) => {
            a.port() == target.port() && (a.ip() == target.ip() || a.ip().is_unspecified())
        }
        ListenAddr::Unix(_) => false,
    });
    if shared || listen.is_empty() {
        return Err(format!(
            "{target} is answered by the old instance too while a deploy overlaps them; \
             check the new one alone: exec, or tcp/http on an address only it serves"
        ));
    }
    Ok(())
}

fn check_template(t: &str) -> Result<(), String> {
    if !["s3://", "file://", "https://", "http://"]
        .iter()
        .any(|s| t.starts_with(s))
    {
        return Err("must start with s3://, file://, https:// or http://".into());
    }
    if !t.contains("{version}") {
        return Err("must contain {version}".into());
    }
    let rest = t.replace("{app}", "").replace("{version}", "");
    if rest.contains('{') || rest.contains('}') {
        return Err("only {app} and {version} may be substituted".into());
    }
    Ok(())
}

/// Runs the jail validator of `run` on these settings.
fn check_jail(root: &Path, j: &JailSettings, command: &[String]) -> Result<(), String> {
    // As `run` would see it, on the release `current` names (its user namespace aside:
    // the store's range is resolved at start).
    let launch = j.launch(&root.join("current"), command, j.copy_files);
    JailSpec::build(launch, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn health(
    root: &Path,
    jail: &JailSettings,
    h: RawHealth,
) -> Result<HealthConfig, (&'static str, String)> {
    let probe = match (h.exec, h.tcp, h.http) {
        (None, None, None) if h.notify => Probe::Notify,
        _ if h.notify => {
            return Err((
                "health",
                "set exactly one of exec, tcp, http or notify".to_string(),
            ));
        }
        (Some(cmd), None, None) => {
            check_jail(root, jail, &cmd).map_err(|r| ("health.exec", r))?;
            Probe::Exec(cmd)
        }
        (None, Some(addr), None) => Probe::Tcp(
            addr.parse()
                .map_err(|e| ("health.tcp", format!("{addr:?} is not IP:PORT ({e})")))?,
        ),
        (None, None, Some(url)) => Probe::Http(http_target(&url).map_err(|r| ("health.http", r))?),
        _ => {
            return Err((
                "health",
                "set exactly one of exec, tcp, http or notify".to_string(),
            ));
        }
    };
    let deadline = duration(h.deadline.as_deref(), 30).map_err(|r| ("health.deadline", r))?;
    let interval = duration(h.interval.as_deref(), 1).map_err(|r| ("health.interval", r))?;
    if interval.is_zero() || deadline.is_zero() {
        return Err(("health", "deadline and interval must be above zero".into()));
    }
    Ok(HealthConfig {
        probe,
        deadline,
        interval,
    })
}

fn http_target(url: &str) -> Result<HttpTarget, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs (the check talks to the local app, no TLS)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || !authority.contains(':') {
        return Err(format!(
            "{url:?} needs HOST:PORT, e.g. http://127.0.0.1:8080/health"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains whitespace or control characters"));
    }
    Ok(HttpTarget {
        url: url.to_string(),
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// The signals `run` forwards to the jailed command, plus SIGKILL.
fn stop_signal(s: &str) -> Result<Signal, String> {
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    let sig: Signal = name.parse().map_err(|_| format!("unknown signal {s:?}"))?;
    let ok = sig == Signal::SIGKILL || crate::jail::process::FORWARDED.contains(&sig);
    if !ok || matches!(sig, Signal::SIGCONT | Signal::SIGWINCH) {
        return Err(format!(
            "{s} does not stop a jail; use TERM, INT, QUIT, HUP, USR1, USR2, ALRM or KILL"
        ));
    }
    Ok(sig)
}

fn duration(s: Option<&str>, default_secs: u64) -> Result<Duration, String> {
    dur_or(s, Duration::from_secs(default_secs))
}

fn dur_or(s: Option<&str>, default: Duration) -> Result<Duration, String> {
    match s {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like \"10s\" or \"1m 30s\" ({e})")),
    }
}
