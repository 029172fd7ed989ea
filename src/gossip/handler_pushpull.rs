//! [`GossipCore`]'s side of push/pull (see [`super::super::pushpull`]): the state it
//! sends, within a frame whatever it holds, and the merge of a peer's state.

use super::*;
use crate::gossip::digest::{Differing, Digest};

/// Most bytes of slots one push/pull state carries, so that the state (with its member
/// list and recent events) stays well within one stream frame whatever the slots hold.
pub const PUSH_PULL_SLOT_BYTES: usize = 5 * 1024 * 1024;

/// Most slots of one push/pull state refused by identity checks before the rest of it is
/// dropped.
pub const MAX_REFUSED_PER_EXCHANGE: u64 = 64;

impl GossipCore {
    /// Our state for a push/pull exchange, to be encoded at wire `version` (what the
    /// peer reads; capped at ours). `members` is foca's
    /// `iter_membership_state().cloned()`.
    pub fn push_pull_state(
        &self,
        members: impl IntoIterator<Item = foca::Member<NodeId>>,
        version: u16,
    ) -> PushPullState {
        let items = self.items_for_push_pull(|_| true);
        let events = self.events.recent().cloned().collect();
        self.state_of(members.into_iter().collect(), &items, events, version)
    }

    /// The request of a digest-first exchange ([`crate::gossip::digest`]): our digest and no
    /// entries, at our wire version (a peer that reads no digest skips it and answers
    /// with its full state).
    pub fn push_pull_digest(
        &self,
        members: &[foca::Member<NodeId>],
        answer_back: bool,
    ) -> PushPullState {
        let buckets = crate::gossip::digest::buckets_for(members.len());
        let mut digest = Digest::of(members, self.latest.items(), self.events.recent(), buckets);
        digest.answer_back = answer_back;
        let mut state = self.state_of(Vec::new(), &[], Vec::new(), PROTOCOL_VERSION);
        state.extensions = vec![Extension {
            tag: ext::DIGEST,
            bytes: digest.encode(),
        }];
        state
    }

    /// Our answer to a peer's digest: only the members, slots and events where our
    /// digest differs from `theirs`, at wire `version`; and what differed.
    pub fn push_pull_answer(
        &self,
        members: Vec<foca::Member<NodeId>>,
        theirs: &Digest,
        version: u16,
    ) -> (PushPullState, Differing) {
        let buckets = theirs.buckets.len();
        let ours = Digest::of(&members, self.latest.items(), self.events.recent(), buckets);
        let diff = ours.differing(theirs);
        let members = members
            .into_iter()
            .filter(|m| diff.holds_member(m))
            .collect();
        // The buckets first, then the byte budget: slots cut from a full state still go
        // when theirs is a bucket that differs.
        let items = self.items_for_push_pull(|i| diff.holds_item(i));
        let events = match diff.events {
            true => self.events.recent().cloned().collect(),
            false => Vec::new(),
        };
        (self.state_of(members, &items, events, version), diff)
    }

    fn state_of(
        &self,
        members: Vec<foca::Member<NodeId>>,
        items: &[&Superseding],
        events: Vec<UserEvent>,
        version: u16,
    ) -> PushPullState {
        let version = version.clamp(1, PROTOCOL_VERSION);
        let mut extensions = Vec::new();
        if version >= 2 {
            let signed = version >= 3;
            extensions.push(Extension {
                tag: if signed {
                    ext::SIGNED_SUPERSEDING
                } else {
                    ext::SUPERSEDING
                },
                bytes: crate::gossip::supersede::encode_items(items, signed),
            });
        }
        PushPullState {
            version,
            extensions,
            from: self.identity.clone(),
            tags: self.tags.clone(),
            members,
            event_ltime: self.event_clock.time(),
            query_ltime: self.query_clock.time(),
            events,
        }
    }

