//! Member status as operators know it from Serf: `alive`, `suspect`, `left`, `failed`.
//!
//! foca only knows Alive/Suspect/Down. A member that leaves gracefully first sends a
//! leave notice ([`crate::gossip::message::Direct::Leave`]) to every member; the
//! [`LeftBook`] remembers `(name, bump)` of those, so a Down member is reported `left`
//! if it announced its leave (or was force-left) and `failed` otherwise. A restarted
//! member has a higher bump, so an old leave never hides a new failure. The book is
//! persisted in the snapshot, so a force-left member stays `left` across restarts.
//!
//! [`reconnect_target`] picks whom the periodic reconnect (Serf's
//! `reconnect_interval`) dials: a random *failed* member, never a left one.

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::IteratorRandom;
use serde::{Deserialize, Serialize};

use super::sansio::deploy_format;
use crate::gossip::pushpull::TagBook;
use crate::gossip::vouch::Identities;
use crate::gossip::{NodeId, Tags};
use crate::wire;

/// Leave notices received (and force-leaves): name → bump that left.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeftBook(BTreeMap<String, u16>);

impl LeftBook {
    pub fn record(&mut self, id: &NodeId) {
        self.0.insert(id.name.clone(), id.bump);
    }

    pub fn has_left(&self, id: &NodeId) -> bool {
        self.0.get(&id.name) == Some(&id.bump)
    }
}

/// A random failed member to reconnect to: foca state Down, not [`LeftBook`]-left,
/// not us. Reaped members are no longer in foca's list, so they are never picked.
pub fn reconnect_target<'a>(
    me: &NodeId,
    members: impl Iterator<Item = &'a foca::Member<NodeId>>,
    left: &LeftBook,
    rng: &mut impl Rng,
) -> Option<NodeId> {
    members
        .filter(|m| m.state() == foca::State::Down)
        .map(foca::Member::id)
        .filter(|id| id.name != me.name && !left.has_left(id))
        .choose(rng)
        .cloned()
}

/// The status string of a foca member.
pub fn status(member: &foca::Member<NodeId>, left: &LeftBook) -> &'static str {
    match member.state() {
        foca::State::Alive => "alive",
        foca::State::Suspect => "suspect",
        foca::State::Down if left.has_left(member.id()) => "left",
        foca::State::Down => "failed",
    }
}

/// All members, this node first, then by name; `apps` gives the apps a member announced.
pub fn list<'a>(
    me: &NodeId,
    my_tags: &Tags,
    others: impl Iterator<Item = &'a foca::Member<NodeId>>,
    tag_book: &TagBook,
    left: &LeftBook,
    identities: &Identities,
    apps: impl Fn(&str) -> Option<Vec<String>>,
) -> Vec<wire::Member> {
    let identity = |name: &str| {
        identities.card(name).map(|c| wire::MemberIdentity {
            node_key: crate::keytext::public_key_text(c.node_key()),
            expires: c.not_after(),
        })
    };
    let member = |id: &NodeId, status: &str, tags: Option<&Tags>| {
        let (tags, deploy_format) = deploy_format::split(tags.cloned().unwrap_or_default());
        wire::Member {
            name: id.name.clone(),
            addr: id.addr.to_string(),
            status: status.to_owned(),
            tags,
            deploy_format,
            apps: apps(&id.name),
            identity: identity(&id.name),
        }
    };
    let mut rest: Vec<wire::Member> = others
        .map(|m| member(m.id(), status(m, left), tag_book.tags_of(&m.id().name)))
        .collect();
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = vec![member(me, "alive", Some(my_tags))];
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_vs_failed() {
        let a = NodeId::new("a", "127.0.0.1:1".parse().unwrap(), 1).unwrap();
        let mut left = LeftBook::default();
        let down = foca::Member::down(a.clone());
        assert_eq!(status(&down, &left), "failed");
        left.record(&a);
        assert_eq!(status(&down, &left), "left");
        let mut newer = a.clone();
        newer.bump = 2;
        assert_eq!(status(&foca::Member::down(newer), &left), "failed");
        assert_eq!(status(&foca::Member::alive(a), &left), "alive");
        let json = serde_json::to_string(&left).unwrap();
        assert_eq!(json, r#"{"a":1}"#);
        assert_eq!(serde_json::from_str::<LeftBook>(&json).unwrap(), left);
    }

    #[test]
    fn reconnect_only_to_failed_members() {
        use rand::SeedableRng;
        let id =
            |name: &str, bump| NodeId::new(name, "127.0.0.1:1".parse().unwrap(), bump).unwrap();
        let me = id("me", 1);
        let mut left = LeftBook::default();
        left.record(&id("gone", 1));
        let members = [
            foca::Member::alive(id("up", 1)),
            foca::Member::new(id("sus", 1), 0, foca::State::Suspect),
            foca::Member::down(id("gone", 1)),
            foca::Member::down(id("me", 0)),
            foca::Member::down(id("dead", 2)),
            foca::Member::down(id("dead2", 1)),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let t = reconnect_target(&me, members.iter(), &left, &mut rng).unwrap();
            seen.insert(t.name);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["dead", "dead2"]);
        // A restarted member that left under an older bump is failed again.
        let mut newer_left = LeftBook::default();
        newer_left.record(&id("dead", 1));
        let only = [foca::Member::down(id("dead", 2))];
        let t = reconnect_target(&me, only.iter(), &newer_left, &mut rng);
        assert_eq!(t, Some(id("dead", 2)));
        assert_eq!(
            reconnect_target(&me, members[..2].iter(), &left, &mut rng),
            None
        );
    }
}
