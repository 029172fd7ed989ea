//! The executor's I/O half: everything the state machine's effects need that is not the
//! machine or the timer heap — the UDP socket and the keyring that seals for it, the
//! counters, the disk writer, the in-process consumers and subscribers, the handler
//! slots, and the tasks it spawns (push/pull dials, handler processes, consumer
//! deliveries, answers over TCP).
//!
//! Every spawned task reports back to the agent task as an [`Input`]; none of them
//! touches protocol state. [`super::task`] decides which effect goes where.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use super::AgentHandle;
use super::config::{DeployTables, HandlerConfig, TablesCheck};
use super::consumers::Consumers;
use super::disk::DiskWriter;
use super::handlers::{self, Limiter};
use super::input::{Input, Slot};
use super::monitor::{self, LogReload};
use super::net::{self, Counters, SharedKeyring};
use super::pending::{Batch, JournalLine};
use super::sansio::Dial;
use super::sansio::consumer_name::consumer_name;
use super::sansio::machine::{Env, Metric};
use super::sansio::persisted::PersistedState;
use crate::gossip::message::StreamMessage;
use crate::gossip::supersede::Superseding;
use crate::gossip::{Keyring, NodeId, PushPullState, Query, QueryResponse, UserEvent, envelope};

/// The I/O parts of the agent task.
pub(super) struct Shell {
    socket: Arc<UdpSocket>,
    keyring: SharedKeyring,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Input>,
    disk: DiskWriter,
    consumers: Consumers,
    log_reload: Option<LogReload>,
    tables_check: Option<TablesCheck>,
    monitor: broadcast::Sender<String>,
    superseding: broadcast::Sender<Superseding>,
    /// Handler processes running at once ([`handlers::Limiter`]).
    limiter: Limiter,
}

/// What [`Shell::new`] takes besides the agent's handle.
pub(super) struct Io {
    pub(super) socket: Arc<UdpSocket>,
    pub(super) keyring: SharedKeyring,
    pub(super) counters: Arc<Counters>,
    pub(super) disk: DiskWriter,
    pub(super) consumers: Consumers,
    pub(super) log_reload: Option<LogReload>,
    pub(super) tables_check: Option<TablesCheck>,
    pub(super) max_handlers: usize,
}

impl Shell {
    pub(super) fn new(io: Io, handle: &AgentHandle) -> Self {
        Self {
            socket: io.socket,
            keyring: io.keyring,
            counters: io.counters,
            tx: handle.tx.clone(),
            disk: io.disk,
            consumers: io.consumers,
            log_reload: io.log_reload,
            tables_check: io.tables_check,
            monitor: handle.monitor.clone(),
            superseding: handle.superseding.clone(),
            limiter: handlers::limiter(io.max_handlers),
        }
    }

