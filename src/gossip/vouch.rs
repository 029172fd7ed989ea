//! Node identities in the gossip core: who may speak for which name.
//!
//! With enrollment keys configured, every agent holds a node key and a [`NodeCert`] for
//! its name. It publishes a *member card* (kind [`MEMBER_KIND`]): its certificate, its
//! address and restart bump, signed with its node key. A verified card vouches for exactly
//! one foca identity (name, address, bump). Everything else a node says about itself (its
//! tags, app list and outcomes, its query answers, its leave notice) carries its node-key
//! signature and is accepted only under its card. So a holder of the gossip key alone can
//! neither join under a name nor speak for anyone, and one leaked host speaks only for
//! itself until its certificate is revoked ([`REVOKED_KIND`], signed by an enrollment key)
//! or expires.
//!
//! [`Mode`] says how strictly this holds:
//! - [`Mode::Off`]: no enrollment keys: everything as before identities existed;
//! - [`Mode::Transition`]: names with a verified card are held to it, names without one
//!   are taken on the gossip key's word, as before (while a fleet is enrolled host by
//!   host);
//! - [`Mode::Required`]: a name without a verified card has no voice at all.
//!
//! What is *not* signed: a member's liveness (SWIM pings and acks, and the suspicions any
//! member may raise about another) and user events and queries, which stay fleet-wide
//! messages authorised by the gossip key. Deploys are authorised by the deploy signing key.

use std::collections::HashMap;
use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::cert::{CertError, NodeCert, Revocation, RevocationBody};
use super::identity::NodeId;
use super::pairwise::{Auth, Opened, PairKeys};
use super::query::QueryResponse;
use super::supersede::Superseding;

/// Kind of the member cards (key and origin: the node's name).
pub const MEMBER_KIND: &str = "droot.member";
/// Kind of revocations (key: the revoked node key in hex).
pub const REVOKED_KIND: &str = "droot.revoked";
/// Most revocations kept.
pub const MAX_REVOCATIONS: usize = 4096;

const ITEM_CONTEXT: &[u8] = b"droot-fleet slot v1\0";
const RESPONSE_CONTEXT: &[u8] = b"droot-fleet query response v1\0";
const LEAVE_CONTEXT: &[u8] = b"droot-fleet leave v1\0";

/// How strictly identities are enforced (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Transition,
    Required,
}

/// This node's key and certificate.
#[derive(Clone)]
pub struct OwnIdentity {
    key: SigningKey,
    cert: NodeCert,
}

impl std::fmt::Debug for OwnIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnIdentity")
            .field("name", &self.cert.name())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why an identity could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the node key does not match the certificate for {name:?}; enroll the node again")]
    KeyMismatch { name: String },
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl OwnIdentity {
    /// A key and the certificate for its public half.
    pub fn new(key: SigningKey, cert: NodeCert) -> Result<Self, IdentityError> {
        if cert.node_key() != key.verifying_key() {
            return Err(IdentityError::KeyMismatch {
                name: cert.name().to_owned(),
            });
        }
        Ok(Self { key, cert })
    }

    /// The node name it speaks for.
    pub fn name(&self) -> &str {
        self.cert.name()
    }

    /// Its certificate.
    pub fn cert(&self) -> &NodeCert {
        &self.cert
    }

    fn sign(&self, context: &[u8], body: &[u8]) -> [u8; 64] {
        self.key.sign(&[context, body].concat()).to_bytes()
    }
}

/// What a core is told about identities.
#[derive(Debug, Clone, Default)]
pub struct IdentityPolicy {
    /// Enrollment public keys whose certificates are trusted (empty: [`Mode::Off`]).
    pub issuers: Vec<VerifyingKey>,
    /// Names without a verified card have no voice ([`Mode::Required`]).
    pub required: bool,
    /// This node's key and certificate.
    pub own: Option<OwnIdentity>,
}

impl IdentityPolicy {
    /// The mode it sets.
    pub fn mode(&self) -> Mode {
        match (self.issuers.is_empty(), self.required) {
            (true, _) => Mode::Off,
            (false, false) => Mode::Transition,
            (false, true) => Mode::Required,
        }
    }
}

/// The body of a member card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCard {
    /// [`NodeCert::encode`].
    pub cert: Vec<u8>,
    /// Where the node listens.
    pub addr: SocketAddr,
    /// Its restart bump.
    pub bump: u16,
}

/// A verified member card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    key: VerifyingKey,
    /// The certificate's bytes: the same again need no second signature check.
    cert: Vec<u8>,
    addr: SocketAddr,
    bump: u16,
    not_before: u64,
    not_after: u64,
}

