//! What a node does with what the protocol delivers: member notifications (monitor
//! lines, member handlers, learning a newcomer's tags) and user events.
//!
//! A new user event is first published and pushed on to a few random peers ("eager
//! push": delivery costs hops x RTT, not hops x gossip interval), then journaled if any
//! handler takes it, and only then are handlers started — so forwarding never waits for
//! the disk, and a crash can never run a handler twice. A handler that cannot be
//! journaled or spawned stays owed and is retried ([`crate::agent::pending`]).

use foca::OwnedNotification;

use super::{AgentMachine, Effect, Effects, Metric, Now, Timer};
use crate::agent::AgentError;
use crate::agent::config::HandlerConfig;
use crate::agent::pending::{Batch, JournalLine, Mark};
use crate::agent::sansio::consumer_name::consumer_name;
use crate::agent::sansio::trigger::{self, Trigger};
use crate::agent::sansio::{Dial, EagerPush, untagged};
use crate::gossip::message::{self, Direct};
use crate::gossip::supersede::Superseding;
use crate::gossip::{EventId, Incoming, NodeId, UserEvent};
use crate::wire;

fn user_trigger(ev: &UserEvent) -> Trigger {
    Trigger::User {
        name: ev.name.clone(),
        ltime: ev.ltime,
    }
}

impl<W, S> AgentMachine<W, S> {
    /// Publishes a user event from this node.
    pub fn publish_event(
        &mut self,
        now: Now,
        name: &str,
        payload: Vec<u8>,
    ) -> (Result<wire::EventResponse, AgentError>, Effects<W, S>) {
        let created = self.core.lock().create_event(&mut self.rng, name, payload);
        let (ev, bytes) = match created {
            Ok(x) => x,
            Err(e) => return (Err(AgentError::Create(e)), Vec::new()),
        };
        if let Err(e) = self.foca.add_broadcast(&bytes) {
            tracing::warn!(cause = %e, "add_broadcast refused a local event");
        }
        let mut out = Vec::new();
        self.drain(now, &mut out);
        let response = wire::EventResponse {
            id: format!("{:032x}", ev.id.0),
            ltime: ev.ltime,
        };
        (Ok(response), out)
    }

    /// Broadcasts a superseding item with this node as its origin.
    pub fn publish_superseding(
        &mut self,
        now: Now,
        item: Superseding,
    ) -> (Result<(), AgentError>, Effects<W, S>) {
        let created =
            self.core
                .lock()
                .create_superseding(&item.kind, &item.key, item.version, item.body);
        let bytes = match created {
            Ok(bytes) => bytes,
            Err(e) => return (Err(e.into()), Vec::new()),
        };
        if let Err(e) = self.foca.add_broadcast(&bytes) {
            let e = AgentError::Conflict(format!("broadcast refused: {e}"));
            return (Err(e), Vec::new());
        }
        let mut out = Vec::new();
        self.drain(now, &mut out);
        (Ok(()), out)
    }

    /// How many handler slots the owed handlers that may start at `now` would take:
    /// the most [`Self::start_owed`] can use.
    pub fn owed_now(&self, now: Now) -> usize {
        let ready = self.pending.ready(now.at);
        ready.into_iter().map(|id| self.pending.owed_len(id)).sum()
    }

    /// Journals, then starts, owed handlers in arrival order, one per free slot; the
    /// rest wait for a slot. Slots not needed are dropped. Journaled (slot held) before
    /// any handler starts: never run twice after a crash.
    pub fn start_owed(&mut self, now: Now, mut slots: Vec<S>) -> Effects<W, S> {
        let mut batches: Vec<Batch<S>> = Vec::new();
        for id in self.pending.ready(now.at) {
            if slots.is_empty() {
                break;
            }
            let n = self.pending.owed_len(id).min(slots.len());
            if let Some(mut b) = self.pending.take::<S>(id, n) {
                b.slots = slots.drain(..b.handlers.len()).collect();
                batches.push(b);
            }
        }
        if batches.is_empty() {
            return Vec::new();
        }
        let lines: Vec<JournalLine> = batches.iter().flat_map(|b| b.lines.clone()).collect();
        vec![Effect::Journal { lines, batches }]
    }

