//! The desired state: the latest accepted signed deploy event per app.
//!
//! It is what a node that was down, partitioned or new converges to: it is carried in
//! push/pull and persisted. Events are ordered by (issued-at, id), so every node picks the
//! same winner whatever order it hears them in. Guarantees: the map only ever holds events
//! whose signature verified under a trusted key ([`DesiredState::merge`] re-verifies every
//! entry it receives), and merging is commutative, associative and idempotent.

use std::collections::BTreeMap;

use super::signed::{SignedEvent, Trust, VerifyError};

/// Latest signed event per app name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    apps: BTreeMap<String, SignedEvent>,
}

/// What a merge changed.
#[derive(Debug, Default)]
pub struct MergeReport {
    /// Apps whose desired event changed.
    pub updated: Vec<String>,
    /// Entries refused (bad signature, malformed); the rest were still merged.
    pub refused: Vec<VerifyError>,
}

/// Why a serialised desired state could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("desired state is malformed ({0}); it was not written by droot-fleet or is corrupt")]
    Malformed(#[from] postcard::Error),
}

fn newer(a: &SignedEvent, b: &SignedEvent) -> bool {
    (a.event.issued_at_ms, a.event.id) > (b.event.issued_at_ms, b.event.id)
}

impl DesiredState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, app: &str) -> Option<&SignedEvent> {
        self.apps.get(app)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &SignedEvent)> {
        self.apps.iter()
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// Records an already verified event; true if it became the app's desired event.
    pub fn offer(&mut self, signed: SignedEvent) -> bool {
        match self.apps.get(&signed.event.app) {
            Some(cur) if !newer(&signed, cur) => false,
            _ => {
                self.apps.insert(signed.event.app.clone(), signed);
                true
            }
        }
    }

    /// The compact form: a postcard list of the events' wire forms.
    pub fn encode(&self) -> Vec<u8> {
        let list: Vec<Vec<u8>> = self.apps.values().filter_map(|s| s.encode().ok()).collect();
        postcard::to_allocvec(&list).unwrap_or_default()
    }

    /// Merges a peer's (or the disk's) encoded state, verifying every entry again.
    pub fn merge(&mut self, bytes: &[u8], trusted: &Trust) -> Result<MergeReport, DesiredError> {
        let list: Vec<Vec<u8>> = postcard::from_bytes(bytes)?;
        let mut report = MergeReport::default();
        for entry in list {
            match SignedEvent::decode_trusted(&entry, trusted) {
                Ok(signed) => {
                    let app = signed.event.app.clone();
                    if self.offer(signed) && !report.updated.contains(&app) {
                        report.updated.push(app);
                    }
                }
                Err(e) => report.refused.push(e),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::deploy::signed::{DeployEvent, Rollout, Targets, Trust};

    fn signed(key: &SigningKey, app: &str, version: &str, at: u64, id: u8) -> SignedEvent {
        let ev = DeployEvent {
            app: app.into(),
            version: version.into(),
            url: format!("s3://b/{app}/{version}.tar.gz"),
            sha256: None,
            targets: Targets::default(),
            rollout: Rollout::default(),
            issued_at_ms: at,
            id: [id; 16],
            options: Default::default(),
            chunks: None,
        };
        SignedEvent::sign(ev, key).unwrap()
    }

    fn events(key: &SigningKey) -> Vec<SignedEvent> {
        vec![
            signed(key, "web", "v1", 100, 1),
            signed(key, "web", "v2", 200, 2),
            signed(key, "web", "v2b", 200, 3),
            signed(key, "db", "v7", 150, 4),
            signed(key, "db", "v6", 140, 5),
        ]
    }

    #[test]
    fn latest_wins_in_any_order() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let evs = events(&key);
        let mut reference: Option<DesiredState> = None;
        // Every rotation and its reverse: same result.
        for start in 0..evs.len() {
            for rev in [false, true] {
                let mut order: Vec<_> = evs[start..].iter().chain(&evs[..start]).collect();
                if rev {
                    order.reverse();
                }
                let mut d = DesiredState::new();
                for e in order {
                    d.offer(e.clone());
                }
                assert_eq!(
                    d.get("web").unwrap().event.version,
                    "v2b",
                    "id breaks the tie"
                );
                assert_eq!(d.get("db").unwrap().event.version, "v7");
                if let Some(r) = &reference {
                    assert_eq!(&d, r);
                }
                reference = Some(d);
            }
        }
    }

    #[test]
    fn merge_round_trips_is_idempotent_and_reverifies() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let trusted = Trust::Keys(vec![key.verifying_key()]);
        let mut a = DesiredState::new();
        for e in events(&key) {
            a.offer(e);
        }
        let mut b = DesiredState::new();
        let r = b.merge(&a.encode(), &trusted).unwrap();
        assert_eq!(b, a);
        assert_eq!(r.updated.len(), 2);
        let again = b.merge(&a.encode(), &trusted).unwrap();
        assert!(again.updated.is_empty() && again.refused.is_empty());

        // A peer holding an event signed by an unknown key: refused, the rest merged.
        let rogue = SigningKey::from_bytes(&[2; 32]);
        let mut peer = DesiredState::new();
        peer.offer(signed(&rogue, "web", "evil", 999, 9));
        peer.offer(signed(&key, "cache", "v1", 300, 8));
        let r = b.merge(&peer.encode(), &trusted).unwrap();
        assert_eq!(r.updated, vec!["cache".to_string()]);
        assert!(matches!(r.refused[..], [VerifyError::BadSignature { .. }]));
        assert_eq!(b.get("web").unwrap().event.version, "v2b");

        assert!(b.merge(b"\xff\xff\xff", &trusted).is_err());
    }
}
