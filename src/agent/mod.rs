//! `droot-fleet agent`: the daemon that runs the gossip core on real sockets.
//!
//! The protocol itself is the sans-io [`crate::gossip`] core; this module is its shell.
//!
//! | file | concept |
//! |---|---|
//! | [`config`] | TOML file + flags → validated [`config::Settings`] |
//! | [`sansio`] | **all protocol state** as a state machine ([`sansio::AgentMachine`]): inputs → effects, no I/O |
//! | [`task`] | the **one task owning the machine**: biased `select!` over [`input::Input`], carries out its effects |
//! | [`input`] | what the task reacts to ([`input::Input`]) and the handler [`input::Slot`]: named by every I/O part, so none of them depends on the task |
//! | `shell` | the executor's I/O half: socket sends, disk writer, spawned dials, handlers, consumers |
//! | [`startup`] | keyring, state file and journal replay at start |
//! | [`scheduler`] | the single ordered timer heap (foca issue #26) |
//! | [`net`] | UDP socket (sealed datagrams, drop counters), sealed TCP streams |
//! | [`members`] | member status (alive/suspect/left/failed) from foca's state |
//! | [`pending`] | user-event handlers owed until their process started (retry, journal) |
//! | [`consumers`] | in-process event consumers, owed until they acknowledge (their channels; names: [`sansio::consumer_name`]) |
//! | [`handlers`] | event/query handler processes (spawn, timeout, stdin); which ones and their env: [`sansio::trigger`] |
//! | [`queries`] | built-in query handlers registered in Rust |
//! | [`keys`] | keyring file (load, save, `--dev` key); the key-rotation query itself: [`sansio::key_command`] |
//! | [`identity`] | the node identity file (key and certificate) and `--dev` self-enrollment |
//! | [`slots`] | capped connection slots for the accept loops (API, gossip TCP) |
//! | [`disk`] | the writer thread: journal, state file and keyring writes off the task |
//! | [`snapshot`] | the data-dir state file (written atomically) and events journal; what it holds: [`sansio::persisted`] |
//! | [`monitor`] | NDJSON log/event stream for `GET /v1/monitor` |
//!
//! Guarantees: every datagram and stream frame is sealed with the keyring's primary key
//! and opened before parsing (failures are counted, never logged per packet); an event
//! is journaled *before* its handlers run, so a restarted agent never runs a handler
//! twice for one event, and a handler that could not start stays owed until it did;
//! the agent task never waits on the disk ([`disk`]); on SIGTERM/SIGINT/`leave` the
//! leave datagrams are handed to the kernel and the state file is written before the
//! process exits.

pub mod config;
pub mod consumers;
pub mod counters;
pub mod disk;
pub mod fanout;
pub mod handlers;
pub mod identity;
pub mod input;
pub mod key_auth;
pub mod keys;
pub mod members;
pub mod monitor;
pub mod net;
pub mod pending;
pub mod queries;
pub mod sansio;
pub mod scheduler;
mod shell;
pub mod slots;
pub mod snapshot;
pub mod startup;
pub mod task;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::gossip::Filter;
use crate::gossip::handler::CreateError;
use crate::gossip::kinds::{KindPolicy, Kinds};
use crate::gossip::supersede::Superseding;
use crate::wire;

pub use config::Settings;
pub use queries::QueryRegistry;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The event/query could not be created (too large, bad name, bad filter).
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The agent is stopping and no longer serves requests.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// Startup failed.
    #[error("{0}")]
    Startup(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// An [`AgentError::Io`] saying `what` failed, for `map_err`.
fn io_err(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { what, source }
}

/// A key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    List,
    Install,
    Use,
    Remove,
}

impl KeyOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Install => "install",
            Self::Use => "use",
            Self::Remove => "remove",
        }
    }
}

