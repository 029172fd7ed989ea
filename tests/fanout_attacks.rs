//! Attacks on the fleet fan-out, through the crate's public API over real loopback TCP:
//! agents' gossip TCP servers ([`net::tcp_accept_loop`]) holding pieces in a [`Held`],
//! hand-written rogue peers that hold the gossip key and answer whatever they like, and a
//! private Garage as the S3 store, reached through a counting TCP relay
//! (`fanout_support`) so a test can tell how much of an artifact the store served.
//!
//! Every test pins a defence that holds. The first two are regressions of an attack review
//! (slow "not held" answers; silent readers holding the serving permits); the codec tests
//! are in `fanout_codec.rs`.
//!
//! ```sh
//! cargo test --test fanout_attacks
//! ```

mod common;
#[path = "fanout_support/mod.rs"]
mod fanout_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use droot_fleet::agent::fanout::PeerPieces;
use droot_fleet::agent::net::{self, Counters, PIECE_SEND, PIECE_WAIT, SharedKeyring};
use droot_fleet::deploy::fetch::peers::{Peers, SLOW_NO};
use droot_fleet::fanout::held::{Held, MAX_HELD, MAX_SERVING};
use droot_fleet::fanout::index::{CHUNK, ChunkIndex, IndexBuilder};
use droot_fleet::gossip::envelope;
use droot_fleet::gossip::message::{self, StreamMessage};
use droot_fleet::gossip::{FrameDecoder, Key, Keyring, PROTOCOL_VERSION};
use fanout_support::{fetch_all, setup, store};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Ranged GETs the fetcher has in flight at once (`ranges::PARALLEL`, private).
const PARALLEL: usize = 4;

fn ring(n: u8) -> SharedKeyring {
    Arc::new(RwLock::new(Keyring::new(Key::from_bytes([n; 32]))))
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn index_of(data: &[u8]) -> ChunkIndex {
    let mut b = IndexBuilder::default();
    b.update(data);
    b.finish(Sha256::digest(data).into()).unwrap()
}

fn piece_of<'a>(index: &ChunkIndex, data: &'a [u8], i: usize) -> &'a [u8] {
    let (s, e) = index.range(i).unwrap();
    &data[s as usize..e as usize]
}

// ---------------------------------------------------------------------------------------
// Peers: real agents' gossip TCP servers, and rogue ones.

