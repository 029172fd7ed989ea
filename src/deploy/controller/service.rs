//! The controller's shell: it feeds the [`Core`] what the agent delivers (the `_deploy`
//! consumer, superseding slots, the member list, the executor's outcomes) and carries out
//! its effects (submit to the [`Executor`], publish a slot, write the state file).
//!
//! Ordering that matters: the state file is written before a `_deploy` delivery is
//! acknowledged, so an accepted event is never lost; the slots are subscribed to before
//! the held ones are read, so none falls between the two.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use super::core::{Core, Effect, Persisted, sync_reached};
use super::slot_kinds::{RESYNC_ORDER, slot_kinds};
use super::targets::MemberView;
use crate::agent::consumers::Delivery;
use crate::agent::{Agent, AgentError, AgentHandle, Command};
use crate::deploy::config::DeployConfig;
use crate::deploy::control::CONTROL_EVENT;
use crate::deploy::executor::{Executor, ExecutorError, ExecutorOptions, Finished, Submit};
use crate::deploy::history::{self, HISTORY_QUERY};
use crate::deploy::journal::Entry;
use crate::deploy::metrics::DeployMetrics;
use crate::deploy::signed::{Policy, Trust, Verifier};
use crate::deploy::status::{AppView, DeployView, EVENT_NAME, NodeStatus, Progress, STATUS_QUERY};