    /// The journal holds `batches` (or could not be written): start their handlers,
    /// or owe them again and retry with backoff (their slots are freed).
    pub fn journaled(
        &mut self,
        now: Now,
        batches: Vec<Batch<S>>,
        result: Result<(), String>,
    ) -> Effects<W, S> {
        if let Err(e) = result {
            tracing::warn!(cause = %e, events = batches.len(), "journal append failed; their handlers stay pending and are retried");
            return batches
                .into_iter()
                .map(|b| {
                    let after = self.pending.failed(&b.event, b.handlers, now.at);
                    let timer = Timer::RetryHandlers(b.event.id);
                    Effect::Schedule { after, timer }
                })
                .collect();
        }
        let tags = self.tags();
        let (node, rpc) = (&self.settings.node, &self.settings.rpc);
        batches
            .into_iter()
            .map(|b| {
                self.pending.journaled(b.event.id);
                let env = trigger::env(&user_trigger(&b.event), node, rpc, &tags);
                Effect::SpawnEventHandlers {
                    event: b.event,
                    handlers: b.handlers,
                    env,
                    slots: b.slots,
                }
            })
            .collect()
    }

    /// A handler's process could not be spawned, or a consumer did not acknowledge:
    /// journal it as owed (a consumer already is), retry later.
    pub fn handler_failed(&mut self, now: Now, ev: UserEvent, h: HandlerConfig) -> Effects<W, S> {
        let mut out = Vec::new();
        if consumer_name(&h).is_none() {
            let line = JournalLine::Owed(Mark {
                id: ev.id,
                command: h.command.clone(),
            });
            let batches = Vec::new();
            out.push(Effect::Journal {
                lines: vec![line],
                batches,
            });
        }
        let after = self.pending.failed(&ev, vec![h], now.at);
        let timer = Timer::RetryHandlers(ev.id);
        out.push(Effect::Schedule { after, timer });
        out
    }

    /// A consumer acknowledged `id`: journal it (no longer owed).
    pub fn consumer_acked(&mut self, id: EventId, h: HandlerConfig) -> Effects<W, S> {
        let acked = self.pending.acked(id, &h);
        acked
            .map(|line| Effect::Journal {
                lines: vec![line],
                batches: Vec::new(),
            })
            .into_iter()
            .collect()
    }

    /// The core's deliveries: new events pushed on first (forwarding must not wait for
    /// the disk), then their handlers owed, then queries answered and superseding
    /// items handed on.
    pub(super) fn deliver(&mut self, now: Now, incoming: Vec<Incoming>, out: &mut Effects<W, S>) {
        let mut owed = false;
        for item in &incoming {
            if let Incoming::Event(ev) = item {
                self.announce_event(ev, out);
            }
        }
        for item in &incoming {
            if let Incoming::Event(ev) = item {
                owed |= self.pending.owe_new(ev, &self.settings.handlers);
            }
        }
        if owed {
            out.push(Effect::StartOwed);
        }
        for item in incoming {
            match item {
                Incoming::Query(q) => self.answer_query(now, q, out),
                Incoming::Superseding(item) => out.push(Effect::Superseding(item)),
                Incoming::Event(_) => {}
            }
        }
    }

