//! Push/pull: anti-entropy with live members, joining, and reconnecting to failed
//! members.
//!
//! Every outgoing exchange is a [`Dial`] ([`Effect::Dial`], carrying our state); the
//! executor runs it and hands the outcome to [`AgentMachine::push_pull_done`].
//!
//! - [`Dial::Sync`]: every `push_pull_interval`, a random live member (and a member
//!   that came up with tags we do not know yet).
//! - [`Dial::Join`]: the `join` addresses at start, retried with backoff
//!   ([`crate::agent::sansio::dials`]), and again when no live member is left.
//! - [`Dial::Reconnect`]: every `reconnect_interval`, a random *failed* member
//!   ([`members::reconnect_target`]), at most one in flight. Serf's reconnect: after a
//!   partition longer than a stream timeout, nothing else crosses the healed link
//!   (live-member push/pull and probes only go to members seen alive).
//!
//! A successful join or reconnect merges the peer's state and then announces to the
//! peer: foca's `Feed` reply brings its live view. A remote state is merged with
//! [`screen_members`], so the peer's "down" verdicts never fail a member we see alive;
//! its verdict about *us* passes, and makes foca rejoin under a new bump (the only way
//! back into a view that declared us down), but with node identities only from an
//! exchange this node started: a state pushed to it may come from anyone with the gossip
//! key, so what it says about this node (other than alive) is left out, and a "down"
//! there makes the node ask the peer with a push/pull of its own.

use std::net::IpAddr;

use foca::Member;

use super::{AgentMachine, Effect, Effects, Metric, Now, Timer};
use crate::agent::members;
use crate::agent::sansio::Dial;
use crate::agent::sansio::dials::{DialEffect, JoinPolicy};
use crate::agent::sansio::push::sync_target;
use crate::gossip::PushPullState;
use crate::gossip::digest::{self, Digest};
use crate::gossip::limits::push_pull_every;
use crate::gossip::pushpull::screen_members;
use crate::gossip::vouch::Mode;

impl<W, S> AgentMachine<W, S> {
    /// A peer started a push/pull (its hello said wire `peer_version`): our state for
    /// the reply, taken before theirs is merged.
    pub fn push_pull_request(
        &mut self,
        now: Now,
        remote: PushPullState,
        peer_version: u16,
        peer: IpAddr,
    ) -> (PushPullState, Effects<W, S>) {
        let mut out = Vec::new();
        let ours = match digest::requested(&remote) {
            Some(Ok(theirs)) => {
                self.answer_digest(now, &remote, &theirs, peer_version, peer, &mut out)
            }
            Some(Err(e)) => {
                tracing::debug!(peer = %remote.from.name, cause = %e, "answering with the full state");
                self.push_pull_state(peer_version)
            }
            None => self.push_pull_state(peer_version),
        };
        self.merge_remote(now, remote, Some(peer), false, &mut out);
        (ours, out)
    }

    /// Our answer to a digest request: what differs. Where something does and the
    /// dialer asked for it, the same exchange the other way, to the member the request
    /// came from (only a member this node knows at that address, and the stream's, and
    /// at most once per peer per [`crate::agent::sansio::introduce::INTERVAL`]: the
    /// dialer does not set our dialing rate).
    fn answer_digest(
        &mut self,
        now: Now,
        remote: &PushPullState,
        theirs: &Digest,
        peer_version: u16,
        peer: IpAddr,
        out: &mut Effects<W, S>,
    ) -> PushPullState {
        let members = self.digest_members();
        let (ours, diff) = self
            .core
            .lock()
            .push_pull_answer(members, theirs, peer_version);
        let from = &remote.from;
        let known = self.foca.iter_members().any(|m| m.id() == from);
        if diff.any()
            && theirs.answer_back
            && known
            && peer == from.addr.ip()
            && self.answers_back.due(from.addr, now.at)
        {
            tracing::debug!(peer = %from.name, buckets = diff.buckets(), events = diff.events, "views differ: asking back");
            out.push(Effect::Dial {
                target: from.addr.to_string(),
                kind: Dial::Sync,
                state: Box::new(self.digest_request(false)),
            });
        }
        ours
    }

    /// A digest request ([`digest`]) of our view.
    fn digest_request(&self, answer_back: bool) -> PushPullState {
        let members = self.digest_members();
        self.core.lock().push_pull_digest(&members, answer_back)
    }

    /// The members a digest covers: foca's view and this node itself (foca does not list
    /// it), so that two nodes that agree have the same digest.
    fn digest_members(&self) -> Vec<Member<crate::gossip::NodeId>> {
        let me = self.core.lock().identity().clone();
        let mut members: Vec<_> = self.foca.iter_membership_state().cloned().collect();
        members.push(Member::new(me, self.incarnation, foca::State::Alive));
        members
    }

