//! `[apps.NAME]`: one application's settings, parsed and validated before anything runs.
//!
//! [`parse_apps`] turns the `apps` table of a TOML document into typed [`AppConfig`]s. Every
//! error names the app and the field (`apps.web.stop_timeout: ...`). The jail settings mean
//! what the flags of `droot-fleet run` mean and are checked by the same validator
//! ([`crate::jail::JailSpec::build`]), so an app that parses here starts the way the same
//! `run` command line would.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::artifact::guard::DEFAULT_MAX_RATIO;
use crate::id_range::IdRange;
use crate::jail::{JailSpec, SpecInput};
use crate::sizes::parse_size;

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
    /// `run --root ROOT [flags] -- COMMAND`, as arguments to the droot-fleet binary.
    /// `with_copy` is false for health checks: the host files are copied once, at start.
    pub fn run_args(&self, root: &Path, command: &[String], with_copy: bool) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into(), "--root".into(), root.into()];
        for (flag, v) in [("--user", &self.user), ("--group", &self.group)] {
            if let Some(v) = v {
                a.extend([flag.into(), v.into()]);
            }
        }
        for b in &self.bind {
            a.extend(["--bind".into(), b.into()]);
        }
        for b in &self.robind {
            a.extend(["--robind".into(), b.into()]);
        }
        if self.copy_files && with_copy {
            a.push("--cp".into());
        }
        for (k, v) in &self.env {
            a.extend(["--env".into(), format!("{k}={v}").into()]);
        }
        if let Some(r) = self.userns {
            a.extend([
                "--userns".into(),
                "--userns-base".into(),
                r.base().to_string().into(),
            ]);
        }
        a.push("--".into());
        a.extend(command.iter().map(OsString::from));
        a
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
}

/// Default `deploy_timeout`: 15 minutes (a few GiB over a slow link, plus the health check).
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

