//! Tests of [`super`]: every message's round trip and refusals.

use super::*;
use crate::gossip::event::{EventId, MAX_EVENT_SIZE};
use crate::gossip::identity::{MAX_NODE_NAME_LEN, NodeId};
use crate::gossip::query::{Filter, QueryId};

fn node(name: &str) -> NodeId {
    NodeId::new(name, "127.0.0.1:7946".parse().unwrap(), 1).unwrap()
}

#[test]
fn broadcast_roundtrip() {
    let ev = UserEvent::new(EventId(9), "n1", 3, "deploy", b"v2".to_vec()).unwrap();
    let bytes = encode_broadcast(&Broadcast::Event(ev.clone())).unwrap();
    assert_eq!(bytes[0], tag::USER_EVENT);
    assert_eq!(decode_broadcast(&bytes).unwrap(), Broadcast::Event(ev));

    let q = Query {
        id: QueryId(5),
        ltime: 2,
        origin: node("o"),
        name: "q".into(),
        payload: vec![1, 2],
        filters: vec![Filter::NodeName("web.*".into())],
        timeout_ms: 1000,
    };
    let bytes = encode_broadcast(&Broadcast::Query(q.clone())).unwrap();
    assert_eq!(decode_broadcast(&bytes).unwrap(), Broadcast::Query(q));
}

/// The worst-case largest event (max id, ltime, origin, sizes) encodes within
/// `MAX_BROADCAST_ITEM`.
#[test]
fn largest_event_fits_item_budget() {
    let name = "n".repeat(128);
    let ev = UserEvent::new(
        EventId(u128::MAX),
        "o".repeat(MAX_NODE_NAME_LEN),
        u64::MAX,
        name.clone(),
        vec![0xff; MAX_EVENT_SIZE - name.len()],
    )
    .unwrap();
    let bytes = encode_broadcast(&Broadcast::Event(ev)).unwrap();
    assert!(bytes.len() <= MAX_BROADCAST_ITEM, "{}", bytes.len());
}

#[test]
fn decode_errors_are_typed() {
    assert!(matches!(
        decode_broadcast(&[]),
        Err(DecodeError::Empty { .. })
    ));
    assert_eq!(
        decode_broadcast(&[99, 1, 2]),
        Err(DecodeError::UnknownType {
            channel: "broadcast",
            tag: 99
        })
    );
    assert!(matches!(
        decode_broadcast(&[tag::USER_EVENT, 0xff, 0xff]),
        Err(DecodeError::Malformed { .. })
    ));
    let ev = UserEvent::new(EventId(1), "n", 1, "x", vec![]).unwrap();
    let mut bytes = encode_broadcast(&Broadcast::Event(ev.clone())).unwrap();
    bytes.push(0);
    assert_eq!(
        decode_broadcast(&bytes),
        Err(DecodeError::TrailingBytes {
            what: "user event",
            extra: 1
        })
    );
    // An oversized event built by a peer is refused after decoding.
    let mut big = ev;
    big.payload = vec![0; MAX_EVENT_SIZE + 10];
    let raw = {
        let mut v = vec![tag::USER_EVENT];
        v.extend(postcard::to_stdvec(&big).unwrap());
        v
    };
    assert!(matches!(
        decode_broadcast(&raw),
        Err(DecodeError::Invalid { .. })
    ));
    // Fuzz-ish: every prefix of a valid message decodes or errors, never panics.
    let good = encode_broadcast(&Broadcast::Event(
        UserEvent::new(EventId(7), "n", 1, "x", vec![1; 40]).unwrap(),
    ))
    .unwrap();
    for i in 0..good.len() {
        let _ = decode_broadcast(&good[..i]);
        let _ = decode_datagram(&good[..i]);
        let _ = decode_stream(&good[..i]);
    }
}

#[test]
fn datagram_channel() {
    let foca = encode_foca_datagram(b"foca-bytes", None);
    assert_eq!(
        decode_datagram(&foca).unwrap(),
        Datagram::Foca {
            packet: b"foca-bytes",
            auth: None
        }
    );
    let auth = Auth {
        tag: [7; TAG_LEN],
        sent_ms: 1_800_000_000_123,
    };
    let authed = encode_foca_datagram(b"foca-bytes", Some(&auth));
    assert_eq!(
        decode_datagram(&authed).unwrap(),
        Datagram::Foca {
            packet: b"foca-bytes",
            auth: Some(auth)
        }
    );
    assert!(decode_datagram(&authed[..AUTH_LEN]).is_err(), "cut short");

    let r = QueryResponse {
        id: QueryId(1),
        from: node("a"),
        payload: vec![1; 100],
        sig: None,
    };
    let bytes = encode_direct(&Direct::QueryResponse(r.clone())).unwrap();
    assert_eq!(
        decode_datagram(&bytes).unwrap(),
        Datagram::Direct(Direct::QueryResponse(r.clone()))
    );
    let big = QueryResponse {
        payload: vec![1; MAX_PLAINTEXT],
        ..r
    };
    assert!(matches!(
        encode_direct(&Direct::QueryResponse(big.clone())),
        Err(EncodeError::TooLarge { .. })
    ));
    // Too big for UDP: goes over the stream.
    let s = encode_stream(&StreamMessage::QueryResponse(big.clone())).unwrap();
    assert_eq!(
        decode_stream(&s).unwrap(),
        StreamMessage::QueryResponse(big)
    );
    assert!(matches!(
        decode_datagram(&[tag::USER_EVENT]),
        Err(DecodeError::UnknownType { .. })
    ));
}

#[test]
fn piece_requests_and_replies_ride_the_stream() {
    let req = StreamMessage::PieceRequest {
        artifact: [7; 32],
        piece: 3,
    };
    let reply = StreamMessage::PieceReply(Some(vec![1, 2, 3]));
    for msg in [req, reply, StreamMessage::PieceReply(None)] {
        let bytes = encode_stream(&msg).unwrap();
        assert_eq!(decode_stream(&bytes).unwrap(), msg);
    }
    let short = [tag::PIECE_REQUEST, 1, 2];
    assert!(matches!(
        decode_stream(&short),
        Err(DecodeError::Invalid {
            what: "piece request",
            ..
        })
    ));
    assert!(matches!(
        decode_stream(&[tag::PIECE_REPLY, 9]),
        Err(DecodeError::Invalid {
            what: "piece reply",
            ..
        })
    ));
}
