//! The agent's whole protocol state as one state machine: foca and its runtime, the
//! gossip core, the queries this node waits for, join rounds, owed handlers, who left.
//!
//! Like foca itself it never touches a socket, a file, a channel, a task or the clock:
//! every input is a method call with the time as an argument ([`Now`]), and every
//! output is an [`Effect`] for the executor ([`crate::agent::task`]) to carry out, in
//! the order given. So every rule here is unit-tested with machines passing datagrams
//! to each other in memory (`tests/`).
//!
//! After every foca call the machine drains foca's runtime and the core's deliveries,
//! in this order: sends, timers, notifications (then a re-tune if the membership
//! changed), a pending tag re-announcement, and the core's deliveries — new events are
//! pushed on before anything touches the disk, then their handlers are owed
//! ([`Effect::StartOwed`]), then queries are answered and superseding items handed on.
//!
//! | file | inputs |
//! |---|---|
//! | `mod.rs` | start, timers, datagrams, snapshot tick, leave, reload, force-leave, reads |
//! | `effect.rs` | the [`Effect`]s and [`Timer`]s it returns |
//! | `pushpull.rs` | push/pull: answering, merging, dialing (sync, join, reconnect) |
//! | `events.rs` | notifications, user events (eager push, owed handlers), publishing |
//! | `queries.rs` | queries from this node, and answering others' |

mod effect;
mod events;
mod identity;
mod pushpull;
mod queries;
mod suspicion;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, OwnedNotification};
use rand::rngs::StdRng;

pub use effect::{Effect, Env, Metric, Timer};
pub use queries::QueryRequest;

use super::{Dials, QueryBook};
use crate::agent::AgentError;
use crate::agent::config::{HandlerConfig, Settings};
use crate::agent::key_auth::KeyAuthority;
use crate::agent::members::{self, LeftBook};
use crate::agent::pending::PendingHandlers;
use crate::agent::queries::QueryRegistry;
use crate::agent::sansio::persisted::PersistedState;
use crate::deploy::controller::core::APPS_KIND;
use crate::gossip::handler::GossipFoca;
use crate::gossip::kinds::Kinds;
use crate::gossip::message::{self, Broadcast, Datagram, Direct};
use crate::gossip::supersede::Superseding;
use crate::gossip::{
    GossipCore, Keyring, NodeId, SharedCore, Tags, recommended_foca_config, retune_size,
};
use crate::wire;

/// The time an input happens at.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic: query deadlines, handler backoffs.
    pub at: Instant,
    /// Wall clock since the UNIX epoch: event ages, tag versions.
    pub wall: Duration,
}

impl Now {
    fn wall_millis(self) -> u64 {
        u64::try_from(self.wall.as_millis()).unwrap_or(u64::MAX)
    }
}

/// What a machine starts from (restored from the data dir, or fresh).
pub struct Init {
    pub settings: Settings,
    pub core: GossipCore,
    pub kinds: Kinds,
    pub registry: QueryRegistry,
    /// The keyring in force; cluster key operations change it ([`Effect::Keyring`]).
    pub keyring: Keyring,
    /// Who may change it ([`crate::agent::key_auth`]).
    pub key_authority: KeyAuthority,
    pub left: LeftBook,
    pub pending: PendingHandlers,
    /// For event and query ids, and random peers.
    pub rng: StdRng,
    /// foca's own.
    pub foca_rng: StdRng,
}

/// The agent's protocol state; see the module docs. `W` waits for a query's result,
/// `S` is a handler slot ([`Effect`]).
pub struct AgentMachine<W, S> {
    settings: Settings,
    core: SharedCore,
    foca: GossipFoca<StdRng>,
    rt: AccumulatingRuntime<NodeId>,
    rng: StdRng,
    registry: QueryRegistry,
    keyring: Keyring,
    key_authority: KeyAuthority,
    left: LeftBook,
    queries: QueryBook<W>,
    dials: Dials,
    introductions: crate::agent::sansio::introduce::Introductions,
    /// Push/pulls asking a member that said this node is down (same bounds).
    confirmations: crate::agent::sansio::introduce::Introductions,
    /// Digest exchanges run back to their dialers, rate-limited the same way.
    answers_back: crate::agent::sansio::introduce::Introductions,
    /// This node's foca incarnation as its last packet carried it (foca keeps it private);
    /// a suspicion about this node is screened down to it.
    incarnation: foca::Incarnation,
    pending: PendingHandlers,
    /// The cluster size foca's retransmissions and suspicion timeout are tuned for.
    tuned_for: u32,
    /// Members up without tags, waiting for them ([`crate::agent::sansio::untagged`]).
    untagged: crate::agent::sansio::untagged::Untagged,
    /// Suspicion timers pending: (name, bump, incarnation) ([`suspicion`]).
    suspicions: std::collections::BTreeSet<(String, u16, foca::Incarnation)>,
    /// Push/pull ticks so far: past 32 nodes only every few dial.
    push_pull_ticks: u32,
    stopped: bool,
    slot: PhantomData<fn() -> S>,
}

