//! Lifecycle hooks (`[apps.NAME.hooks]`): a command run at a point of a deploy, in the jail
//! of a release (a fresh `droot-fleet run` on it, like an exec health check: the app's
//! user, binds, env, capability cut and seccomp filter) or on the host.
//!
//! When each runs and what its failure does is the activation machine's to decide
//! ([`super::activation::HookPoint`]); this module runs one. Every hook has a timeout, at
//! which its process group is killed (a jail hook's `run` takes its jail with it: the
//! jail's init dies with it). Its output is drained as it comes and only its tail is kept,
//! for the agent's log and the deploy's error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::app::JailSettings;
use super::health::{last_chars, wait_with_tail};

/// A lifecycle hook of an app (`[apps.NAME.hooks]`), by when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookPoint {
    /// In the new release's jail, before its instance starts; a failure rolls back.
    BeforeStart,
    /// Once the new instance is ready, before the old one stops; a failure rolls back.
    AfterStart,
    /// In the old release's jail, before its instance stops; a failure rolls back unless the
    /// deploy says to ignore it.
    BeforeStop,
    /// Once the old instance stopped; a failure is logged only.
    AfterStop,
    /// Once a rollback brought the old release back; a failure is added to the error.
    OnRollback,
}

impl HookPoint {
    pub const ALL: [HookPoint; 5] = [
        HookPoint::BeforeStart,
        HookPoint::AfterStart,
        HookPoint::BeforeStop,
        HookPoint::AfterStop,
        HookPoint::OnRollback,
    ];

    /// Its key in `[apps.NAME.hooks]`.
    pub fn key(self) -> &'static str {
        match self {
            HookPoint::BeforeStart => "before_start",
            HookPoint::AfterStart => "after_start",
            HookPoint::BeforeStop => "before_stop",
            HookPoint::AfterStop => "after_stop",
            HookPoint::OnRollback => "on_rollback",
        }
    }
}

/// Which hooks an app has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSet([bool; 5]);

impl HookSet {
    pub fn with(mut self, point: HookPoint) -> Self {
        self.0[point as usize] = true;
        self
    }

    pub fn has(self, point: HookPoint) -> bool {
        self.0[point as usize]
    }
}

/// Where a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPlace {
    /// In a fresh jail on the release (the default).
    Jail,
    /// On the host, as the agent's user, with a clean environment.
    Host,
}

/// One hook, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub command: Vec<String>,
    pub place: HookPlace,
    pub timeout: Duration,
}

/// An app's hooks, by point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks(pub BTreeMap<HookPoint, Hook>);

impl Hooks {
    /// Which points have a hook.
    pub fn set(&self) -> HookSet {
        self.0.keys().fold(HookSet::default(), |s, p| s.with(*p))
    }
}

/// Default hook timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// How much of a hook's output goes into the error and the log.
const ERROR_TAIL: usize = 500;

/// What a hook is run with.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// The droot-fleet binary (jail hooks).
    pub exe: PathBuf,
    /// The release directory whose jail it runs in.
    pub root: PathBuf,
    pub jail: JailSettings,
    /// `DROOT_FLEET_*` variables: app, version, previous version, event id, node.
    pub env: Vec<(String, String)>,
}

/// Runs `hook` to its end, its timeout or `deadline` (the deploy's), whichever comes
/// first. `Ok` carries the tail of its output; `Err` says how it failed, with that tail.
pub async fn run(
    point: HookPoint,
    hook: &Hook,
    r: &HookRun,
    deadline: Option<tokio::time::Instant>,
) -> Result<String, String> {
    let mut cmd = match hook.place {
        HookPlace::Jail => {
            let mut launch = r.jail.launch(&r.root, &hook.command, false);
            launch
                .env
                .extend(r.env.iter().map(|(k, v)| format!("{k}={v}")));
            let mut c = tokio::process::Command::new(&r.exe);
            c.args(launch.to_args()).env_clear();
            c
        }
        HookPlace::Host => {
            let mut c = tokio::process::Command::new(&hook.command[0]);
            c.args(&hook.command[1..])
                .env_clear()
                .env("PATH", crate::jail::env::DEFAULT_PATH)
                .envs(r.env.iter().map(|(k, v)| (k, v)))
                .env("DROOT_FLEET_RELEASE_DIR", &r.root)
                .current_dir("/");
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let name = point.key();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{name} hook {:?}: cannot start: {e}", hook.command))?;
    let group = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let own = tokio::time::Instant::now() + hook.timeout;
    let end = deadline.map_or(own, |d| d.min(own));
    let ran = tokio::time::timeout_at(end, wait_with_tail(&mut child)).await;
    let Ok((status, text)) = ran else {
        if let Some(g) = group {
            let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.wait().await;
        let why = match end < own {
            true => "at the deploy's deadline (deploy_timeout)".to_string(),
            false => format!(
                "after its timeout of {}",
                humantime::format_duration(hook.timeout)
            ),
        };
        return Err(format!("{name} hook {:?}: killed {why}", hook.command));
    };
    let tail = last_chars(&text, ERROR_TAIL);
    match status {
        Ok(st) if st.success() => Ok(tail),
        Ok(st) => Err(format!(
            "{name} hook {:?} exited with {st}: {tail}",
            hook.command
        )),
        Err(e) => Err(format!("{name} hook {:?}: {e}", hook.command)),
    }
}
