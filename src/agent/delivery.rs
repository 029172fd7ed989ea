//! What a node does with what the protocol delivers: member notifications (monitor
//! lines, member handlers, learning a newcomer's tags) and user events.
//!
//! A new user event is first published and pushed on to a few random peers ("eager
//! push": delivery costs hops x RTT, not hops x gossip interval), then journaled if any
//! handler takes it, and only then are handlers started — so forwarding never waits for
//! the disk, and a crash can never run a handler twice. A handler that cannot be
//! journaled or spawned stays owed and is retried ([`super::pending`]).

use std::net::SocketAddr;

use foca::OwnedNotification;
use rand::seq::IteratorRandom;

use tokio::time::Instant;

use super::config::HandlerConfig;
use super::consumers::consumer_name;
use super::handlers::{self, Trigger};
use super::monitor;
use super::net::Counters;
use super::pending::{Batch, JournalLine, Mark};
use super::scheduler::Scheduled;
use super::sync::Dial;
use super::task::{AgentTask, Input};
use crate::gossip::message::{self, Direct};
use crate::gossip::{Incoming, NodeId, UserEvent, eager_fanout};

fn user_trigger(ev: &UserEvent) -> Trigger {
    Trigger::User {
        name: ev.name.clone(),
        ltime: ev.ltime,
    }
}

impl AgentTask {
    /// Owes the handlers of new events, then journals and starts what has a free slot.
    pub(super) fn owe_and_start(&mut self, incoming: &[Incoming]) {
        let mut any = false;
        for i in incoming {
            if let Incoming::Event(ev) = i {
                any |= self.pending.owe_new(ev, &self.settings.handlers);
            }
        }
        if any {
            self.start_owed();
        }
    }

