//! [`super::peers`] over real loopback TCP: agents' gossip TCP servers holding good and
//! bad pieces, a store that counts what it is asked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::peers::{FromPeers, Peers};
use super::ranges::{Failure, RangeSource};
use crate::agent::fanout::PeerPieces;
use crate::agent::net::{self, Counters, SharedKeyring};
use crate::fanout::held::Held;
use crate::fanout::index::{CHUNK, ChunkIndex, IndexBuilder};
use crate::fanout::owners::{self, From};
use crate::gossip::{Key, Keyring};

struct Store {
    data: Vec<u8>,
    asked: AtomicUsize,
}

impl RangeSource for Store {
    fn url(&self) -> &str {
        "s3://b/web.tar"
    }

    async fn get_range(&self, start: u64, end: u64, _: Option<&str>) -> Result<Bytes, Failure> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(Bytes::copy_from_slice(
            &self.data[start as usize..end as usize],
        ))
    }
}

/// A peer: its held artifacts behind a real gossip TCP listener, and its counters.
struct Peer {
    addr: SocketAddr,
    held: Arc<Held>,
    counters: Arc<Counters>,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

async fn peer(ring: &SharedKeyring) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let held = Arc::new(Held::open(dir.path()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let (tx, _rx) = mpsc::channel(8);
    let (stop, stopped) = watch::channel(false);
    let serve = net::tcp_accept_loop(
        listener,
        ring.clone(),
        counters.clone(),
        tx,
        Some(held.clone()),
        stopped,
    );
    tokio::spawn(serve);
    Peer {
        addr,
        held,
        counters,
        _dir: dir,
        _stop: stop,
    }
}

fn data_and_index() -> (Vec<u8>, ChunkIndex) {
    let data: Vec<u8> = (0..2 * CHUNK + 100).map(|i| (i % 241) as u8).collect();
    let mut b = IndexBuilder::default();
    b.update(&data);
    let index = b.finish(Sha256::digest(&data).into()).unwrap();
    (data, index)
}

/// A piece for which `ranked` all rank above `me`, in that order.
fn piece_where(index: &ChunkIndex, me: &str, ranked: &[&str], all: &[&str]) -> Option<usize> {
    (0..index.digests.len()).find(|&p| {
        let want: Vec<From> = ranked
            .iter()
            .map(|n| From::Peer(n))
            .chain([From::Store])
            .collect();
        owners::sources(&index.artifact, p, me, all.iter().copied(), |_| false) == want
    })
}

#[tokio::test]
async fn pieces_come_from_the_peer_ranked_first_and_a_bad_peer_is_dropped() {
    let ring: SharedKeyring = Arc::new(RwLock::new(Keyring::new(Key::from_bytes([3; 32]))));
    let (data, index) = data_and_index();
    let (good, bad) = (peer(&ring).await, peer(&ring).await);
    let holding = good.held.begin(index.artifact, index.clone()).unwrap();
    let forged = bad.held.begin(index.artifact, index.clone()).unwrap();
    for p in 0..index.digests.len() {
        let (s, e) = index.range(p).unwrap();
        holding.put(p, &data[s as usize..e as usize]).unwrap();
        forged.put(p, &vec![0xee; (e - s) as usize]).unwrap();
    }
    let me_dir = tempfile::tempdir().unwrap();
    let mine = Arc::new(Held::open(me_dir.path()).unwrap());
    // A name for this node such that some piece has the good peer alone above it, and
    // another the bad one first, then the good one.
    let (me, solo, both) = (0..64)
        .map(|n| format!("me-{n}"))
        .find_map(|me| {
            let all = [me.as_str(), "good", "bad"];
            let solo = piece_where(&index, &me, &["good"], &all)?;
            let both = piece_where(&index, &me, &["bad", "good"], &all)?;
            Some((me, solo, both))
        })
        .expect("some name ranks so");
    let peers = Peers {
        me,
        holders: Vec::new(),
        fetching: vec![("good".into(), good.addr), ("bad".into(), bad.addr)],
        pieces: Arc::new(PeerPieces::new(mine.clone(), ring.clone())),
        artifact: index.artifact,
        index: index.digest(),
    };
    let store = Store {
        data: data.clone(),
        asked: AtomicUsize::new(0),
    };
    let from: FromPeers<'_, Store> = peers.in_front_of(&store, index.clone()).unwrap();
    let range = |p: usize| index.range(p).unwrap();
    // The good peer alone above: its piece, the store not asked.
    let (s, e) = range(solo);
    let got = from.get_range(s, e, None).await.ok().unwrap();
    assert_eq!(&got[..], &data[s as usize..e as usize]);
    assert_eq!(store.asked.load(Ordering::SeqCst), 0);
    // The bad peer first: its piece refused, the good one's taken.
    let (s, e) = range(both);
    let got = from.get_range(s, e, None).await.ok().unwrap();
    assert_eq!(&got[..], &data[s as usize..e as usize]);
    assert_eq!(store.asked.load(Ordering::SeqCst), 0);
    let asked_bad = bad.counters.streams_accepted.load(Ordering::SeqCst);
    assert_eq!(asked_bad, 1);
    // Asked again, the bad peer is not.
    assert!(from.skips("bad") && !from.skips("good"));
    let _ = from.get_range(s, e, None).await.ok().unwrap();
    assert_eq!(
        bad.counters.streams_accepted.load(Ordering::SeqCst),
        asked_bad
    );
    // What this node took it holds for others, checked.
    let held = mine
        .piece(&index.artifact, both, std::time::Duration::ZERO)
        .await;
    assert_eq!(
        held.map(|p| p.bytes).as_deref(),
        Some(&data[s as usize..e as usize])
    );
    drop(holding);
}

#[tokio::test]
async fn without_a_peer_that_holds_it_the_store_serves_and_a_lying_store_fails_the_piece() {
    let ring: SharedKeyring = Arc::new(RwLock::new(Keyring::new(Key::from_bytes([4; 32]))));
    let (data, index) = data_and_index();
    let empty = peer(&ring).await;
    let me_dir = tempfile::tempdir().unwrap();
    let mine = Arc::new(Held::open(me_dir.path()).unwrap());
    let peers = Peers {
        me: "me".into(),
        holders: vec![("other".into(), empty.addr)],
        fetching: Vec::new(),
        pieces: Arc::new(PeerPieces::new(mine, ring.clone())),
        artifact: index.artifact,
        index: index.digest(),
    };
    let store = Store {
        data: data.clone(),
        asked: AtomicUsize::new(0),
    };
    let from = peers.in_front_of(&store, index.clone()).unwrap();
    for p in 0..index.digests.len() {
        let (s, e) = index.range(p).unwrap();
        let got = from.get_range(s, e, None).await.ok().unwrap();
        assert_eq!(&got[..], &data[s as usize..e as usize]);
    }
    assert_eq!(store.asked.load(Ordering::SeqCst), index.digests.len());
    let mut wrong = data.clone();
    wrong[5] ^= 1;
    let liar = Store {
        data: wrong,
        asked: AtomicUsize::new(0),
    };
    // A store whose bytes contradict the index: the rest comes from the store alone (the
    // whole-object digest decides), no peer is asked, nothing more is served from here.
    let from = peers.in_front_of(&liar, index.clone()).unwrap();
    let (s, e) = index.range(0).unwrap();
    let got = from.get_range(s, e, None).await.ok().unwrap();
    assert_eq!(&got[..], &liar.data[s as usize..e as usize]);
    let before = empty.counters.streams_accepted.load(Ordering::SeqCst);
    let (s, e) = index.range(1).unwrap();
    let _ = from.get_range(s, e, None).await.ok().unwrap();
    assert_eq!(
        empty.counters.streams_accepted.load(Ordering::SeqCst),
        before
    );
    assert!(
        peers.pieces.held().is_empty(),
        "nothing held for peers once the index is in doubt"
    );
    // A peer that cannot be reached is skipped after its first failure.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let peers = Peers {
        holders: vec![("gone".into(), gone)],
        ..peers.clone()
    };
    let from = peers.in_front_of(&store, index.clone()).unwrap();
    let (s, e) = index.range(1).unwrap();
    assert!(!from.skips("gone"));
    assert_eq!(
        &from.get_range(s, e, None).await.ok().unwrap()[..],
        &data[s as usize..e as usize]
    );
    assert!(from.skips("gone"), "a refused connection skips the peer");
    // The index check itself: another artifact's index, or another size, is refused.
    assert!(peers.check_index(&index.encode(), index.size + 1).is_err());
    let mut other = index.clone();
    other.artifact = [0; 32];
    assert!(peers.check_index(&other.encode(), index.size).is_err());
    assert!(peers.check_index(&index.encode(), index.size).is_ok());
}