    /// Our push/pull with `target` came back.
    pub fn push_pull_done(
        &mut self,
        now: Now,
        target: String,
        kind: Dial,
        result: Result<PushPullState, String>,
    ) -> Effects<W, S> {
        let mut out = Vec::new();
        let ok = result.is_ok();
        match result {
            Ok(remote) => {
                let from = remote.from.clone();
                let dialled = target.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
                self.merge_remote(now, remote, dialled, true, &mut out);
                if kind != Dial::Sync {
                    let _ = self.foca.announce(from, &mut self.rt);
                    self.drain(now, &mut out);
                }
                match kind {
                    Dial::Join => tracing::info!(peer = %target, "joined via push/pull"),
                    Dial::Reconnect => {
                        tracing::info!(peer = %target, "reconnected to a failed member via push/pull");
                    }
                    Dial::Sync => {}
                }
            }
            Err(e) => match kind {
                Dial::Join => tracing::warn!(peer = %target, cause = %e, "join attempt failed"),
                Dial::Reconnect => tracing::debug!(peer = %target, cause = %e, "reconnect failed"),
                Dial::Sync => tracing::debug!(peer = %target, cause = %e, "push/pull failed"),
            },
        }
        let policy = JoinPolicy {
            retry: self.settings.retry_join,
            max: self.settings.retry_max,
            interval: self.settings.retry_interval,
        };
        let effects = self.dials.done(kind, ok, &policy);
        self.dial_effects(effects, &mut out);
        out
    }

    /// The periodic push/pull with a random live member, on every tick up to 32 nodes and
    /// on every [`push_pull_every`]-th beyond (the first tick always).
    pub fn push_pull_tick(&mut self) -> Effects<W, S> {
        let every = push_pull_every(self.foca.num_members() + 1);
        let due = self.push_pull_ticks.is_multiple_of(every);
        self.push_pull_ticks = self.push_pull_ticks.wrapping_add(1);
        if !due {
            return Vec::new();
        }
        let me = self.core.lock().identity().name.clone();
        let peers = self.foca.iter_members().map(|m| m.id());
        let mut out = Vec::new();
        if let Some(addr) = sync_target(peers, &me, &mut self.rng) {
            self.dial(addr.to_string(), Dial::Sync, &mut out);
        }
        out
    }

    /// The periodic reconnect to a random failed member.
    pub fn reconnect_tick(&mut self) -> Effects<W, S> {
        let me = self.core.lock().identity().clone();
        let (foca, left, rng) = (&self.foca, &self.left, &mut self.rng);
        let effects = self.dials.reconnect(self.stopped, || {
            let id = members::reconnect_target(&me, foca.iter_membership_state(), left, rng)?;
            tracing::debug!(node = %id.name, addr = %id.addr, "reconnecting to a failed member");
            Some(id.addr.to_string())
        });
        let mut out = Vec::new();
        self.dial_effects(effects, &mut out);
        out
    }

    /// Dials every join address (unless a round is in flight).
    pub(super) fn join_round(&mut self, out: &mut Effects<W, S>) {
        let effects = self.dials.join_round(&self.settings.join, self.stopped);
        self.dial_effects(effects, out);
    }

    /// A push/pull with `target`, sending our state in the version it reads: a peer we
    /// never heard a versioned state from gets the format every version reads; its
    /// reply tells us its version for the next time. Where node identities are required,
    /// every peer speaks this version (older ones cannot sign), so our signed state goes
    /// out from the first exchange.
    ///
    /// The periodic exchange ([`Dial::Sync`]) sends a digest instead ([`digest`]): every
    /// peer that can be dialed reads it (version 1 agents refuse a newer hello anyway);
    /// one from before digests skips it and answers with its full state.
    pub(super) fn dial(&self, target: String, kind: Dial, out: &mut Effects<W, S>) {
        if kind == Dial::Sync {
            let state = Box::new(self.digest_request(true));
            out.push(Effect::Dial {
                target,
                kind,
                state,
            });
            return;
        }
        let name = self
            .foca
            .iter_membership_state()
            .find(|m| m.id().addr.to_string() == target)
            .map(|m| m.id().name.clone());
        let core = self.core.lock();
        let known = name.map(|n| core.peer_version(&n));
        let required = core.identities().mode() == crate::gossip::vouch::Mode::Required;
        drop(core);
        let version = known.unwrap_or(if required {
            crate::gossip::PROTOCOL_VERSION
        } else {
            1
        });
        let state = Box::new(self.push_pull_state(version));
        out.push(Effect::Dial {
            target,
            kind,
            state,
        });
    }

    /// Our state, to be encoded at wire `version` (what the peer reads).
    fn push_pull_state(&self, version: u16) -> PushPullState {
        let members: Vec<_> = self.foca.iter_membership_state().cloned().collect();
        self.core.lock().push_pull_state(members, version)
    }

