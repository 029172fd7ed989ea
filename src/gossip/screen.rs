//! Foca packets screened against node identities before foca sees them.
//!
//! foca takes every identity a packet names at its word: the sender becomes a live member,
//! and the member updates it carries are applied. With node identities, only the identity
//! a verified member card vouches for may be a member ([`super::vouch`]). So before
//! `Foca::handle_data`, a packet is taken apart (foca's own layout: its postcard header,
//! a `u16` count of member updates, the updates, then the custom broadcasts):
//!
//! - a sender, or an identity its message names (the target of a `PingReq`, the origin of
//!   an `IndirectPing`, ...), that is not admitted: the whole packet is dropped, and the
//!   shell may dial the sender for a push/pull to learn its card;
//! - member updates about identities that are not admitted are taken out, the rest passes;
//! - the caller may rewrite what an update says ([`Screen::rewrite`]): the sender is not
//!   authenticated (any gossip-key holder may write a real member's identity as `src`),
//!   and foca takes Alive -> Down from anyone, for good. So a *down* verdict about another
//!   member passes as a suspicion (unless its own signed leave was recorded), at the
//!   incarnation held for the member, and a suspicion at most at it
//!   ([`suspicion_from_verdict`]); one about the receiver, at most at its own incarnation:
//!   a forged verdict made a live node fail everywhere, or rejoin under a new bump at the
//!   forger's will. A suspicion is refuted by the member if it is alive, and times out for a
//!   dead one (the rule push/pull already follows);
//! - a `TurnUndead` message ("you are down") is dropped ([`Screened::Doubted`]): the caller
//!   asks its sender over a push/pull of its own, whose answer it may believe.
//!
//! A sender's own card may travel in the very packet (a node that just started or
//! restarted announces it first): the caller passes the identities such cards vouch for
//! ([`Parsed::broadcasts`] lists the items), so the first packets of a new node are not
//! lost.

use std::borrow::Cow;

use foca::{Header, Member, Message, State};

use super::identity::NodeId;

/// A foca packet, taken apart.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The header.
    pub header: Header<NodeId>,
    header_bytes: &'a [u8],
    /// The member updates, each with its bytes.
    updates: Vec<(Member<NodeId>, &'a [u8])>,
    tally: bool,
    /// The custom broadcasts, as foca lays them out.
    rest: &'a [u8],
}

/// What [`screen`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Screened<'a> {
    /// Hand these bytes to foca; `dropped` member updates were taken out, and
    /// `suspected` are the suspicions that pass, down verdicts rewritten as such included
    /// (foca times out only those its own probes raised: the caller times these out
    /// itself, see [`crate::agent::sansio`]'s suspicions).
    Pass {
        packet: Cow<'a, [u8]>,
        dropped: usize,
        suspected: Vec<Member<NodeId>>,
    },
    /// `who` (the sender, or an identity its message names) is not admitted: dropped.
    Refused { who: NodeId },
    /// A message that says the receiver is down (`TurnUndead`): dropped, to be confirmed
    /// with `sender`.
    Doubted { sender: NodeId },
}

impl<'a> Screened<'a> {
    /// The packet, to pass as it is.
    pub fn pass(packet: &'a [u8]) -> Self {
        Screened::Pass {
            packet: Cow::Borrowed(packet),
            dropped: 0,
            suspected: Vec::new(),
        }
    }
}

/// What [`screen`] asks the caller about identities.
pub trait Screen {
    /// Whether `id` may be a member at all.
    fn admits(&self, id: &NodeId) -> bool;
    /// What a remote update about an admitted member passes as (`None`: as it is).
    fn rewrite(&self, update: &Member<NodeId>) -> Option<Member<NodeId>>;
}

/// Why a packet could not be taken apart (foca would refuse it too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed foca packet: {0}")]
pub struct Malformed(String);

/// Takes a foca packet apart (see the module docs).
pub fn parse(pkt: &[u8]) -> Result<Parsed<'_>, Malformed> {
    let bad = |e: postcard::Error| Malformed(e.to_string());
    let (header, mut rest): (Header<NodeId>, &[u8]) =
        postcard::take_from_bytes(pkt).map_err(bad)?;
    let header_bytes = &pkt[..pkt.len() - rest.len()];
    let mut updates = Vec::new();
    let tally = rest.len() >= 2 && header.message != Message::Broadcast;
    if tally {
        let count = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        for _ in 0..count {
            let (member, after): (Member<NodeId>, &[u8]) =
                postcard::take_from_bytes(rest).map_err(bad)?;
            updates.push((member, &rest[..rest.len() - after.len()]));
            rest = after;
        }
    }
    Ok(Parsed {
        header,
        header_bytes,
        updates,
        tally,
        rest,
    })
}

