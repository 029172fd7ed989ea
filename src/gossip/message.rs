//! Wire messages the agent exchanges besides foca's own packets.
//!
//! Every message is `[type tag u8][postcard body]`, always inside a sealed envelope
//! (see [`super::envelope`]). Three channels:
//!
//! - **Broadcast items** ([`Broadcast`]): user events and queries, carried as foca
//!   custom broadcasts (foca length-prefixes each item). Capped at
//!   [`MAX_BROADCAST_ITEM`] so they always fit a packet.
//! - **Datagrams** ([`Datagram`]): one UDP socket carries both foca packets (tag
//!   [`tag::FOCA`], rest is foca's bytes) and direct messages ([`Direct`], e.g. a query
//!   response that fits one datagram). Capped at [`MAX_PLAINTEXT`].
//! - **Streams** ([`StreamMessage`]): TCP, one message per sealed frame: push/pull
//!   exchange and query responses too large for UDP. Capped at [`MAX_FRAME_PLAINTEXT`].
//!
//! Decoding never panics: bytes come from the network (authenticated, but possibly a
//! buggy or newer peer). Unknown tags are reported separately from malformed bodies so
//! a mixed-version cluster can skip what it does not understand. Decoded events are
//! re-validated, and trailing bytes are an error.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::envelope::{MAX_FRAME_PLAINTEXT, MAX_PLAINTEXT};
use super::event::{EventError, UserEvent};
use super::identity::NodeId;
use super::limits::MAX_BROADCAST_ITEM;
use super::pairwise::{AUTH_LEN, Auth, TAG_LEN};
use super::pushpull::PushPullState;
use super::query::{Query, QueryResponse};
use super::supersede::Superseding;
use super::versioned;

/// Message type tags (first byte of every plaintext message).
pub mod tag {
    /// A foca packet (datagram channel only).
    pub const FOCA: u8 = 0;
    /// A [`crate::gossip::event::UserEvent`] (broadcast channel).
    pub const USER_EVENT: u8 = 1;
    /// A [`crate::gossip::query::Query`] (broadcast channel).
    pub const QUERY: u8 = 2;
    /// A [`crate::gossip::query::QueryResponse`] (datagram or stream).
    pub const QUERY_RESPONSE: u8 = 3;
    /// Push/pull: initiator's state (stream).
    pub const PUSH_PULL_REQUEST: u8 = 4;
    /// Push/pull: responder's state (stream).
    pub const PUSH_PULL_REPLY: u8 = 5;
    /// An eagerly pushed [`crate::gossip::event::UserEvent`] (datagram).
    pub const EVENT_PUSH: u8 = 6;
    /// A graceful-leave (or force-leave) notice naming a [`crate::gossip::NodeId`] (datagram).
    pub const LEAVE: u8 = 7;
    /// A [`crate::gossip::supersede::Superseding`] item (broadcast channel).
    pub const SUPERSEDING: u8 = 8;
    /// A superseding item with its origin's signature (broadcast channel, version 3).
    pub const SIGNED_SUPERSEDING: u8 = 9;
    /// A query response with its sender's signature (datagram or stream, version 3).
    pub const SIGNED_QUERY_RESPONSE: u8 = 10;
    /// A leave notice signed by the node that leaves (datagram, version 3).
    pub const SIGNED_LEAVE: u8 = 11;
    /// A foca packet with its sender's MAC for this receiver ([`crate::gossip::pairwise`];
    /// datagram, between enrolled members only).
    pub const AUTH_FOCA: u8 = 12;
    /// A request for one piece of an artifact ([`super::super::piece`]; stream).
    pub const PIECE_REQUEST: u8 = 13;
    /// A piece, or "not held" (stream).
    pub const PIECE_REPLY: u8 = 14;
}

/// Version of the gossip protocol this build speaks: announced in the stream hello
/// and in push/pull states (see [`super::versioned`]). 1 is the unversioned format;
/// 3 adds node signatures (signed items, answers and leave notices, and a push/pull
/// extension carrying signed items); 4 answers a digest-first push/pull
/// ([`super::digest`]).
pub const PROTOCOL_VERSION: u16 = 4;

/// A custom broadcast item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// A user event.
    Event(UserEvent),
    /// A query.
    Query(Query),
    /// A broadcast that replaces older versions of its `(kind, key)`.
    Superseding(Superseding),
}