type Effects<W, S> = Vec<Effect<W, S>>;

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

impl<W, S> AgentMachine<W, S> {
    pub fn new(init: Init) -> Self {
        let core = SharedCore::new(init.core);
        core.lock().set_kinds(init.kinds);
        let tuned_for = init.settings.expected_cluster_size;
        let foca = core.new_foca(foca_config(&init.settings, tuned_for), init.foca_rng);
        Self {
            settings: init.settings,
            core,
            foca,
            rt: AccumulatingRuntime::new(),
            rng: init.rng,
            registry: init.registry,
            keyring: init.keyring,
            key_authority: init.key_authority,
            left: init.left,
            queries: QueryBook::default(),
            dials: Dials::default(),
            introductions: Default::default(),
            confirmations: Default::default(),
            answers_back: Default::default(),
            incarnation: 0,
            pending: init.pending,
            tuned_for,
            untagged: Default::default(),
            suspicions: Default::default(),
            push_pull_ticks: 0,
            stopped: false,
            slot: PhantomData,
        }
    }

    /// The settings in force (reloaded ones after a SIGHUP).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the node left: the executor stops feeding it then.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Announces to the members known before a restart (`rejoin`) and our tags, folds
    /// the replayed journal into the state file, owes handlers and joins.
    pub fn start(&mut self, now: Now, rejoin: Vec<NodeId>) -> Effects<W, S> {
        self.announce_card();
        for member in rejoin {
            let _ = self.foca.announce(member, &mut self.rt);
        }
        let tags = self.settings.tags.clone();
        let announced = self.core.lock().set_tags(tags, now.wall_millis());
        match announced.map(|bytes| self.foca.add_broadcast(&bytes)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(cause = %e, "tags not announced"),
            Err(e) => tracing::warn!(cause = %e, "tags not announced"),
        }
        let mut out = Vec::new();
        self.drain(now, &mut out);
        // Fold the replayed journal into the state file now: a torn last line followed by
        // new appends would otherwise make the next start fail.
        out.push(self.snapshot());
        out.push(Effect::StartOwed);
        self.join_round(&mut out);
        out
    }