/// An agent's gossip TCP server over its own held artifacts.
struct Peer {
    addr: SocketAddr,
    held: Arc<Held>,
    counters: Arc<Counters>,
    dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

async fn peer(ring: &SharedKeyring) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let held = Arc::new(Held::open(dir.path()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(8);
    // Nothing but piece requests reach these servers; keep the receiver alive.
    std::mem::forget(rx);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(net::tcp_accept_loop(
        listener,
        ring.clone(),
        counters.clone(),
        tx,
        Some(held.clone()),
        stopped,
    ));
    Peer {
        addr,
        held,
        counters,
        dir,
        _stop: stop,
    }
}

/// This node: its own held artifacts and its way to peers.
fn me(ring: &SharedKeyring) -> (Arc<Held>, Arc<PeerPieces>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let held = Arc::new(Held::open(dir.path()).unwrap());
    let pieces = Arc::new(PeerPieces::new(held.clone(), ring.clone()));
    (held, pieces, dir)
}

fn peers_of(pieces: &Arc<PeerPieces>, index: &ChunkIndex, holders: &[(&str, SocketAddr)]) -> Peers {
    Peers {
        me: "me".into(),
        holders: holders.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
        fetching: Vec::new(),
        pieces: pieces.clone(),
        artifact: index.artifact,
        index: index.digest(),
    }
}

/// One sealed frame.
fn frame(ring: &SharedKeyring, plain: &[u8]) -> Vec<u8> {
    let ring = ring.read().unwrap().clone();
    envelope::encode_frame(&ring, plain, &mut rand::rng()).unwrap()
}

/// The hello and a piece request, as a dialer sends them.
fn request(ring: &SharedKeyring, artifact: [u8; 32], piece: u32) -> Vec<u8> {
    let mut out = frame(ring, &net::hello_plaintext(PROTOCOL_VERSION));
    let msg = StreamMessage::PieceRequest { artifact, piece };
    out.extend(frame(ring, &message::encode_stream(&msg).unwrap()));
    out
}

/// What a rogue peer (it holds the gossip key) answers to a request for a piece.
#[derive(Clone, Copy, Debug)]
enum Rogue {
    /// Bytes of the right length that are not the piece.
    Forged,
    /// Another piece's true bytes.
    OtherPiece,
    /// The piece cut short by one byte.
    Short,
    /// More than 4 MiB.
    Oversized,
    /// A frame sealed with a key the asker does not have.
    WrongKey,
}

/// A rogue peer answering every request per `how`; the count of requests it read.
async fn rogue(
    ring: &SharedKeyring,
    how: Rogue,
    data: Arc<Vec<u8>>,
    index: ChunkIndex,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let (ring, count) = (ring.clone(), asked.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (ring, count, data, index) =
                (ring.clone(), count.clone(), data.clone(), index.clone());
            tokio::spawn(async move {
                let mut dec = FrameDecoder::new();
                let mut frames = Vec::new();
                let mut buf = vec![0u8; 64 << 10];
                while frames.len() < 2 {
                    let next = dec.next_frame(&ring.read().unwrap().clone());
                    match next {
                        Ok(Some(p)) => {
                            frames.push(p);
                            continue;
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => dec.feed(&buf[..n]),
                    }
                }
                let Ok(StreamMessage::PieceRequest { piece, .. }) =
                    message::decode_stream(&frames[1])
                else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let i = piece as usize;
                let truth = piece_of(&index, &data, i).to_vec();
                let bytes = match how {
                    Rogue::Forged => truth.iter().map(|b| b ^ 0x5a).collect(),
                    Rogue::OtherPiece => {
                        piece_of(&index, &data, (i + 1) % index.digests.len()).to_vec()
                    }
                    Rogue::Short => truth[..truth.len() - 1].to_vec(),
                    Rogue::Oversized => vec![7u8; (4 << 20) + 1],
                    Rogue::WrongKey => truth,
                };
                let plain =
                    message::encode_stream(&StreamMessage::PieceReply(Some(bytes))).unwrap();
                let out = match how {
                    Rogue::WrongKey => frame(&self::ring(99), &plain),
                    _ => frame(&ring, &plain),
                };
                let _ = s.write_all(&out).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, asked)
}

// ---------------------------------------------------------------------------------------
// Regressions of F1 and F2.

/// Regression (F1): a peer that says "not held" only after a wait longer than [`SLOW_NO`]
/// is not asked again during that fetch, so it costs one wait per fetch (the ranges
/// already in flight), not one per piece. The peer is an honest agent that expects the
/// artifact (`Held::expect`) but never begins to hold it: each request waits
/// [`PIECE_WAIT`], then gets "not held", as a gossip-key holder stalling on purpose would
/// answer. Every piece comes from the store and the fetch is whole. The other half of F1
/// (a node whose own index read failed says "not held" at once) is pinned in
/// `an_index_the_event_does_not_pin_is_ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_says_not_held_only_after_a_wait_is_skipped() {
    setup();
    let ring = ring(11);
    let data = noise(2 * PARALLEL * CHUNK as usize, 1);
    let index = index_of(&data);
    assert_eq!(index.digests.len(), 2 * PARALLEL);
    let s3 = store("slow-no", &data, Some(index.encode())).await;
    let slow = peer(&ring).await;
    slow.held.expect(index.artifact);
    let (_mine, pieces, _d) = me(&ring);
    let t0 = Instant::now();
    let got = fetch_all(&s3, peers_of(&pieces, &index, &[("slow", slow.addr)])).await;
    let took = t0.elapsed();
    assert!(
        got.as_deref() == Ok(&data[..]),
        "the fetch must still be whole: {:?}",
        got.err()
    );
    assert!(
        s3.sent() >= data.len() as u64,
        "every piece came from the store, which sent only {} bytes",
        s3.sent()
    );
    let asked = slow.counters.streams_accepted.load(Ordering::SeqCst) as usize;
    assert!(
        asked <= PARALLEL,
        "the slow peer was asked {asked} times for {} pieces (each costing {PIECE_WAIT:?}; \
         the fetch took {took:?}): after its first slow \"not held\" it is skipped",
        index.digests.len()
    );
}

/// Regression (F2): the [`MAX_SERVING`] permits are shared by every asker. A gossip-key
/// holder opens MAX_SERVING connections with a tiny receive window, asks for a held piece
/// and never reads. A reply must be sent within [`PIECE_SEND`], so those permits come free
/// again, and an honest peer asking meanwhile gets the piece within [`PIECE_WAIT`]
/// instead of "not held".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_readers_cannot_keep_a_holder_from_serving() {
    setup();
    assert!(PIECE_SEND < PIECE_WAIT);
    let ring = ring(12);
    let data = noise(CHUNK as usize + 10, 2);
    let index = index_of(&data);
    let holder = peer(&ring).await;
    let h = holder.held.begin(index.artifact, index.clone()).unwrap();
    for i in 0..index.digests.len() {
        h.put(i, piece_of(&index, &data, i)).unwrap();
    }
    let mut silent = Vec::new();
    for _ in 0..MAX_SERVING {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(holder.addr).await.unwrap();
        s.write_all(&request(&ring, index.artifact, 0))
            .await
            .unwrap();
        silent.push(s);
    }
    // Wait (bounded) until every permit is out: a local read gets none within 20 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let quick = Duration::from_millis(20);
    while holder.held.piece(&index.artifact, 0, quick).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the silent readers never held the permits"
        );
    }
    let t0 = Instant::now();
    let answer = net::fetch_piece(holder.addr, index.artifact, 0, &ring).await;
    let took = t0.elapsed();
    drop(silent);
    let answer = answer.expect("the holder answered");
    assert!(
        answer.as_deref() == Some(piece_of(&index, &data, 0)),
        "an honest peer asked for a piece the holder has and was told {} after {took:?}, \
         while {MAX_SERVING} silent connections held the serving permits",
        if answer.is_some() {
            "wrong bytes"
        } else {
            "\"not held\""
        }
    );
}

// ---------------------------------------------------------------------------------------
// Other defences.

/// Rogue peers (gossip key holders) serving forged, misplaced, short, oversized or
/// wrongly sealed pieces: the fetch is whole and right, each rogue is skipped after its
/// first answers (only the ranges already in flight ask it), and this node holds, and
/// would serve on, only checked bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rogue_pieces_are_refused_skipped_and_never_held() {
    setup();
    let ring = ring(13);
    let data = Arc::new(noise(2 * PARALLEL * CHUNK as usize - 7, 3));
    let index = index_of(&data);
    let n = index.digests.len();
    let s3 = store("rogues", &data, Some(index.encode())).await;
    for how in [
        Rogue::Forged,
        Rogue::OtherPiece,
        Rogue::Short,
        Rogue::Oversized,
        Rogue::WrongKey,
    ] {
        let (addr, asked) = rogue(&ring, how, data.clone(), index.clone()).await;
        let (mine, pieces, _d) = me(&ring);
        let got = fetch_all(&s3, peers_of(&pieces, &index, &[("rogue", addr)])).await;
        assert!(got.as_deref() == Ok(&data[..]), "{how:?}: {:?}", got.err());
        let asked = asked.load(Ordering::SeqCst);
        assert!(
            (1..=PARALLEL).contains(&asked),
            "{how:?}: asked {asked} times for {n} pieces"
        );
        for i in 0..n {
            let held = mine.piece(&index.artifact, i, Duration::ZERO).await;
            assert!(
                held.as_ref().map(|p| &p.bytes[..]) == Some(piece_of(&index, &data, i)),
                "{how:?}: piece {i} held for peers is not the checked one"
            );
        }
    }
}

