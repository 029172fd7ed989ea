//! Anti-entropy: periodic full-state exchange that repairs what gossip missed.
//!
//! Gossip is probabilistic: a node that was partitioned, restarting, or just unlucky
//! can miss an event. Like Serf/memberlist, the agent periodically (and on join) opens
//! a TCP stream to a random member and both sides send a [`PushPullState`]: their
//! membership view, their Lamport clocks, their tags and their recent events. Each side
//! then [`merge`]s the other's state:
//!
//! - events go through the same [`EventLog`] as gossip, so an event is delivered
//!   exactly once no matter how many channels bring it, and merging the same state
//!   twice delivers nothing;
//! - clocks are witnessed so new local events/queries order after the remote ones, but
//!   move at most [`super::lamport::MAX_AHEAD`] per merge, and events further ahead are
//!   refused (one far-future time would otherwise pin every clock at `u64::MAX`);
//! - members are [`screen_members`]ed first, then the shell feeds them to foca's
//!   `apply_many` (foca resolves conflicts and incarnations itself). The screen keeps
//!   a remote *down* verdict from killing a member this node sees alive: such a
//!   verdict becomes at most a suspicion that the member can refute, like
//!   memberlist's `mergeState` (see [`screen_member`] for the full table);
//! - tags are recorded in a [`TagBook`] so query filters on tags can be evaluated for
//!   other members when building a [`super::query::QueryTracker`].
//!
//! Events delivered by push/pull are not re-gossiped: the pull side already had them
//! and the next push/pull spreads them further.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use foca::{Member, State};

use serde::{Deserialize, Serialize};

use super::event::{EventLog, EventRejected, UserEvent};
use super::identity::NodeId;
use super::lamport::{LamportClock, LamportTime};
use super::query::Tags;
use super::screen::suspicion_from_verdict;

/// One side's state in a push/pull exchange. Its wire format is versioned (see
/// [`super::versioned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPullState {
    /// Who sends this state.
    pub from: NodeId,
    /// The sender's own tags.
    pub tags: Tags,
    /// The sender's membership view (foca's `iter_membership_state()`), itself included.
    pub members: Vec<foca::Member<NodeId>>,
    /// The sender's event clock.
    pub event_ltime: LamportTime,
    /// The sender's query clock.
    pub query_ltime: LamportTime,
    /// The sender's recent events ([`EventLog::recent`]).
    pub events: Vec<UserEvent>,
    /// Wire version this state is (to be) encoded at; 1 drops `extensions`.
    pub version: u16,
    /// Forward-compatible extension records (unknown tags are skipped).
    pub extensions: Vec<super::versioned::Extension>,
}

/// What a [`merge`] changed locally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Events this node had not delivered yet, in Lamport order: deliver them.
    pub new_events: Vec<UserEvent>,
    /// Events already delivered.
    pub duplicates: usize,
    /// Events below the dedupe watermark (dropped).
    pub too_old: usize,
    /// Events more than [`super::lamport::MAX_AHEAD`] ahead of the local clock (not
    /// delivered now; a later push/pull offers them again once the clock caught up).
    pub too_far_ahead: usize,
    /// Whether the local event clock moved forward.
    pub event_clock_advanced: bool,
    /// Whether the local query clock moved forward.
    pub query_clock_advanced: bool,
}

/// Merges a remote state into the local event log and clocks. `now` is wall-clock time
/// since the UNIX epoch (see [`EventLog`]).
pub fn merge(
    log: &mut EventLog,
    event_clock: &mut LamportClock,
    query_clock: &mut LamportClock,
    remote: &PushPullState,
    now: Duration,
) -> MergeOutcome {
    // Bounded by the clock *before* this merge, so one state moves it by MAX_AHEAD at most.
    let before = *event_clock;
    let mut out = MergeOutcome {
        event_clock_advanced: event_clock.witness_bounded(remote.event_ltime),
        query_clock_advanced: query_clock.witness_bounded(remote.query_ltime),
        ..MergeOutcome::default()
    };
    let mut events: Vec<&UserEvent> = remote.events.iter().collect();
    events.sort_by_key(|e| (e.ltime, e.id));
    for ev in events {
        if !before.accepts(ev.ltime) {
            out.too_far_ahead += 1;
            continue;
        }
        out.event_clock_advanced |= event_clock.witness(ev.ltime);
        match log.observe(ev, now) {
            Ok(true) => out.new_events.push(ev.clone()),
            Ok(false) => out.duplicates += 1,
            Err(EventRejected::TooOld { .. }) => out.too_old += 1,
        }
    }
    out
}

