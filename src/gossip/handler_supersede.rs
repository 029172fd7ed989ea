//! [`GossipCore`]'s superseding broadcasts: this node's tag announcements and
//! [`Superseding`] items of any kind (see [`super::super::supersede`]), kept within their
//! kind's bounds ([`super::super::kinds`]).
//!
//! What a node says about itself is its own: a remote item of a node-owned kind whose
//! origin is this node is refused, and if it is newer than this node's own item, the
//! node publishes its item again above it (a lost state file and a clock that went back,
//! or a forger), so the cluster ends up with what the node says.

use super::*;
use crate::gossip::kinds::{KindPolicy, Kinds};

/// The kinds every core knows, whatever the shell registers.
pub(super) fn builtin_kinds() -> Kinds {
    let mut kinds = Kinds::default();
    let tags = KindPolicy::node(1).checked(std::sync::Arc::new(|i: &Superseding| {
        i.key == i.origin && postcard::from_bytes::<Tags>(&i.body).is_ok()
    }));
    kinds.register(TAGS_KIND, tags);
    for (kind, policy) in super::identity::identity_kinds() {
        kinds.register(kind, policy);
    }
    kinds
}

impl GossipCore {
    /// Replaces this node's tags (e.g. on a config reload) and returns the bytes that
    /// announce them (`Foca::add_broadcast`). `version` must grow with every change
    /// (wall-clock milliseconds); it is raised above the last one if not.
    pub fn set_tags(&mut self, tags: Tags, version: u64) -> Result<Vec<u8>, CreateError> {
        self.tags = tags;
        self.tags_version = version.max(self.tags_version.saturating_add(1));
        self.announce_tags()
    }

