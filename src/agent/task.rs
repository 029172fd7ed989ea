//! The one task that owns foca.
//!
//! Everything that touches foca or the [`SharedCore`] happens here, in a biased
//! `select!` over: shutdown, the timer [`Scheduler`], [`Input`]s (network and API),
//! SIGHUP, and the periodic push/pull, reconnect and snapshot ticks. I/O tasks only feed inputs
//! and carry out effects. After every foca call [`AgentTask::flush`] drains foca's
//! runtime (send, schedule, notify) and the core's deliveries, in that order.
//! API commands are handled in [`super::ops`], push/pull dials in [`super::sync`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, OwnedNotification};
use rand::rngs::StdRng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::config::Settings;
use super::consumers::Consumers;
use super::disk::DiskWriter;
use super::members::LeftBook;
use super::monitor::LogReload;
use super::net::{self, Counters, SharedKeyring};
use super::ops::PendingQuery;
use super::pending::PendingHandlers;
use super::queries::QueryRegistry;
use super::scheduler::{Scheduled, Scheduler};
use super::snapshot::PersistedState;
use super::startup::{Restored, restore};
use super::sync::{Dial, DialState};
use super::{AgentError, AgentHandle, Command};
use crate::gossip::handler::GossipFoca;
use crate::gossip::message::{self, Broadcast, Datagram, Direct};
use crate::gossip::{
    Incoming, NodeId, PushPullState, QueryId, QueryResponse, SharedCore, envelope,
    recommended_foca_config, retune_size,
};

/// What the task reacts to besides timers and signals.
#[derive(Debug)]
pub enum Input {
    /// An opened datagram.
    Datagram { plain: Vec<u8>, from: SocketAddr },
    /// A peer started a push/pull with us; answer with our state.
    PushPullRequest {
        state: PushPullState,
        /// The protocol version of the peer's stream hello.
        peer_version: u16,
        reply: oneshot::Sender<PushPullState>,
    },
    /// Our outgoing push/pull finished.
    PushPullDone {
        target: String,
        kind: Dial,
        result: Result<PushPullState, String>,
    },
    /// A query answer that came over TCP.
    QueryResponse(QueryResponse),
    /// A query handler process finished; send its stdout to the origin.
    HandlerAnswer {
        id: QueryId,
        origin: NodeId,
        payload: Vec<u8>,
    },
    /// A control API request.
    Api(Command),
    /// The disk writer journaled these handler batches (or failed to).
    Journaled {
        batches: Vec<super::pending::Batch>,
        result: Result<(), String>,
    },
    /// An event handler finished (or failed to start) and freed its slot.
    HandlerSlotFree,
    /// An event handler's process could not be spawned: it is owed again.
    HandlerFailed {
        event: crate::gossip::UserEvent,
        handler: super::config::HandlerConfig,
    },
    /// An in-process consumer acknowledged an event.
    ConsumerAcked {
        event: crate::gossip::EventId,
        handler: super::config::HandlerConfig,
    },
}

/// The foca-owning task's state.
pub struct AgentTask {
    pub(super) settings: Settings,
    pub(super) core: SharedCore,
    pub(super) foca: GossipFoca<StdRng>,
    pub(super) rt: AccumulatingRuntime<NodeId>,
    pub(super) sched: Scheduler,
    pub(super) rng: StdRng,
    pub(super) socket: Arc<UdpSocket>,
    pub(super) keyring: SharedKeyring,
    pub(super) counters: Arc<Counters>,
    pub(super) tx: mpsc::Sender<Input>,
    pub(super) registry: QueryRegistry,
    /// In-process event consumers (also listed in `settings.handlers`).
    pub(super) consumers: Consumers,
    pub(super) log_reload: Option<LogReload>,
    pub(super) monitor: broadcast::Sender<String>,
    pub(super) left: LeftBook,
    pub(super) queries: HashMap<QueryId, PendingQuery>,
    pub(super) dials: DialState,
    /// Every file write of the task goes through it ([`super::disk`]).
    pub(super) disk: DiskWriter,
    /// User-event handlers owed until their process started.
    pub(super) pending: PendingHandlers,
    /// Handler processes running at once ([`super::handlers::Limiter`]).
    pub(super) limiter: super::handlers::Limiter,
    /// The cluster size foca's retransmissions and suspicion timeout are tuned for.
    tuned_for: u32,
    pub(super) stop: bool,
}

