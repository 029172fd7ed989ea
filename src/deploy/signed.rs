//! The signed deploy event: what to deploy where, authorised by an Ed25519 signature.
//!
//! Why: the gossip key is on every host, so it cannot authorise running code; only a holder
//! of a signing key whose public half is in `trusted_signing_keys` can. The event is encoded
//! compactly with postcard (digest, id and signature as raw bytes) and must fit in one gossip
//! user event: [`SignedEvent::encode`] refuses anything larger.
//!
//! Guarantees of [`Verifier::accept`]: an event is returned only if its signature verifies
//! under a trusted key, its issued-at is neither older than the configured age nor further
//! in the future than the allowed skew, and its id was not accepted before. Each refusal is
//! a typed [`VerifyError`] and leaves the verifier's state unchanged.

use std::collections::{HashSet, VecDeque};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::gossip::event::MAX_EVENT_SIZE;
use crate::gossip::identity::MAX_NODE_NAME_LEN;
use crate::gossip::limits::MAX_BROADCAST_ITEM;

/// The user-event name deploy events travel under.
pub const EVENT_NAME: &str = "_deploy";

/// Largest encoded [`SignedEvent`]: what a gossip user event leaves after the name.
pub const MAX_SIGNED_EVENT_LEN: usize = MAX_EVENT_SIZE - EVENT_NAME.len();

/// What a `deploy.desired` slot (the same signed event, carried for nodes that were away)
/// adds around the event at worst: the broadcast's tag, its kind, the app name as the key
/// (2-byte length), a 10-byte version, the longest origin node name, the body's length.
fn desired_slot_overhead(app: &str) -> usize {
    1 + (1 + super::status::DESIRED_KIND.len()) + (2 + app.len()) + 10 + (1 + MAX_NODE_NAME_LEN) + 2
}

/// Largest encoded [`SignedEvent`] for `app`: it must fit both a gossip user event and the
/// app's desired-state slot, or nodes that were away would never get it.
pub fn max_signed_len(app: &str) -> usize {
    MAX_SIGNED_EVENT_LEN.min(MAX_BROADCAST_ITEM.saturating_sub(desired_slot_overhead(app)))
}

/// Domain separation: a signature over a deploy event is never valid for anything else.
const SIGNING_CONTEXT: &[u8] = b"droot-fleet deploy event v1\0";

/// How many nodes of a wave may deploy at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaxParallel {
    /// At most this many nodes per wave (at least 1).
    Count(u32),
    /// At most this percentage (1-100) of the targets per wave, rounded up.
    Percent(u8),
}

/// `N` or `P%` (P at most 100): `(count, percent)`, one of them set.
fn count_or_percent(s: &str) -> Option<(Option<u32>, Option<u8>)> {
    match s.strip_suffix('%') {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .map(|p| (None, Some(p))),
        None => s.parse::<u32>().ok().map(|n| (Some(n), None)),
    }
}

impl std::str::FromStr for MaxParallel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match count_or_percent(s) {
            Some((Some(n @ 1..), _)) => Ok(MaxParallel::Count(n)),
            Some((_, Some(p @ 1..))) => Ok(MaxParallel::Percent(p)),
            _ => Err(format!(
                "max-parallel {s:?}: expected a count like 5 or a percentage like 25%"
            )),
        }
    }
}

/// How the targets are rolled out (see [`super::rollout`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub max_parallel: Option<MaxParallel>,
    /// Nodes in a first wave of their own (0: no canary wave).
    pub canary: u32,
}

/// How many targets must stay in service while the waves run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MinHealthy {
    Count(u32),
    /// A percentage (0-100) of the targets, rounded up.
    Percent(u8),
}

impl std::str::FromStr for MinHealthy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match count_or_percent(s) {
            Some((Some(n), _)) => Ok(MinHealthy::Count(n)),
            Some((_, Some(p))) => Ok(MinHealthy::Percent(p)),
            _ => Err(format!(
                "min-healthy {s:?}: expected a count like 3 or a percentage like 75%"
            )),
        }
    }
}

/// Options beyond targets and waves. Encoded after the event, and only when one is set: an
/// agent from before them refuses such an event (trailing bytes) rather than ignore what
/// it asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// A failing `before_stop` hook of the old release does not stop the deploy.
    pub ignore_stop_hook_failures: bool,
    /// Targets that must stay in service: a node whose app stops before it starts counts
    /// as out of service while it deploys.
    pub min_healthy: Option<MinHealthy>,
    /// A target that has not reported this many seconds after it could start counts as
    /// failed, which halts the waves.
    pub progress_deadline_secs: Option<u32>,
}

