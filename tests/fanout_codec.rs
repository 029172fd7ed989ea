//! The fleet fan-out's pure parts, no network: the chunk index (crafted ones refused, the
//! ranges of decoded and inconsistent ones), the wire codec of the piece messages, and the
//! `chunks` pin in a signed deploy event. The attacks over TCP and the store are in
//! `fanout_attacks.rs`.
//!
//! ```sh
//! cargo test --test fanout_codec
//! ```

use droot_fleet::deploy::signed::{
    DeployEvent, Options, Rollout, SignedEvent, Targets, VerifyError,
};
use droot_fleet::fanout::index::{CHUNK, ChunkIndex, IndexError, MAGIC, MAX_CHUNKS};
use droot_fleet::gossip::envelope;
use droot_fleet::gossip::message::{self, StreamMessage};

/// Regression (F3): [`ChunkIndex`]'s fields are public, so an index can list more digests
/// than its size needs, or fewer. `range` gives no piece that runs backwards or lies past
/// the end of the object (so `checks` cannot underflow, and a holder never sizes a read
/// from a wrapped length), and the pieces it gives still tile the object.
#[test]
fn an_inconsistent_index_has_no_backwards_range() {
    let too_many = ChunkIndex {
        artifact: [0; 32],
        size: 10,
        digests: vec![[0; 32]; 3],
    };
    assert_eq!(too_many.range(0), Some((0, 10)));
    for i in 1..3 {
        assert_eq!(too_many.range(i), None, "piece {i} of a 10-byte object");
        assert!(!too_many.checks(i, b""), "piece {i} of a 10-byte object");
    }
    let empty = ChunkIndex {
        artifact: [0; 32],
        size: 0,
        digests: vec![[0; 32]],
    };
    assert_eq!(empty.range(0), None, "a piece of an empty object");
    assert!(!empty.checks(0, b""));
    let too_few = ChunkIndex {
        artifact: [0; 32],
        size: 2 * CHUNK + 5,
        digests: vec![[0; 32]],
    };
    assert_eq!(too_few.range(0), Some((0, CHUNK)));
    assert_eq!(too_few.range(1), None, "a piece without a digest");
    assert!(!too_few.checks(1, &[0; 5]));
}

/// Crafted chunk indexes are refused by name, and a decoded index's ranges tile the
/// object exactly (no overflow at the largest one).
#[test]
fn crafted_indexes_are_refused_and_decoded_ranges_tile_the_object() {
    let header = |size: u64, piece: u64, count: usize| {
        let mut b = MAGIC.to_vec();
        b.extend([1u8; 32]);
        b.extend(piece.to_be_bytes());
        b.extend(size.to_be_bytes());
        b.extend(std::iter::repeat_n(0u8, 32 * count));
        b
    };
    let max = MAX_CHUNKS as u64 * CHUNK;
    assert!(matches!(
        ChunkIndex::decode(&header(u64::MAX, CHUNK, 1)),
        Err(IndexError::TooLarge { .. })
    ));
    assert!(matches!(
        ChunkIndex::decode(&header(max + 1, CHUNK, MAX_CHUNKS + 1)),
        Err(IndexError::TooLarge { .. })
    ));
    assert!(matches!(
        ChunkIndex::decode(&header(10, 1, 10)),
        Err(IndexError::PieceSize(1))
    ));
    assert!(matches!(
        ChunkIndex::decode(&header(10, 0, 0)),
        Err(IndexError::PieceSize(0))
    ));
    assert!(matches!(
        ChunkIndex::decode(&header(CHUNK + 1, CHUNK, 1)),
        Err(IndexError::Count { .. })
    ));
    assert!(matches!(
        ChunkIndex::decode(&header(1, CHUNK, 0)),
        Err(IndexError::Count { .. })
    ));
    let mut trailing = header(1, CHUNK, 1);
    trailing.push(0);
    assert_eq!(ChunkIndex::decode(&trailing), Err(IndexError::Length));
    assert_eq!(
        ChunkIndex::decode(&header(1, CHUNK, 1)[1..]),
        Err(IndexError::Magic)
    );
    for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, max - 1, max] {
        let count = ChunkIndex::count_for(size) as usize;
        let index = ChunkIndex::decode(&header(size, CHUNK, count)).unwrap();
        let mut at = 0;
        for i in 0..count {
            let (s, e) = index.range(i).unwrap();
            assert!(
                s == at && s < e && e - s <= CHUNK,
                "size {size} piece {i}: {s}..{e}"
            );
            at = e;
        }
        assert_eq!(at, size);
        assert_eq!(index.range(count), None);
        assert_eq!(index.range(u32::MAX as usize), None);
        assert!(!index.checks(count, b""));
    }
}

