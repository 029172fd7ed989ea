//! [`GossipCore`]'s superseding broadcasts: this node's tag announcements and
//! [`Superseding`] items of any kind (see [`super::super::supersede`]).

use super::*;

impl GossipCore {
    /// Replaces this node's tags (e.g. on a config reload) and returns the bytes that
    /// announce them (`Foca::add_broadcast`). `version` must grow with every change
    /// (e.g. wall-clock milliseconds); it is raised above the last one if not.
    pub fn set_tags(&mut self, tags: Tags, version: u64) -> Result<Vec<u8>, CreateError> {
        self.tags = tags;
        self.tags_version = version.max(self.tags_version.saturating_add(1));
        self.announce_tags()
    }

    /// If the cluster holds a newer announcement of this node's tags than its own
    /// (see `accept_superseding`), the bytes announcing them again above it (once).
    pub fn take_reannounce(&mut self) -> Option<Result<Vec<u8>, CreateError>> {
        if !std::mem::take(&mut self.reannounce) {
            return None;
        }
        let tags = self.tags.clone();
        Some(self.set_tags(tags, 0))
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
    /// first, so it reaches [`Incoming::Superseding`] like a remote one).
    pub fn create_superseding(
        &self,
        kind: &str,
        key: &str,
        version: u64,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, CreateError> {
        let item = self.superseding(kind, key, version, body);
        item.validate()?;
        Ok(encode_broadcast(&Broadcast::Superseding(item))?)
    }

    fn superseding(&self, kind: &str, key: &str, version: u64, body: Vec<u8>) -> Superseding {
        Superseding {
            kind: kind.to_owned(),
            key: key.to_owned(),
            version,
            origin: self.identity.name.clone(),
            body,
        }
    }

    /// The newest item held for a slot.
    pub fn superseding_item(&self, kind: &str, key: &str) -> Option<&Superseding> {
        self.latest.get(kind, key)
    }

    pub(super) fn receive_superseding(&mut self, item: Superseding) -> Option<BroadcastKey> {
        if !self.accept_superseding(&item) {
            return None;
        }
        let key = BroadcastKey::Superseding {
            slot: self.seen.slot_hash(&item.kind, &item.key),
            version: item.version,
        };
        self.outbox.push_back(Incoming::Superseding(item));
        Some(key)
    }

    /// Offers an item to [`Latest`]; true if it is newer (then tags are learned).
    /// A tag announcement for this node newer than its own (a lost state file and a
    /// clock that went back) is refused, and this node's tags re-announced above it.
    pub(super) fn accept_superseding(&mut self, item: &Superseding) -> bool {
        if item.kind == TAGS_KIND
            && item.key == self.identity.name
            && item.version > self.tags_version
        {
            self.tags_version = item.version;
            self.reannounce = true;
            return false;
        }
        match self.latest.offer(item) {
            Offer::Newer => {}
            Offer::Stale => {
                self.stats.superseded += 1;
                return false;
            }
            Offer::Full => {
                self.stats.slots_full += 1;
                return false;
            }
        }
        if item.kind == TAGS_KIND
            && let Ok(tags) = postcard::from_bytes::<Tags>(&item.body)
        {
            self.tag_book.learn(&item.key, item.version, &tags);
        }
        true
    }
}