/// A store whose `KEY.chunks` is not the pinned index (another artifact's, garbage, over
/// the size limit, or none): every piece comes from the store, peers are never asked,
/// nothing is held, and the fetch is whole. This node had announced the fetch
/// (`Held::expect`); once its own index read fails it settles that, so peers asking it
/// for the artifact are told "not held" at once instead of after [`PIECE_WAIT`] (F1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_index_the_event_does_not_pin_is_ignored() {
    setup();
    let ring = ring(14);
    let data = noise(3 * CHUNK as usize + 1, 4);
    let index = index_of(&data);
    let good = peer(&ring).await;
    let h = good.held.begin(index.artifact, index.clone()).unwrap();
    for i in 0..index.digests.len() {
        h.put(i, piece_of(&index, &data, i)).unwrap();
    }
    let mut forged = index.clone();
    forged.digests[1] = [0xab; 32];
    let huge = vec![0u8; droot_fleet::fanout::index::MAX_ENCODED + 1];
    let cases = [
        Some(forged.encode()),
        Some(b"garbage".to_vec()),
        Some(huge),
        None,
    ];
    for (n, chunks) in cases.into_iter().enumerate() {
        let s3 = store(&format!("unpinned-{n}"), &data, chunks).await;
        let (mine, pieces, _d) = me(&ring);
        mine.expect(index.artifact);
        let before = good.counters.streams_accepted.load(Ordering::SeqCst);
        let got = fetch_all(&s3, peers_of(&pieces, &index, &[("good", good.addr)])).await;
        assert!(got.as_deref() == Ok(&data[..]), "case {n}: {:?}", got.err());
        assert!(
            s3.sent() >= data.len() as u64,
            "case {n}: every piece came from the store, which sent only {} bytes",
            s3.sent()
        );
        assert_eq!(
            good.counters.streams_accepted.load(Ordering::SeqCst),
            before,
            "case {n}: a peer was asked"
        );
        assert!(
            mine.is_empty(),
            "case {n}: nothing held without the pinned index"
        );
        let t0 = Instant::now();
        let asked = mine.piece(&index.artifact, 0, PIECE_WAIT).await;
        assert!(
            asked.is_none(),
            "case {n}: a piece of an unpinned index served"
        );
        assert!(
            t0.elapsed() < SLOW_NO,
            "case {n}: an asker waited {:?} for \"not held\"",
            t0.elapsed()
        );
    }
}

