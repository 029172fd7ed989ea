//! The only code that touches the gossip sockets.
//!
//! - UDP: [`udp_recv_loop`] opens every datagram with the current keyring before any
//!   parser sees it. Failures are *counted* in [`Counters`] by cause (never logged per
//!   packet: a wrong-key node would flood the log). Oversized datagrams are dropped unread.
//! - TCP: one sealed frame per message (see [`crate::gossip::envelope`]).
//!   [`tcp_accept_loop`] serves push/pull requests and receives large query answers;
//!   [`push_pull`] and [`send_stream`] are the dialing side. Every connection has a
//!   deadline, so a stuck peer cannot pin a task. A dialer first sends a small sealed
//!   [`STREAM_HELLO`] frame: the accepting side reads it into a fixed small buffer and
//!   opens it within [`HELLO_TIMEOUT`], and only a connection that proved the key this
//!   way gets the large message buffer. At most [`MAX_STREAMS`] inbound connections are
//!   open; when all are taken the oldest one that has not proved the key is closed
//!   ([`Slots`]).
//! - Pieces of artifacts (the fan-out): a peer's [`StreamMessage::PieceRequest`] is
//!   answered from the artifacts this node holds ([`Held`]), waiting at most
//!   [`PIECE_WAIT`] for a piece on its way; [`fetch_piece`] asks a peer for one.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};

pub use super::counters::Counters;
use super::input::Input;
use super::slots::{Admit, Proof, Slots};
use crate::fanout::held::Held;
use crate::gossip::envelope::{self, FrameError, OpenError};
use crate::gossip::message::{self, DecodeError, EncodeError, StreamMessage};
use crate::gossip::{
    FrameDecoder, Keyring, MAX_RECEIVED_DATAGRAM, PROTOCOL_VERSION, PushPullState,
};

/// The keyring shared between the task (writer) and the I/O loops (readers).
pub type SharedKeyring = Arc<RwLock<Keyring>>;

/// How long a TCP exchange may take end to end.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Plaintext of the first frame of every stream, followed by the dialer's protocol
/// version in decimal ([`crate::gossip::PROTOCOL_VERSION`]; version 1 agents send
/// `droot-fleet stream 1`): proves the dialer holds a key and says what it reads.
pub const STREAM_HELLO: &[u8] = b"droot-fleet stream ";
/// Largest sealed hello frame accepted (the hello plus the seal, with room to spare).
const MAX_HELLO_LEN: usize = envelope::SEAL_OVERHEAD + 64;
/// How long an inbound connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// Most inbound gossip TCP connections open at once.
pub const MAX_STREAMS: usize = 64;
/// How long a piece request waits for a piece still on its way here, within the stream's
/// [`STREAM_TIMEOUT`] (the piece must still cross the link).
pub const PIECE_WAIT: Duration = Duration::from_secs(6);
/// How long sending one piece may take (4 MiB: at least about 7 Mbit/s). A reader that
/// takes longer loses its piece and frees its serving permit, so peers that never read
/// cannot hold every permit for long.
pub const PIECE_SEND: Duration = Duration::from_secs(5);

/// Why a stream exchange failed. The connection is closed; nothing was merged.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("stream I/O with {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("stream with {addr} timed out after {STREAM_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("stream from {addr} sent no hello within {HELLO_TIMEOUT:?}; closed")]
    HelloTimeout { addr: SocketAddr },
    #[error("{addr} did not read a piece reply within {PIECE_SEND:?}; closed")]
    PieceUnread { addr: SocketAddr },
    #[error("stream with {addr}: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameError,
    },
    #[error("stream with {addr}: {source}")]
    Decode {
        addr: SocketAddr,
        source: DecodeError,
    },
    #[error("stream with {addr}: {source}")]
    Encode {
        addr: SocketAddr,
        source: EncodeError,
    },
    #[error("stream with {addr}: peer closed before answering")]
    Closed { addr: SocketAddr },
    #[error("stream with {addr}: unexpected message (wanted {wanted})")]
    Unexpected {
        addr: SocketAddr,
        wanted: &'static str,
    },
}

impl StreamError {
    fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::Frame {
                source: FrameError::Open(OpenError::Authentication { .. }),
                ..
            }
        )
    }
}