/// A request from the API to the foca-owning task.
#[derive(Debug)]
pub enum Command {
    Members(oneshot::Sender<Vec<wire::Member>>),
    Info(oneshot::Sender<wire::Info>),
    Event {
        name: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<wire::EventResponse, AgentError>>,
    },
    Query {
        name: String,
        payload: Vec<u8>,
        filters: Vec<Filter>,
        timeout: Duration,
        reply: oneshot::Sender<Result<wire::QueryResponse, AgentError>>,
    },
    Keys {
        op: KeyOp,
        key: Option<String>,
        auth: Option<key_auth::KeyAuth>,
        reply: oneshot::Sender<Result<wire::KeysResponse, AgentError>>,
    },
    Leave(oneshot::Sender<()>),
    ForceLeave {
        node: String,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    /// Broadcasts a superseding item from this node (kind, key, version and body as
    /// given; the origin is set to this node).
    Publish {
        item: Superseding,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    /// The newest superseding items held of one kind.
    Superseding {
        kind: String,
        reply: oneshot::Sender<Vec<Superseding>>,
    },
    /// Gossips a revocation ([`crate::gossip::cert::Revocation`], encoded) after checking
    /// it here.
    Revoke {
        revocation: Vec<u8>,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
}

/// Cheap handle the API server uses to talk to the agent task.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<input::Input>,
    monitor: broadcast::Sender<String>,
    superseding: broadcast::Sender<Superseding>,
    /// Flips to `true` once the agent stopped (left): long-lived streams end then.
    stop: watch::Receiver<bool>,
    /// Set when the agent starts, unless its fan-out directory could not be used.
    pieces: Arc<std::sync::OnceLock<Arc<fanout::PeerPieces>>>,
}

impl AgentHandle {
    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(input::Input::Api(make(tx)))
            .await
            .map_err(|_| AgentError::ShuttingDown)?;
        rx.await.map_err(|_| AgentError::ShuttingDown)
    }

    /// Subscribes to the monitor stream (NDJSON lines).
    pub fn monitor(&self) -> broadcast::Receiver<String> {
        self.monitor.subscribe()
    }

    /// The fan-out's held artifacts and peers' pieces, once the agent has started (and
    /// when its fan-out directory could be used).
    pub fn peer_pieces(&self) -> Option<Arc<fanout::PeerPieces>> {
        self.pieces.get().cloned()
    }

    /// Watches the agent's stop flag (`true` once it left and is exiting).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Every superseding item this node accepts as newer from now on (its own too). A
    /// receiver that lagged re-reads what it needs with [`Command::Superseding`].
    pub fn superseding(&self) -> broadcast::Receiver<Superseding> {
        self.superseding.subscribe()
    }
}

/// The agent before it runs: settings plus Rust-registered query handlers.
pub struct Agent {
    settings: Settings,
    registry: QueryRegistry,
    consumers: consumers::Consumers,
    kinds: Kinds,
    key_authority: key_auth::KeyAuthority,
    log_reload: Option<monitor::LogReload>,
    tables_check: Option<config::TablesCheck>,
    notifier: crate::sd_notify::Notifier,
    handle: AgentHandle,
    inputs: mpsc::Receiver<input::Input>,
    stop: watch::Sender<bool>,
}

impl Agent {
    /// A new agent with the built-in queries registered (`ping`; `blob` if configured).
    pub fn new(settings: Settings) -> Self {
        let registry = QueryRegistry::with_builtins(&settings.node, settings.blob_query);
        let (tx, inputs) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let key_authority = key_auth::KeyAuthority::without_keys(settings.dev);
        Self {
            settings,
            registry,
            consumers: consumers::Consumers::default(),
            kinds: Kinds::default(),
            key_authority,
            log_reload: None,
            tables_check: None,
            notifier: Default::default(),
            handle: AgentHandle {
                tx,
                monitor: broadcast::channel(1024).0,
                superseding: broadcast::channel(1024).0,
                stop: stop_rx,
                pieces: Arc::default(),
            },
            inputs,
            stop,
        }
    }

    /// Uses this monitor channel (shared with the log layer).
    pub fn with_monitor(mut self, monitor: broadcast::Sender<String>) -> Self {
        self.handle.monitor = monitor;
        self
    }

    /// The handle the API server and in-process services use; it works once [`Self::run`]
    /// runs (calls made before wait for it).
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// The settings the agent runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What superseding items of `kind` may hold, who speaks for them and the check
    /// they must pass before this node keeps, delivers or relays them (see
    /// [`crate::gossip::kinds`]).
    pub fn register_kind(&mut self, kind: &str, policy: KindPolicy) {
        self.kinds.register(kind, policy);
    }

    /// Who may change the cluster's keys: signers, ages and skew as `policy` says (the
    /// deploy events' own rules, see [`key_auth`]).
    pub fn authorise_key_operations(&mut self, policy: crate::deploy::signed::Policy) {
        self.key_authority = key_auth::KeyAuthority::new(policy);
    }

    /// How SIGHUP changes the log filter.
    pub fn with_log_reload(mut self, reload: monitor::LogReload) -> Self {
        self.log_reload = Some(reload);
        self
    }

    /// Whom to tell about a SIGHUP reload (`RELOADING=1`, then `READY=1`) and the leave
    /// (`STOPPING=1`). `READY=1` at start is the caller's: only it knows when all is up.
    pub fn with_notifier(mut self, notifier: crate::sd_notify::Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// How SIGHUP checks the reloaded file's deploy tables (see [`config::TablesCheck`]).
    pub fn with_tables_check(mut self, check: config::TablesCheck) -> Self {
        self.tables_check = Some(check);
        self
    }

    /// Registers a query handler in Rust: its return value is the answer.
    pub fn register_query(
        &mut self,
        name: &str,
        handler: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) {
        self.registry.register(name, Arc::new(handler));
    }

    /// Registers an in-process consumer `name` of the user events named `prefix*`:
    /// it reads them from the returned channel and acknowledges each once handled
    /// (see [`consumers`] for the guarantee). Keep `name` stable across releases: the
    /// journal owes events to it by name.
    pub fn register_consumer(
        &mut self,
        name: &str,
        prefix: &str,
    ) -> tokio::sync::mpsc::Receiver<consumers::Delivery> {
        self.consumers.register(name, prefix)
    }

    /// Runs until `shutdown` completes (then leaves gracefully) or a `leave` request:
    /// [`Self::start`], then [`task::Started::run`].
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
        self.start().await?.run(shutdown).await
    }

    /// Restores the data dir and binds the gossip sockets; every startup error comes from
    /// here. Nothing is announced until the result runs.
    pub async fn start(self) -> Result<task::Started, AgentError> {
        task::start(task::Parts {
            settings: self.settings,
            registry: self.registry,
            consumers: self.consumers,
            kinds: self.kinds,
            key_authority: self.key_authority,
            log_reload: self.log_reload,
            tables_check: self.tables_check,
            notifier: self.notifier,
            handle: self.handle,
            inputs: self.inputs,
            stop: self.stop,
        })
        .await
    }
}

/// Resolves on SIGTERM or SIGINT: the agent's usual shutdown trigger (it then leaves the
/// cluster gracefully). Without signal handlers it never resolves; `leave` still works.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