/// Requests a holder cannot answer get "not held" at once (not after [`PIECE_WAIT`]):
/// piece numbers past the end, `u32::MAX`, an artifact neither held nor expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_range_and_unknown_requests_are_answered_at_once() {
    setup();
    let ring = ring(15);
    let data = noise(CHUNK as usize + 3, 5);
    let index = index_of(&data);
    let holder = peer(&ring).await;
    let h = holder.held.begin(index.artifact, index.clone()).unwrap();
    h.put(0, piece_of(&index, &data, 0)).unwrap();
    let n = index.digests.len() as u32;
    for (artifact, piece) in [
        (index.artifact, n),
        (index.artifact, u32::MAX),
        (index.artifact, u32::MAX / 2),
        ([0x42; 32], 0),
    ] {
        let t0 = Instant::now();
        let got = net::fetch_piece(holder.addr, artifact, piece, &ring).await;
        assert!(matches!(got, Ok(None)), "piece {piece}: {got:?}");
        assert!(
            t0.elapsed() < PIECE_WAIT / 3,
            "piece {piece}: {:?}",
            t0.elapsed()
        );
    }
    let got = net::fetch_piece(holder.addr, index.artifact, 0, &ring).await;
    assert!(got.unwrap().as_deref() == Some(piece_of(&index, &data, 0)));
    // A dialer without the key gets nothing: the stream is closed, no piece.
    let got = net::fetch_piece(holder.addr, index.artifact, 0, &self::ring(16)).await;
    assert!(got.is_err(), "{got:?}");
}

