//! Pieces of a large artifact from peers first, the store second (the fleet fan-out,
//! [`crate::fanout`]).
//!
//! When a deploy event pins both the artifact's sha256 and its chunk index's, the fetcher
//! reads the index from beside the artifact in the store and checks it against the pin.
//! Each range (one piece) is then asked of the peers ranked above this node for it
//! ([`crate::fanout::owners`]), and only then of the store. Every piece, from a peer or from
//! the store, must match the index before it is used or served on: a peer whose piece does
//! not match (or that fails, times out, or says "not held" only after [`SLOW_NO`]) is not
//! asked again during this fetch, and once the store contradicts the index the rest comes
//! from the store alone. Nothing here weakens the sha256 over the whole object, which is
//! still checked before anything is published.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::ranges::{Failure, RangeSource};
use crate::agent::fanout::PeerPieces;
use crate::fanout::held::Holding;
use crate::fanout::index::{CHUNK, ChunkIndex};
use crate::fanout::owners::{self, From};

/// Who may have the pieces of one artifact, and what pins them.
#[derive(Clone)]
pub struct Peers {
    /// This node's name (its rank for each piece decides whom it asks).
    pub me: String,
    /// Live peers that finished with the artifact (earlier waves), and their gossip
    /// addresses.
    pub holders: Vec<(String, SocketAddr)>,
    /// Live peers fetching it now (this node's wave).
    pub fetching: Vec<(String, SocketAddr)>,
    /// The agent's held artifacts and its way to peers.
    pub pieces: Arc<PeerPieces>,
    /// The pinned sha256 of the artifact.
    pub artifact: [u8; 32],
    /// The pinned sha256 of its chunk index.
    pub index: [u8; 32],
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .field("holders", &self.holders.len())
            .field("fetching", &self.fetching.len())
            .field("artifact", &hex::encode(self.artifact))
            .finish()
    }
}

/// Artifact bytes taken from peers by this process, over its life (a Prometheus counter).
static PEER_BYTES: AtomicU64 = AtomicU64::new(0);

/// Every checked byte a fetch took from a peer since the process started.
pub fn peer_bytes() -> u64 {
    PEER_BYTES.load(Ordering::Relaxed)
}

impl Peers {
    /// The chunk index from `bytes` (read from beside the artifact), if it is the pinned
    /// one and describes an object of `size` bytes; else why not.
    pub(super) fn check_index(&self, bytes: &[u8], size: u64) -> Result<ChunkIndex, String> {
        let index = ChunkIndex::decode(bytes).map_err(|e| e.to_string())?;
        if index.digest() != self.index || index.artifact != self.artifact {
            return Err("the chunk index is not the one the deploy event pins".into());
        }
        if index.size != size {
            return Err(format!(
                "the chunk index describes {} bytes, the artifact has {size}",
                index.size
            ));
        }
        Ok(index)
    }

    /// `store` with the peers in front, holding what arrives for the peers in turn.
    pub(super) fn in_front_of<'a, S: RangeSource>(
        &'a self,
        store: &'a S,
        index: ChunkIndex,
    ) -> Result<FromPeers<'a, S>, String> {
        let holding = self
            .pieces
            .held()
            .begin(self.artifact, index)
            .map_err(|e| format!("cannot hold the artifact for peers: {e}"))?;
        Ok(FromPeers {
            store,
            peers: self,
            holding,
            skipped: Mutex::default(),
            index_wrong: Default::default(),
        })
    }
}

/// `store` with `peers` in front, when there are peers and the chunk index that `index`
/// reads is the pinned one; else `None` (every piece then comes from the store).
pub(super) async fn in_front<'a, S: RangeSource>(
    peers: Option<&'a Peers>,
    store: &'a S,
    size: u64,
    index: impl Future<Output = Result<Vec<u8>, String>>,
) -> Option<FromPeers<'a, S>> {
    let peers = peers?;
    let ready = async {
        let bytes = (tokio::time::timeout(INDEX_WAIT, index).await)
            .map_err(|_| format!("the chunk index was not read within {INDEX_WAIT:?}"))??;
        let index = peers.check_index(&bytes, size)?;
        peers.in_front_of(store, index)
    };
    match ready.await {
        Ok(from) => Some(from),
        Err(why) => {
            store_alone(Some(peers), store.url(), &why);
            None
        }
    }
}

/// The fetch of `url` takes every piece from the store (`why`): with peers, they are told
/// no at once, not after a wait.
pub(super) fn store_alone(peers: Option<&Peers>, url: &str, why: &str) {
    if let Some(peers) = peers {
        tracing::warn!(%url, %why, "taking every piece from the store");
        peers.pieces.held().settle(&peers.artifact);
    }
}

