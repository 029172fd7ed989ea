//! The push/pull state's wire format, versioned so agents of different releases keep
//! exchanging state during a rolling upgrade.
//!
//! Layout (postcard): the version-1 body, exactly as agents before versioning sent
//! it, then — from version 2 on — a tail `(version: u16, extensions: [(tag: u16,
//! bytes)])`. The tail's shape is fixed forever: anything new travels as another
//! [`Extension`], which a reader that does not know its tag skips.
//!
//! - A version-1 reader rejects trailing bytes, so a state is encoded at the version
//!   the *peer* reads ([`PushPullState::version`] says which; at version 1 the
//!   extensions are left out). The dialer learns a peer's version from its replies;
//!   the responder from the stream hello, and answers at
//!   `min(peer, PROTOCOL_VERSION)`.
//! - A body with no tail is version 1. A tail claiming version < 2, or bytes after
//!   the tail, are errors naming the problem.

use foca::Member;
use serde::{Deserialize, Serialize};

use super::event::UserEvent;
use super::identity::NodeId;
use super::lamport::LamportTime;
use super::message::DecodeError;
use super::pushpull::PushPullState;
use super::query::Tags;

/// One forward-compatible extension record of a push/pull state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// What the bytes are ([`ext`]); unknown tags are skipped.
    pub tag: u16,
    /// Tag-specific body.
    pub bytes: Vec<u8>,
}

/// Extension tags.
pub mod ext {
    /// postcard `Vec<Superseding>`, unsigned forms: the sender's slots, for a version-2
    /// reader ([`crate::gossip::latest::Latest`]).
    pub const SUPERSEDING: u16 = 1;
    /// The sender's slots with their signatures, for a version-3 reader
    /// ([`crate::gossip::supersede::encode_items`]).
    pub const SIGNED_SUPERSEDING: u16 = 2;
    /// A [`crate::gossip::digest::Digest`] asking for what differs (version 4): the
    /// state carrying it holds no entries.
    pub const DIGEST: u16 = 3;
}

/// The unversioned (version 1) body, borrowed for encoding.
#[derive(Serialize)]
struct V1Ref<'a> {
    from: &'a NodeId,
    tags: &'a Tags,
    members: &'a [Member<NodeId>],
    event_ltime: LamportTime,
    query_ltime: LamportTime,
    events: &'a [UserEvent],
}

/// The unversioned (version 1) body, owned for decoding.
#[derive(Deserialize)]
struct V1 {
    from: NodeId,
    tags: Tags,
    members: Vec<Member<NodeId>>,
    event_ltime: LamportTime,
    query_ltime: LamportTime,
    events: Vec<UserEvent>,
}

#[derive(Serialize, Deserialize)]
struct Tail {
    version: u16,
    extensions: Vec<Extension>,
}

/// Appends `s` to `out` at version `s.version` (see the module docs).
pub fn encode_state(s: &PushPullState, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let body = V1Ref {
        from: &s.from,
        tags: &s.tags,
        members: &s.members,
        event_ltime: s.event_ltime,
        query_ltime: s.query_ltime,
        events: &s.events,
    };
    let buf = postcard::to_extend(&body, std::mem::take(out))?;
    *out = buf;
    if s.version >= 2 {
        let tail = Tail {
            version: s.version,
            extensions: s.extensions.clone(),
        };
        let buf = postcard::to_extend(&tail, std::mem::take(out))?;
        *out = buf;
    }
    Ok(())
}