impl Card {
    /// The node key it was signed with.
    pub fn node_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// When its certificate expires (Unix seconds).
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// The foca identity this card vouches for, as the card of `name`.
    pub fn vouched(&self, name: &str) -> NodeId {
        NodeId {
            name: name.to_owned(),
            addr: self.addr,
            bump: self.bump,
        }
    }
}

/// The slot that carries an encoded revocation (nothing checked yet: see
/// [`Identities::check_revocation`]).
pub fn revocation_slot(bytes: Vec<u8>, origin: &str) -> Result<Superseding, CertError> {
    let r = Revocation::decode(&bytes)?;
    let body = r.body();
    Ok(Superseding {
        kind: REVOKED_KIND.into(),
        key: hex::encode(body.node_key),
        version: super::kinds::fleet_version(body.issued_at_ms, 0),
        origin: origin.to_owned(),
        body: bytes,
        sig: None,
    })
}

/// Why something said in a node's name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Cert(#[from] CertError),
    #[error("no verified member card for {0:?}")]
    NoCard(String),
    #[error("unsigned, but {0:?} has a member card")]
    Unsigned(String),
    #[error("the signature is not {0:?}'s")]
    BadSignature(String),
    #[error("malformed member card or revocation: {0}")]
    Malformed(String),
    #[error("the node key of {0:?} was revoked")]
    Revoked(String),
    #[error("{0:?} already showed a newer certificate")]
    OlderCertificate(String),
    #[error("node identities are off here: no enrollment keys to check it against")]
    IdentitiesOff,
    #[error(
        "not checked: this second's {CHECKS_PER_SECOND} signature-checked gossiped items \
         are spent (it comes again by push/pull)"
    )]
    Busy,
}

/// Items per second that gossiped datagrams may have checked by signature (member cards,
/// signed items, revocations; one or two verifications each). Their sender is not authenticated: a holder of the gossip key
/// could otherwise send forged signatures at line rate and keep a core busy checking
/// them. An item costs one or two Ed25519 verifications (a card whose certificate is not
/// the one held, two): at some 50 µs each, at most a tenth of a core. What is over it is
/// dropped and counted; push/pull (TCP, its peer's address checked) is not metered and
/// brings it again.
pub const CHECKS_PER_SECOND: u32 = 1000;

/// The signature checks left in the current second ([`CHECKS_PER_SECOND`]).
#[derive(Debug, Default)]
struct CheckBudget {
    second: u64,
    used: u32,
}

