//! Tests of [`super`]: packet verdicts under node identities and without them.

use super::*;
use foca::{Member, State};
use screen::Screen;

struct Holds(foca::Incarnation);

impl screen::Receiver for Holds {
    fn incarnation(&self) -> foca::Incarnation {
        0
    }
    fn has_left(&self, _: &NodeId) -> bool {
        false
    }
    fn held(&self, _: &NodeId) -> Option<foca::Incarnation> {
        Some(self.0)
    }
}

/// Verdicts about another member from a packet: a down one is a suspicion, and none
/// passes above the incarnation held (its member could not refute it).
#[test]
fn packet_verdicts_about_others_are_suspicions_at_most_at_the_held_incarnation() {
    let identities = crate::gossip::vouch::Identities::new(Default::default());
    let me = NodeId::new("me", "10.0.0.1:7946".parse().unwrap(), 0).unwrap();
    let policy = PacketPolicy {
        identities: &identities,
        carried: None,
        me: &me,
        receiver: Holds(4),
    };
    let m = NodeId::new("m", "10.0.0.2:7946".parse().unwrap(), 0).unwrap();
    let at = |inc, state| Member::new(m.clone(), inc, state);
    let suspect_at_4 = Some(at(4, State::Suspect));
    assert_eq!(policy.rewrite(&at(u16::MAX, State::Down)), suspect_at_4);
    assert_eq!(policy.rewrite(&at(u16::MAX, State::Suspect)), suspect_at_4);
    // A node that missed the member's refutation: its verdict would be dropped.
    assert_eq!(policy.rewrite(&at(2, State::Down)), suspect_at_4);
    assert_eq!(policy.rewrite(&at(3, State::Suspect)), None, "as it came");
    assert_eq!(policy.rewrite(&at(9, State::Alive)), None, "a refutation");
}

/// With identities off, verdicts pass as foca would take them, but for a down verdict
/// below the incarnation held: a suspicion at the held one, timed out by the caller
/// (at 1,000 nodes a partition never split: one node held a newer incarnation).
#[test]
fn without_identities_only_a_stale_down_verdict_is_rewritten() {
    let mut core = crate::gossip::GossipCore::new(
        core_id(),
        Default::default(),
        Default::default(),
        Duration::ZERO,
    );
    let m = NodeId::new("m", "10.0.0.2:7946".parse().unwrap(), 0).unwrap();
    let packet = |message, update: Member<NodeId>| {
        let header = foca::Header {
            src: m.clone(),
            src_incarnation: 0,
            dst: core_id(),
            message,
        };
        let mut pkt = postcard::to_stdvec(&header).unwrap();
        pkt.extend_from_slice(&1u16.to_be_bytes());
        pkt.extend(postcard::to_stdvec(&update).unwrap());
        pkt
    };
    let from = m.addr;
    let other = NodeId::new("o", "10.0.0.3:7946".parse().unwrap(), 0).unwrap();
    let at = |inc, state| Member::new(other.clone(), inc, state);
    let stale = packet(foca::Message::Gossip, at(2, State::Down));
    let (screened, ask) = core.screen_packet(&stale, None, from, Holds(4)).unwrap();
    let screen::Screened::Pass {
        packet: out,
        suspected,
        dropped: 0,
    } = screened
    else {
        panic!("not passed: {screened:?}")
    };
    assert_eq!(suspected, vec![at(4, State::Suspect)]);
    assert_eq!(
        &*out,
        &packet(foca::Message::Gossip, at(4, State::Suspect))[..]
    );
    assert_eq!(ask, None);
    for same in [
        packet(foca::Message::Gossip, at(4, State::Down)),
        packet(foca::Message::Gossip, at(7, State::Down)),
        packet(foca::Message::TurnUndead, at(2, State::Down)),
    ] {
        let (screened, _) = core.screen_packet(&same, None, from, Holds(4)).unwrap();
        assert_eq!(screened, screen::Screened::pass(&same));
    }
    // A suspicion passes as it is, for the caller to time out.
    let heard = packet(foca::Message::Gossip, at(5, State::Suspect));
    let (screened, _) = core.screen_packet(&heard, None, from, Holds(4)).unwrap();
    let want = screen::Screened::Pass {
        packet: std::borrow::Cow::Borrowed(&heard[..]),
        dropped: 0,
        suspected: vec![at(5, State::Suspect)],
    };
    assert_eq!(screened, want);
    assert!(
        core.screen_packet(b"\xff\xff", None, from, Holds(4))
            .is_err()
    );
}

fn core_id() -> NodeId {
    NodeId::new("me", "10.0.0.1:7946".parse().unwrap(), 0).unwrap()
}