/// Receives datagrams until `stop` flips, forwarding opened plaintexts to the task.
pub async fn udp_recv_loop(
    socket: Arc<UdpSocket>,
    keyring: SharedKeyring,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Input>,
    mut stop: watch::Receiver<bool>,
) {
    // One byte more than allowed, to detect oversized datagrams.
    let mut buf = vec![0u8; MAX_RECEIVED_DATAGRAM + 1];
    loop {
        let (len, from) = tokio::select! {
            _ = stop.changed() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(cause = %e, "udp receive failed");
                    continue;
                }
            },
        };
        Counters::add(&counters.packets_received);
        Counters::add_n(&counters.bytes_received, len);
        if len > MAX_RECEIVED_DATAGRAM {
            Counters::add(&counters.packets_dropped_oversize);
            continue;
        }
        let opened = {
            let ring = keyring.read().unwrap_or_else(|e| e.into_inner());
            envelope::open(&ring, &buf[..len])
        };
        match opened {
            Ok(plain) => {
                if tx.send(Input::Datagram { plain, from }).await.is_err() {
                    return;
                }
            }
            Err(e) => counters.count_open_error(&e),
        }
    }
}

/// Seals a stream message as one frame.
fn frame(
    keyring: &SharedKeyring,
    msg: &StreamMessage,
    addr: SocketAddr,
) -> Result<Vec<u8>, StreamError> {
    let plain =
        message::encode_stream(msg).map_err(|source| StreamError::Encode { addr, source })?;
    let ring = keyring.read().unwrap_or_else(|e| e.into_inner()).clone();
    envelope::encode_frame(&ring, &plain, &mut rand::rng()).map_err(|e| StreamError::Encode {
        addr,
        source: EncodeError::TooLarge {
            what: "stream frame",
            size: plain.len(),
            max: match e {
                envelope::SealError::TooLarge { max, .. } => max,
            },
        },
    })
}

/// Reads one frame and decodes it.
async fn read_message(
    stream: &mut TcpStream,
    keyring: &SharedKeyring,
    addr: SocketAddr,
) -> Result<StreamMessage, StreamError> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let next = {
            let ring = keyring.read().unwrap_or_else(|e| e.into_inner());
            decoder.next_frame(&ring)
        };
        match next {
            Ok(Some(plain)) => {
                return message::decode_stream(&plain)
                    .map_err(|source| StreamError::Decode { addr, source });
            }
            Ok(None) => {}
            Err(source) => return Err(StreamError::Frame { addr, source }),
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|source| StreamError::Io { addr, source })?;
        if n == 0 {
            return Err(StreamError::Closed { addr });
        }
        decoder.feed(&buf[..n]);
    }
}

/// Sends the hello frame and then `msg` (the dialing side's first write).
async fn write_first_message(
    stream: &mut TcpStream,
    keyring: &SharedKeyring,
    msg: &StreamMessage,
    addr: SocketAddr,
) -> Result<(), StreamError> {
    let hello = hello_plaintext(PROTOCOL_VERSION);
    let hello = {
        let ring = keyring.read().unwrap_or_else(|e| e.into_inner());
        envelope::encode_frame(&ring, &hello, &mut rand::rng())
    };
    let hello = hello.map_err(|e| StreamError::Encode {
        addr,
        source: EncodeError::TooLarge {
            what: "stream hello",
            size: STREAM_HELLO.len(),
            max: match e {
                envelope::SealError::TooLarge { max, .. } => max,
            },
        },
    })?;
    stream
        .write_all(&hello)
        .await
        .map_err(|source| StreamError::Io { addr, source })?;
    write_message(stream, keyring, msg, addr).await
}

/// The hello a dialer of protocol `version` sends.
pub fn hello_plaintext(version: u16) -> Vec<u8> {
    let mut hello = STREAM_HELLO.to_vec();
    hello.extend_from_slice(version.to_string().as_bytes());
    hello
}

/// The protocol version a hello announces, if it is one (any version >= 1).
pub fn parse_hello(plain: &[u8]) -> Option<u16> {
    let digits = plain.strip_prefix(STREAM_HELLO)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let version: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (version >= 1).then_some(version)
}

