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
//! - clocks are witnessed so new local events/queries order after the remote ones;
//! - members are returned to the shell, which feeds them to
//!   `Foca::apply_many(state.members.into_iter(), false, runtime)` (foca resolves
//!   conflicts and incarnations itself);
//! - tags are recorded in a [`TagBook`] so query filters on tags can be evaluated for
//!   other members when building a [`super::query::QueryTracker`].
//!
//! Events delivered by push/pull are not re-gossiped: the pull side already had them
//! and the next push/pull spreads them further.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::{EventLog, EventRejected, UserEvent};
use super::identity::NodeId;
use super::lamport::{LamportClock, LamportTime};
use super::query::Tags;

/// One side's state in a push/pull exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    let mut out = MergeOutcome {
        event_clock_advanced: event_clock.witness(remote.event_ltime),
        query_clock_advanced: query_clock.witness(remote.query_ltime),
        ..MergeOutcome::default()
    };
    let mut events: Vec<&UserEvent> = remote.events.iter().collect();
    events.sort_by_key(|e| (e.ltime, e.id));
    for ev in events {
        out.event_clock_advanced |= event_clock.witness(ev.ltime);
        match log.observe(ev, now) {
            Ok(true) => out.new_events.push(ev.clone()),
            Ok(false) => out.duplicates += 1,
            Err(EventRejected::TooOld { .. }) => out.too_old += 1,
        }
    }
    out
}

/// Tags learned from push/pull, by node name; a higher bump replaces older tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagBook {
    by_name: BTreeMap<String, (u16, Tags)>,
}

impl TagBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `node`'s own tags (ignored if we know a newer incarnation's tags).
    pub fn learn(&mut self, node: &NodeId, tags: &Tags) {
        match self.by_name.get(&node.name) {
            Some((bump, _)) if *bump != node.bump && !node_newer(node.bump, *bump) => {}
            _ => {
                self.by_name
                    .insert(node.name.clone(), (node.bump, tags.clone()));
            }
        }
    }

    /// Known tags of a node, if any.
    pub fn tags_of(&self, name: &str) -> Option<&Tags> {
        self.by_name.get(name).map(|(_, t)| t)
    }

    /// Forgets a node (e.g. after foca removed it).
    pub fn forget(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Pairs each member with its known tags (empty if unknown), as
    /// [`super::query::QueryTracker::new`] wants them.
    pub fn with_tags<'a>(
        &'a self,
        members: impl IntoIterator<Item = NodeId> + 'a,
    ) -> impl Iterator<Item = (NodeId, Tags)> + 'a {
        members.into_iter().map(|id| {
            let tags = self.tags_of(&id.name).cloned().unwrap_or_default();
            (id, tags)
        })
    }
}

fn node_newer(a: u16, b: u16) -> bool {
    let diff = a.wrapping_sub(b);
    diff != 0 && diff < 0x8000
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

    #[test]
    fn tag_book() {
        let mut book = TagBook::new();
        let web: Tags = [("role".to_owned(), "web".to_owned())].into();
        let db: Tags = [("role".to_owned(), "db".to_owned())].into();
        book.learn(&node("a", 2), &web);
        book.learn(&node("a", 1), &db);
        assert_eq!(book.tags_of("a"), Some(&web), "older bump ignored");
        book.learn(&node("a", 3), &db);
        assert_eq!(book.tags_of("a"), Some(&db));
        let paired: Vec<_> = book.with_tags(vec![node("a", 3), node("b", 0)]).collect();
        assert_eq!(paired[0].1, db);
        assert!(paired[1].1.is_empty());
        book.forget("a");
        assert_eq!(book.tags_of("a"), None);
    }
}