/// foca's settings for a cluster of `size`: [`recommended_foca_config`] plus ours.
fn foca_config(settings: &Settings, size: u32) -> foca::Config {
    let mut config = recommended_foca_config(size);
    config.remove_down_after = Some(settings.reap_after);
    // foca's own (UDP) announce to down members, on the reconnect cadence too.
    if let Some(p) = config.periodic_announce_to_down_members.as_mut() {
        p.frequency = settings.reconnect_interval;
    }
    config
}

pub(super) fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub(super) fn io_err(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { what, source }
}

/// Starts the agent: sockets, API server, I/O loops, then the task until shutdown.
pub async fn run(
    mut settings: Settings,
    registry: QueryRegistry,
    consumers: Consumers,
    log_reload: Option<LogReload>,
    monitor: broadcast::Sender<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let Restored {
        ring,
        core,
        rng,
        identity,
        bump,
        rejoin,
        left,
        pending,
    } = {
        settings.handlers.extend(consumers.handler_configs());
        restore(&mut settings)?
    };
    let core = SharedCore::new(core);
    let tuned_for = settings.expected_cluster_size;
    let foca = core.new_foca(
        foca_config(&settings, tuned_for),
        rand::make_rng::<StdRng>(),
    );

    let bind = settings.bind;
    let socket = Arc::new(
        UdpSocket::bind(bind)
            .await
            .map_err(io_err(format!("binding gossip UDP {bind}")))?,
    );
    let listener = TcpListener::bind(bind)
        .await
        .map_err(io_err(format!("binding gossip TCP {bind}")))?;
    let api_listener = crate::api::server::Listener::bind(&settings.rpc)
        .await
        .map_err(io_err(format!("binding control API {}", settings.rpc)))?;

    let keyring: SharedKeyring = Arc::new(RwLock::new(ring));
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut io = tokio::task::JoinSet::new();
    io.spawn(net::udp_recv_loop(
        socket.clone(),
        keyring.clone(),
        counters.clone(),
        tx.clone(),
        stop_rx.clone(),
    ));
    io.spawn(net::tcp_accept_loop(
        listener,
        keyring.clone(),
        counters.clone(),
        tx.clone(),
        stop_rx.clone(),
    ));
    let handle = AgentHandle {
        tx: tx.clone(),
        monitor: monitor.clone(),
        stop: stop_rx.clone(),
    };
    io.spawn(crate::api::server::run(
        api_listener,
        handle,
        settings.rpc_token.clone(),
        stop_rx.clone(),
    ));
    tracing::info!(node = %identity.name, addr = %identity.addr, bump, rpc = %settings.rpc, "agent started");

    let limiter = super::handlers::limiter(settings.max_concurrent_handlers);
    let disk = DiskWriter::start(settings.data_dir.clone(), tx.clone())
        .map_err(io_err("starting the disk writer thread".into()))?;
    let mut task = AgentTask {
        settings,
        core,
        foca,
        rt: AccumulatingRuntime::new(),
        sched: Scheduler::new(),
        rng,
        socket,
        keyring,
        counters,
        tx,
        registry,
        consumers,
        log_reload,
        monitor,
        left,
        queries: HashMap::new(),
        dials: DialState::default(),
        pending,
        disk,
        limiter,
        tuned_for,
        stop: false,
    };
    for member in rejoin {
        let _ = task.foca.announce(member, &mut task.rt);
    }
    let tags = task.settings.tags.clone();
    let announced = task.core.lock().set_tags(tags, wall_millis());
    match announced.map(|bytes| task.foca.add_broadcast(&bytes)) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(cause = %e, "tags not announced"),
        Err(e) => tracing::warn!(cause = %e, "tags not announced"),
    }
    task.flush().await;
    // Fold the replayed journal into the state file now: a torn last line followed by
    // new appends would otherwise make the next start fail.
    task.save_snapshot();
    task.start_owed();
    task.start_join_round();
    let result = task.run_loop(rx, shutdown).await;
    // Everything written (the final state file too) before the process may exit.
    task.disk.flush().await;
    let _ = stop_tx.send(true);
    // Let in-flight API answers (e.g. to `leave`) and the end of monitor streams reach
    // their clients (the API server shuts its connections down gracefully).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while io.join_next().await.is_some() {}
    })
    .await;
    if let crate::agent::config::RpcAddr::Unix(p) = &task.settings.rpc {
        let _ = std::fs::remove_file(p);
    }
    result
}

