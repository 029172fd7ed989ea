//! The one task that owns the agent's state machine, and its thin executor.
//!
//! All protocol state lives in the sans-io [`AgentMachine`] (foca and the core
//! included). This task runs a biased `select!` over: shutdown, the timer
//! [`Scheduler`], [`Input`]s (network, API, disk writer, handler tasks), SIGHUP, and the
//! periodic push/pull, reconnect and snapshot ticks. Each is fed to the machine with
//! the time ([`Now`]), and the [`Effect`]s it returns are carried out in order: timers
//! go to the scheduler, everything else to the shell (`shell.rs`: sockets, disk, spawned
//! tasks). An effect that asks the machine again (free handler slots) is answered
//! before the next one is carried out.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::config::{Settings, TablesCheck};
use super::consumers::Consumers;
use super::disk::DiskWriter;
use super::input::{Input, Slot};
use super::monitor::LogReload;
use super::net::{Counters, SharedKeyring};
use super::queries::QueryRegistry;
use super::sansio::keys::{keys_fan_in, query_answer};
use super::sansio::machine::QueryRequest;
use super::sansio::{AgentMachine, Effect, Now};
use super::scheduler::Scheduler;
use super::shell::{Io, Shell};
use super::startup::{restore, spawn_io};
use super::{AgentError, AgentHandle, Command, io_err};
use crate::gossip::{NodeId, QueryResult};
use crate::sd_notify::Notifier;
use crate::wire;

/// Who waits for a query's result.
#[derive(Debug)]
pub enum Waiter {
    User(oneshot::Sender<Result<wire::QueryResponse, AgentError>>),
    Keys(oneshot::Sender<Result<wire::KeysResponse, AgentError>>),
}

/// The state machine as this task runs it.
pub type Machine = AgentMachine<Waiter, Slot>;

/// The agent task: the machine, its I/O, its timers.
pub struct AgentTask {
    machine: Machine,
    shell: Shell,
    sched: Scheduler,
    notifier: Notifier,
}

/// What [`start`] is given by [`super::Agent`].
pub struct Parts {
    pub settings: Settings,
    pub registry: QueryRegistry,
    pub consumers: Consumers,
    pub kinds: crate::gossip::kinds::Kinds,
    pub key_authority: crate::agent::key_auth::KeyAuthority,
    pub log_reload: Option<LogReload>,
    pub tables_check: Option<TablesCheck>,
    pub notifier: Notifier,
    pub handle: AgentHandle,
    pub inputs: mpsc::Receiver<Input>,
    pub stop: watch::Sender<bool>,
}

/// The time now, as the machine takes it.
fn now() -> Now {
    Now {
        at: Instant::now().into_std(),
        wall: crate::wall::now(),
    }
}

/// An agent whose data dir is restored and whose gossip sockets are bound, not yet
/// running: what [`start`] returns and [`Started::run`] runs.
pub struct Started {
    task: AgentTask,
    io: tokio::task::JoinSet<()>,
    rx: mpsc::Receiver<Input>,
    stop_tx: watch::Sender<bool>,
    rejoin: Vec<NodeId>,
}

/// Starts the agent: the data dir, the keyring, the gossip sockets and I/O loops. Every
/// startup error (a bad keyring, a port in use) comes from here, so the caller serves the
/// control API (see `cli::agent`, through [`Parts::handle`]) only once this succeeded.
pub async fn start(parts: Parts) -> Result<Started, AgentError> {
    let Parts {
        mut settings,
        registry,
        consumers,
        kinds,
        key_authority,
        log_reload,
        tables_check,
        notifier,
        handle,
        inputs: rx,
        stop: stop_tx,
    } = parts;
    settings.handlers.extend(consumers.handler_configs());
    let restored = restore(&mut settings)?;
    let bind = settings.bind;
    let socket = Arc::new(
        UdpSocket::bind(bind)
            .await
            .map_err(io_err(format!("binding gossip UDP {bind}")))?,
    );
    let listener = TcpListener::bind(bind)
        .await
        .map_err(io_err(format!("binding gossip TCP {bind}")))?;
    let keyring: SharedKeyring = Arc::new(RwLock::new(restored.ring.clone()));
    let counters = Arc::new(Counters::default());
    let held = open_held(&settings.data_dir);
    if let Some(held) = &held {
        let pieces = super::fanout::PeerPieces::new(held.clone(), keyring.clone());
        let _ = handle.pieces.set(Arc::new(pieces));
    }
    let io = spawn_io(
        socket.clone(),
        listener,
        (&keyring, held),
        &counters,
        &handle,
    );
    tracing::info!(node = %restored.identity.name, addr = %restored.identity.addr, bump = restored.bump, rpc = %settings.rpc, "agent started");
    let disk = DiskWriter::start(settings.data_dir.clone(), handle.tx.clone())
        .map_err(io_err("starting the disk writer thread".into()))?;
    let io_parts = Io {
        socket,
        keyring,
        counters,
        disk,
        consumers,
        log_reload,
        tables_check,
        max_handlers: settings.max_concurrent_handlers,
    };
    let rejoin = restored.rejoin.clone();
    let task = AgentTask {
        machine: Machine::new(restored.into_init(settings, kinds, registry, key_authority)),
        shell: Shell::new(io_parts, &handle),
        sched: Scheduler::new(),
        notifier,
    };
    Ok(Started {
        task,
        io,
        rx,
        stop_tx,
        rejoin,
    })
}