    /// The bytes publishing this node's own items again above newer remote ones about
    /// it (see the module docs), each once.
    pub fn take_republish(&mut self) -> Vec<Result<Vec<u8>, CreateError>> {
        let wanted = std::mem::take(&mut self.republish);
        let now_ms = u64::try_from(self.now.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for ((kind, key), above) in wanted {
            let Some(mine) = self.latest.get(&kind, &key).cloned() else {
                continue;
            };
            let version = now_ms.max(above.saturating_add(1));
            if kind == TAGS_KIND {
                let tags = self.tags.clone();
                out.push(self.set_tags(tags, version));
                continue;
            }
            out.push(self.create_superseding(&kind, &key, version, mine.body));
        }
        out
    }

    /// The bytes announcing this node's current tags (at start, or to re-announce).
    pub fn announce_tags(&mut self) -> Result<Vec<u8>, CreateError> {
        let body = postcard::to_stdvec(&self.tags).map_err(|e| EncodeError::Serialize {
            what: "tags",
            reason: e.to_string(),
        })?;
        let name = self.identity.name.clone();
        let version = self.tags_version;
        let item = self.superseding(TAGS_KIND, &name, version, body);
        Ok(encode_broadcast(&Broadcast::Superseding(item))?)
    }

    /// Builds a [`Superseding`] item for `Foca::add_broadcast` (which delivers it here
    /// first, so it reaches [`Incoming::Superseding`] like a remote one). For a slot of
    /// this node's that it holds, the version is raised above the held one if it is not
    /// already: what the node says last always wins, even after its item was published
    /// again above a remote one.
    pub fn create_superseding(
        &self,
        kind: &str,
        key: &str,
        version: u64,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, CreateError> {
        let held = self
            .latest
            .get(kind, key)
            .filter(|i| i.origin == self.identity.name && self.kinds.is_node_owned(kind));
        let version = held.map_or(version, |h| version.max(h.version.saturating_add(1)));
        let item = self.superseding(kind, key, version, body);
        item.validate()?;
        Ok(encode_broadcast(&Broadcast::Superseding(item))?)
    }

    /// An item from this node, signed when it has an identity.
    fn superseding(&self, kind: &str, key: &str, version: u64, body: Vec<u8>) -> Superseding {
        let mut item = Superseding {
            kind: kind.to_owned(),
            key: key.to_owned(),
            version,
            origin: self.identity.name.clone(),
            body,
            sig: None,
        };
        self.identities.sign_item(&mut item);
        item
    }

    /// The shell's kinds, from now on (the built-in ones stay as they are).
    pub fn set_kinds(&mut self, kinds: Kinds) {
        let mut all = builtin_kinds();
        all.extend_missing(kinds);
        self.kinds = all;
    }

    /// The newest items held of one kind.
    pub fn superseding_items(&self, kind: &str) -> Vec<Superseding> {
        self.latest
            .items()
            .filter(|i| i.kind == kind)
            .cloned()
            .collect()
    }

    /// The newest item held for a slot.
    pub fn superseding_item(&self, kind: &str, key: &str) -> Option<&Superseding> {
        self.latest.get(kind, key)
    }

    pub(super) fn receive_superseding(
        &mut self,
        item: Superseding,
        local: bool,
    ) -> Option<BroadcastKey> {
        // A remote item came in a datagram: its signature checks are metered.
        if !self.accept_superseding(&item, local, !local) {
            return None;
        }
        let key = BroadcastKey::Superseding {
            slot: self.seen.slot_hash(&item.kind, &item.key),
            version: item.version,
        };
        self.outbox.push_back(Incoming::Superseding(item));
        Some(key)
    }

    /// Offers an item to [`Latest`]; true if it was kept (then tags are learned).
    /// `local`: this node made it; `metered`: its signature checks count against
    /// [`crate::gossip::vouch::CHECKS_PER_SECOND`]. The bounds come first, so an item that
    /// would not be kept costs no signature check.
    pub(super) fn accept_superseding(
        &mut self,
        item: &Superseding,
        local: bool,
        metered: bool,
    ) -> bool {
        if !local && item.origin == self.identity.name && self.kinds.is_node_owned(&item.kind) {
            self.refuse_about_self(item);
            return false;
        }
        let limits = self.kinds.limits(&item.kind, self.now);
        if !self.count_offer(self.latest.check(item, &limits)) {
            return false;
        }
        let checked = match self.check_identity(item, local, metered) {
            Ok(checked) => checked,
            Err(crate::gossip::vouch::Refusal::Busy) => {
                self.stats.checks_deferred += 1;
                return false;
            }
            Err(why) => {
                tracing::debug!(kind = %item.kind, key = %item.key, origin = %item.origin, cause = %why, "slot refused");
                self.stats.refused_identity += 1;
                return false;
            }
        };
        if !self.kinds.allows(item) {
            self.stats.refused_superseding += 1;
            return false;
        }
        self.latest.offer(item, &limits, self.now);
        if item.kind == TAGS_KIND
            && let Ok(tags) = postcard::from_bytes::<Tags>(&item.body)
        {
            self.tag_book.learn(&item.key, item.version, &tags);
        }
        self.identity_kept(item, checked);
        true
    }

    /// Counts what [`Latest`] said of an item; true if it would be kept.
    fn count_offer(&mut self, offer: Offer) -> bool {
        match offer {
            Offer::Newer => return true,
            Offer::Stale => self.stats.superseded += 1,
            Offer::Full => self.stats.slots_full += 1,
            Offer::TooLarge | Offer::TooFarAhead => self.stats.refused_superseding += 1,
        }
        false
    }

    /// A remote item about this node: refused; if it is newer than this node's own item of
    /// that slot (or as new but different), the own item is published again above it. Its
    /// own item coming back is not counted. Only slots this node holds are remembered, so
    /// a forger cannot grow the list. With node identities, only an item this node signed
    /// (before a restart whose clock went back) is outranked: a forgery is refused
    /// everywhere anyway, and outranking it would only let a forger push this node's
    /// versions ahead.
    fn refuse_about_self(&mut self, item: &Superseding) {
        let me = &self.identity.name;
        let mine = self
            .latest
            .get(&item.kind, &item.key)
            .filter(|held| held.origin == *me);
        if mine == Some(item) {
            return;
        }
        self.stats.refused_about_self += 1;
        let Some(mine) = mine else {
            return;
        };
        if item.version > self.kinds.limits(&item.kind, self.now).max_version {
            return; // refused everywhere anyway; nothing to outrank
        }
        if self.identities.mode() != crate::gossip::vouch::Mode::Off
            && self.identities.check_node_item(item).is_err()
        {
            return;
        }
        if item.version >= mine.version {
            let slot = (item.kind.clone(), item.key.clone());
            let above = self.republish.entry(slot).or_default();
            *above = (*above).max(item.version);
        }
    }
}