/// What to do with one member entry of a remote push/pull state ([`screen_member`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened {
    /// Apply as received, without re-gossiping it (foca resolves conflicts).
    Apply(Member<NodeId>),
    /// A remote *down* verdict about a member this node sees active, downgraded to a
    /// suspicion at most at the incarnation held for it: apply it *and gossip it*, so the
    /// member hears it and refutes it if it is alive; the agent times it out like foca's
    /// own suspicions.
    Suspect(Member<NodeId>),
    /// Not applied.
    Ignore(IgnoreReason),
}

/// Why a remote member entry was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// A *down* entry for a member this node does not know (and has no record of
    /// leaving): importing it would only make the member unreachable for us until it
    /// changes identity.
    UnknownDown,
    /// A *down* entry for an older incarnation (bump) than the active one we know.
    StaleDown,
    /// An entry about a different incarnation of this node itself (an old bump):
    /// foca would only record it as a down member with our own name.
    OtherSelf,
    /// Exactly what this node holds (identity, incarnation, state): applying it changes
    /// nothing, and foca finds each member it applies by a scan of its list, so handing
    /// it every unchanged entry made each push/pull quadratic in the cluster size.
    Unchanged,
}

/// Decides what one remote member entry may change locally. `me` is this node,
/// `local` what foca knows about a member with the same name (`None`: unknown),
/// `left` whether [`crate::agent`]'s leave records say `remote.id()` left gracefully
/// (or was force-left).
///
/// | remote | local | result |
/// |---|---|---|
/// | alive | any | [`Screened::Apply`] (foca orders incarnations and bumps) |
/// | suspect | any | [`Screened::Apply`], at most at the incarnation held for that identity (see [`suspicion_from_verdict`]) |
/// | anything about us, same bump | — | [`Screened::Apply`]: foca refutes a suspicion, and a down verdict makes it rejoin under bump + 1 (the only way back for a member others declared down) |
/// | anything about us, other bump | — | [`Screened::Ignore`] ([`IgnoreReason::OtherSelf`]) |
/// | exactly what we hold | same | [`Screened::Ignore`] ([`IgnoreReason::Unchanged`]) |
/// | down, left | any | [`Screened::Apply`]: a graceful leave is final |
/// | down | unknown | [`Screened::Ignore`] ([`IgnoreReason::UnknownDown`]) |
/// | down | down | [`Screened::Apply`]: nothing becomes inactive; a newer bump just replaces the identity we keep for reconnects |
/// | down, older bump | alive / suspect | [`Screened::Ignore`] ([`IgnoreReason::StaleDown`]) |
/// | down, same bump | alive / suspect | [`Screened::Suspect`] at the incarnation held (a verdict below it is from a node that missed a refutation; the member refutes it again if it is alive) |
/// | down, **newer** bump | alive / suspect | [`Screened::Suspect`] of the newer identity: the member restarted since we last heard of it and the remote saw the new incarnation go down. Ours is stale, but one remote's verdict is still not proof: the newer identity replaces ours as *suspect* (no member-failed), and it is declared down only if it fails our own probes |
pub fn screen_member(
    me: &NodeId,
    local: Option<&Member<NodeId>>,
    remote: Member<NodeId>,
    left: bool,
) -> Screened {
    let id = remote.id();
    if id.name == me.name {
        return if id == me {
            Screened::Apply(remote)
        } else {
            Screened::Ignore(IgnoreReason::OtherSelf)
        };
    }
    if local == Some(&remote) {
        return Screened::Ignore(IgnoreReason::Unchanged);
    }
    let held = local.filter(|l| l.id() == id).map(Member::incarnation);
    if remote.state() == State::Suspect && !left {
        return Screened::Apply(suspicion_from_verdict(
            id,
            State::Suspect,
            remote.incarnation(),
            held,
        ));
    }
    if remote.state() != State::Down || left {
        return Screened::Apply(remote);
    }
    match local {
        None => Screened::Ignore(IgnoreReason::UnknownDown),
        Some(l) if l.state() == State::Down => Screened::Apply(remote),
        Some(l) if l.id().bump_newer_than(id) => Screened::Ignore(IgnoreReason::StaleDown),
        Some(_) => Screened::Suspect(suspicion_from_verdict(
            id,
            State::Down,
            remote.incarnation(),
            held,
        )),
    }
}