/// The wire codec of the two piece messages refuses every malformed body.
#[test]
fn piece_messages_with_bad_shapes_are_refused() {
    let req = message::encode_stream(&StreamMessage::PieceRequest {
        artifact: [1; 32],
        piece: u32::MAX,
    })
    .unwrap();
    assert_eq!(
        message::decode_stream(&req).unwrap(),
        StreamMessage::PieceRequest {
            artifact: [1; 32],
            piece: u32::MAX
        }
    );
    let mut long = req.clone();
    long.push(0);
    assert!(message::decode_stream(&long).is_err());
    assert!(message::decode_stream(&req[..req.len() - 1]).is_err());
    let big =
        message::encode_stream(&StreamMessage::PieceReply(Some(vec![0; (4 << 20) + 1]))).unwrap();
    assert!(message::decode_stream(&big).is_err(), "a reply over 4 MiB");
    let ok = message::encode_stream(&StreamMessage::PieceReply(Some(vec![0; 4 << 20]))).unwrap();
    assert!(
        matches!(message::decode_stream(&ok), Ok(StreamMessage::PieceReply(Some(b))) if b.len() == 4 << 20)
    );
    assert!(ok.len() + envelope::SEAL_OVERHEAD <= envelope::MAX_FRAME_LEN);
    let none = message::encode_stream(&StreamMessage::PieceReply(None)).unwrap();
    let mut junk = none.clone();
    junk.push(1);
    assert!(
        message::decode_stream(&junk).is_err(),
        "\"not held\" with bytes after it"
    );
}

/// The `chunks` pin in a signed deploy event: an event without it (and without options)
/// signs exactly the bytes an agent from before the fan-out signs; the pin is covered by
/// the signature; bytes after it are refused.
#[test]
fn the_chunks_pin_is_signed_and_absent_pins_keep_the_old_layout() {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Wire {
        body: Vec<u8>,
        signature: Vec<u8>,
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let trusted = [key.verifying_key()];
    let event = |chunks| DeployEvent {
        app: "web".into(),
        version: "v1".into(),
        url: "s3://b/web/v1.tar".into(),
        sha256: Some([3; 32]),
        targets: Targets::default(),
        rollout: Rollout::default(),
        issued_at_ms: 1_800_000_000_000,
        id: [5; 16],
        options: Options::default(),
        chunks,
    };
    let plain = SignedEvent::sign(event(None), &key)
        .unwrap()
        .encode()
        .unwrap();
    let wire: Wire = postcard::from_bytes(&plain).unwrap();
    assert_eq!(
        wire.body,
        postcard::to_allocvec(&event(None)).unwrap(),
        "the old layout"
    );
    let pinned = SignedEvent::sign(event(Some([0xcd; 32])), &key)
        .unwrap()
        .encode()
        .unwrap();
    let back = SignedEvent::decode_verified(&pinned, &trusted).unwrap();
    assert_eq!(back.event.chunks, Some([0xcd; 32]));
    let mut wire: Wire = postcard::from_bytes(&pinned).unwrap();
    let at = wire.body.len() - 1;
    wire.body[at] ^= 1;
    let tampered = postcard::to_allocvec(&wire).unwrap();
    assert!(matches!(
        SignedEvent::decode_verified(&tampered, &trusted),
        Err(VerifyError::BadSignature { .. })
    ));
    wire.body[at] ^= 1;
    wire.body.push(0);
    let longer = postcard::to_allocvec(&wire).unwrap();
    assert!(matches!(
        SignedEvent::decode_verified(&longer, &trusted),
        Err(VerifyError::Malformed(_))
    ));
}