/// The artifacts held for peers, in `DATA_DIR/fanout`; without it the agent runs on and
/// its deploys take every piece from the store.
fn open_held(data_dir: &std::path::Path) -> Option<Arc<crate::fanout::held::Held>> {
    let dir = data_dir.join("fanout");
    match crate::fanout::held::Held::open(&dir) {
        Ok(held) => Some(Arc::new(held)),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "fan-out directory unusable; deploys fetch only from the store");
            None
        }
    }
}

impl Started {
    /// Runs the task until shutdown: announces, snapshots, starts owed handlers, joins.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
        let Started {
            mut task,
            mut io,
            rx,
            stop_tx,
            rejoin,
        } = self;
        let effects = task.machine.start(now(), rejoin);
        task.execute(effects).await;
        let result = task.run_loop(rx, shutdown).await;
        // Everything written (the final state file too) before the process may exit.
        task.shell.flush_disk().await;
        let _ = stop_tx.send(true);
        // Let in-flight API answers (e.g. to `leave`) and the end of monitor streams reach
        // their clients (the API server shuts its connections down gracefully).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while io.join_next().await.is_some() {}
        })
        .await;
        result
    }
}

impl AgentTask {
    async fn run_loop(
        &mut self,
        mut rx: mpsc::Receiver<Input>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(io_err("installing the SIGHUP handler".into()))?;
        let every = |period| {
            let mut i = tokio::time::interval(period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        };
        let s = self.machine.settings();
        let mut push_pull = every(s.push_pull_interval);
        let mut reconnect = every(s.reconnect_interval);
        let mut snap = every(s.snapshot_interval);
        tokio::pin!(shutdown);
        while !self.machine.stopped() {
            let next = self.sched.next_deadline();
            let effects = tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("shutdown requested; leaving the cluster");
                    self.leave().await;
                    break;
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.fire_timers().await;
                    continue;
                }
                input = rx.recv() => match input {
                    Some(input) => self.handle_input(input).await,
                    None => break,
                },
                _ = hup.recv() => {
                    self.notifier.reloading();
                    self.reload();
                    self.notifier.reloaded();
                    continue;
                }
                _ = push_pull.tick() => self.machine.push_pull_tick(),
                _ = reconnect.tick() => self.machine.reconnect_tick(),
                _ = snap.tick() => self.machine.snapshot_tick(now()),
            };
            self.execute(effects).await;
        }
        Ok(())
    }

    async fn fire_timers(&mut self) {
        while let Some(timer) = self.sched.pop_due(Instant::now()) {
            let effects = self.machine.timer(now(), timer);
            self.execute(effects).await;
        }
    }

    /// Feeds `input` to the machine; returns what is left to carry out.
    async fn handle_input(&mut self, input: Input) -> Vec<Effect<Waiter, Slot>> {
        let (m, now) = (&mut self.machine, now());
        match input {
            Input::Datagram { plain, from } => m.datagram(now, &plain, from),
            Input::PushPullRequest {
                state,
                peer_version,
                peer,
                reply,
            } => {
                let (ours, effects) = m.push_pull_request(now, state, peer_version, peer.ip());
                let _ = reply.send(ours);
                effects
            }
            Input::PushPullDone {
                target,
                kind,
                result,
            } => m.push_pull_done(now, target, kind, result),
            Input::QueryResponse(r) => m.query_response(now, r),
            Input::HandlerAnswer {
                id,
                origin,
                payload,
            } => m.handler_answer(now, id, origin, payload),
            Input::Api(cmd) => {
                self.handle_command(cmd).await;
                Vec::new()
            }
            Input::HandlerFailed { event, handler } => m.handler_failed(now, event, handler),
            Input::Journaled { batches, result } => m.journaled(now, batches, result),
            Input::HandlerSlotFree => self.start_owed(),
            Input::ConsumerAcked { event, handler } => m.consumer_acked(event, handler),
        }
    }

    /// An API command: fed to the machine, its effects carried out, then answered.
    async fn handle_command(&mut self, cmd: Command) {
        let (m, now) = (&mut self.machine, now());
        match cmd {
            Command::Members(reply) => {
                let _ = reply.send(m.members());
            }
            Command::Info(reply) => {
                let _ = reply.send(m.info(self.shell.counters()));
            }
            Command::Event {
                name,
                payload,
                reply,
            } => {
                let (result, effects) = m.publish_event(now, &name, payload);
                // The caller has its answer before the eager fan-out goes out.
                let _ = reply.send(result);
                self.execute(effects).await;
            }
            Command::Query {
                name,
                payload,
                filters,
                timeout,
                reply,
            } => {
                let request = QueryRequest {
                    name,
                    payload,
                    filters,
                    timeout,
                };
                let effects = m.user_query(now, request, Waiter::User(reply));
                self.execute(effects).await;
            }
            Command::Keys {
                op,
                key,
                auth,
                reply,
            } => {
                let effects = m.key_query(now, op, key, auth, Waiter::Keys(reply));
                self.execute(effects).await;
            }
            Command::Leave(reply) => {
                self.leave().await;
                let _ = reply.send(());
            }
            Command::ForceLeave { node, reply } => {
                let (result, effects) = m.force_leave(&node);
                self.execute(effects).await;
                let _ = reply.send(result);
            }
            Command::Publish { item, reply } => {
                let (result, effects) = m.publish_superseding(now, item);
                self.execute(effects).await;
                let _ = reply.send(result);
            }
            Command::Superseding { kind, reply } => {
                let _ = reply.send(m.superseding_items(&kind));
            }
            Command::Revoke { revocation, reply } => {
                let (result, effects) = m.revoke(now, &revocation);
                self.execute(effects).await;
                let _ = reply.send(result);
            }
        }
    }

    /// Graceful leave: notices and foca's leave handed to the kernel, then the state
    /// file queued (written before the process exits, see [`run`]).
    async fn leave(&mut self) {
        self.notifier.stopping();
        let effects = self.machine.leave(now());
        self.execute(effects).await;
        tracing::info!("left the cluster");
    }

    /// Owed handlers, with as many free slots as they can use.
    fn start_owed(&mut self) -> Vec<Effect<Waiter, Slot>> {
        let now = now();
        let slots = self.shell.free_slots(self.machine.owed_now(now));
        self.machine.start_owed(now, slots)
    }

    fn reload(&mut self) {
        let new = match Settings::resolve(&self.machine.settings().overrides) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(cause = %e, "SIGHUP: config not reloaded");
                return;
            }
        };
        // Checked, not applied: the deploy tables only change at a restart.
        if let Err(e) = self.shell.check_tables(&new.deploy) {
            tracing::error!(cause = %e, "SIGHUP: config not reloaded");
            return;
        }
        self.shell.reload_log(&new.log_level);
        let consumers = self.shell.consumer_handlers();
        self.machine.reload(now(), new, consumers);
    }

    /// Carries out `effects` in order; effects an effect leads to (the machine asked
    /// again) come before the rest.
    async fn execute(&mut self, effects: Vec<Effect<Waiter, Slot>>) {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            let more = self.carry_out(effect).await;
            for e in more.into_iter().rev() {
                queue.push_front(e);
            }
        }
    }

    async fn carry_out(&mut self, effect: Effect<Waiter, Slot>) -> Vec<Effect<Waiter, Slot>> {
        let shell = &mut self.shell;
        match effect {
            Effect::Send { to, plain } => shell.send_datagram(to, &plain).await,
            Effect::Schedule { after, timer } => self.sched.submit(Instant::now(), after, timer),
            Effect::CancelDeadline(id) => self.sched.cancel_query(id),
            Effect::Dial {
                target,
                kind,
                state,
            } => shell.dial(target, kind, *state),
            Effect::Journal { lines, batches } => shell.journal(lines, batches),
            Effect::Snapshot(state) => shell.snapshot(*state),
            Effect::StartOwed => return self.start_owed(),
            Effect::SpawnEventHandlers {
                event,
                handlers,
                env,
                slots,
            } => shell.spawn_event_handlers(event, handlers, env, slots),
            Effect::RunHandlers {
                event,
                handlers,
                env,
                payload,
            } => shell.run_handlers(&event, handlers, &env, &payload),
            Effect::RunQueryHandler {
                query,
                handler,
                env,
            } => shell.run_query_handler(query, handler, env),
            Effect::StreamAnswer { to, answer } => shell.stream_answer(to, answer),
            Effect::Keyring { ring, save_to } => shell.use_keyring(ring, save_to),
            Effect::Superseding(item) => shell.superseding(item),
            Effect::Monitor(line) => shell.monitor(line),
            Effect::Count(metric) => shell.count(metric),
            Effect::QueryDone { waiter, result } => finish(waiter, result),
            Effect::QueryFailed { waiter, error } => fail(waiter, error),
        }
        Vec::new()
    }
}

/// Hands a finished query's result to its waiter, in the shape it asked for.
fn finish(waiter: Waiter, result: QueryResult) {
    match waiter {
        Waiter::User(reply) => {
            let _ = reply.send(Ok(query_answer(result)));
        }
        Waiter::Keys(reply) => {
            let _ = reply.send(Ok(keys_fan_in(result)));
        }
    }
}

fn fail(waiter: Waiter, err: AgentError) {
    match waiter {
        Waiter::User(r) => {
            let _ = r.send(Err(err));
        }
        Waiter::Keys(r) => {
            let _ = r.send(Err(err));
        }
    }
}