impl AgentTask {
    async fn run_loop(
        &mut self,
        mut rx: mpsc::Receiver<Input>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(io_err("installing the SIGHUP handler".into()))?;
        let mut push_pull = tokio::time::interval(self.settings.push_pull_interval);
        push_pull.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reconnect = tokio::time::interval(self.settings.reconnect_interval);
        reconnect.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut snap = tokio::time::interval(self.settings.snapshot_interval);
        snap.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        while !self.stop {
            let next = self.sched.next_deadline();
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("shutdown requested; leaving the cluster");
                    self.leave().await;
                    break;
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.fire_timers().await;
                }
                input = rx.recv() => match input {
                    Some(input) => self.handle_input(input).await,
                    None => break,
                },
                _ = hup.recv() => self.reload(),
                _ = push_pull.tick() => self.start_push_pull(),
                _ = reconnect.tick() => self.start_reconnect(),
                _ = snap.tick() => {
                    let known: std::collections::HashSet<String> = self
                        .foca
                        .iter_membership_state()
                        .map(|m| m.id().name.clone())
                        .collect();
                    let mut core = self.core.lock();
                    core.tick(wall_now());
                    core.prune_tags(|name| known.contains(name));
                    drop(core);
                    self.save_snapshot();
                    // Slots freed by member or query handlers are not reported.
                    self.start_owed();
                }
            }
        }
        Ok(())
    }

    async fn fire_timers(&mut self) {
        while let Some(what) = self.sched.pop_due(Instant::now()) {
            match what {
                Scheduled::Foca(timer) => {
                    if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                        tracing::debug!(cause = %e, "foca timer");
                    }
                    self.flush().await;
                }
                Scheduled::QueryDeadline(id) => self.finish_query(id),
                Scheduled::RetryJoin => self.start_join_round(),
                Scheduled::RetryHandlers(_) => self.start_owed(),
            }
        }
    }

    async fn handle_input(&mut self, input: Input) {
        match input {
            Input::Datagram { plain, from } => self.handle_datagram(&plain, from).await,
            Input::PushPullRequest {
                state,
                peer_version,
                reply,
            } => {
                let _ = reply.send(self.push_pull_state(peer_version));
                self.merge_remote(state).await;
            }
            Input::PushPullDone {
                target,
                kind,
                result,
            } => self.push_pull_done(target, kind, result).await,
            Input::QueryResponse(r) => self.record_response(r),
            Input::HandlerAnswer {
                id,
                origin,
                payload,
            } => self.send_answer(id, origin, payload).await,
            Input::Api(cmd) => self.handle_command(cmd).await,
            Input::HandlerFailed { event, handler } => self.handler_failed(event, handler),
            Input::Journaled { batches, result } => self.journaled(batches, result),
            Input::HandlerSlotFree => self.start_owed(),
            Input::ConsumerAcked { event, handler } => self.consumer_acked(event, handler),
        }
    }

    async fn handle_datagram(&mut self, plain: &[u8], from: SocketAddr) {
        match message::decode_datagram(plain) {
            Ok(Datagram::Foca(pkt)) => {
                if let Err(e) = self.foca.handle_data(pkt, &mut self.rt) {
                    tracing::trace!(peer = %from, cause = %e, "foca refused a packet");
                }
                self.flush().await;
            }
            Ok(Datagram::Direct(Direct::QueryResponse(r))) => self.record_response(r),
            Ok(Datagram::Direct(Direct::Event(ev))) => {
                if let Ok(bytes) = message::encode_broadcast(&Broadcast::Event(ev)) {
                    let _ = self.foca.add_broadcast(&bytes);
                    self.flush().await;
                }
            }
            Ok(Datagram::Direct(Direct::Leave(id))) => {
                tracing::info!(node = %id.name, "member announced its leave");
                self.left.record(&id);
            }
            Err(_) => Counters::add(&self.counters.packets_dropped_malformed),
        }
    }

    /// Seals and sends one datagram plaintext.
    pub(super) async fn send_datagram(&mut self, dst: SocketAddr, plain: &[u8]) {
        let sealed = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            envelope::seal_datagram(&ring, plain, &mut self.rng)
        };
        match sealed {
            Ok(bytes) => match self.socket.send_to(&bytes, dst).await {
                Ok(_) => Counters::add(&self.counters.packets_sent),
                Err(e) => tracing::debug!(peer = %dst, cause = %e, "udp send failed"),
            },
            Err(e) => tracing::warn!(peer = %dst, cause = %e, "datagram not sent"),
        }
    }

    /// Drains foca's runtime and the core's deliveries. Call after every foca call.
    pub(super) async fn flush(&mut self) {
        while let Some((dst, data)) = self.rt.to_send() {
            let plain = message::encode_foca_datagram(&data);
            self.send_datagram(dst.addr, &plain).await;
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.sched.submit(now, after, Scheduled::Foca(timer));
        }
        let mut membership_changed = false;
        while let Some(n) = self.rt.to_notify() {
            membership_changed |= matches!(
                n,
                OwnedNotification::MemberUp(_) | OwnedNotification::MemberDown(_)
            );
            self.on_notification(n);
        }
        if membership_changed {
            self.retune();
        }
        let reannounce = self.core.lock().take_reannounce();
        match reannounce.map(|r| r.map(|bytes| self.foca.add_broadcast(&bytes))) {
            None | Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => tracing::warn!(cause = %e, "tags not announced again"),
            Some(Err(e)) => tracing::warn!(cause = %e, "tags not announced again"),
        }
        let incoming = self.core.drain_incoming();
        // New events travel on first: forwarding must not wait for the disk.
        for item in &incoming {
            if let Incoming::Event(ev) = item {
                self.announce_event(ev).await;
            }
        }
        self.owe_and_start(&incoming);
        for item in incoming {
            if let Incoming::Query(q) = item {
                self.answer_query(q).await;
            }
        }
    }

    /// Re-tunes foca (retransmissions, suspicion timeout) when the cluster has grown
    /// past what it was tuned for, or shrunk to less than half of it.
    fn retune(&mut self) {
        let members = self.foca.num_members() as u32 + 1;
        let Some(size) = retune_size(self.tuned_for, members, self.settings.expected_cluster_size)
        else {
            return;
        };
        match self.foca.set_config(foca_config(&self.settings, size)) {
            Ok(()) => {
                tracing::debug!(
                    from = self.tuned_for,
                    to = size,
                    "foca re-tuned for cluster size"
                );
                self.tuned_for = size;
            }
            Err(e) => tracing::warn!(cause = %e, "foca refused the re-tuned config"),
        }
    }

    /// Graceful leave: notices to every member, foca's leave, flushed; then snapshot.
    pub(super) async fn leave(&mut self) {
        let me = self.core.lock().identity().clone();
        let peers: Vec<NodeId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        if let Ok(plain) = message::encode_direct(&Direct::Leave(me)) {
            for p in &peers {
                self.send_datagram(p.addr, &plain).await;
            }
        }
        self.stop = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::warn!(cause = %e, "foca leave");
        }
        self.flush().await;
        self.save_snapshot_with(peers);
        tracing::info!("left the cluster");
    }

    pub(super) fn save_snapshot(&mut self) {
        let peers = self.foca.iter_members().map(|m| m.id().clone()).collect();
        self.save_snapshot_with(peers);
    }

    fn save_snapshot_with(&mut self, members: Vec<NodeId>) {
        let state = PersistedState {
            core: self.core.lock().snapshot(),
            members,
            left: self.left.clone(),
            pending: self.pending.records(),
        };
        self.disk.snapshot(state);
    }

    fn reload(&mut self) {
        let new = match Settings::resolve(&self.settings.overrides) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(cause = %e, "SIGHUP: config not reloaded");
                return;
            }
        };
        if let Some(reload) = &self.log_reload
            && let Err(e) = reload(&new.log_level)
        {
            tracing::error!(cause = %e, "SIGHUP: log level not changed");
        }
        let announced = self.core.lock().set_tags(new.tags.clone(), wall_millis());
        match announced {
            Ok(bytes) => {
                if let Err(e) = self.foca.add_broadcast(&bytes) {
                    tracing::warn!(cause = %e, "SIGHUP: new tags not announced");
                }
            }
            Err(e) => tracing::warn!(cause = %e, "SIGHUP: new tags not announced"),
        }
        self.settings.tags = new.tags;
        self.settings.handlers = new.handlers;
        self.settings
            .handlers
            .extend(self.consumers.handler_configs());
        self.settings.log_level = new.log_level;
        tracing::info!(
            handlers = self.settings.handlers.len(),
            "SIGHUP: reloaded tags, handlers and log level"
        );
    }
}

/// Wall-clock milliseconds since the UNIX epoch: the version of a tag announcement
/// (later changes, and restarts, announce higher versions).
fn wall_millis() -> u64 {
    u64::try_from(wall_now().as_millis()).unwrap_or(u64::MAX)
}