    /// A timer the machine asked for fired.
    pub fn timer(&mut self, now: Now, timer: Timer) -> Effects<W, S> {
        let mut out = Vec::new();
        match timer {
            Timer::Foca(timer) => {
                if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                    tracing::debug!(cause = %e, "foca timer");
                }
                self.drain(now, &mut out);
            }
            Timer::QueryDeadline(id) => {
                let effects = self.queries.deadline(id);
                self.query_effects(effects, &mut out);
            }
            Timer::RetryJoin => self.join_round(&mut out),
            Timer::RetryHandlers(_) => out.push(Effect::StartOwed),
            Timer::TagSweep => self.tag_sweep(&mut out),
            Timer::SuspicionExpired {
                member,
                incarnation,
            } => self.suspicion_expired(now, member, incarnation, &mut out),
        }
        out
    }

    /// An opened datagram from `from`.
    pub fn datagram(&mut self, now: Now, plain: &[u8], from: SocketAddr) -> Effects<W, S> {
        let mut out = Vec::new();
        self.core.lock().set_clock(now.wall);
        match message::decode_datagram(plain) {
            Ok(Datagram::Foca { packet, auth }) => {
                self.foca_packet(now, packet, auth.as_ref(), from, &mut out)
            }
            Ok(Datagram::Direct(Direct::QueryResponse(r))) => {
                self.record_response(now, r, &mut out);
            }
            Ok(Datagram::Direct(Direct::Event(ev))) => {
                if let Ok(bytes) = message::encode_broadcast(&Broadcast::Event(ev)) {
                    let _ = self.foca.add_broadcast(&bytes);
                    self.drain(now, &mut out);
                }
            }
            Ok(Datagram::Direct(Direct::Leave(notice))) => self.leave_notice(now, notice, &mut out),
            Err(_) => out.push(Effect::Count(Metric::Malformed)),
        }
        out
    }

    /// The periodic snapshot: ages events out, forgets the tags of reaped members,
    /// writes the state file and starts owed handlers (slots freed by member or query
    /// handlers are not reported).
    pub fn snapshot_tick(&mut self, now: Now) -> Effects<W, S> {
        let known: HashSet<String> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().name.clone())
            .collect();
        let mut core = self.core.lock();
        core.tick(now.wall);
        // foca does not list this node itself: its own tags stay.
        let me = core.identity().name.clone();
        core.prune_tags(|name| name == me || known.contains(name));
        drop(core);
        vec![self.snapshot(), Effect::StartOwed]
    }

    /// Graceful leave: a notice to every member, foca's leave, then the state file.
    /// The machine is stopped afterwards.
    pub fn leave(&mut self, now: Now) -> Effects<W, S> {
        let notice = self.core.lock().leave_notice();
        let peers: Vec<NodeId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        let mut out = Vec::new();
        if let Ok(plain) = message::encode_direct(&Direct::Leave(notice)) {
            for p in &peers {
                out.push(Effect::Send {
                    to: p.addr,
                    plain: plain.clone(),
                });
            }
        }
        self.stopped = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::warn!(cause = %e, "foca leave");
        }
        self.drain(now, &mut out);
        out.push(self.snapshot_with(peers));
        out
    }

    /// Marks the failed member `node` as left, and tells every live member.
    pub fn force_leave(&mut self, node: &str) -> (Result<(), AgentError>, Effects<W, S>) {
        let found = self
            .foca
            .iter_membership_state()
            .find(|m| m.id().name == node)
            .cloned();
        let Some(member) = found else {
            let e = AgentError::NotFound(format!("no member named {node:?}"));
            return (Err(e), Vec::new());
        };
        if member.state() != foca::State::Down {
            let e = AgentError::Conflict(format!(
                "{node} is {}; force-leave only applies to failed members",
                members::status(&member, &self.left)
            ));
            return (Err(e), Vec::new());
        }
        self.left.record(member.id());
        tracing::info!(node = %node, "force-leave");
        let mut out = Vec::new();
        let notice = message::LeaveNotice {
            id: member.id().clone(),
            sig: None,
        };
        if let Ok(plain) = message::encode_direct(&Direct::Leave(notice)) {
            for p in self.foca.iter_members() {
                out.push(Effect::Send {
                    to: p.id().addr,
                    plain: plain.clone(),
                });
            }
        }
        (Ok(()), out)
    }

    /// SIGHUP: new tags (announced), handlers (the configured ones, then `extra`: the
    /// in-process consumers) and log level. Nothing else changes.
    pub fn reload(&mut self, now: Now, new: Settings, extra: Vec<HandlerConfig>) {
        let announced = self
            .core
            .lock()
            .set_tags(new.tags.clone(), now.wall_millis());
        match announced {
            Ok(bytes) => {
                if let Err(e) = self.foca.add_broadcast(&bytes) {
                    tracing::warn!(cause = %e, "SIGHUP: new tags not announced");
                }
            }
            Err(e) => tracing::warn!(cause = %e, "SIGHUP: new tags not announced"),
        }
        // A dev agent's identity is its own, made at start; the file has none. An identity
        // for another name would cut this node off: refused.
        if new.node != self.settings.node {
            tracing::error!(
                node = %self.settings.node,
                identity = %new.node,
                "SIGHUP: the node identity is for another name; identity not reloaded"
            );
        } else if !self.settings.dev {
            self.core
                .lock()
                .reload_identity_policy(new.identity.policy());
            self.settings.identity = new.identity;
            self.announce_card();
        }
        self.settings.tags = new.tags;
        self.settings.handlers = new.handlers;
        self.settings.handlers.extend(extra);
        self.settings.log_level = new.log_level;
        tracing::info!(
            handlers = self.settings.handlers.len(),
            "SIGHUP: reloaded tags, handlers, log level and node identity"
        );
    }
    /// How many members foca counts as active (alive or suspect), this node not included:
    /// what the simulator watches instead of building [`Self::members`] for every node.
    pub fn active_members(&self) -> usize {
        self.foca.num_members()
    }

    /// The tags this node holds for `node` (its own included).
    pub fn tags_of(&self, node: &str) -> Option<Tags> {
        self.core.lock().tag_book().tags_of(node).cloned()
    }

    /// All members, this node first.
    pub fn members(&self) -> Vec<wire::Member> {
        let core = self.core.lock();
        members::list(
            core.identity(),
            core.tags(),
            self.foca.iter_membership_state(),
            core.tag_book(),
            &self.left,
            core.identities(),
            |name| {
                let item = core.superseding_item(APPS_KIND, name)?;
                postcard::from_bytes::<Vec<String>>(&item.body).ok()
            },
        )
    }

    /// This node, with the executor's `counters` and the core's.
    pub fn info(&self, mut counters: BTreeMap<String, u64>) -> wire::Info {
        let core = self.core.lock();
        let s = core.stats();
        for (k, v) in [
            ("events_delivered", s.events_delivered),
            ("events_duplicate", s.events_duplicate),
            ("events_too_old", s.events_too_old),
            ("ltime_too_far_ahead", s.too_far_ahead),
            ("queries_seen", s.queries_seen),
            ("queries_matched", s.queries_matched),
            ("messages_malformed", s.malformed),
            ("messages_unknown_type", s.unknown_types),
            ("superseded", s.superseded),
            ("superseding_slots_full", s.slots_full),
            ("superseding_refused", s.refused_superseding),
            ("superseding_refused_about_self", s.refused_about_self),
            ("identity_refused", s.refused_identity),
            ("identity_packets_refused", s.packets_refused_identity),
            ("identity_updates_refused", s.updates_refused_identity),
            ("identity_exchanges_cut", s.exchanges_cut),
            ("identity_packets_spoofed", s.packets_spoofed),
            ("identity_packets_forged", s.packets_forged),
            (
                "identity_packets_unauthenticated",
                s.packets_unauthenticated,
            ),
            ("identity_packets_replayed", s.packets_replayed),
            ("identity_checks_deferred", s.checks_deferred),
        ] {
            counters.insert(k.to_owned(), v);
        }
        wire::Info {
            name: core.identity().name.clone(),
            addr: core.identity().addr.to_string(),
            tags: super::deploy_format::split(core.tags().clone()).0,
            bump: core.identity().bump,
            members_alive: self.foca.num_members() + 1,
            counters,
            identity_mode: match core.identities().mode() {
                crate::gossip::vouch::Mode::Off => "off",
                crate::gossip::vouch::Mode::Transition => "transition",
                crate::gossip::vouch::Mode::Required => "required",
            }
            .into(),
            identity: core.identities().own().map(|own| wire::MemberIdentity {
                node_key: crate::keytext::public_key_text(&own.cert().node_key()),
                expires: own.cert().body().not_after,
            }),
        }
    }

    /// The newest superseding items held of `kind`.
    pub fn superseding_items(&self, kind: &str) -> Vec<Superseding> {
        self.core.lock().superseding_items(kind)
    }

    /// Drains foca's runtime and the core's deliveries into `out` (see the module
    /// docs for the order). Call after every foca call.
    fn drain(&mut self, now: Now, out: &mut Effects<W, S>) {
        // Packets are stamped with this clock (see gossip::pairwise).
        self.core.lock().set_clock(now.wall);
        while let Some((dst, data)) = self.rt.to_send() {
            if let Ok((header, _)) = postcard::take_from_bytes::<foca::Header<NodeId>>(&data) {
                self.incarnation = header.src_incarnation;
            }
            let plain = self.core.lock().foca_datagram(&dst, &data);
            out.push(Effect::Send {
                to: dst.addr,
                plain,
            });
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            let timer = Timer::Foca(timer);
            out.push(Effect::Schedule { after, timer });
        }
        let mut membership_changed = false;
        while let Some(n) = self.rt.to_notify() {
            membership_changed |= matches!(
                n,
                OwnedNotification::MemberUp(_) | OwnedNotification::MemberDown(_)
            );
            self.on_notification(n, out);
        }
        if membership_changed {
            self.retune();
        }
        self.announce_card();
        let republish = self.core.lock().take_republish();
        for bytes in republish {
            match bytes.map(|bytes| self.foca.add_broadcast(&bytes)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(cause = %e, "own slot not published again"),
                Err(e) => tracing::warn!(cause = %e, "own slot not published again"),
            }
        }
        let incoming = self.core.drain_incoming();
        self.deliver(now, incoming, out);
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

    fn snapshot(&self) -> Effect<W, S> {
        let peers = self.foca.iter_members().map(|m| m.id().clone()).collect();
        self.snapshot_with(peers)
    }

    fn snapshot_with(&self, members: Vec<NodeId>) -> Effect<W, S> {
        Effect::Snapshot(Box::new(PersistedState {
            core: self.core.lock().snapshot(),
            members,
            left: self.left.clone(),
            pending: self.pending.records(),
            key_operations: self.key_authority.seen(),
        }))
    }

    /// This node's tags.
    fn tags(&self) -> Tags {
        self.core.lock().tags().clone()
    }
}