/// A non-foca datagram message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direct {
    /// A query response small enough for UDP.
    QueryResponse(QueryResponse),
    /// A new event pushed eagerly to a few peers (feed it to `Foca::add_broadcast`,
    /// which dedupes it through the event log).
    Event(UserEvent),
    /// This member is leaving (or was force-left): record it as "left", not "failed".
    Leave(LeaveNotice),
}

/// A leave notice: `id` left, said by `id` itself when signed, by an operator's
/// force-leave (relayed by any node) when not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveNotice {
    /// Who left.
    pub id: NodeId,
    /// The leaving node's signature over `id` ([`super::vouch`]).
    pub sig: Option<[u8; 64]>,
}

/// A signed message as it travels: the unsigned body's postcard, then the signature.
#[derive(Serialize)]
struct SignedRef<'a, T> {
    body: &'a T,
    sig: &'a [u8],
}

/// [`SignedRef`], decoded.
#[derive(serde::Deserialize)]
struct SignedOwned<T> {
    body: T,
    sig: Vec<u8>,
}

fn encode_signed<T: Serialize>(
    tags: (u8, u8),
    body: &T,
    sig: Option<&[u8; 64]>,
    what: &'static str,
    max: usize,
) -> Result<Vec<u8>, EncodeError> {
    match sig {
        None => encode(tags.0, body, what, max),
        Some(sig) => encode(tags.1, &SignedRef { body, sig }, what, max),
    }
}

fn decode_signed<T: DeserializeOwned>(
    body: &[u8],
    what: &'static str,
) -> Result<(T, [u8; 64]), DecodeError> {
    let signed: SignedOwned<T> = decode(body, what)?;
    let sig = <[u8; 64]>::try_from(signed.sig.as_slice()).map_err(|_| DecodeError::Invalid {
        what,
        reason: format!("a signature of {} bytes, not 64", signed.sig.len()),
    })?;
    Ok((signed.body, sig))
}

/// A decoded incoming datagram plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Hand to `Foca::handle_data` (once screened); `auth`: its sender's MAC and stamp, if
    /// it has them.
    Foca {
        packet: &'a [u8],
        auth: Option<Auth>,
    },
    /// Handle in the shell.
    Direct(Direct),
}

/// A stream (TCP) message; one per frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// The connecting side's state; answer with [`StreamMessage::PushPullReply`].
    PushPullRequest(PushPullState),
    /// The accepting side's state.
    PushPullReply(PushPullState),
    /// A query response too large for UDP.
    QueryResponse(QueryResponse),
    /// Piece `piece` of the artifact whose sha256 is `artifact` (the fan-out).
    PieceRequest { artifact: [u8; 32], piece: u32 },
    /// The piece asked for, or `None` when it is not held.
    PieceReply(Option<Vec<u8>>),
}

/// Why a message could not be encoded. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Too large for its channel.
    #[error("{what} is {size} bytes encoded, over the {max}-byte limit of its channel; not sent")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    /// postcard failed (should not happen for these types).
    #[error("could not encode {what}: {reason}; not sent")]
    Serialize { what: &'static str, reason: String },
}