impl<'a> Parsed<'a> {
    /// Whether the packet says `id` is down (an update, or a `TurnUndead` to it).
    pub fn says_down(&self, id: &NodeId) -> bool {
        (self.header.message == Message::TurnUndead && self.header.dst == *id)
            || self
                .updates
                .iter()
                .any(|(m, _)| m.id() == id && m.state() == State::Down)
    }

    /// The custom broadcast items the packet carries (a malformed tail ends the list;
    /// foca refuses such a packet anyway).
    pub fn broadcasts(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = self.rest;
        std::iter::from_fn(move || {
            if rest.len() < 3 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let item = rest.get(2..2 + len).filter(|i| !i.is_empty())?;
            rest = &rest[2 + len..];
            Some(item)
        })
    }
}

/// The identity a message names besides sender and receiver, if any.
fn named(message: &Message<NodeId>) -> Option<&NodeId> {
    match message {
        Message::PingReq { target, .. } | Message::IndirectAck { target, .. } => Some(target),
        Message::IndirectPing { origin, .. } | Message::ForwardedAck { origin, .. } => Some(origin),
        _ => None,
    }
}

/// What the receiving node knows of others, for [`super::GossipCore::screen_packet`] to weigh
/// verdicts about them against.
pub trait Receiver {
    /// This node's own incarnation.
    fn incarnation(&self) -> foca::Incarnation;
    /// Whether a member's own leave was recorded (a down verdict about it is then final).
    fn has_left(&self, id: &NodeId) -> bool;
    /// The incarnation held for exactly this identity, if it is held.
    fn held(&self, id: &NodeId) -> Option<foca::Incarnation>;
}

/// A receiver at incarnation `.0` that holds no one and recorded no leave (tests).
#[cfg(test)]
pub struct Stranger(pub foca::Incarnation);

#[cfg(test)]
impl Receiver for Stranger {
    fn incarnation(&self) -> foca::Incarnation {
        self.0
    }
    fn has_left(&self, _: &NodeId) -> bool {
        false
    }
    fn held(&self, _: &NodeId) -> Option<foca::Incarnation> {
        None
    }
}

/// The suspicion someone else's verdict about `id` at `incarnation` passes as, given the
/// incarnation this node holds for that very identity (`held`):
/// - a suspicion, at most at the held incarnation: one raised above it (a forger's
///   `u16::MAX`) could never be refuted, since the member is at its own, lower one; one
///   below it is stale and foca drops it;
/// - a down verdict, at the held incarnation. One raised above it, as for a suspicion. One
///   *below* it comes from a node that had not heard the member's latest refutation: foca
///   would drop it, and a dead member stayed active here until this node's own probe
///   round reached it (about N probe periods; a partition of 1,000 never split). As a
///   suspicion at the held incarnation it times out unless the member, alive, refutes it.
pub fn suspicion_from_verdict(
    id: &NodeId,
    state: State,
    incarnation: foca::Incarnation,
    held: Option<foca::Incarnation>,
) -> Member<NodeId> {
    let incarnation = match (state, held) {
        (State::Down, Some(h)) => h,
        (_, Some(h)) => incarnation.min(h),
        (_, None) => incarnation,
    };
    Member::new(id.clone(), incarnation, State::Suspect)
}

/// [`super::GossipCore::screen_packet`]'s answers with identities off: every identity is
/// admitted and every verdict taken as it is (the gossip key is the trust), except a down
/// verdict about another member *below* the incarnation held for it, which foca would
/// drop: it passes as a suspicion at the held one ([`suspicion_from_verdict`]).
pub struct StaleDownPolicy<'a, L> {
    pub me: &'a NodeId,
    pub receiver: L,
}

impl<L: Receiver> Screen for StaleDownPolicy<'_, L> {
    fn admits(&self, _: &NodeId) -> bool {
        true
    }

    fn rewrite(&self, m: &foca::Member<NodeId>) -> Option<foca::Member<NodeId>> {
        let id = m.id();
        if m.state() != State::Down || id.name == self.me.name {
            return None;
        }
        let held = self.receiver.held(id).filter(|h| *h > m.incarnation())?;
        Some(suspicion_from_verdict(
            id,
            m.state(),
            m.incarnation(),
            Some(held),
        ))
    }
}