/// Which nodes the event is for: all when both lists are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Node-name regexes; a node matches if any matches (or the list is empty).
    pub nodes: Vec<String>,
    /// `(tag key, value regex)`; a node must match every one.
    pub tags: Vec<(String, String)>,
}

/// A deploy event before signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    pub app: String,
    pub version: String,
    /// The resolved artifact URL (`s3://`, `https://`, `file://`).
    pub url: String,
    pub sha256: Option<[u8; 32]>,
    pub targets: Targets,
    pub rollout: Rollout,
    /// Unix milliseconds when the operator issued it (orders events issued in one second).
    pub issued_at_ms: u64,
    /// Unique per event: the replay-protection key.
    pub id: [u8; 16],
    /// Encoded after the rest, only when set (see [`Options`]).
    #[serde(skip)]
    pub options: Options,
    /// The sha256 of the artifact's chunk index ([`crate::fanout::index`]), which lets
    /// nodes take its pieces from each other. Encoded after the options, only when set:
    /// an agent from before it refuses such an event.
    #[serde(skip)]
    pub chunks: Option<[u8; 32]>,
}

/// The deploy event format this release reads, which agents announce
/// ([`crate::agent::sansio::deploy_format`]): 2 reads a pinned chunk index
/// ([`DeployEvent::chunks`]). An agent that announces none is taken to read format 1:
/// the event without it.
pub const DEPLOY_FORMAT: u16 = 2;

/// The format an event with a pinned chunk index needs its targets to read.
pub const FORMAT_CHUNKS: u16 = 2;

/// What follows [`Options`] in the signed body, when set.
#[derive(Serialize, Deserialize)]
struct Extension {
    chunks: Option<[u8; 32]>,
}

impl DeployEvent {
    /// A fresh random event id.
    pub fn random_id() -> [u8; 16] {
        rand::random()
    }

    /// The id as 32 hex digits, for logs and status.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// The oldest deploy event format that reads this event.
    pub fn format_needed(&self) -> u16 {
        match self.chunks {
            Some(_) => FORMAT_CHUNKS,
            None => 1,
        }
    }
}

/// A deploy event with its signature. The signed bytes are kept so that re-encoding for
/// push/pull does not depend on postcard producing the same bytes twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEvent {
    pub event: DeployEvent,
    body: Vec<u8>,
    signature: [u8; 64],
    /// The key its signature verified under (`None`: not checked, `--dev`).
    signer: Option<VerifyingKey>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Why an event could not be built or encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "the signed deploy event is {size} bytes, more than the {max} that fit in a gossip event \
         and the app's desired-state slot; use a shorter URL, fewer --node/--tag patterns, or \
         shorter names"
    )]
    TooLarge { size: usize, max: usize },
    #[error("cannot encode the deploy event: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Why a received event was refused. Nothing is fetched for a refused event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("deploy event is malformed ({0}); it was not produced by droot-fleet or is corrupt")]
    Malformed(String),
    #[error("deploy event is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error(
        "deploy event refused: no trusted signing keys are configured (add the operator's public \
         key to trusted_signing_keys)"
    )]
    NoTrustedKeys,
    #[error("deploy event {id} refused: its signature does not verify under any trusted key")]
    BadSignature { id: String },
    #[error("deploy event {id} refused: already seen (replayed)")]
    Replayed { id: String },
    #[error(
        "deploy event {id} refused: issued {age}s ago, older than the {max_age}s allowed \
         (re-issue it, or check this host's clock)"
    )]
    Stale { id: String, age: u64, max_age: u64 },
    #[error(
        "deploy event {id} refused: issued {ahead}s in the future, more than the {skew}s skew \
         allowed (check the clocks of this host and of the operator)"
    )]
    FromFuture { id: String, ahead: u64, skew: u64 },
}

fn message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}

impl SignedEvent {
    /// Signs `event`; refuses one whose encoding would not fit in a gossip event.
    pub fn sign(event: DeployEvent, key: &SigningKey) -> Result<SignedEvent, EncodeError> {
        let mut body = postcard::to_allocvec(&event)?;
        if event.options != Options::default() || event.chunks.is_some() {
            body.extend(postcard::to_allocvec(&event.options)?);
        }
        if event.chunks.is_some() {
            let ext = Extension {
                chunks: event.chunks,
            };
            body.extend(postcard::to_allocvec(&ext)?);
        }
        let signature = key.sign(&message(&body)).to_bytes();
        let signed = SignedEvent {
            event,
            body,
            signature,
            signer: Some(key.verifying_key()),
        };
        signed.encode()?;
        Ok(signed)
    }

