//! Member status as operators know it from Serf: `alive`, `suspect`, `left`, `failed`.
//!
//! foca only knows Alive/Suspect/Down. A member that leaves gracefully first sends a
//! leave notice ([`crate::gossip::message::Direct::Leave`]) to every member; the
//! [`LeftBook`] remembers `(name, bump)` of those, so a Down member is reported `left`
//! if it announced its leave (or was force-left) and `failed` otherwise. A restarted
//! member has a higher bump, so an old leave never hides a new failure.

use std::collections::HashMap;

use crate::api;
use crate::gossip::pushpull::TagBook;
use crate::gossip::{NodeId, Tags};

/// Leave notices received: name → bump that left.
#[derive(Debug, Default, Clone)]
pub struct LeftBook(HashMap<String, u16>);

impl LeftBook {
    pub fn record(&mut self, id: &NodeId) {
        self.0.insert(id.name.clone(), id.bump);
    }

    pub fn has_left(&self, id: &NodeId) -> bool {
        self.0.get(&id.name) == Some(&id.bump)
    }
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

/// All members, this node first, then by name.
pub fn list<'a>(
    me: &NodeId,
    my_tags: &Tags,
    others: impl Iterator<Item = &'a foca::Member<NodeId>>,
    tag_book: &TagBook,
    left: &LeftBook,
) -> Vec<api::Member> {
    let mut rest: Vec<api::Member> = others
        .map(|m| api::Member {
            name: m.id().name.clone(),
            addr: m.id().addr.to_string(),
            status: status(m, left).to_owned(),
            tags: tag_book.tags_of(&m.id().name).cloned().unwrap_or_default(),
        })
        .collect();
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = vec![api::Member {
        name: me.name.clone(),
        addr: me.addr.to_string(),
        status: "alive".into(),
        tags: my_tags.clone(),
    }];
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
    }
}