    /// Merges a peer's state: events and clocks into the core, screened members into
    /// foca. `peer`: the address the stream came from or went to. With node identities, a
    /// state whose `from` names another address is not taken as its sender's word: its
    /// sender is not added and its tags and version are not learned (its signed items
    /// still count: they speak for themselves). `dialled`: this node started the exchange,
    /// with a member at the address its card names (else anyone with the gossip key may
    /// have written the state).
    fn merge_remote(
        &mut self,
        now: Now,
        mut remote: PushPullState,
        peer: Option<IpAddr>,
        dialled: bool,
        out: &mut Effects<W, S>,
    ) {
        let from = remote.from.clone();
        let checked = self.core.lock().identities().mode() == crate::gossip::vouch::Mode::Off
            || peer.is_none_or(|ip| ip == from.addr.ip());
        if !checked {
            tracing::debug!(peer = ?peer, claimed = %from.addr, node = %from.name, "push/pull from another address than its sender claims: its word about itself ignored");
            out.push(Effect::Count(Metric::SpoofedSender));
            remote.tags.clear();
            remote.members.retain(|m| m.id().name != from.name);
        }
        let merged = self.core.lock().merge_push_pull(&remote, checked);
        // A digest request brings no state: only what did counts as merged.
        if digest::requested(&remote).is_none() {
            out.push(Effect::Count(Metric::PushPullMerged));
        }
        if !merged.new_events.is_empty() {
            tracing::info!(peer = %from.name, events = merged.new_events.len(), "push/pull delivered missed events");
        }
        let me = self.core.lock().identity().clone();
        if !dialled && self.core.lock().identities().mode() != Mode::Off {
            self.doubt_verdicts_about_me(now, &me, &mut remote, out);
        }
        let core = self.core.lock();
        let sender = checked.then(|| Member::alive(from.clone()));
        let (members, refused): (Vec<_>, Vec<_>) = remote
            .members
            .into_iter()
            .chain(sender)
            .partition(|m| core.admits(m.id()));
        drop(core);
        if !refused.is_empty() {
            tracing::debug!(peer = %from.name, refused = refused.len(), "push/pull: members without a member card left out");
        }
        let screened = screen_members(&me, self.foca.iter_membership_state(), members, |id| {
            self.left.has_left(id)
        });
        if !screened.suspect.is_empty() {
            let names: Vec<&str> = screened
                .suspect
                .iter()
                .map(|m| m.id().name.as_str())
                .collect();
            tracing::debug!(peer = %from.name, members = ?names, "push/pull: remote down verdicts applied as suspicions");
        }
        let heard: Vec<_> = (screened.apply.iter())
            .filter(|m| m.state() == foca::State::Suspect)
            .cloned()
            .collect();
        if let Err(e) = self
            .foca
            .apply_many(screened.apply.into_iter(), false, &mut self.rt)
        {
            tracing::debug!(cause = %e, "applying push/pull members");
        }
        let suspected = screened.suspect;
        if let Err(e) = self
            .foca
            .apply_many(suspected.iter().cloned(), true, &mut self.rt)
        {
            tracing::debug!(cause = %e, "applying push/pull suspicions");
        }
        self.drain(now, out);
        self.time_suspicions(suspected.into_iter().chain(heard), out);
    }

    /// A state a peer pushed: what it says about this node, other than alive, is left
    /// out (foca cannot refute a down verdict about itself and would rejoin under a new
    /// bump, at a forger's will). If it says this node is down, the node asks the peer
    /// over a push/pull of its own ([`Self::push_pull_done`] applies its answer).
    fn doubt_verdicts_about_me(
        &mut self,
        now: Now,
        me: &crate::gossip::NodeId,
        remote: &mut PushPullState,
        out: &mut Effects<W, S>,
    ) {
        let says_down = remote
            .members
            .iter()
            .any(|m| m.id() == me && m.state() == foca::State::Down);
        remote
            .members
            .retain(|m| m.id().name != me.name || m.state() == foca::State::Alive);
        if says_down && self.core.lock().admits(&remote.from) {
            let from = remote.from.clone();
            self.confirm_down(now, &from, out);
        }
    }

    /// Carries out what [`Dials`](crate::agent::sansio::Dials) asks for.
    fn dial_effects(&mut self, effects: Vec<DialEffect>, out: &mut Effects<W, S>) {
        for effect in effects {
            match effect {
                DialEffect::Dial { target, kind } => self.dial(target, kind, out),
                DialEffect::RetryJoin { after, attempts } => {
                    tracing::info!(retry_in = ?after, attempts, "will retry joining");
                    let timer = Timer::RetryJoin;
                    out.push(Effect::Schedule { after, timer });
                }
                DialEffect::GaveUp { attempts } => tracing::error!(
                    attempts,
                    "could not join any address; giving up (retry_join)"
                ),
            }
        }
    }
}