    /// Journals, then starts, owed handlers in arrival order, as many as there are free
    /// slots; the rest wait for a slot ([`Input::HandlerSlotFree`]). Journaled (slot
    /// held) before any handler starts: never run twice after a crash.
    pub(super) fn start_owed(&mut self) {
        let mut batches: Vec<Batch> = Vec::new();
        'events: for id in self.pending.ready(Instant::now()) {
            let mut permits = Vec::new();
            while permits.len() < self.pending.owed_len(id) {
                match self.limiter.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) if permits.is_empty() => break 'events,
                    Err(_) => break,
                }
            }
            if let Some(mut b) = self.pending.take(id, permits.len()) {
                b.permits = permits;
                batches.push(b);
            }
        }
        if batches.is_empty() {
            return;
        }
        let lines: Vec<JournalLine> = batches.iter().flat_map(|b| b.lines.clone()).collect();
        self.disk.journal(lines, batches);
    }

    /// The disk writer journaled `batches` (or could not): start their handlers, or owe
    /// them again and retry with backoff.
    pub(super) fn journaled(&mut self, batches: Vec<Batch>, result: Result<(), String>) {
        if let Err(e) = result {
            tracing::warn!(cause = %e, events = batches.len(), "journal append failed; their handlers stay pending and are retried");
            for b in batches {
                let delay = self.pending.failed(&b.event, b.handlers, Instant::now());
                self.sched
                    .submit(Instant::now(), delay, Scheduled::RetryHandlers(b.event.id));
            }
            return;
        }
        for b in batches {
            self.pending.journaled(b.event.id);
            self.spawn_event_handlers(b);
        }
    }

    /// Starts journaled handlers, each in its own task holding its slot; one that cannot
    /// be spawned comes back as [`Input::HandlerFailed`]. A freed slot is reported.
    fn spawn_event_handlers(&self, batch: Batch) {
        let Batch {
            event: ev,
            handlers: owed,
            permits,
            ..
        } = batch;
        let tags = self.core.lock().tags().clone();
        let env = handlers::env(
            &user_trigger(&ev),
            &self.settings.node,
            &self.settings.rpc,
            &tags,
        );
        for (h, permit) in owed.into_iter().zip(permits) {
            let (tx, env, ev) = (self.tx.clone(), env.clone(), ev.clone());
            if consumer_name(&h).is_some() {
                let consumers = self.consumers.clone();
                tokio::spawn(async move {
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
                    drop(permit);
                    let _ = tx.send(Input::HandlerSlotFree).await;
                });
                continue;
            }
            tokio::spawn(async move {
                match handlers::start(&h, &env, ev.payload.clone(), false) {
                    Ok(running) => {
                        if let Err(e) = running.finish().await {
                            tracing::warn!(event = %ev.name, cause = %e, "handler failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(event = %ev.name, cause = %e, "handler could not be started; it stays pending and is retried");
                        let _ = tx
                            .send(Input::HandlerFailed {
                                event: ev,
                                handler: h,
                            })
                            .await;
                    }
                }
                drop(permit);
                let _ = tx.send(Input::HandlerSlotFree).await;
            });
        }
    }

    /// A handler's process could not be spawned, or a consumer did not acknowledge:
    /// journal it as owed (a consumer already is), retry later.
    pub(super) fn handler_failed(&mut self, ev: UserEvent, h: HandlerConfig) {
        if consumer_name(&h).is_none() {
            let line = JournalLine::Owed(Mark {
                id: ev.id,
                command: h.command.clone(),
            });
            self.disk.journal(vec![line], Vec::new());
        }
        let delay = self.pending.failed(&ev, vec![h], Instant::now());
        self.sched
            .submit(Instant::now(), delay, Scheduled::RetryHandlers(ev.id));
    }

    pub(super) fn on_notification(&mut self, n: OwnedNotification<NodeId>) {
        let tags = self.core.lock().tags().clone();
        let member = |kind: &str, id: &NodeId| {
            monitor::publish(
                &self.monitor,
                serde_json::json!({"type": "member", "event": kind, "node": id.name, "addr": id.addr.to_string()}),
            );
            handlers::spawn_matching(
                &self.limiter,
                &self.settings.handlers,
                &Trigger::Member {
                    kind: kind.to_owned(),
                    node: id.name.clone(),
                },
                &self.settings.node,
                &self.settings.rpc,
                &tags,
                id.name.as_bytes(),
            );
        };
        match n {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(node = %id.name, addr = %id.addr, "member up");
                member("member-join", &id);
                if self.core.lock().tag_book().tags_of(&id.name).is_none() {
                    // Learn its tags (and anything else it knows) right away.
                    self.spawn_push_pull(id.addr.to_string(), Dial::Sync);
                }
            }
            OwnedNotification::MemberDown(id) => {
                let kind = if self.left.has_left(&id) {
                    "member-leave"
                } else {
                    "member-failed"
                };
                tracing::info!(node = %id.name, event = kind, "member down");
                member(kind, &id);
            }
            OwnedNotification::Rename(old, new) => {
                tracing::debug!(node = %new.name, old_bump = old.bump, new_bump = new.bump, "member restarted");
            }
            OwnedNotification::Active => tracing::info!("joined the cluster"),
            OwnedNotification::Idle => {
                if !self.stop {
                    tracing::warn!("no live members left; re-announcing to the join addresses");
                    self.start_join_round();
                }
            }
            OwnedNotification::Rejoin(id) => {
                tracing::warn!(
                    bump = id.bump,
                    "the cluster declared us down; rejoined with a new identity"
                );
                self.core.lock().set_identity(id);
            }
            OwnedNotification::Defunct => {
                if !self.stop {
                    tracing::warn!("this node was declared down");
                }
            }
        }
    }

    /// Logs and publishes a new event, and pushes it straight to a few random peers.
    pub(super) async fn announce_event(&mut self, ev: &UserEvent) {
        tracing::info!(event = %ev.name, ltime = ev.ltime, origin = %ev.origin, "user event");
        monitor::publish(
            &self.monitor,
            serde_json::json!({
                "type": "event", "event": "user", "name": ev.name, "ltime": ev.ltime,
                "origin": ev.origin, "payload": String::from_utf8_lossy(&ev.payload),
            }),
        );
        if !self.settings.eager_push {
            return;
        }
        let fanout = self
            .settings
            .eager_push_fanout
            .unwrap_or_else(|| eager_fanout(self.foca.num_members() + 1));
        let targets: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .filter(|m| m.id().name != ev.origin)
            .map(|m| m.id().addr)
            .sample(&mut self.rng, fanout);
        if let Ok(plain) = message::encode_direct(&Direct::Event(ev.clone())) {
            for dst in targets {
                Counters::add(&self.counters.events_pushed);
                self.send_datagram(dst, &plain).await;
            }
        }
    }
}

impl AgentTask {
    /// A consumer acknowledged `id`: journal it (no longer owed).
    pub(super) fn consumer_acked(&mut self, id: crate::gossip::EventId, h: HandlerConfig) {
        if let Some(line) = self.pending.acked(id, &h) {
            self.disk.journal(vec![line], Vec::new());
        }
    }
}