/// Why received bytes were dropped. Nothing was delivered from them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Zero-length message.
    #[error("empty {channel} message; dropped")]
    Empty { channel: &'static str },
    /// A tag this build does not know on this channel (newer peer?).
    #[error("unknown {channel} message type {tag}; dropped (is the peer running a newer version?)")]
    UnknownType { channel: &'static str, tag: u8 },
    /// The body does not decode.
    #[error("malformed {what}: {reason}; dropped")]
    Malformed { what: &'static str, reason: String },
    /// Bytes left after the body.
    #[error("{what} has {extra} unexpected trailing bytes; dropped")]
    TrailingBytes { what: &'static str, extra: usize },
    /// Decoded, but the content breaks the rules (e.g. an oversized event).
    #[error("invalid {what}: {reason}; dropped")]
    Invalid { what: &'static str, reason: String },
}

fn encode<T: Serialize>(
    tag: u8,
    body: &T,
    what: &'static str,
    max: usize,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![tag];
    out = postcard::to_extend(body, out).map_err(|e| EncodeError::Serialize {
        what,
        reason: e.to_string(),
    })?;
    if out.len() > max {
        return Err(EncodeError::TooLarge {
            what,
            size: out.len(),
            max,
        });
    }
    Ok(out)
}

pub(super) fn decode<T: DeserializeOwned>(
    body: &[u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}

fn split<'a>(bytes: &'a [u8], channel: &'static str) -> Result<(u8, &'a [u8]), DecodeError> {
    bytes
        .split_first()
        .map(|(t, b)| (*t, b))
        .ok_or(DecodeError::Empty { channel })
}

fn invalid(what: &'static str, reason: &str) -> DecodeError {
    DecodeError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

fn checked_event(ev: UserEvent) -> Result<UserEvent, DecodeError> {
    ev.validate()
        .map_err(|e: EventError| DecodeError::Invalid {
            what: "user event",
            reason: e.to_string(),
        })?;
    Ok(ev)
}

/// Encodes a broadcast item for `Foca::add_broadcast`.
pub fn encode_broadcast(item: &Broadcast) -> Result<Vec<u8>, EncodeError> {
    match item {
        Broadcast::Event(ev) => encode(tag::USER_EVENT, ev, "user event", MAX_BROADCAST_ITEM),
        Broadcast::Query(q) => encode(tag::QUERY, q, "query", MAX_BROADCAST_ITEM),
        Broadcast::Superseding(s) => encode_signed(
            (tag::SUPERSEDING, tag::SIGNED_SUPERSEDING),
            s,
            s.sig.as_ref(),
            "superseding item",
            MAX_BROADCAST_ITEM,
        ),
    }
}

/// Decodes a broadcast item (from `BroadcastHandler::receive_item`).
pub fn decode_broadcast(bytes: &[u8]) -> Result<Broadcast, DecodeError> {
    let channel = "broadcast";
    let (t, body) = split(bytes, channel)?;
    match t {
        tag::USER_EVENT => Ok(Broadcast::Event(checked_event(decode(
            body,
            "user event",
        )?)?)),
        tag::QUERY => Ok(Broadcast::Query(decode(body, "query")?)),
        tag::SUPERSEDING | tag::SIGNED_SUPERSEDING => {
            let what = "superseding item";
            let s = if t == tag::SIGNED_SUPERSEDING {
                let (mut s, sig): (Superseding, _) = decode_signed(body, what)?;
                s.sig = Some(sig);
                s
            } else {
                decode(body, what)?
            };
            s.validate().map_err(|e| DecodeError::Invalid {
                what,
                reason: e.to_string(),
            })?;
            Ok(Broadcast::Superseding(s))
        }
        tag => Err(DecodeError::UnknownType { channel, tag }),
    }
}

/// Wraps a packet foca asked to send (`Runtime::send_to`) as a datagram plaintext, with
/// its MAC for the receiver when there is one ([`crate::gossip::pairwise`]).
pub fn encode_foca_datagram(packet: &[u8], auth: Option<&Auth>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + AUTH_LEN + packet.len());
    match auth {
        Some(auth) => {
            out.push(tag::AUTH_FOCA);
            out.extend_from_slice(&auth.tag);
            out.extend_from_slice(&auth.sent_ms.to_be_bytes());
        }
        None => out.push(tag::FOCA),
    }
    out.extend_from_slice(packet);
    out
}

/// Encodes a direct datagram message. `TooLarge` means: use the stream channel.
pub fn encode_direct(msg: &Direct) -> Result<Vec<u8>, EncodeError> {
    match msg {
        Direct::QueryResponse(r) => encode_response(r, MAX_PLAINTEXT),
        Direct::Event(ev) => encode(tag::EVENT_PUSH, ev, "pushed event", MAX_PLAINTEXT),
        Direct::Leave(l) => encode_signed(
            (tag::LEAVE, tag::SIGNED_LEAVE),
            &l.id,
            l.sig.as_ref(),
            "leave notice",
            MAX_PLAINTEXT,
        ),
    }
}

fn encode_response(r: &QueryResponse, max: usize) -> Result<Vec<u8>, EncodeError> {
    let tags = (tag::QUERY_RESPONSE, tag::SIGNED_QUERY_RESPONSE);
    encode_signed(tags, r, r.sig.as_ref(), "query response", max)
}

fn decode_response(t: u8, body: &[u8]) -> Result<QueryResponse, DecodeError> {
    if t == tag::SIGNED_QUERY_RESPONSE {
        let (mut r, sig): (QueryResponse, _) = decode_signed(body, "query response")?;
        r.sig = Some(sig);
        return Ok(r);
    }
    decode(body, "query response")
}

/// Classifies an opened datagram plaintext.
pub fn decode_datagram(bytes: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let channel = "datagram";
    let (t, body) = split(bytes, channel)?;
    match t {
        tag::FOCA => Ok(Datagram::Foca {
            packet: body,
            auth: None,
        }),
        tag::AUTH_FOCA => decode_auth_foca(body),
        tag::QUERY_RESPONSE | tag::SIGNED_QUERY_RESPONSE => Ok(Datagram::Direct(
            Direct::QueryResponse(decode_response(t, body)?),
        )),
        tag::EVENT_PUSH => Ok(Datagram::Direct(Direct::Event(checked_event(decode(
            body,
            "pushed event",
        )?)?))),
        tag::LEAVE => Ok(Datagram::Direct(Direct::Leave(LeaveNotice {
            id: decode(body, "leave notice")?,
            sig: None,
        }))),
        tag::SIGNED_LEAVE => {
            let (id, sig) = decode_signed(body, "leave notice")?;
            let sig = Some(sig);
            Ok(Datagram::Direct(Direct::Leave(LeaveNotice { id, sig })))
        }
        tag => Err(DecodeError::UnknownType { channel, tag }),
    }
}

/// `[MAC][sender's clock, ms, big-endian][foca packet]`.
fn decode_auth_foca(body: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let short = || DecodeError::Invalid {
        what: "foca packet",
        reason: format!("{} bytes, shorter than its MAC and stamp", body.len()),
    };
    let (tag, rest) = body.split_first_chunk::<TAG_LEN>().ok_or_else(short)?;
    let (stamp, packet) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    Ok(Datagram::Foca {
        packet,
        auth: Some(Auth {
            tag: *tag,
            sent_ms: u64::from_be_bytes(*stamp),
        }),
    })
}

fn encode_state(tag: u8, s: &PushPullState, what: &'static str) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![tag];
    versioned::encode_state(s, &mut out).map_err(|e| EncodeError::Serialize {
        what,
        reason: e.to_string(),
    })?;
    if out.len() > MAX_FRAME_PLAINTEXT {
        return Err(EncodeError::TooLarge {
            what,
            size: out.len(),
            max: MAX_FRAME_PLAINTEXT,
        });
    }
    Ok(out)
}

/// Encodes a stream message (then seal it with `envelope::encode_frame`).
pub fn encode_stream(msg: &StreamMessage) -> Result<Vec<u8>, EncodeError> {
    let max = MAX_FRAME_PLAINTEXT;
    match msg {
        StreamMessage::PushPullRequest(s) => {
            encode_state(tag::PUSH_PULL_REQUEST, s, "push/pull request")
        }
        StreamMessage::PushPullReply(s) => encode_state(tag::PUSH_PULL_REPLY, s, "push/pull reply"),
        StreamMessage::QueryResponse(r) => encode_response(r, max),
        StreamMessage::PieceRequest { artifact, piece } => Ok(super::piece::encode_request(
            tag::PIECE_REQUEST,
            artifact,
            *piece,
        )),
        StreamMessage::PieceReply(bytes) => Ok(super::piece::encode_reply(
            tag::PIECE_REPLY,
            bytes.as_deref(),
        )),
    }
}

/// Decodes an opened stream frame.
pub fn decode_stream(bytes: &[u8]) -> Result<StreamMessage, DecodeError> {
    let channel = "stream";
    let (t, body) = split(bytes, channel)?;
    let checked = |mut s: PushPullState| -> Result<PushPullState, DecodeError> {
        s.events = s
            .events
            .into_iter()
            .map(checked_event)
            .collect::<Result<_, _>>()?;
        Ok(s)
    };
    match t {
        tag::PUSH_PULL_REQUEST => Ok(StreamMessage::PushPullRequest(checked(
            versioned::decode_state(body, "push/pull request")?,
        )?)),
        tag::PUSH_PULL_REPLY => Ok(StreamMessage::PushPullReply(checked(
            versioned::decode_state(body, "push/pull reply")?,
        )?)),
        tag::QUERY_RESPONSE | tag::SIGNED_QUERY_RESPONSE => {
            Ok(StreamMessage::QueryResponse(decode_response(t, body)?))
        }
        tag::PIECE_REQUEST => {
            let (artifact, piece) = super::piece::decode_request(body)
                .map_err(|reason| invalid("piece request", reason))?;
            Ok(StreamMessage::PieceRequest { artifact, piece })
        }
        tag::PIECE_REPLY => super::piece::decode_reply(body)
            .map(StreamMessage::PieceReply)
            .map_err(|reason| invalid("piece reply", reason)),
        tag => Err(DecodeError::UnknownType { channel, tag }),
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