    /// The slots a push/pull state carries, of those `wanted`: all of them, unless they take more than
    /// [`PUSH_PULL_SLOT_BYTES`]; then fleet kinds first, then node kinds (this node's
    /// own first), then unknown kinds, and the rest left to gossip and later exchanges.
    fn items_for_push_pull(&self, wanted: impl Fn(&Superseding) -> bool) -> Vec<&Superseding> {
        if self.latest.bytes() <= PUSH_PULL_SLOT_BYTES {
            return self.latest.items().filter(|i| wanted(i)).collect();
        }
        let me = &self.identity.name;
        let rank = |i: &Superseding| match self.kinds.policy(&i.kind).map(|p| p.owner) {
            Some(crate::gossip::kinds::Owner::Fleet) => 0,
            Some(crate::gossip::kinds::Owner::Node) if i.origin == *me => 1,
            Some(crate::gossip::kinds::Owner::Node) => 2,
            None => 3,
        };
        let mut items: Vec<&Superseding> = self.latest.items().filter(|i| wanted(i)).collect();
        items.sort_by_key(|i| rank(i));
        let mut budget = PUSH_PULL_SLOT_BYTES;
        items.retain(|i| {
            let fits = i.encoded_len() <= budget;
            budget = budget.saturating_sub(i.encoded_len());
            fits
        });
        items
    }

    /// The slots of one push/pull state. Past [`MAX_REFUSED_PER_EXCHANGE`] identity
    /// refusals the rest of the state's slots are dropped: a state full of forgeries costs
    /// a bounded number of signature checks.
    fn merge_items(&mut self, items: Vec<Superseding>) {
        let refused_before = self.stats.refused_identity;
        for item in items.into_iter().filter(|i| i.validate().is_ok()) {
            if self.stats.refused_identity - refused_before >= MAX_REFUSED_PER_EXCHANGE {
                self.stats.exchanges_cut += 1;
                tracing::debug!("push/pull: too many forged slots; the rest of the state dropped");
                return;
            }
            if self.accept_superseding(&item, false, false) {
                self.outbox.push_back(Incoming::Superseding(item));
            }
        }
    }

    /// Merges a peer's push/pull state: new events are queued as [`Incoming::Event`]
    /// and also returned; the peer's tags are learned. Feed `remote.members` to foca
    /// through [`super::pushpull::screen_members`].
    /// `sender_checked`: the state came from the address its `from` names (else its
    /// version and tags are not learned).
    pub fn merge_push_pull(
        &mut self,
        remote: &PushPullState,
        sender_checked: bool,
    ) -> MergeOutcome {
        for e in &remote.extensions {
            // Unknown extension tags are skipped: they are a newer peer's.
            let signed = match e.tag {
                ext::SUPERSEDING => false,
                ext::SIGNED_SUPERSEDING => true,
                _ => continue,
            };
            let Ok(mut items) = crate::gossip::supersede::decode_items(&e.bytes, signed) else {
                self.stats.malformed += 1;
                continue;
            };
            // Revocations first, then cards: the other items are checked against them.
            items.sort_by_key(|i| match i.kind.as_str() {
                crate::gossip::vouch::REVOKED_KIND => 0,
                crate::gossip::vouch::MEMBER_KIND => 1,
                _ => 2,
            });
            self.merge_items(items);
        }
        // Which wire version the sender reads: only from a sender this node would admit
        // (a forger could otherwise make this node talk down to a real peer).
        if sender_checked && self.identities.admits(&remote.from) {
            self.peer_versions
                .insert(remote.from.name.clone(), remote.version);
        }
        // The unsigned tags field is the sender's word about itself: taken only where
        // identities do not hold its name to signed announcements.
        if sender_checked && self.identities.admits_unsigned(&remote.from.name) {
            self.tag_book.learn(&remote.from.name, 0, &remote.tags);
        }
        let out = merge(
            &mut self.events,
            &mut self.event_clock,
            &mut self.query_clock,
            remote,
            self.now,
        );
        self.stats.events_delivered += out.new_events.len() as u64;
        self.stats.events_duplicate += out.duplicates as u64;
        self.stats.events_too_old += out.too_old as u64;
        self.stats.too_far_ahead += out.too_far_ahead as u64;
        self.outbox
            .extend(out.new_events.iter().cloned().map(Incoming::Event));
        out
    }
}
