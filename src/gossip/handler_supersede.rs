//! [`GossipCore`]'s superseding broadcasts: this node's tag announcements and
//! [`Superseding`] items of any kind (see [`super::super::supersede`]).

use super::*;

/// Checks an item of one kind before it may enter [`Latest`] (e.g. the deploy pipeline's
/// desired state must carry a valid signature): a refused item is neither kept, nor
/// delivered, nor relayed, so a forged high version cannot block real ones.
pub type Validator = std::sync::Arc<dyn Fn(&Superseding) -> bool + Send + Sync>;

/// Validators by kind, and the kinds whose slots belong to their origin node.
#[derive(Clone, Default)]
pub struct Validators {
    checks: BTreeMap<String, Validator>,
    node_owned: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.checks.keys()).finish()
    }
}

impl Validators {
    /// Items of `kind` must pass `check`.
    pub fn insert(&mut self, kind: &str, check: Validator) {
        self.checks.insert(kind.to_owned(), check);
    }

    /// Slots of `kind` describe their origin node (its outcome, its app list): they are
    /// forgotten with the node once foca reaps it, so they do not fill [`Latest`].
    pub fn node_owned(&mut self, kind: &str) {
        self.node_owned.insert(kind.to_owned());
    }

    fn allows(&self, item: &Superseding) -> bool {
        self.checks.get(&item.kind).is_none_or(|check| check(item))
    }

    pub(super) fn is_node_owned(&self, kind: &str) -> bool {
        self.node_owned.contains(kind)
    }
}

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

    /// Items of each kind in `validators` must pass its check from now on.
    pub fn set_validators(&mut self, validators: Validators) {
        self.validators = validators;
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
        if !self.validators.allows(item) {
            self.stats.refused_superseding += 1;
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