impl AppConfig {
    /// The artifact URL of one version.
    pub fn artifact_url(&self, version: &str) -> String {
        self.artifact
            .replace("{app}", &self.name)
            .replace("{version}", version)
    }
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
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

fn validate(name: String, raw: RawApp) -> Result<AppConfig, AppConfigError> {
    let err = |field: &'static str, reason: String| AppConfigError::Field {
        app: name.clone(),
        field,
        reason,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
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
    let d = Backoff::default();
    let backoff = match raw.backoff {
        None => d,
        Some(b) => Backoff {
            initial: dur_or(b.initial.as_deref(), d.initial)
                .map_err(|r| err("backoff.initial", r))?,
            max: dur_or(b.max.as_deref(), d.max).map_err(|r| err("backoff.max", r))?,
            reset_after: dur_or(b.reset_after.as_deref(), d.reset_after)
                .map_err(|r| err("backoff.reset_after", r))?,
        },
    };
    if backoff.initial.is_zero() || backoff.max < backoff.initial {
        return Err(err("backoff", "needs 0 < initial <= max".into()));
    }
    let deploy_timeout = dur_or(raw.deploy_timeout.as_deref(), DEFAULT_DEPLOY_TIMEOUT)
        .map_err(|r| err("deploy_timeout", r))?;
    let check = health.as_ref().map_or(SETTLE_BOUND, |h| h.deadline);
    if deploy_timeout <= check {
        return Err(err(
            "deploy_timeout",
            format!(
                "must be longer than the health check's deadline ({})",
                humantime::format_duration(check)
            ),
        ));
    }
    let max_bytes = match raw.max_bytes {
        None => crate::artifact::DEFAULT_MAX_BYTES,
        Some(RawSize::Bytes(n)) => n,
        Some(RawSize::Text(t)) => parse_size(&t).map_err(|r| err("max_bytes", r))?,
    };
    if max_bytes == 0 {
        return Err(err("max_bytes", "must be greater than zero".into()));
    }
    let userns = userns(raw.userns, raw.userns_base).map_err(|r| err("userns_base", r))?;
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
    })
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
    let input = SpecInput {
        root: root.join("current"),
        user: j.user.clone(),
        group: j.group.clone(),
        bind: j.bind.clone(),
        robind: j.robind.clone(),
        copy_host_files: j.copy_files,
        env: j.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        command: command.to_vec(),
        ..Default::default()
    };
    JailSpec::build(input)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn health(
    root: &Path,
    jail: &JailSettings,
    h: RawHealth,
) -> Result<HealthConfig, (&'static str, String)> {
    let probe = match (h.exec, h.tcp, h.http) {
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
            return Err(("health", "set exactly one of exec, tcp or http".to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
node = "ignored"
[apps.web]
artifact = "s3://bucket/{app}/{version}.tar.gz"
root = "/var/containers/web"
command = ["httpd", "-f", "-p", "8080"]
user = "app"
bind = ["/srv/data:/data"]
env = { MODE = "prod" }
stop_signal = "INT"
stop_timeout = "5s"
restart = "on-failure"
backoff = { initial = "200ms", max = "10s" }
leave_running = true
[apps.web.health]
http = "http://127.0.0.1:8080/health"
deadline = "20s"
interval = "500ms"
"#;

    #[test]
    fn parses_a_full_app() {
        let apps = parse_apps(WEB).unwrap();
        let web = &apps["web"];
        assert_eq!(
            web.artifact_url("v42"),
            "s3://bucket/web/v42.tar.gz".to_string()
        );
        assert_eq!(web.keep, 5);
        assert_eq!(web.stop_signal, Signal::SIGINT);
        assert_eq!(web.stop_timeout, Duration::from_secs(5));
        assert_eq!(web.restart, RestartPolicy::OnFailure);
        assert_eq!(web.backoff.initial, Duration::from_millis(200));
        assert_eq!(web.backoff.reset_after, Duration::from_secs(60));
        assert!(web.leave_running);
        let h = web.health.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_millis(500));
        match &h.probe {
            Probe::Http(t) => {
                assert_eq!(t.authority, "127.0.0.1:8080");
                assert_eq!(t.path, "/health");
            }
            p => panic!("{p:?}"),
        }
        let args = web.jail.run_args(Path::new("/r"), &web.jail.command, true);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            args.join(" "),
            "run --root /r --user app --bind /srv/data:/data --env MODE=prod -- httpd -f -p 8080"
        );
    }

    fn with(extra: &str) -> String {
        format!(
            "[apps.a]\nartifact = \"file:///x/{{version}}.tar\"\nroot = \"/r\"\ncommand = [\"true\"]\n{extra}"
        )
    }

    fn field_error(extra: &str) -> (String, String) {
        match parse_apps(&with(extra)).unwrap_err() {
            AppConfigError::Field { app, field, .. } => (app, field.to_string()),
            e => panic!("{extra}: {e}"),
        }
    }

    #[test]
    fn errors_name_the_app_and_the_field() {
        for (extra, field) in [
            ("stop_timeout = \"soon\"", "stop_timeout"),
            ("stop_signal = \"WINCH\"", "stop_signal"),
            ("stop_signal = \"NOPE\"", "stop_signal"),
            ("bind = [\"rel\"]", "command"),
            ("keep = 1", "keep"),
            ("backoff = { initial = \"0s\" }", "backoff"),
            ("[apps.a.health]\ntcp = \"localhost\"", "health.tcp"),
            ("[apps.a.health]\nhttp = \"https://x:1/\"", "health.http"),
            (
                "[apps.a.health]\ntcp = \"127.0.0.1:1\"\nhttp = \"http://a:1/\"",
                "health",
            ),
            ("[apps.a.health]\nexec = []", "health.exec"),
            ("deploy_timeout = \"never\"", "deploy_timeout"),
            ("deploy_timeout = \"1s\"", "deploy_timeout"),
            (
                "deploy_timeout = \"20s\"\n[apps.a.health]\ntcp = \"127.0.0.1:1\"",
                "deploy_timeout",
            ),
            ("max_bytes = \"8GB\"", "max_bytes"),
            ("max_bytes = 0", "max_bytes"),
            ("userns_base = 131072", "userns_base"),
            ("userns = true\nuserns_base = 1000", "userns_base"),
            (
                "[apps.a.health]\ntcp = \"127.0.0.1:1\"\ninterval = \"x\"",
                "health.interval",
            ),
        ] {
            assert_eq!(field_error(extra), ("a".into(), field.into()), "{extra}");
        }
        let e = parse_apps(&with("")).unwrap();
        assert_eq!(e["a"].restart, RestartPolicy::Always);
        assert_eq!(e["a"].stop_signal, Signal::SIGTERM);
        assert_eq!(e["a"].deploy_timeout, DEFAULT_DEPLOY_TIMEOUT);
        assert_eq!(e["a"].max_bytes, 8 << 30);
        assert_eq!(e["a"].max_ratio, DEFAULT_MAX_RATIO);
        let e = parse_apps(&with(
            "deploy_timeout = \"2m\"\nmax_bytes = \"512MiB\"\nmax_ratio = 0",
        ))
        .unwrap();
        assert_eq!(e["a"].deploy_timeout, Duration::from_secs(120));
        assert_eq!((e["a"].max_bytes, e["a"].max_ratio), (512 << 20, 0));
        let e = parse_apps(&with("max_bytes = 1000")).unwrap();
        assert_eq!(e["a"].max_bytes, 1000);
        assert_eq!(
            e["a"].userns,
            Userns::Off,
            "an absent key keeps today's behaviour"
        );
    }

    #[test]
    fn userns_passes_its_range_to_run() {
        let apps = parse_apps(&with("userns = true\nuserns_base = 131072")).unwrap();
        let r = IdRange::new(131072).unwrap();
        assert_eq!(apps["a"].userns, Userns::On(Some(r)));
        let auto = parse_apps(&with("userns = true")).unwrap();
        assert_eq!(auto["a"].userns, Userns::On(None));
        let mut jail = apps["a"].jail.clone();
        jail.userns = Some(r);
        let args = jail.run_args(Path::new("/r"), &["x".into()], false);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            args.join(" "),
            "run --root /r --userns --userns-base 131072 -- x"
        );
    }

    #[test]
    fn bad_templates_and_names_and_types() {
        let t = |a: &str| {
            parse_apps(&format!(
                "[apps.a]\nartifact = \"{a}\"\nroot = \"/r\"\ncommand = [\"true\"]\n"
            ))
        };
        assert!(t("ftp://x/{version}").is_err());
        assert!(t("s3://b/{app}.tar").is_err());
        assert!(t("s3://b/{ver}/{version}").is_err());
        assert!(t("s3://b/{app}/{version}").is_ok());
        let bad_name = with("").replace("apps.a", "apps.\"../x\"");
        assert!(matches!(
            parse_apps(&bad_name),
            Err(AppConfigError::Field { field: "name", .. })
        ));
        let unknown = parse_apps(&with("restart = \"sometimes\"")).unwrap_err();
        assert!(unknown.to_string().contains("sometimes"), "{unknown}");
        let typo = parse_apps(&with("comand = [\"x\"]")).unwrap_err();
        assert!(typo.to_string().contains("comand"), "{typo}");
    }

    #[test]
    fn the_commented_example_in_config_parses() {
        let example = include_str!("../../config/agent.toml");
        let start = example.find("# [apps.web]").expect("example block");
        let text: String = example[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let apps = parse_apps(&text).unwrap();
        assert!(matches!(
            apps["web"].health.as_ref().unwrap().probe,
            Probe::Http(_)
        ));
        assert_eq!(
            apps["web"].jail.env,
            vec![("MODE".into(), "production".into())]
        );
    }
}
