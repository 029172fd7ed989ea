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
    /// suspicion: apply it *and gossip it*, so the member hears it and refutes it if it
    /// is alive (a suspicion applied this way starts no local timer; if the member is
    /// really gone, this node's own probes declare it down).
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
/// | alive / suspect | any | [`Screened::Apply`] (foca orders incarnations and bumps) |
/// | anything about us, same bump | — | [`Screened::Apply`]: foca refutes a suspicion, and a down verdict makes it rejoin under bump + 1 (the only way back for a member others declared down) |
/// | anything about us, other bump | — | [`Screened::Ignore`] ([`IgnoreReason::OtherSelf`]) |
/// | exactly what we hold | same | [`Screened::Ignore`] ([`IgnoreReason::Unchanged`]) |
/// | down, left | any | [`Screened::Apply`]: a graceful leave is final |
/// | down | unknown | [`Screened::Ignore`] ([`IgnoreReason::UnknownDown`]) |
/// | down | down | [`Screened::Apply`]: nothing becomes inactive; a newer bump just replaces the identity we keep for reconnects |
/// | down, older bump | alive / suspect | [`Screened::Ignore`] ([`IgnoreReason::StaleDown`]) |
/// | down, same bump | alive / suspect | [`Screened::Suspect`] at the remote's incarnation (foca drops it if the member already refuted a higher one) |
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
    if remote.state() != State::Down || left {
        return Screened::Apply(remote);
    }
    match local {
        None => Screened::Ignore(IgnoreReason::UnknownDown),
        Some(l) if l.state() == State::Down => Screened::Apply(remote),
        Some(l) if l.id().bump_newer_than(id) => Screened::Ignore(IgnoreReason::StaleDown),
        Some(_) => {
            let incarnation = remote.incarnation();
            Screened::Suspect(Member::new(
                remote.id().clone(),
                incarnation,
                State::Suspect,
            ))
        }
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
mod tests {
    use super::*;
    use crate::gossip::event::{EventId, EventLogConfig};

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn node(name: &str, bump: u16) -> NodeId {
        NodeId::new(name, "127.0.0.1:1".parse().unwrap(), bump).unwrap()
    }

    fn ev(ltime: u64, id: u128) -> UserEvent {
        UserEvent::new(EventId(id), "a", ltime, "deploy", vec![]).unwrap()
    }

    fn state(events: Vec<UserEvent>, event_ltime: u64) -> PushPullState {
        PushPullState {
            from: node("a", 0),
            tags: Tags::new(),
            members: vec![foca::Member::alive(node("a", 0))],
            event_ltime,
            query_ltime: 4,
            events,
            version: 1,
            extensions: Vec::new(),
        }
    }

    #[test]
    fn missed_event_delivered_exactly_once() {
        let mut log = EventLog::new(EventLogConfig::default());
        let (mut ec, mut qc) = (LamportClock::new(), LamportClock::new());
        // We saw event 1 via gossip, missed event 2.
        log.observe(&ev(1, 1), NOW).unwrap();
        let remote = state(vec![ev(2, 2), ev(1, 1)], 3);

        let out = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
        assert_eq!(out.new_events, vec![ev(2, 2)]);
        assert_eq!(out.duplicates, 1);
        assert!(out.event_clock_advanced && out.query_clock_advanced);
        assert_eq!(ec.time(), 4);
        assert_eq!(qc.time(), 5);

        let again = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
        assert!(again.new_events.is_empty());
        assert_eq!(again.duplicates, 2);
        assert!(!again.event_clock_advanced);

        // The merged event is now part of our own recent log for further push/pull.
        assert_eq!(log.recent().count(), 2);
    }

    #[test]
    fn merge_orders_and_counts_too_old() {
        let mut log = EventLog::new(EventLogConfig::default());
        log.ignore_before(5);
        let (mut ec, mut qc) = (LamportClock::new(), LamportClock::new());
        let remote = state(vec![ev(9, 3), ev(2, 1), ev(6, 2)], 0);
        let out = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
        let times: Vec<_> = out.new_events.iter().map(|e| e.ltime).collect();
        assert_eq!(times, vec![6, 9]);
        assert_eq!(out.too_old, 1);
        assert_eq!(ec.time(), 10, "event times are witnessed too");
    }

    /// Regression (issue 10, item 4): one far-future time in a push/pull state pushed
    /// the clocks to `u64::MAX` for good.
    #[test]
    fn far_future_times_are_refused_and_clock_steps_bounded() {
        use crate::gossip::lamport::MAX_AHEAD;
        let mut log = EventLog::new(EventLogConfig::default());
        let (mut ec, mut qc) = (LamportClock::at(7), LamportClock::new());
        let mut remote = state(vec![ev(u64::MAX, 1), ev(8, 2)], u64::MAX);
        remote.query_ltime = u64::MAX;
        let out = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
        assert_eq!(out.new_events, vec![ev(8, 2)]);
        assert_eq!(out.too_far_ahead, 1);
        assert_eq!(ec.time(), 7 + MAX_AHEAD + 1);
        assert_eq!(qc.time(), MAX_AHEAD + 1);
        assert!(!log.contains(&ev(u64::MAX, 1)));
    }

    #[test]
    fn state_roundtrips_through_stream_message() {
        use crate::gossip::message::{StreamMessage, decode_stream, encode_stream};
        let mut s = state(vec![ev(1, 1)], 2);
        s.tags.insert("role".into(), "web".into());
        let bytes = encode_stream(&StreamMessage::PushPullRequest(s.clone())).unwrap();
        assert_eq!(
            decode_stream(&bytes).unwrap(),
            StreamMessage::PushPullRequest(s)
        );
    }

    fn down(name: &str, bump: u16, incarnation: u16) -> Member<NodeId> {
        Member::new(node(name, bump), incarnation, State::Down)
    }

    fn screen(local: Option<Member<NodeId>>, remote: Member<NodeId>, left: bool) -> Screened {
        screen_member(&node("me", 7), local.as_ref(), remote, left)
    }

    #[test]
    fn remote_down_for_a_member_we_see_alive_is_only_a_suspicion() {
        let got = screen(Some(Member::alive(node("d", 3))), down("d", 3, 2), false);
        assert_eq!(
            got,
            Screened::Suspect(Member::new(node("d", 3), 2, State::Suspect))
        );
        let suspect = Member::new(node("d", 3), 1, State::Suspect);
        let got = screen(Some(suspect), down("d", 3, 1), false);
        assert_eq!(
            got,
            Screened::Suspect(Member::new(node("d", 3), 1, State::Suspect))
        );
    }

    #[test]
    fn remote_down_with_a_newer_bump_suspects_the_newer_identity() {
        let got = screen(Some(Member::alive(node("d", 3))), down("d", 4, 0), false);
        assert_eq!(
            got,
            Screened::Suspect(Member::new(node("d", 4), 0, State::Suspect))
        );
        // Serial arithmetic: 0 is newer than u16::MAX.
        let got = screen(
            Some(Member::alive(node("d", u16::MAX))),
            down("d", 0, 0),
            false,
        );
        assert!(matches!(got, Screened::Suspect(_)), "{got:?}");
    }

    #[test]
    fn remote_down_with_an_older_bump_is_stale() {
        let got = screen(Some(Member::alive(node("d", 3))), down("d", 2, 9), false);
        assert_eq!(got, Screened::Ignore(IgnoreReason::StaleDown));
    }

    #[test]
    fn remote_down_for_an_unknown_member_is_ignored_unless_it_left() {
        assert_eq!(
            screen(None, down("x", 1, 0), false),
            Screened::Ignore(IgnoreReason::UnknownDown)
        );
        assert_eq!(
            screen(None, down("x", 1, 0), true),
            Screened::Apply(down("x", 1, 0))
        );
        // A known leave is final even for a member we see alive.
        let got = screen(Some(Member::alive(node("x", 1))), down("x", 1, 0), true);
        assert_eq!(got, Screened::Apply(down("x", 1, 0)));
    }

    #[test]
    fn remote_down_for_a_member_we_see_down_is_applied() {
        let got = screen(Some(down("d", 3, 0)), down("d", 5, 0), false);
        assert_eq!(got, Screened::Apply(down("d", 5, 0)));
    }

    #[test]
    fn remote_alive_is_applied_whatever_the_bump() {
        for local in [
            None,
            Some(Member::alive(node("d", 3))),
            Some(down("d", 3, 0)),
        ] {
            let got = screen(local, Member::alive(node("d", 4)), false);
            assert_eq!(got, Screened::Apply(Member::alive(node("d", 4))));
        }
        let s = Member::new(node("d", 3), 4, State::Suspect);
        assert_eq!(screen(None, s.clone(), false), Screened::Apply(s));
    }

    #[test]
    fn entries_about_ourselves() {
        // Our own identity: foca refutes or rejoins, so it must see it.
        assert_eq!(
            screen(None, down("me", 7, 0), false),
            Screened::Apply(down("me", 7, 0))
        );
        assert_eq!(
            screen(None, Member::alive(node("me", 6)), false),
            Screened::Ignore(IgnoreReason::OtherSelf)
        );
    }

    #[test]
    fn an_entry_exactly_as_held_is_not_applied_again() {
        let alive = Member::alive(node("b", 2));
        let got = screen(Some(alive.clone()), alive.clone(), false);
        assert_eq!(got, Screened::Ignore(IgnoreReason::Unchanged));
        let newer = Member::new(node("b", 2), 1, State::Alive);
        assert_eq!(
            screen(Some(alive), newer.clone(), false),
            Screened::Apply(newer)
        );
    }

    #[test]
    fn screen_members_matches_by_name() {
        let local = [
            Member::alive(node("c", 1)),
            down("a", 1, 0),
            Member::alive(node("same", 1)),
        ];
        let remote = vec![
            Member::alive(node("b", 1)),
            down("c", 1, 0),
            down("a", 1, 1),
            down("z", 1, 0),
            down("gone", 2, 0),
            Member::alive(node("same", 1)),
        ];
        let out = screen_members(&node("me", 7), &local, remote, |id| id.name == "gone");
        assert_eq!(
            out.apply,
            vec![
                Member::alive(node("b", 1)),
                down("a", 1, 1),
                down("gone", 2, 0)
            ]
        );
        assert_eq!(
            out.suspect,
            vec![Member::new(node("c", 1), 0, State::Suspect)]
        );
        assert_eq!(out.ignored, 2, "z (unknown, down) and same (unchanged)");
    }

    /// Regression (tests/partition.rs): after a healed partition, a push/pull from the
    /// far side carried its "down" verdict about our reachable partner, foca applied
    /// it, and the partner was reported failed. Screened, the partner stays active
    /// and no member-down notification is raised; unscreened, it is.
    #[test]
    fn push_pull_down_verdict_does_not_fail_a_live_partner() {
        use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec};
        use rand::SeedableRng;
        use rand::rngs::StdRng;

        let me = node("c", 1);
        let partner = node("d", 1);
        let new_foca = || {
            let mut f = Foca::new(
                me.clone(),
                Config::simple(),
                StdRng::seed_from_u64(1),
                PostcardCodec,
            );
            let mut rt = AccumulatingRuntime::new();
            f.apply_many(
                std::iter::once(Member::alive(partner.clone())),
                false,
                &mut rt,
            )
            .unwrap();
            while rt.to_notify().is_some() {}
            while rt.to_send().is_some() {}
            (f, rt)
        };
        let remote = vec![
            Member::alive(node("b", 1)),
            down("d", 1, 0),
            down("q", 1, 0),
        ];
        let downs = |rt: &mut AccumulatingRuntime<NodeId>| {
            std::iter::from_fn(|| rt.to_notify())
                .filter(|n| matches!(n, OwnedNotification::MemberDown(_)))
                .count()
        };

        let (mut f, mut rt) = new_foca();
        let local: Vec<_> = f.iter_membership_state().cloned().collect();
        let screened = screen_members(&me, &local, remote.clone(), |_| false);
        f.apply_many(screened.apply.into_iter(), false, &mut rt)
            .unwrap();
        f.apply_many(screened.suspect.into_iter(), true, &mut rt)
            .unwrap();
        assert_eq!(downs(&mut rt), 0);
        let d = f
            .iter_membership_state()
            .find(|m| m.id() == &partner)
            .unwrap();
        assert_eq!(
            d.state(),
            State::Suspect,
            "the partner can refute a suspicion"
        );
        assert!(f.iter_membership_state().all(|m| m.id().name != "q"));

        let (mut f, mut rt) = new_foca();
        f.apply_many(remote.into_iter(), false, &mut rt).unwrap();
        assert_eq!(
            downs(&mut rt),
            1,
            "unscreened, the live partner is declared down"
        );
    }

    #[test]
    fn tag_book() {
        let mut book = TagBook::new();
        let web: Tags = [("role".to_owned(), "web".to_owned())].into();
        let db: Tags = [("role".to_owned(), "db".to_owned())].into();
        book.learn("a", 2, &web);
        book.learn("a", 1, &db);
        assert_eq!(book.tags_of("a"), Some(&web), "older version ignored");
        book.learn("a", 0, &db);
        assert_eq!(book.tags_of("a"), Some(&web), "unversioned never wins");
        book.learn("a", 3, &db);
        assert_eq!(book.tags_of("a"), Some(&db));
        let paired: Vec<_> = book.with_tags(vec![node("a", 3), node("b", 0)]).collect();
        assert_eq!(paired[0].1, Some(db));
        assert!(paired[1].1.is_none());
        // Nodes foca no longer knows are pruned (issue 10: the book only grew).
        book.learn("b", 0, &web);
        book.learn("c", 0, &web);
        book.retain(|n| n == "c");
        assert_eq!(book.len(), 1);
        assert_eq!(book.tags_of("a"), None);
        assert!(book.tags_of("c").is_some());
    }
}