/// A remote member list, screened ([`screen_members`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScreenedMembers {
    /// Apply without gossiping (`apply_many(.., false, ..)`).
    pub apply: Vec<Member<NodeId>>,
    /// Down verdicts downgraded to suspicions: apply *with* gossip
    /// (`apply_many(.., true, ..)`).
    pub suspect: Vec<Member<NodeId>>,
    /// Entries dropped.
    pub ignored: usize,
}

/// [`screen_member`] over a whole remote list. `local` is foca's
/// `iter_membership_state()`, `left` the leave records.
pub fn screen_members<'a>(
    me: &NodeId,
    local: impl IntoIterator<Item = &'a Member<NodeId>>,
    remote: impl IntoIterator<Item = Member<NodeId>>,
    left: impl Fn(&NodeId) -> bool,
) -> ScreenedMembers {
    let by_name: HashMap<&str, &Member<NodeId>> = local
        .into_iter()
        .map(|m| (m.id().name.as_str(), m))
        .collect();
    let mut out = ScreenedMembers::default();
    for r in remote {
        let l = by_name.get(r.id().name.as_str()).copied();
        let has_left = left(r.id());
        match screen_member(me, l, r, has_left) {
            Screened::Apply(m) => out.apply.push(m),
            Screened::Suspect(m) => out.suspect.push(m),
            Screened::Ignore(_) => out.ignored += 1,
        }
    }
    out
}

/// Tags known for other nodes, by node name, with the version they were announced
/// at: a higher version replaces lower ones. Version 0 is "from an unversioned
/// push/pull" and only ever replaces another version 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagBook {
    by_name: BTreeMap<String, (u64, Tags)>,
}

impl TagBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `name`'s tags at `version` unless newer ones are known.
    pub fn learn(&mut self, name: &str, version: u64, tags: &Tags) {
        match self.by_name.get(name) {
            Some((have, _)) if *have > version || (*have == version && version != 0) => {}
            _ => {
                self.by_name
                    .insert(name.to_owned(), (version, tags.clone()));
            }
        }
    }

    /// Known tags of a node, if any.
    pub fn tags_of(&self, name: &str) -> Option<&Tags> {
        self.by_name.get(name).map(|(_, t)| t)
    }

    /// Forgets every node for which `keep` is false (members foca no longer knows).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_name.retain(|name, _| keep(name));
    }

    /// Number of nodes with known tags.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no tags are known.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Pairs each member with its known tags (`None` if unknown), as
    /// [`super::query::QueryTracker::new`] wants them.
    pub fn with_tags<'a>(
        &'a self,
        members: impl IntoIterator<Item = NodeId> + 'a,
    ) -> impl Iterator<Item = (NodeId, Option<Tags>)> + 'a {
        members.into_iter().map(|id| {
            let tags = self.tags_of(&id.name).cloned();
            (id, tags)
        })
    }
}

#[cfg(test)]
#[path = "pushpull_tests.rs"]
mod tests;