/// How long reading the chunk index may take before the fetch goes on from the store alone.
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A "not held" that took longer than this came from a peer that waited for the piece in
/// vain (or stalls on purpose): it is not asked again during this fetch.
pub const SLOW_NO: std::time::Duration = std::time::Duration::from_secs(1);

/// A [`RangeSource`] that asks peers for each piece before its store.
pub(super) struct FromPeers<'a, S> {
    store: &'a S,
    peers: &'a Peers,
    holding: Arc<Holding>,
    /// Peers not asked again during this fetch: one served a piece that did not match the
    /// index, could not be reached, timed out, or said "not held" only after [`SLOW_NO`]
    /// (each would cost every later piece the same wait).
    skipped: Mutex<HashSet<String>>,
    /// Set once the store contradicted the index: the rest comes from the store unchecked
    /// by piece (the sha256 over the whole object still decides).
    index_wrong: std::sync::atomic::AtomicBool,
}

impl<S: RangeSource> FromPeers<'_, S> {
    fn sources(&self, piece: usize) -> Vec<String> {
        let skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        let (p, me) = (self.peers, &self.peers.me);
        let holders = p.holders.iter().map(|(n, _)| n.as_str());
        let fetching = p.fetching.iter().map(|(n, _)| n.as_str());
        let skip = |n: &str| skipped.contains(n);
        owners::sources_with_holders(&p.artifact, piece, me, holders, fetching, skip)
            .into_iter()
            .map_while(|from| match from {
                From::Peer(name) => Some(name.to_string()),
                From::Store => None,
            })
            .collect()
    }

    /// Piece `piece` from peer `name`, checked; `None` when it has none, fails, or sends
    /// a bad one (in those two cases it is not asked again).
    async fn ask(&self, name: &str, piece: usize) -> Option<Bytes> {
        let p = self.peers;
        let addr = p
            .holders
            .iter()
            .chain(&p.fetching)
            .find(|(n, _)| n == name)?
            .1;
        let index = self.holding.index();
        let asked = std::time::Instant::now();
        match self
            .peers
            .pieces
            .ask(addr, self.peers.artifact, piece as u32)
            .await
        {
            Ok(Some(bytes)) if index.checks(piece, &bytes) => Some(Bytes::from(bytes)),
            Ok(Some(_)) => {
                tracing::warn!(peer = %name, piece, "a peer served a piece that does not match the chunk index; it is not asked again for this artifact");
                self.skip(name);
                None
            }
            Ok(None) if asked.elapsed() > SLOW_NO => {
                tracing::info!(peer = %name, piece, "a peer said it does not hold a piece only after a wait; it is not asked again for this artifact");
                self.skip(name);
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::info!(peer = %name, piece, error = %e, "a peer did not answer for a piece; it is not asked again for this artifact");
                self.skip(name);
                None
            }
        }
    }

    fn skip(&self, name: &str) {
        let mut skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        skipped.insert(name.to_string());
    }

    /// Whether peer `name` is no longer asked during this fetch.
    #[cfg(test)]
    pub(super) fn skips(&self, name: &str) -> bool {
        let skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        skipped.contains(name)
    }

    fn keep(&self, piece: usize, bytes: &[u8]) {
        if let Err(e) = self.holding.put(piece, bytes) {
            tracing::debug!(piece, error = %e, "piece not held for peers");
        }
    }
}

impl<S: RangeSource> RangeSource for FromPeers<'_, S> {
    fn url(&self) -> &str {
        self.store.url()
    }

    async fn get_range(&self, start: u64, end: u64, etag: Option<&str>) -> Result<Bytes, Failure> {
        let piece = (start / CHUNK) as usize;
        let index = self.holding.index();
        let wrong = || self.index_wrong.load(Ordering::Acquire);
        if wrong() || index.range(piece) != Some((start, end)) {
            return self.store.get_range(start, end, etag).await;
        }
        for name in self.sources(piece) {
            if let Some(bytes) = self.ask(&name, piece).await {
                PEER_BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.keep(piece, &bytes);
                return Ok(bytes);
            }
        }
        let bytes = self.store.get_range(start, end, etag).await?;
        if wrong() {
            return Ok(bytes);
        }
        if !index.checks(piece, &bytes) {
            // The index is what the event pins, read from the same store: one of the two
            // is wrong. Peers are no longer asked and nothing more is served from here;
            // the digest over the whole object decides.
            tracing::warn!(
                url = self.url(),
                piece,
                "the store's bytes do not match the artifact's chunk index; taking the rest from the store alone"
            );
            self.index_wrong.store(true, Ordering::Release);
            self.peers.pieces.held().let_go(&self.holding);
            return Ok(bytes);
        }
        self.keep(piece, &bytes);
        Ok(bytes)
    }
}