/// Name of the controller's in-process consumer (the journal owes events to it by name).
const CONSUMER: &str = "deploy";
/// Name of its consumer of rollout orders.
const ORDERS_CONSUMER: &str = "deploy-orders";
/// State file in the data dir.
const STATE_FILE: &str = "deploy-state";
/// How often members and the apps' status are refreshed.
const TICK: Duration = Duration::from_millis(500);
/// Replay-protection memory of the event path.
const SEEN_IDS: usize = 4096;

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("starting the apps: {0}")]
    Executor(#[from] ExecutorError),
    #[error("deploy state file {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the API and the `status` query read.
pub struct Shared {
    core: Mutex<Core>,
    node: String,
    views: Mutex<BTreeMap<String, AppView>>,
    /// Deploys by outcome and phase durations ([`DeployMetrics::observe_phase`]).
    pub metrics: DeployMetrics,
    /// Each app's deploy journal, oldest first (copied from the executor's).
    journals: Mutex<BTreeMap<String, Vec<Entry>>>,
}

impl Shared {
    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's answer to the `status` query (`payload`: an app name, or empty).
    pub fn status(&self, payload: &[u8]) -> NodeStatus {
        let only = String::from_utf8_lossy(payload).trim().to_owned();
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        NodeStatus {
            node: self.node.clone(),
            apps: views
                .values()
                .filter(|v| only.is_empty() || v.app == only)
                .cloned()
                .collect(),
        }
    }

    /// This node's answer to the `history` query (see [`crate::deploy::history`]).
    pub fn history(&self, payload: &[u8]) -> Vec<u8> {
        let req = history::Request::parse(payload);
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let journals = self.journals.lock().unwrap_or_else(|e| e.into_inner());
        let held: Vec<history::Held<'_>> = journals
            .iter()
            .map(|(app, journal)| {
                let v = views.get(app);
                history::Held {
                    app,
                    journal,
                    current: v.and_then(|v| v.current.as_deref()),
                    previous: v.and_then(|v| v.previous.as_deref()),
                    releases: v.map_or(&[], |v| &v.releases),
                }
            })
            .collect();
        history::answer(&self.node, &held, &req)
    }
}

impl DeployView for Shared {
    fn progress(&self, event_id: &str) -> Option<Progress> {
        self.core().progress(&event_id.to_ascii_lowercase())
    }

    fn admit_control(&self, control: &[u8]) -> Result<(), String> {
        (self.core().admit_control(control, crate::wall::secs()))
            .map(drop)
            .map_err(|e| format!("{e}; this agent would not act on it, so it was not sent"))
    }

    fn admit(&self, event: &[u8]) -> Result<String, String> {
        use crate::deploy::signed::VerifyError;
        self.core()
            .admit(event, crate::wall::secs())
            .map(|e| e.id_hex())
            .map_err(|e| match e {
                VerifyError::Replayed { .. } => format!(
                    "{e}: this agent has accepted it before, so it was not sent; \
                     a deploy event is accepted once: sign a new one to deploy again"
                ),
                e => format!("{e}; this agent would not act on it, so it was not sent"),
            })
    }

    fn metrics(&self) -> Vec<crate::metrics::Family> {
        let views: Vec<AppView> = (self.views.lock().unwrap_or_else(|e| e.into_inner()))
            .values()
            .cloned()
            .collect();
        self.metrics.families(&views)
    }
}

/// The controller, registered with an agent that has not started yet.
pub struct Controller {
    shared: Arc<Shared>,
    deliveries: mpsc::Receiver<Delivery>,
    /// `_rollout` user events.
    orders: mpsc::Receiver<Delivery>,
    config: DeployConfig,
    data_dir: PathBuf,
    /// How long a node with no peer alive waits before it counts as synced.
    sync_grace: Duration,
}

impl Controller {
    /// Registers the controller's consumer, slot validators and `status` query; `config`
    /// is the agent's deploy tables, parsed ([`DeployConfig::parse`]).
    pub fn register(agent: &mut Agent, config: DeployConfig) -> Self {
        let s = agent.settings();
        let trust = Trust::new(config.trusted.clone(), s.dev);
        if matches!(trust, Trust::Keys(ref k) if k.is_empty()) {
            tracing::warn!(
                "no trusted_signing_keys: this agent refuses every deploy event and every cluster key change (add the operator's public key)"
            );
        }
        let policy = Policy {
            trusted: trust.clone(),
            max_age: config.max_age.as_secs(),
            max_skew: config.max_skew.as_secs(),
        };
        let verifier = Verifier::new(policy.clone(), SEEN_IDS);
        let core = Core::new(&s.node, config.apps.keys().cloned().collect(), verifier);
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            node: s.node.clone(),
            views: Mutex::new(BTreeMap::new()),
            metrics: DeployMetrics::new(config.apps.keys().cloned()),
            journals: Mutex::new(BTreeMap::new()),
        });
        let data_dir = s.data_dir.clone();
        let sync_grace = s.push_pull_interval;
        // The keys that may deploy code are the keys that may change the cluster's keys.
        agent.authorise_key_operations(policy);
        for (kind, policy) in slot_kinds(&trust) {
            agent.register_kind(kind, policy);
        }
        let deliveries = agent.register_consumer(CONSUMER, EVENT_NAME);
        let orders = agent.register_consumer(ORDERS_CONSUMER, CONTROL_EVENT);
        let answer = shared.clone();
        agent.register_query(STATUS_QUERY, move |payload| {
            serde_json::to_vec(&answer.status(payload)).unwrap_or_default()
        });
        let answer = shared.clone();
        agent.register_query(HISTORY_QUERY, move |payload| answer.history(payload));
        Controller {
            shared,
            deliveries,
            orders,
            config,
            data_dir,
            sync_grace,
        }
    }

    /// What the control API serves.
    pub fn view(&self) -> Arc<dyn DeployView> {
        self.shared.clone()
    }

    /// Starts the apps and runs until the agent stops; then stops the apps (except those
    /// with `leave_running`). `up` is told once every app is up (adopted, or started from
    /// `current`) and the saved state is restored: the service is ready.
    pub async fn run(
        mut self,
        agent: AgentHandle,
        up: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), ControllerError> {
        let state_path = self.data_dir.join(STATE_FILE);
        let persisted = load(&state_path)?;
        let opts = self.executor_options(&agent)?;
        let (executor, mut finished) = Executor::start(self.config.apps.clone(), opts).await?;
        let mut shell = Shell {
            shared: self.shared.clone(),
            agent: agent.clone(),
            executor,
            state_path,
            started: std::time::Instant::now(),
            sync_grace: self.sync_grace,
        };
        for app in shell.executor.apps() {
            shell.journal(&app);
        }
        let mut slots = agent.superseding();
        let fx = shell
            .shared
            .core()
            .restore(persisted, crate::wall::millis());
        shell.apply(fx).await;
        shell.resync().await;
        shell.refresh().await;
        let _ = up.send(());
        let mut stop = agent.stopping();
        let mut tick = tokio::time::interval(TICK);
        // With no apps the executor has no task to report: its channel is closed at once.
        let mut executor_open = !shell.executor.apps().is_empty();
        loop {
            // Slots before deliveries: a push/pull hands over the desired state (a slot) in
            // the same merge as the older `_deploy` events it replays, and the slot is
            // published first. Taking it first, a node that was away goes straight to the
            // latest version instead of deploying each older one on the way.
            tokio::select! {
                biased;
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
                item = slots.recv() => match item {
                    Ok(item) => {
                        let fx = shell.shared.core().on_slot(&item);
                        shell.apply(fx).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => shell.resync().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                d = self.deliveries.recv() => match d {
                    Some(d) => shell.deliver(d).await,
                    None => break,
                },
                d = self.orders.recv() => match d {
                    Some(d) => shell.order(d).await,
                    None => break,
                },
                f = finished.recv(), if executor_open => match f {
                    Some(f) => shell.finished(f).await,
                    None => executor_open = false,
                },
                _ = tick.tick() => shell.refresh().await,
            }
        }
        shell.executor.shutdown(false).await;
        Ok(())
    }

    /// How the executor fetches, unpacks and supervises this node's apps.
    fn executor_options(&self, agent: &AgentHandle) -> Result<ExecutorOptions, ControllerError> {
        let apps = self.data_dir.join("apps");
        let supervisor = crate::deploy::supervisor::SupervisorOptions::new(apps.clone())
            .map_err(|source| ControllerError::State { path: apps, source })?;
        Ok(ExecutorOptions {
            node: self.shared.node.clone(),
            fetch: self.config.fetch.clone(),
            unpack: crate::artifact::UnpackOptions {
                same_owner: nix::unistd::geteuid().is_root(),
                ..Default::default()
            },
            supervisor,
            agent: Some(agent.clone()),
        })
    }
}

/// The I/O side of a running controller.
struct Shell {
    shared: Arc<Shared>,
    agent: AgentHandle,
    executor: Executor,
    state_path: PathBuf,
    started: std::time::Instant,
    sync_grace: Duration,
}

impl Shell {
    /// A `_deploy` event: decided, effects done (state file written), then acknowledged.
    async fn deliver(&mut self, d: Delivery) {
        let fx = self
            .shared
            .core()
            .on_event(&d.event.payload, crate::wall::secs());
        if self.apply(fx).await {
            d.ack();
        }
    }

    /// A `_rollout` order: decided, its slot published, then acknowledged.
    async fn order(&mut self, d: Delivery) {
        let fx = (self.shared.core()).on_control(&d.event.payload, crate::wall::secs());
        if self.apply(fx).await {
            d.ack();
        }
    }

    async fn finished(&mut self, f: Finished) {
        tracing::info!(app = %f.app, outcome = ?f.outcome, phases = ?f.phases, "deploy finished");
        self.shared.metrics.deploy_finished(&f.app, &f.outcome);
        for (phase, took) in f.phases.iter() {
            self.shared.metrics.observe_phase(&f.app, phase, took);
        }
        self.journal(&f.app);
        let fx = self
            .shared
            .core()
            .on_finished(&f.app, &f.outcome, crate::wall::millis());
        self.apply(fx).await;
        self.refresh().await;
    }

    /// Copies the app's journal from the executor for the `history` query.
    fn journal(&self, app: &str) {
        let entries = self.executor.history(app).unwrap_or_default();
        let mut journals = self
            .shared
            .journals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        journals.insert(app.to_owned(), entries);
    }

    /// Re-reads every held slot (at start, and after the subscription lagged).
    async fn resync(&mut self) {
        for kind in RESYNC_ORDER {
            let items = self
                .agent
                .call(|reply| Command::Superseding {
                    kind: kind.to_owned(),
                    reply,
                })
                .await
                .unwrap_or_default();
            for item in items {
                let fx = self.shared.core().on_slot(&item);
                self.apply(fx).await;
            }
        }
    }

    /// Whether the core may be told it is synced now ([`sync_reached`]).
    async fn sync_due(&self) -> bool {
        if self.shared.core().is_synced() {
            return false;
        }
        let Ok(info) = self.agent.call(Command::Info).await else {
            return false;
        };
        let push_pulls = info.counters.get("push_pulls_merged").copied().unwrap_or(0);
        let peers = info.members_alive.saturating_sub(1);
        sync_reached(push_pulls, peers, self.started.elapsed(), self.sync_grace)
    }

    /// Members into the core; the apps' runtime status into the views. Once the agent
    /// merged its first push/pull, every held slot is read again and the core is synced.
    async fn refresh(&mut self) {
        let sync = self.sync_due().await;
        if sync {
            self.resync().await;
        }
        if let Ok(list) = self.agent.call(Command::Members).await {
            let members = list.into_iter().map(MemberView::from_member).collect();
            let fx = self.shared.core().on_members(members);
            self.apply(fx).await;
        }
        if sync {
            tracing::info!("deploy controller synced with the cluster");
            let fx = self.shared.core().on_synced();
            self.apply(fx).await;
        }
        let fx = self.shared.core().on_tick(crate::wall::millis());
        self.apply(fx).await;
        let mut views = BTreeMap::new();
        for app in self.executor.apps() {
            let rt = self.executor.status(&app).await;
            let core = self.shared.core();
            let desired = core.desired(&app);
            let mut v = AppView {
                app: app.clone(),
                desired_version: desired.map(|e| e.version.clone()),
                desired_event: desired.map(|e| e.id_hex()),
                phase: core.phase(&app),
                last: core.last_outcome(&app).cloned(),
                ..AppView::default()
            };
            drop(core);
            if let Some(rt) = rt {
                v.current = rt.current;
                v.previous = rt.previous;
                v.state = serde_json::to_value(rt.jail.state)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
                    .unwrap_or_default();
                v.pid = rt.jail.pid;
                v.restarts = rt.jail.restarts;
                v.since = Some(rt.jail.since);
                v.releases = rt.releases;
                if let Some(a) = rt.activating {
                    v.phase = format!("activating {a}");
                }
            }
            views.insert(app, v);
        }
        *self.shared.views.lock().unwrap_or_else(|e| e.into_inner()) = views;
    }

    /// Carries out effects; false if the state file could not be written (the cause is
    /// logged and the triggering delivery stays owed).
    async fn apply(&mut self, fx: Vec<Effect>) -> bool {
        let mut ok = true;
        for e in fx {
            match e {
                Effect::Persist => ok &= self.persist().await,
                Effect::Publish(item) => {
                    let r = self
                        .agent
                        .call(|reply| Command::Publish { item, reply })
                        .await;
                    if let Err(e) | Ok(Err(e)) = r {
                        log_publish_error(&e);
                    }
                }
                Effect::Activate {
                    app,
                    event,
                    signer,
                    swarm,
                } => {
                    // An empty URL is the app's own artifact template (the executor's rule).
                    let req = Submit {
                        event_id: event.id_hex(),
                        version: event.version.clone(),
                        url: event.url.clone(),
                        sha256: event.sha256,
                        chunks: event.chunks,
                        swarm,
                        ignore_stop_hook_failures: event.options.ignore_stop_hook_failures,
                        signer,
                    };
                    tracing::info!(%app, version = %event.version, event = %event.id_hex(), "deploying");
                    if let Err(e) = self.executor.submit(&app, req) {
                        tracing::error!(%app, cause = %e, "deploy could not be submitted");
                    }
                }
            }
        }
        ok
    }

    async fn persist(&self) -> bool {
        let bytes = self.shared.core().persisted().encode();
        let path = self.state_path.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::atomic_file::write_atomic(&path, &bytes, 0o600)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = &r {
            tracing::warn!(path = %self.state_path.display(), cause = %e, "deploy state not written; the event stays owed and is retried");
        }
        r.is_ok()
    }
}

fn log_publish_error(e: &AgentError) {
    tracing::warn!(cause = %e, "deploy state not broadcast");
}

fn load(path: &std::path::Path) -> Result<Persisted, ControllerError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Persisted::decode(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), cause = %e, "deploy state unreadable; starting empty (the desired state comes back through gossip)");
            Persisted::default()
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(source) => Err(ControllerError::State {
            path: path.to_owned(),
            source,
        }),
    }
}