    /// The wire form; at most [`max_signed_len`] bytes for its app.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let wire = Wire {
            body: self.body.clone(),
            signature: self.signature.to_vec(),
        };
        let bytes = postcard::to_allocvec(&wire)?;
        let max = max_signed_len(&self.event.app);
        if bytes.len() > max {
            return Err(EncodeError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        Ok(bytes)
    }

    /// Decodes the wire form and checks the signature against `trusted` (nothing else).
    pub fn decode_verified(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<Self, VerifyError> {
        let mut signed = Self::decode_unverified(bytes)?;
        if trusted.is_empty() {
            return Err(VerifyError::NoTrustedKeys);
        }
        let sig = Signature::from_bytes(&signed.signature);
        let msg = message(&signed.body);
        signed.signer = trusted
            .iter()
            .find(|k| k.verify(&msg, &sig).is_ok())
            .copied();
        if signed.signer.is_none() {
            return Err(VerifyError::BadSignature {
                id: signed.event.id_hex(),
            });
        }
        Ok(signed)
    }

    /// Decodes the wire form WITHOUT checking the signature: only for `--dev` agents that
    /// trust no key (see [`Trust`]).
    pub fn decode_unverified(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_SIGNED_EVENT_LEN {
            return Err(VerifyError::TooLarge {
                size: bytes.len(),
                max: MAX_SIGNED_EVENT_LEN,
            });
        }
        let malformed = |e: postcard::Error| VerifyError::Malformed(e.to_string());
        let (wire, rest): (Wire, _) = postcard::take_from_bytes(bytes).map_err(malformed)?;
        if !rest.is_empty() {
            return Err(VerifyError::Malformed("trailing bytes".into()));
        }
        let (mut event, rest): (DeployEvent, _) =
            postcard::take_from_bytes(&wire.body).map_err(malformed)?;
        let rest = match rest.is_empty() {
            true => rest,
            false => {
                let (options, rest) = postcard::take_from_bytes(rest).map_err(malformed)?;
                event.options = options;
                rest
            }
        };
        let rest = match rest.is_empty() {
            true => rest,
            false => {
                let (ext, rest): (Extension, _) =
                    postcard::take_from_bytes(rest).map_err(malformed)?;
                event.chunks = ext.chunks;
                rest
            }
        };
        if !rest.is_empty() {
            return Err(VerifyError::Malformed("trailing bytes in the body".into()));
        }
        // The limit `encode` applies: an event that fits a user event but not its app's
        // desired-state slot would reach the live nodes and never those that were away.
        let max = max_signed_len(&event.app);
        if bytes.len() > max {
            return Err(VerifyError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        let signature: [u8; 64] = wire
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::Malformed("signature is not 64 bytes".into()))?;
        Ok(SignedEvent {
            event,
            body: wire.body,
            signature,
            signer: None,
        })
    }

    /// The [`crate::keytext::key_id`] of the key its signature verified under; `None` when
    /// it was not checked (`--dev`).
    pub fn signer_id(&self) -> Option<String> {
        self.signer.as_ref().map(crate::keytext::key_id)
    }

    /// Decodes and checks the signature as `trust` says.
    pub fn decode_trusted(bytes: &[u8], trust: &Trust) -> Result<Self, VerifyError> {
        match trust {
            Trust::Keys(keys) => Self::decode_verified(bytes, keys),
            Trust::DevUnverified => Self::decode_unverified(bytes),
        }
    }
}

/// Which deploy events a node acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Only those signed by one of these keys (none: every event is refused).
    Keys(Vec<VerifyingKey>),
    /// `--dev` with no trusted keys: any well-formed event, signature unchecked.
    DevUnverified,
}

impl Trust {
    /// The trust of an agent: its keys; with none, `--dev` accepts unverified events.
    pub fn new(keys: Vec<VerifyingKey>, dev: bool) -> Self {
        if keys.is_empty() && dev {
            Trust::DevUnverified
        } else {
            Trust::Keys(keys)
        }
    }
}

/// The accepted ids of a [`SeenIds`], persisted so that a replay stays a replay across a
/// restart of the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenSnapshot {
    pub ids: Vec<([u8; 16], u64)>,
    pub floor: Option<u64>,
}

/// Remembers accepted event ids, bounded. When full, the oldest id is forgotten and its
/// issued-at becomes a floor: events issued at or before it are refused as replays, so a
/// forgotten id can never be accepted again.
#[derive(Debug, Clone)]
pub struct SeenIds {
    cap: usize,
    order: VecDeque<([u8; 16], u64)>,
    set: HashSet<[u8; 16]>,
    floor: Option<u64>,
}