/// An expected artifact that never begins keeps a request at most [`PIECE_WAIT`]; one
/// let go (forgotten, or evicted past [`MAX_HELD`]) wakes its waiters at once, over TCP;
/// the files follow the holdings, and dropping the registry removes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waits_are_bounded_and_let_go_holdings_wake_waiters_and_leave_no_file() {
    setup();
    let ring = ring(17);
    let holder = peer(&ring).await;
    let data = noise(100, 6);
    let index = index_of(&data);
    holder.held.expect(index.artifact);
    let t0 = Instant::now();
    let got = net::fetch_piece(holder.addr, index.artifact, 0, &ring).await;
    let took = t0.elapsed();
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert!(
        took >= PIECE_WAIT - Duration::from_millis(500)
            && took < PIECE_WAIT + Duration::from_secs(2),
        "{took:?}"
    );
    // A waiter on a piece on its way, then its holding evicted by newer ones.
    holder.held.begin(index.artifact, index.clone()).unwrap();
    let waiter = tokio::spawn({
        let (addr, ring, art) = (holder.addr, ring.clone(), index.artifact);
        async move {
            let t0 = Instant::now();
            (net::fetch_piece(addr, art, 0, &ring).await, t0.elapsed())
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while holder.counters.streams_accepted.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the waiter never connected");
        tokio::task::yield_now().await;
    }
    for n in 0..MAX_HELD as u8 {
        let other = index_of(&noise(50, 100 + n as u64));
        holder.held.begin(other.artifact, other).unwrap();
    }
    let (got, took) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert!(
        took < PIECE_WAIT,
        "the evicted holding's waiter waited {took:?}"
    );
    let files = std::fs::read_dir(holder.dir.path()).unwrap().count();
    assert_eq!((holder.held.len(), files), (MAX_HELD, MAX_HELD));
    let dir = holder.dir.path().to_path_buf();
    let Peer { held, _stop, .. } = holder;
    drop(_stop);
    // The accept loop ends with the stop flag; wait (bounded) for the last reference.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = Some(held);
    while let Some(h) = held.take() {
        match Arc::try_unwrap(h) {
            Ok(h) => drop(h),
            Err(h) => {
                assert!(Instant::now() < deadline, "the registry is still shared");
                tokio::task::yield_now().await;
                held = Some(h);
            }
        }
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "a held file was left behind"
    );
}

/// Held from many threads at once (expect, begin, put, piece, settle, forget): never more
/// than [`MAX_HELD`] holdings nor files, and every piece it serves is the checked one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_under_concurrent_expect_begin_forget_settle_stays_bounded_and_right() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let held = Arc::new(Held::open(dir.path()).unwrap());
    let arts: Arc<Vec<(Vec<u8>, ChunkIndex)>> = Arc::new(
        (0..4)
            .map(|n| {
                let d = noise(1000 + n, 200 + n as u64);
                let i = index_of(&d);
                (d, i)
            })
            .collect(),
    );
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let (held, arts, served) = (held.clone(), arts.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..300usize {
                let (data, index) = &arts[(t + round) % arts.len()];
                let art = index.artifact;
                match (t + round * 7) % 6 {
                    0 => held.expect(art),
                    1 | 2 => {
                        if let Ok(h) = held.begin(art, index.clone()) {
                            h.put(0, data).unwrap();
                        }
                    }
                    3 => held.forget(&art),
                    4 => held.settle(&art),
                    _ => {
                        if let Some(p) = held.piece(&art, 0, Duration::from_millis(2)).await {
                            assert!(
                                index.checks(0, &p.bytes),
                                "a served piece is not the checked one"
                            );
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                assert!(held.len() <= MAX_HELD);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "the hammer never served a piece"
    );
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, held.len(), "files and holdings differ");
    assert!(files <= MAX_HELD);
}