/// Decodes a state of any version (see the module docs).
pub fn decode_state(bytes: &[u8], what: &'static str) -> Result<PushPullState, DecodeError> {
    let malformed = |e: postcard::Error| DecodeError::Malformed {
        what,
        reason: e.to_string(),
    };
    let (v1, rest): (V1, _) = postcard::take_from_bytes(bytes).map_err(malformed)?;
    let mut state = PushPullState {
        from: v1.from,
        tags: v1.tags,
        members: v1.members,
        event_ltime: v1.event_ltime,
        query_ltime: v1.query_ltime,
        events: v1.events,
        version: 1,
        extensions: Vec::new(),
    };
    if rest.is_empty() {
        return Ok(state);
    }
    let (tail, rest): (Tail, _) = postcard::take_from_bytes(rest).map_err(malformed)?;
    if tail.version < 2 {
        return Err(DecodeError::Invalid {
            what,
            reason: format!("version {} carries a version-2 tail", tail.version),
        });
    }
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    state.version = tail.version;
    state.extensions = tail.extensions;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::event::EventId;
    use crate::gossip::message::{StreamMessage, decode_stream, encode_stream, tag};

    /// Frozen copy of the push/pull state as agents before versioning sent it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct OldPushPullState {
        from: NodeId,
        tags: Tags,
        members: Vec<Member<NodeId>>,
        event_ltime: LamportTime,
        query_ltime: LamportTime,
        events: Vec<UserEvent>,
    }

    /// Frozen copy of the old reader: postcard, trailing bytes are an error.
    fn old_decode(frame: &[u8]) -> Result<OldPushPullState, String> {
        assert_eq!(frame[0], tag::PUSH_PULL_REQUEST);
        let (s, rest) = postcard::take_from_bytes(&frame[1..]).map_err(|e| e.to_string())?;
        if rest.is_empty() {
            Ok(s)
        } else {
            Err(format!("{} trailing bytes", rest.len()))
        }
    }

    fn node(name: &str) -> NodeId {
        NodeId::new(name, "127.0.0.1:1".parse().unwrap(), 3).unwrap()
    }

    fn old_state() -> OldPushPullState {
        OldPushPullState {
            from: node("old"),
            tags: [("role".to_owned(), "web".to_owned())].into(),
            members: vec![Member::alive(node("old")), Member::alive(node("new"))],
            event_ltime: 9,
            query_ltime: 4,
            events: vec![UserEvent::new(EventId(1), "old", 8, "deploy", b"x".to_vec()).unwrap()],
        }
    }

    fn new_state(version: u16) -> PushPullState {
        PushPullState {
            from: node("new"),
            tags: Tags::new(),
            members: vec![Member::alive(node("new"))],
            event_ltime: 2,
            query_ltime: 1,
            events: vec![],
            version,
            extensions: vec![
                Extension {
                    tag: ext::SUPERSEDING,
                    bytes: postcard::to_stdvec(&Vec::<()>::new()).unwrap(),
                },
                Extension {
                    tag: 999,
                    bytes: b"from the future".to_vec(),
                },
            ],
        }
    }

    #[test]
    fn an_old_peer_and_a_new_one_exchange_state() {
        // Old -> new: read as version 1, every field kept.
        let old = old_state();
        let mut frame = vec![tag::PUSH_PULL_REQUEST];
        frame.extend(postcard::to_stdvec(&old).unwrap());
        let StreamMessage::PushPullRequest(got) = decode_stream(&frame).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(got.version, 1);
        assert!(got.extensions.is_empty());
        assert_eq!(
            (
                got.from,
                got.tags,
                got.members,
                got.event_ltime,
                got.query_ltime,
                got.events
            ),
            (
                old.from,
                old.tags,
                old.members,
                old.event_ltime,
                old.query_ltime,
                old.events
            )
        );

        // New -> old, at the version the old peer reads: its strict reader accepts it.
        let s = new_state(1);
        let frame = encode_stream(&StreamMessage::PushPullRequest(s.clone())).unwrap();
        let read = old_decode(&frame).unwrap();
        assert_eq!((read.from, read.event_ltime), (s.from, s.event_ltime));

        // New -> new: the extensions survive, unknown tags included (merge skips them).
        let s = new_state(2);
        let frame = encode_stream(&StreamMessage::PushPullRequest(s.clone())).unwrap();
        assert!(old_decode(&frame).is_err(), "why the version is negotiated");
        assert_eq!(
            decode_stream(&frame).unwrap(),
            StreamMessage::PushPullRequest(s)
        );
    }

    #[test]
    fn a_bad_tail_is_an_error_naming_the_problem() {
        let mut body = postcard::to_stdvec(&old_state()).unwrap();
        let tail = Tail {
            version: 1,
            extensions: vec![],
        };
        let mut bad = body.clone();
        bad.extend(postcard::to_stdvec(&tail).unwrap());
        assert!(matches!(
            decode_state(&bad, "push/pull request"),
            Err(DecodeError::Invalid { .. })
        ));
        let tail = Tail {
            version: 5,
            extensions: vec![],
        };
        body.extend(postcard::to_stdvec(&tail).unwrap());
        assert_eq!(decode_state(&body, "x").unwrap().version, 5);
        body.push(0);
        assert_eq!(
            decode_state(&body, "x"),
            Err(DecodeError::TrailingBytes {
                what: "x",
                extra: 1
            })
        );
    }
}