impl SeenIds {
    pub fn new(cap: usize) -> Self {
        SeenIds {
            cap: cap.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
            floor: None,
        }
    }

    /// Whether an event with this id and issued-at would be a replay.
    pub fn is_replay(&self, id: &[u8; 16], issued_at_ms: u64) -> bool {
        self.set.contains(id) || self.floor.is_some_and(|f| issued_at_ms <= f)
    }

    /// Records an accepted event.
    pub fn insert(&mut self, id: [u8; 16], issued_at_ms: u64) {
        if !self.set.insert(id) {
            return;
        }
        self.order.push_back((id, issued_at_ms));
        while self.order.len() > self.cap {
            if let Some((old, at)) = self.order.pop_front() {
                self.set.remove(&old);
                self.floor = Some(self.floor.map_or(at, |f| f.max(at)));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// What survives a restart: the ids in acceptance order and the floor.
    pub fn snapshot(&self) -> SeenSnapshot {
        SeenSnapshot {
            ids: self.order.iter().copied().collect(),
            floor: self.floor,
        }
    }

    /// Takes back a [`SeenIds::snapshot`] (ids beyond the capacity raise the floor, as
    /// when they were forgotten live).
    pub fn restore(&mut self, snap: &SeenSnapshot) {
        if let Some(f) = snap.floor {
            self.floor = Some(self.floor.map_or(f, |have| have.max(f)));
        }
        for (id, at) in &snap.ids {
            self.insert(*id, *at);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// How something issued at a time stands against a [`Policy`]'s age and skew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    InTime,
    /// Issued `age` seconds ago, more than `max_age`.
    Stale {
        age: u64,
    },
    /// Issued `ahead` seconds in the future, more than `max_skew`.
    FromFuture {
        ahead: u64,
    },
}

/// The receiving side's rules.
#[derive(Debug, Clone)]
pub struct Policy {
    pub trusted: Trust,
    /// Refuse events issued longer ago than this (seconds).
    pub max_age: u64,
    /// Refuse events issued further in the future than this (seconds).
    pub max_skew: u64,
}

impl Policy {
    /// Whether something issued at `issued_at_ms` is in time at `now` (Unix seconds).
    pub fn timing(&self, issued_at_ms: u64, now: u64) -> Timing {
        let at = issued_at_ms / 1000;
        if now > at && now - at > self.max_age {
            Timing::Stale { age: now - at }
        } else if at > now && at - now > self.max_skew {
            Timing::FromFuture { ahead: at - now }
        } else {
            Timing::InTime
        }
    }
}

/// Verifies received events and refuses replays.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub policy: Policy,
    seen: SeenIds,
}

impl Verifier {
    pub fn new(policy: Policy, seen_capacity: usize) -> Self {
        Verifier {
            policy,
            seen: SeenIds::new(seen_capacity),
        }
    }

    /// The accepted ids, to persist.
    pub fn seen(&self) -> SeenSnapshot {
        self.seen.snapshot()
    }

    /// Takes back the ids accepted before a restart.
    pub fn restore_seen(&mut self, snap: &SeenSnapshot) {
        self.seen.restore(snap);
    }

    /// Verifies `bytes` received at `now` (unix seconds) and records its id.
    pub fn accept(&mut self, bytes: &[u8], now: u64) -> Result<SignedEvent, VerifyError> {
        let signed = self.check(bytes, now)?;
        self.seen.insert(signed.event.id, signed.event.issued_at_ms);
        Ok(signed)
    }

    /// Verifies `bytes` as [`Self::accept`] would (signature, age, replay) without
    /// recording its id.
    pub fn check(&self, bytes: &[u8], now: u64) -> Result<SignedEvent, VerifyError> {
        let signed = SignedEvent::decode_trusted(bytes, &self.policy.trusted)?;
        let ev = &signed.event;
        match self.policy.timing(ev.issued_at_ms, now) {
            Timing::InTime => {}
            Timing::Stale { age } => {
                return Err(VerifyError::Stale {
                    id: ev.id_hex(),
                    age,
                    max_age: self.policy.max_age,
                });
            }
            Timing::FromFuture { ahead } => {
                return Err(VerifyError::FromFuture {
                    id: ev.id_hex(),
                    ahead,
                    skew: self.policy.max_skew,
                });
            }
        }
        if self.seen.is_replay(&ev.id, ev.issued_at_ms) {
            return Err(VerifyError::Replayed { id: ev.id_hex() });
        }
        Ok(signed)
    }
}

pub use crate::keytext::{
    KeyError, generate_signing_key, public_key_from_text, public_key_text, signing_key_from_text,
    signing_key_to_text,
};

#[cfg(test)]
mod tests;