    /// Seals and sends one datagram plaintext.
    pub(super) async fn send_datagram(&mut self, dst: SocketAddr, plain: &[u8]) {
        let sealed = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            envelope::seal_datagram(&ring, plain, &mut rand::rng())
        };
        match sealed {
            Ok(bytes) => match self.socket.send_to(&bytes, dst).await {
                Ok(n) => {
                    Counters::add(&self.counters.packets_sent);
                    Counters::add_n(&self.counters.bytes_sent, n);
                }
                Err(e) => tracing::debug!(peer = %dst, cause = %e, "udp send failed"),
            },
            Err(e) => tracing::warn!(peer = %dst, cause = %e, "datagram not sent"),
        }
    }

    /// Up to `want` free handler slots, taken now.
    pub(super) fn free_slots(&self, want: usize) -> Vec<Slot> {
        (0..want)
            .map_while(|_| self.limiter.clone().try_acquire_owned().ok())
            .collect()
    }

    pub(super) fn count(&self, metric: Metric) {
        let c = &self.counters;
        Counters::add(match metric {
            Metric::Malformed => &c.packets_dropped_malformed,
            Metric::EventPushed => &c.events_pushed,
            Metric::PushPullMerged => &c.push_pulls_merged,
            Metric::SpoofedSender => &c.spoofed_senders,
        });
    }

    pub(super) fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.counters.to_map()
    }

    pub(super) fn journal(&self, lines: Vec<JournalLine>, batches: Vec<Batch<Slot>>) {
        self.disk.journal(lines, batches);
    }

    pub(super) fn snapshot(&self, state: PersistedState) {
        self.disk.snapshot(state);
    }

    /// Waits until every write sent so far is done.
    pub(super) async fn flush_disk(&self) {
        self.disk.flush().await;
    }

    pub(super) fn monitor(&self, line: serde_json::Value) {
        monitor::publish(&self.monitor, line);
    }

    pub(super) fn superseding(&self, item: Superseding) {
        let _ = self.superseding.send(item);
    }

    /// SIGHUP's new log filter; an invalid one is logged and changes nothing.
    pub(super) fn reload_log(&self, level: &str) {
        if let Some(reload) = &self.log_reload
            && let Err(e) = reload(level)
        {
            tracing::error!(cause = %e, "SIGHUP: log level not changed");
        }
    }

    /// SIGHUP's check of the tables the agent carries for others (none: all pass).
    pub(super) fn check_tables(
        &self,
        tables: &DeployTables,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.tables_check
            .as_ref()
            .map_or(Ok(()), |check| check(tables))
    }

    /// The owed-handler entries of the in-process consumers.
    pub(super) fn consumer_handlers(&self) -> Vec<HandlerConfig> {
        self.consumers.handler_configs()
    }

    /// Seals with `ring` from now on (only the agent task writes the keyring), and
    /// writes it to `save_to`.
    pub(super) fn use_keyring(&self, ring: Keyring, save_to: Option<PathBuf>) {
        if let Some(path) = save_to {
            self.disk.keyring(path, ring.clone());
        }
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = ring;
    }

    /// Runs a push/pull with `target` in its own task; the outcome comes back as
    /// [`Input::PushPullDone`].
    pub(super) fn dial(&self, target: String, kind: Dial, state: PushPullState) {
        let (keyring, tx) = (self.keyring.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = match tokio::net::lookup_host(&target).await {
                Ok(mut addrs) => match addrs.next() {
                    Some(addr) => net::push_pull(addr, state, keyring)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err(format!("{target} resolves to no address")),
                },
                Err(e) => Err(format!("resolving {target}: {e}")),
            };
            let _ = tx
                .send(Input::PushPullDone {
                    target,
                    kind,
                    result,
                })
                .await;
        });
    }

    /// Sends a query answer too large for a datagram over a sealed TCP stream.
    pub(super) fn stream_answer(&self, to: NodeId, answer: QueryResponse) {
        let (keyring, counters) = (self.keyring.clone(), self.counters.clone());
        tokio::spawn(async move {
            let msg = StreamMessage::QueryResponse(answer);
            if let Err(e) = net::send_stream(to.addr, msg, keyring).await {
                Counters::add(&counters.streams_failed);
                tracing::warn!(origin = %to.name, cause = %e, "query answer over TCP failed");
            }
        });
    }

    /// Member handlers: each in its own task behind the limiter.
    pub(super) fn run_handlers(
        &self,
        event: &str,
        handlers: Vec<HandlerConfig>,
        env: &Env,
        payload: &[u8],
    ) {
        handlers::spawn_each(&self.limiter, &self.counters, handlers, env, payload, event);
    }

    /// Runs `query`'s command handler (waiting for a slot); its stdout comes back as
    /// [`Input::HandlerAnswer`].
    pub(super) fn run_query_handler(&self, q: Query, h: HandlerConfig, env: Env) {
        let (tx, limiter, counters) =
            (self.tx.clone(), self.limiter.clone(), self.counters.clone());
        tokio::spawn(async move {
            match handlers::run(&limiter, &counters, &h, &env, q.payload, true).await {
                Ok(payload) => {
                    let answer = Input::HandlerAnswer {
                        id: q.id,
                        origin: q.origin,
                        payload,
                    };
                    let _ = tx.send(answer).await;
                }
                Err(e) => tracing::warn!(query = %q.name, cause = %e, "query handler failed"),
            }
        });
    }

    /// Starts journaled handlers, each in its own task holding its slot; one that cannot
    /// be spawned comes back as [`Input::HandlerFailed`]. A freed slot is reported.
    pub(super) fn spawn_event_handlers(
        &self,
        ev: UserEvent,
        owed: Vec<HandlerConfig>,
        env: Env,
        slots: Vec<Slot>,
    ) {
        for (h, slot) in owed.into_iter().zip(slots) {
            let (tx, ev) = (self.tx.clone(), ev.clone());
            if consumer_name(&h).is_some() {
                tokio::spawn(deliver_to_consumer(self.consumers.clone(), h, ev, slot, tx));
                continue;
            }
            let (env, counters) = (env.clone(), self.counters.clone());
            tokio::spawn(async move {
                match handlers::start(&h, &env, ev.payload.clone(), false) {
                    Ok(running) => {
                        let ran = running.finish_status().await;
                        counters.handler_ran(matches!(ran, Ok((_, true))));
                        if let Err(e) = ran {
                            tracing::warn!(event = %ev.name, cause = %e, "handler failed");
                        }
                    }
                    Err(e) => {
                        counters.handler_ran(false);
                        tracing::warn!(event = %ev.name, cause = %e, "handler could not be started; it stays pending and is retried");
                        let failed = Input::HandlerFailed {
                            event: ev,
                            handler: h,
                        };
                        let _ = tx.send(failed).await;
                    }
                }
                drop(slot);
                let _ = tx.send(Input::HandlerSlotFree).await;
            });
        }
    }
}

/// Hands `ev` to the consumer `h` stands for and reports its acknowledgement (or
/// failure), then the freed slot.
async fn deliver_to_consumer(
    consumers: Consumers,
    h: HandlerConfig,
    ev: UserEvent,
    slot: Slot,
    tx: mpsc::Sender<Input>,
) {
    let done = match consumers.deliver(&h, ev.clone()).await {
        Ok(()) => Input::ConsumerAcked {
            event: ev.id,
            handler: h,
        },
        Err(e) => {
            tracing::warn!(event = %ev.name, cause = %e, "consumer did not take the event");
            Input::HandlerFailed {
                event: ev,
                handler: h,
            }
        }
    };
    let _ = tx.send(done).await;
    drop(slot);
    let _ = tx.send(Input::HandlerSlotFree).await;
}