/// Reads the hello frame into a small fixed buffer and checks it opens with one of our
/// keys: nothing larger is buffered for a peer that has not proved the key. Returns
/// the dialer's protocol version.
async fn read_hello(
    stream: &mut TcpStream,
    keyring: &SharedKeyring,
    addr: SocketAddr,
) -> Result<u16, StreamError> {
    let io = |source| StreamError::Io { addr, source };
    let mut prefix = [0u8; envelope::FRAME_PREFIX_LEN];
    stream.read_exact(&mut prefix).await.map_err(io)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_HELLO_LEN {
        return Err(StreamError::Frame {
            addr,
            source: FrameError::TooLarge {
                len,
                max: MAX_HELLO_LEN,
            },
        });
    }
    let mut sealed = [0u8; MAX_HELLO_LEN];
    stream.read_exact(&mut sealed[..len]).await.map_err(io)?;
    let plain = {
        let ring = keyring.read().unwrap_or_else(|e| e.into_inner());
        envelope::open(&ring, &sealed[..len])
    }
    .map_err(|e| StreamError::Frame {
        addr,
        source: FrameError::Open(e),
    })?;
    parse_hello(&plain).ok_or(StreamError::Unexpected {
        addr,
        wanted: "stream hello",
    })
}

async fn write_message(
    stream: &mut TcpStream,
    keyring: &SharedKeyring,
    msg: &StreamMessage,
    addr: SocketAddr,
) -> Result<(), StreamError> {
    let bytes = frame(keyring, msg, addr)?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|source| StreamError::Io { addr, source })?;
    stream
        .flush()
        .await
        .map_err(|source| StreamError::Io { addr, source })
}

async fn with_timeout<T>(
    addr: SocketAddr,
    fut: impl Future<Output = Result<T, StreamError>>,
) -> Result<T, StreamError> {
    tokio::time::timeout(STREAM_TIMEOUT, fut)
        .await
        .map_err(|_| StreamError::Timeout { addr })?
}

/// Dials `addr`, sends `msg`, returns the one message answered.
async fn exchange(
    addr: SocketAddr,
    msg: &StreamMessage,
    keyring: &SharedKeyring,
) -> Result<StreamMessage, StreamError> {
    with_timeout(addr, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| StreamError::Connect { addr, source })?;
        write_first_message(&mut stream, keyring, msg, addr).await?;
        read_message(&mut stream, keyring, addr).await
    })
    .await
}

/// Dials `addr`, sends our state, returns theirs.
pub async fn push_pull(
    addr: SocketAddr,
    local: PushPullState,
    keyring: SharedKeyring,
) -> Result<PushPullState, StreamError> {
    match exchange(addr, &StreamMessage::PushPullRequest(local), &keyring).await? {
        StreamMessage::PushPullReply(remote) => Ok(remote),
        _ => Err(StreamError::Unexpected {
            addr,
            wanted: "push/pull reply",
        }),
    }
}

/// Asks `addr` for piece `piece` of `artifact`: its bytes (unchecked), or `None` when
/// the peer does not hold it.
pub async fn fetch_piece(
    addr: SocketAddr,
    artifact: [u8; 32],
    piece: u32,
    keyring: &SharedKeyring,
) -> Result<Option<Vec<u8>>, StreamError> {
    match exchange(
        addr,
        &StreamMessage::PieceRequest { artifact, piece },
        keyring,
    )
    .await?
    {
        StreamMessage::PieceReply(bytes) => Ok(bytes),
        _ => Err(StreamError::Unexpected {
            addr,
            wanted: "piece reply",
        }),
    }
}

/// Dials `addr` and sends one message (e.g. a large query answer).
pub async fn send_stream(
    addr: SocketAddr,
    msg: StreamMessage,
    keyring: SharedKeyring,
) -> Result<(), StreamError> {
    with_timeout(addr, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| StreamError::Connect { addr, source })?;
        write_first_message(&mut stream, &keyring, &msg, addr).await?;
        stream
            .shutdown()
            .await
            .map_err(|source| StreamError::Io { addr, source })
    })
    .await
}