impl CheckBudget {
    fn take(&mut self, now_secs: u64) -> bool {
        if now_secs != self.second {
            self.second = now_secs;
            self.used = 0;
        }
        if self.used >= CHECKS_PER_SECOND {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Who speaks for which name (see the module docs).
#[derive(Debug, Default)]
pub struct Identities {
    policy: IdentityPolicy,
    book: HashMap<String, Card>,
    /// What datagrams may still cost this second.
    budget: CheckBudget,
    /// The keys this node shares with each enrolled peer (when it has an identity).
    pair_keys: Option<PairKeys>,
    /// Revoked node keys, until when.
    revoked: HashMap<[u8; 32], u64>,
    /// Names that have shown a valid card, until when that holds (their certificate's
    /// end, or a revocation's): held to cards even while none is held (revoked, expired
    /// but not yet renewed, reaped, or not yet heard since a restart), so in
    /// [`Mode::Transition`] such a name never falls back to the gossip key's word.
    /// Persisted with the core's snapshot; at most [`MAX_KNOWN`].
    known: HashMap<String, u64>,
}

/// Most names remembered as enrolled.
pub const MAX_KNOWN: usize = super::kinds::MAX_NODES;

fn verify(key: &VerifyingKey, context: &[u8], body: &[u8], sig: &[u8; 64]) -> bool {
    key.verify(&[context, body].concat(), &Signature::from_bytes(sig))
        .is_ok()
}

fn item_bytes(item: &Superseding) -> Vec<u8> {
    postcard::to_stdvec(item).unwrap_or_default()
}

fn response_bytes(r: &QueryResponse) -> Vec<u8> {
    postcard::to_stdvec(r).unwrap_or_default()
}

impl Identities {
    /// Identities under `policy`.
    pub fn new(policy: IdentityPolicy) -> Self {
        let pair_keys = policy.own.as_ref().map(|own| PairKeys::new(&own.key));
        Self {
            policy,
            pair_keys,
            ..Self::default()
        }
    }

    /// The MAC and stamp of a foca packet to `dst` sent at `now_ms`: with an identity of
    /// this node's and a card of `dst`'s (between enrolled members; an older release gets
    /// none).
    pub fn packet_auth(&mut self, dst: &str, packet: &[u8], now_ms: u64) -> Option<Auth> {
        let key = *self.book.get(dst)?.node_key();
        self.pair_keys.as_mut()?.seal(&key, packet, now_ms)
    }

    /// Whether `auth` proves that the holder of `sender` made `packet` for this node,
    /// lately ([`crate::gossip::pairwise`]).
    pub fn open_packet(
        &mut self,
        sender: &VerifyingKey,
        packet: &[u8],
        auth: &Auth,
        now_ms: u64,
    ) -> Opened {
        match self.pair_keys.as_mut() {
            Some(keys) => keys.open(sender, packet, auth, now_ms),
            None => Opened::Forged,
        }
    }

    /// One signature check caused by a datagram at `now` (Unix seconds), if this second's
    /// [`CHECKS_PER_SECOND`] are not spent.
    pub fn take_check(&mut self, now: u64) -> bool {
        self.budget.take(now)
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.policy.mode()
    }

    /// This node's identity, if it has one.
    pub fn own(&self) -> Option<&OwnIdentity> {
        self.policy.own.as_ref()
    }

    /// Whether `name` has a verified card.
    pub fn enrolled(&self, name: &str) -> bool {
        self.book.contains_key(name)
    }

    /// Whether a name without a card has no voice: in [`Mode::Required`] any, in
    /// [`Mode::Transition`] one that has shown a card before.
    fn needs_card(&self, name: &str) -> bool {
        match self.mode() {
            Mode::Off => false,
            Mode::Transition => self.known.contains_key(name),
            Mode::Required => true,
        }
    }

    /// The names held to cards, and until when (for the snapshot).
    pub fn known(&self) -> impl Iterator<Item = (&String, &u64)> {
        self.known.iter()
    }

    /// Restores [`Self::known`] from a snapshot.
    pub fn restore_known(&mut self, known: impl IntoIterator<Item = (String, u64)>) {
        for (name, until) in known {
            self.remember(&name, until);
        }
    }

    fn remember(&mut self, name: &str, until: u64) {
        if self.known.len() >= MAX_KNOWN && !self.known.contains_key(name) {
            return;
        }
        let at = self.known.entry(name.to_owned()).or_default();
        *at = (*at).max(until);
    }

    /// `name`'s verified card.
    pub fn card(&self, name: &str) -> Option<&Card> {
        self.book.get(name)
    }

    /// Whether a foca identity may be taken into the membership: in [`Mode::Off`]
    /// always; otherwise only the identity its name's card vouches for, or (in
    /// [`Mode::Transition`]) any identity of a name without a card.
    pub fn admits(&self, id: &NodeId) -> bool {
        if self.mode() == Mode::Off {
            return true;
        }
        match self.book.get(&id.name) {
            Some(card) => card.addr == id.addr && card.bump == id.bump,
            None => !self.needs_card(&id.name),
        }
    }

    /// Whether an unsigned word in `name`'s name counts (the tags field of a push/pull).
    pub fn admits_unsigned(&self, name: &str) -> bool {
        self.mode() == Mode::Off || (!self.enrolled(name) && !self.needs_card(name))
    }

    /// Signs an item this node publishes (when it has an identity).
    pub fn sign_item(&self, item: &mut Superseding) {
        item.sig = None;
        if let Some(own) = self.own() {
            item.sig = Some(own.sign(ITEM_CONTEXT, &item_bytes(item)));
        }
    }

    /// Checks an item of a node-owned kind (other than cards) against its origin's card.
    pub fn check_node_item(&self, item: &Superseding) -> Result<(), Refusal> {
        self.check_signed(
            &item.origin,
            ITEM_CONTEXT,
            &item_bytes(item),
            item.sig.as_ref(),
        )
    }

    /// Checks a member card item; `now` in Unix seconds.
    pub fn check_card(&self, item: &Superseding, now: u64) -> Result<Card, Refusal> {
        let malformed = |r: String| Refusal::Malformed(r);
        if item.key != item.origin {
            return Err(malformed(format!(
                "card keyed {:?} from {:?}",
                item.key, item.origin
            )));
        }
        let body: MemberCard =
            postcard::from_bytes(&item.body).map_err(|e| malformed(e.to_string()))?;
        let cert = NodeCert::decode(&body.cert)?;
        if cert.name() != item.origin {
            return Err(malformed(format!(
                "a certificate for {:?} in {:?}'s card",
                cert.name(),
                item.origin
            )));
        }
        let held = self.book.get(&item.origin);
        // The book is emptied whenever the issuers change (a new policy, a new book).
        if held.is_some_and(|h| h.cert == body.cert) {
            cert.check_validity(now)?;
        } else {
            cert.verify(&self.policy.issuers, now)?;
        }
        if self.revoked.contains_key(&cert.body().node_key) {
            return Err(Refusal::Revoked(item.origin.clone()));
        }
        if held.is_some_and(|h| h.not_before > cert.body().not_before) {
            return Err(Refusal::OlderCertificate(item.origin.clone()));
        }
        let key = cert.node_key();
        let signed = item
            .sig
            .is_some_and(|sig| verify(&key, ITEM_CONTEXT, &item_bytes(item), &sig));
        if !signed {
            return Err(Refusal::BadSignature(item.origin.clone()));
        }
        Ok(Card {
            key,
            cert: body.cert,
            addr: body.addr,
            bump: body.bump,
            not_before: cert.body().not_before,
            not_after: cert.body().not_after,
        })
    }

    /// Records a card kept as the newest of its name (and the name as held to cards).
    pub fn learn_card(&mut self, name: &str, card: Card) {
        self.remember(name, card.not_after);
        self.book.insert(name.to_owned(), card);
    }

    /// Forgets the cards whose names `keep` refuses (their slots are gone).
    pub fn retain_cards(&mut self, keep: impl Fn(&str) -> bool) {
        self.book.retain(|name, _| keep(name));
    }

    /// Checks a revocation item.
    pub fn check_revocation(&self, item: &Superseding) -> Result<RevocationBody, Refusal> {
        let r = Revocation::decode(&item.body)?;
        r.verify(&self.policy.issuers)?;
        let body = r.body().clone();
        let version = super::kinds::fleet_version(body.issued_at_ms, 0);
        if item.key != hex::encode(body.node_key) || item.version != version {
            return Err(Refusal::Malformed(format!(
                "revocation slot {:?} at version {} does not match its content",
                item.key, item.version
            )));
        }
        Ok(body)
    }

    /// Applies a revocation: returns the names whose cards it withdrew.
    pub fn revoke(&mut self, r: &RevocationBody) -> Vec<String> {
        self.revoked.insert(r.node_key, r.until);
        self.remember(&r.name, r.until);
        let gone: Vec<String> = self
            .book
            .iter()
            .filter(|(_, c)| c.key.as_bytes() == &r.node_key)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &gone {
            self.book.remove(name);
        }
        gone
    }

    /// Drops revocations past their end and cards past their certificate's end, at
    /// `now` (Unix seconds); returns the names whose cards went.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        self.revoked.retain(|_, until| *until >= now);
        self.known.retain(|_, until| *until >= now);
        let gone: Vec<String> = self
            .book
            .iter()
            .filter(|(_, c)| c.not_after < now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &gone {
            self.book.remove(name);
        }
        gone
    }

    /// Signs an answer this node sends (when it has an identity).
    pub fn sign_response(&self, r: &mut QueryResponse) {
        r.sig = None;
        if let Some(own) = self.own() {
            r.sig = Some(own.sign(RESPONSE_CONTEXT, &response_bytes(r)));
        }
    }

    /// Whether an answer may be counted as `r.from`'s.
    pub fn check_response(&self, r: &QueryResponse) -> Result<(), Refusal> {
        let name = &r.from.name;
        self.check_signed(name, RESPONSE_CONTEXT, &response_bytes(r), r.sig.as_ref())
    }

    /// The signature of this node's own leave notice for `id`.
    pub fn sign_leave(&self, id: &NodeId) -> Option<[u8; 64]> {
        let bytes = postcard::to_stdvec(id).unwrap_or_default();
        self.own().map(|own| own.sign(LEAVE_CONTEXT, &bytes))
    }

    /// Whether a leave notice is `id`'s own.
    pub fn check_leave(&self, id: &NodeId, sig: Option<&[u8; 64]>) -> Result<(), Refusal> {
        let bytes = postcard::to_stdvec(id).unwrap_or_default();
        self.check_signed(&id.name, LEAVE_CONTEXT, &bytes, sig)
    }

    fn check_signed(
        &self,
        name: &str,
        context: &[u8],
        body: &[u8],
        sig: Option<&[u8; 64]>,
    ) -> Result<(), Refusal> {
        if self.mode() == Mode::Off {
            return Ok(());
        }
        match (self.book.get(name), sig) {
            (Some(card), Some(sig)) if verify(&card.key, context, body, sig) => Ok(()),
            (Some(_), Some(_)) => Err(Refusal::BadSignature(name.to_owned())),
            (Some(_), None) => Err(Refusal::Unsigned(name.to_owned())),
            // No card to check it against: a name that never showed one speaks on the
            // gossip key's word while a fleet is enrolled, signed or not (its card may
            // not have arrived yet).
            (None, _) if !self.needs_card(name) => Ok(()),
            (None, _) => Err(Refusal::NoCard(name.to_owned())),
        }
    }
}

#[cfg(test)]
#[path = "vouch_tests.rs"]
mod tests;