/// Screens a parsed packet (see the module docs).
pub fn screen<'a>(pkt: &'a [u8], parsed: &Parsed<'a>, policy: &impl Screen) -> Screened<'a> {
    let src = &parsed.header.src;
    if !policy.admits(src) {
        return Screened::Refused { who: src.clone() };
    }
    if let Some(id) = named(&parsed.header.message).filter(|id| !policy.admits(id)) {
        return Screened::Refused { who: id.clone() };
    }
    if parsed.header.message == Message::TurnUndead {
        return Screened::Doubted {
            sender: src.clone(),
        };
    }
    let mut changed = false;
    let mut dropped = 0;
    let mut suspected = Vec::new();
    let mut kept: Vec<Cow<'a, [u8]>> = Vec::with_capacity(parsed.updates.len());
    for (m, bytes) in &parsed.updates {
        if !policy.admits(m.id()) {
            dropped += 1;
            changed = true;
        } else if let Some(other) = policy.rewrite(m) {
            kept.push(Cow::Owned(postcard::to_stdvec(&other).unwrap_or_default()));
            changed = true;
            if other.state() == State::Suspect {
                suspected.push(other);
            }
        } else {
            kept.push(Cow::Borrowed(*bytes));
            if m.state() == State::Suspect {
                suspected.push(m.clone());
            }
        }
    }
    if !changed {
        return Screened::Pass {
            packet: Cow::Borrowed(pkt),
            dropped,
            suspected,
        };
    }
    let mut out = Vec::with_capacity(pkt.len());
    out.extend_from_slice(parsed.header_bytes);
    if parsed.tally {
        // At most as many as were there, which fit a u16.
        out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        kept.iter().for_each(|b| out.extend_from_slice(b));
    }
    out.extend_from_slice(parsed.rest);
    Screened::Pass {
        packet: Cow::Owned(out),
        dropped,
        suspected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> NodeId {
        NodeId::new(name, "10.0.0.1:7946".parse().unwrap(), 1).unwrap()
    }

    fn packet(
        message: Message<NodeId>,
        updates: &[Member<NodeId>],
        broadcasts: &[&[u8]],
    ) -> Vec<u8> {
        let header = Header {
            src: id("a"),
            src_incarnation: 3,
            dst: id("me"),
            message,
        };
        let mut out = postcard::to_stdvec(&header).unwrap();
        out.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for m in updates {
            out.extend(postcard::to_stdvec(m).unwrap());
        }
        for b in broadcasts {
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    /// Admits every name but `names`; takes down verdicts only about `left`.
    struct Policy {
        not: &'static [&'static str],
        left: &'static [&'static str],
    }

    impl Screen for Policy {
        fn admits(&self, id: &NodeId) -> bool {
            !self.not.contains(&id.name.as_str())
        }
        fn rewrite(&self, m: &Member<NodeId>) -> Option<Member<NodeId>> {
            let left = self.left.contains(&m.id().name.as_str());
            (m.state() == State::Down && !left)
                .then(|| Member::new(m.id().clone(), m.incarnation(), State::Suspect))
        }
    }

    fn not(names: &'static [&'static str]) -> Policy {
        Policy {
            not: names,
            left: &[],
        }
    }

    #[test]
    fn an_admitted_packet_passes_unchanged_and_its_broadcasts_are_listed() {
        let pkt = packet(
            Message::Gossip,
            &[Member::alive(id("b"))],
            &[b"one", b"two"],
        );
        let parsed = parse(&pkt).unwrap();
        let items: Vec<&[u8]> = parsed.broadcasts().collect();
        assert_eq!(items, vec![&b"one"[..], b"two"]);
        let got = screen(&pkt, &parsed, &not(&[]));
        assert_eq!(
            got,
            Screened::Pass {
                packet: Cow::Borrowed(&pkt[..]),
                dropped: 0,
                suspected: Vec::new(),
            }
        );
    }

    /// Issue 15 (ghost members): updates about identities without a card are taken
    /// out, and foca reads what is left.
    #[test]
    fn updates_about_identities_not_admitted_are_taken_out() {
        let keep = Member::new(id("b"), 2, State::Suspect);
        let pkt = packet(
            Message::Ping(7),
            &[Member::alive(id("ghost")), keep.clone()],
            &[b"item"],
        );
        let parsed = parse(&pkt).unwrap();
        let Screened::Pass {
            packet: out,
            dropped,
            ..
        } = screen(&pkt, &parsed, &not(&["ghost"]))
        else {
            panic!("refused")
        };
        assert_eq!(dropped, 1);
        assert_eq!(&*out, &packet(Message::Ping(7), &[keep], &[b"item"])[..]);
        let again = parse(&out).unwrap();
        assert_eq!(again.updates.len(), 1);
        assert_eq!(again.broadcasts().count(), 1);
    }

    #[test]
    fn a_sender_or_named_identity_not_admitted_drops_the_packet() {
        let pkt = packet(Message::Ping(1), &[], &[]);
        let parsed = parse(&pkt).unwrap();
        assert_eq!(
            screen(&pkt, &parsed, &not(&["a"])),
            Screened::Refused { who: id("a") }
        );
        let req = packet(
            Message::PingReq {
                target: id("ghost"),
                probe_number: 1,
            },
            &[],
            &[],
        );
        let parsed = parse(&req).unwrap();
        assert_eq!(
            screen(&req, &parsed, &not(&["ghost"])),
            Screened::Refused { who: id("ghost") }
        );
    }

    #[test]
    fn a_broadcast_only_packet_has_no_tally() {
        let header = Header {
            src: id("a"),
            src_incarnation: 0,
            dst: id("me"),
            message: Message::<NodeId>::Broadcast,
        };
        let mut pkt = postcard::to_stdvec(&header).unwrap();
        pkt.extend_from_slice(&[0, 3, b'x', b'y', b'z']);
        let parsed = parse(&pkt).unwrap();
        assert!(parsed.updates.is_empty());
        assert_eq!(parsed.broadcasts().collect::<Vec<_>>(), vec![&b"xyz"[..]]);
    }

    /// Issue 15 (beyond the list): a gossip-key holder wrote a real member as `src` and
    /// told the others that a live member was down. Such a verdict is a suspicion now,
    /// unless the member's own leave was recorded.
    #[test]
    fn a_down_verdict_about_another_member_passes_as_a_suspicion() {
        let pkt = packet(
            Message::Gossip,
            &[Member::new(id("b"), 4, State::Down), Member::alive(id("c"))],
            &[b"item"],
        );
        let parsed = parse(&pkt).unwrap();
        let Screened::Pass {
            packet: out,
            suspected,
            ..
        } = screen(&pkt, &parsed, &not(&[]))
        else {
            panic!("refused")
        };
        let want = [
            Member::new(id("b"), 4, State::Suspect),
            Member::alive(id("c")),
        ];
        assert_eq!(&*out, &packet(Message::Gossip, &want, &[b"item"])[..]);
        // The receiver times the suspicion out itself.
        assert_eq!(suspected, vec![Member::new(id("b"), 4, State::Suspect)]);
        let left = Policy {
            not: &[],
            left: &["b"],
        };
        let Screened::Pass { packet: out, .. } = screen(&pkt, &parsed, &left) else {
            panic!("refused")
        };
        assert_eq!(&*out, &pkt[..], "a member that left is down for good");
    }

    /// Beyond issue 15's list: a forged "you are down" made the receiver rejoin under a new
    /// bump at the forger's will; it is dropped, for the receiver to ask the sender.
    #[test]
    fn a_turn_undead_message_is_doubted() {
        let pkt = packet(Message::TurnUndead, &[], &[]);
        let parsed = parse(&pkt).unwrap();
        assert!(parsed.says_down(&id("me")));
        assert!(!parsed.says_down(&id("a")));
        assert_eq!(
            screen(&pkt, &parsed, &not(&[])),
            Screened::Doubted { sender: id("a") }
        );
        let gossip = packet(
            Message::Gossip,
            &[Member::new(id("me"), 1, State::Down)],
            &[],
        );
        assert!(parse(&gossip).unwrap().says_down(&id("me")));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        for bad in [&b""[..], b"\x00", &[0xff; 40]] {
            assert!(parse(bad).is_err());
        }
        let mut pkt = packet(Message::Gossip, &[Member::alive(id("b"))], &[]);
        pkt.truncate(pkt.len() - 2);
        assert!(parse(&pkt).is_err());
    }
}