/// Accepts gossip TCP connections until `stop` flips (at most [`MAX_STREAMS`] open).
pub async fn tcp_accept_loop(
    listener: TcpListener,
    keyring: SharedKeyring,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Input>,
    held: Option<Arc<Held>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut slots = Slots::new(MAX_STREAMS);
    let mut failures = crate::log_throttle::LogThrottle::new(crate::log_throttle::PERIOD);
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(left_out) = failures.due(std::time::Instant::now()) {
                        tracing::warn!(cause = %e, left_out, "gossip TCP accept failed; retrying every 50ms (left_out: failures since the last such line)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        Counters::add(&counters.streams_accepted);
        match slots.admit() {
            Admit::Free => {}
            Admit::Evicted => Counters::add(&counters.streams_evicted),
            Admit::Full => {
                Counters::add(&counters.streams_evicted);
                continue;
            }
        }
        let proof = Proof::default();
        let (keyring, counters, tx, proven) =
            (keyring.clone(), counters.clone(), tx.clone(), proof.clone());
        let held = held.clone();
        let task = tokio::spawn(async move {
            let to = Serving {
                tx: &tx,
                held: held.as_deref(),
            };
            if let Err(e) = serve_stream(stream, addr, &keyring, to, &proven).await {
                if e.is_auth() {
                    Counters::add(&counters.streams_dropped_auth);
                } else {
                    Counters::add(&counters.streams_failed);
                    tracing::debug!(peer = %addr, cause = %e, "inbound stream failed");
                }
            }
        });
        slots.insert(task.abort_handle(), proof);
    }
}

/// Where an inbound stream's message goes: the agent task, or the artifacts held.
#[derive(Clone, Copy)]
struct Serving<'a> {
    tx: &'a mpsc::Sender<Input>,
    held: Option<&'a Held>,
}

async fn serve_stream(
    mut stream: TcpStream,
    addr: SocketAddr,
    keyring: &SharedKeyring,
    Serving { tx, held }: Serving<'_>,
    proof: &Proof,
) -> Result<(), StreamError> {
    let peer_version = tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut stream, keyring, addr))
        .await
        .map_err(|_| StreamError::HelloTimeout { addr })??;
    proof.set();
    with_timeout(addr, async {
        match read_message(&mut stream, keyring, addr).await? {
            StreamMessage::PushPullRequest(state) => {
                let (reply, rx) = oneshot::channel();
                if tx
                    .send(Input::PushPullRequest {
                        state,
                        peer_version,
                        peer: addr,
                        reply,
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                let Ok(ours) = rx.await else { return Ok(()) };
                write_message(
                    &mut stream,
                    keyring,
                    &StreamMessage::PushPullReply(ours),
                    addr,
                )
                .await
            }
            StreamMessage::QueryResponse(r) => {
                let _ = tx.send(Input::QueryResponse(r)).await;
                Ok(())
            }
            StreamMessage::PieceRequest { artifact, piece } => {
                let served = match held {
                    Some(held) => held.piece(&artifact, piece as usize, PIECE_WAIT).await,
                    None => None,
                };
                let (bytes, permit) = match served {
                    Some(s) => (Some(s.bytes), Some(s.permit)),
                    None => (None, None),
                };
                let reply = StreamMessage::PieceReply(bytes);
                let send = write_message(&mut stream, keyring, &reply, addr);
                let sent = tokio::time::timeout(PIECE_SEND, send).await;
                drop(permit);
                sent.map_err(|_| StreamError::PieceUnread { addr })?
            }
            StreamMessage::PushPullReply(_) | StreamMessage::PieceReply(_) => {
                Err(StreamError::Unexpected {
                    addr,
                    wanted: "push/pull request, query response or piece request",
                })
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_carries_the_protocol_version() {
        assert_eq!(
            parse_hello(b"droot-fleet stream 1"),
            Some(1),
            "first agents"
        );
        assert_eq!(
            parse_hello(&hello_plaintext(PROTOCOL_VERSION)),
            Some(PROTOCOL_VERSION)
        );
        assert_eq!(parse_hello(&hello_plaintext(65535)), Some(65535));
        for bad in [
            &b"droot-fleet stream "[..],
            b"droot-fleet stream 0",
            b"droot-fleet stream 1x",
            b"droot-fleet stream 99999",
            b"droot-fleet stream -1",
            b"hello",
        ] {
            assert_eq!(parse_hello(bad), None, "{bad:?}");
        }
        assert!(hello_plaintext(u16::MAX).len() + envelope::SEAL_OVERHEAD <= MAX_HELLO_LEN);
    }
}