    /// Logs and publishes a new event, and pushes it straight to a few random peers.
    fn announce_event(&mut self, ev: &UserEvent, out: &mut Effects<W, S>) {
        tracing::info!(event = %ev.name, ltime = ev.ltime, origin = %ev.origin, "user event");
        out.push(Effect::Monitor(serde_json::json!({
            "type": "event", "event": "user", "name": ev.name, "ltime": ev.ltime,
            "origin": ev.origin, "payload": String::from_utf8_lossy(&ev.payload),
        })));
        let push = EagerPush {
            enabled: self.settings.eager_push,
            fanout: self.settings.eager_push_fanout,
        };
        let peers: Vec<&NodeId> = self.foca.iter_members().map(|m| m.id()).collect();
        let size = self.foca.num_members() + 1;
        let me = self.core.lock().identity().name.clone();
        let targets = push.targets(peers.into_iter(), size, &ev.origin, &me, &mut self.rng);
        if targets.is_empty() {
            return;
        }
        if let Ok(plain) = message::encode_direct(&Direct::Event(ev.clone())) {
            for to in targets {
                out.push(Effect::Count(Metric::EventPushed));
                let plain = plain.clone();
                out.push(Effect::Send { to, plain });
            }
        }
    }

    pub(super) fn on_notification(
        &mut self,
        n: OwnedNotification<NodeId>,
        out: &mut Effects<W, S>,
    ) {
        match n {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(node = %id.name, addr = %id.addr, "member up");
                self.member_event("member-join", &id, out);
                let untagged = self.core.lock().tag_book().tags_of(&id.name).is_none();
                if untagged && self.untagged.add(&id.name) {
                    let (after, timer) = (untagged::SWEEP_EVERY, Timer::TagSweep);
                    out.push(Effect::Schedule { after, timer });
                }
            }
            OwnedNotification::MemberDown(id) => {
                let kind = if self.left.has_left(&id) {
                    "member-leave"
                } else {
                    "member-failed"
                };
                tracing::info!(node = %id.name, event = kind, "member down");
                self.member_event(kind, &id, out);
            }
            OwnedNotification::Rename(old, new) => {
                tracing::debug!(node = %new.name, old_bump = old.bump, new_bump = new.bump, "member restarted");
            }
            OwnedNotification::Active => tracing::info!("joined the cluster"),
            OwnedNotification::Idle => {
                if !self.stopped {
                    tracing::warn!("no live members left; re-announcing to the join addresses");
                    self.join_round(out);
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
                if !self.stopped {
                    tracing::warn!("this node was declared down");
                }
            }
        }
    }

    /// Forgets the members whose tags arrived (or that are gone) and asks one of the
    /// rest by push/pull; again after a while if any are left.
    pub(super) fn tag_sweep(&mut self, out: &mut Effects<W, S>) {
        let core = self.core.lock();
        let active: std::collections::HashMap<&str, std::net::SocketAddr> =
            (self.foca.iter_members())
                .map(|m| (m.id().name.as_str(), m.id().addr))
                .collect();
        let settled = |n: &str| !active.contains_key(n) || core.tag_book().tags_of(n).is_some();
        let (ask, again) = self.untagged.sweep(settled, &mut self.rng);
        let ask = ask.and_then(|n| active.get(n.as_str()).copied());
        drop(core);
        if let Some(addr) = ask {
            self.dial(addr.to_string(), Dial::Sync, out);
        }
        if again {
            let (after, timer) = (untagged::SWEEP_EVERY, Timer::TagSweep);
            out.push(Effect::Schedule { after, timer });
        }
    }

    /// A monitor line, and the member handlers (`kind`: `member-join`, ...).
    fn member_event(&self, kind: &str, id: &NodeId, out: &mut Effects<W, S>) {
        out.push(Effect::Monitor(serde_json::json!({
            "type": "member", "event": kind, "node": id.name, "addr": id.addr.to_string(),
        })));
        let trigger = Trigger::Member {
            kind: kind.to_owned(),
            node: id.name.clone(),
        };
        let matching = trigger::matching(&self.settings.handlers, &trigger);
        if matching.is_empty() {
            return;
        }
        let (node, rpc) = (&self.settings.node, &self.settings.rpc);
        out.push(Effect::RunHandlers {
            event: kind.to_owned(),
            handlers: matching,
            env: trigger::env(&trigger, node, rpc, &self.tags()),
            payload: id.name.as_bytes().to_vec(),
        });
    }
}
