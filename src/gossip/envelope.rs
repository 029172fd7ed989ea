//! Authenticated encryption of everything that leaves the agent.
//!
//! The shell seals every outgoing UDP datagram and every TCP frame with the keyring's
//! primary key and opens every incoming one before any parser sees it, so decoders only
//! ever run on bytes produced by a key holder. Wire form of a sealed message:
//!
//! ```text
//! [version u8 = 1][nonce 12 bytes][ciphertext][Poly1305 tag 16 bytes]
//! ```
//!
//! The version byte is passed as associated data, so flipping it fails authentication.
//! Nonces are 96 random bits from a caller-supplied cryptographic RNG (so tests are
//! deterministic); with random nonces a single key should seal well under 2^32
//! messages, which rotation via the keyring keeps us far below.
//!
//! Opening tries the primary key, then every other installed key (key rotation, see
//! [`super::keyring`]). [`OpenError`] tells apart "too short", "unknown version" and
//! "authentication failed" so the shell can count drops per cause without logging
//! every stray packet.
//!
//! Size budget: a datagram is at most [`MAX_DATAGRAM`] (1400) bytes sealed, so its
//! plaintext is at most [`MAX_PLAINTEXT`]; see [`super::limits`] for how that budget is
//! split between the datagram tag, foca's header and custom broadcasts. A foca packet
//! between enrolled members carries a MAC and a stamp on top ([`MAX_RECEIVED_DATAGRAM`]).
//!
//! Streams (TCP push/pull and large query responses) are a sequence of frames
//! `[u32 big-endian sealed length][sealed message]`. [`FrameDecoder`] is a pure
//! incremental decoder: feed it whatever bytes arrived, pull complete opened frames out.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};

use super::keyring::{Key, Keyring};

/// Current envelope version.
pub const VERSION: u8 = 1;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Poly1305 tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Largest sealed UDP datagram the agent sends or accepts.
pub const MAX_DATAGRAM: usize = 1400;
/// Largest plaintext that fits in one sealed datagram.
pub const MAX_PLAINTEXT: usize = MAX_DATAGRAM - SEAL_OVERHEAD;
/// Largest datagram received: a full foca packet with its MAC
/// and stamp ([`super::pairwise::AUTH_LEN`]), which only enrolled members send each other (an agent
/// of an older release never gets one). Still under a 1500-byte MTU with IPv6 headers.
pub const MAX_RECEIVED_DATAGRAM: usize = MAX_DATAGRAM + super::pairwise::AUTH_LEN;
/// Largest sealed stream frame (length prefix excluded) accepted by [`FrameDecoder`].
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;
/// Largest plaintext that fits in one stream frame.
pub const MAX_FRAME_PLAINTEXT: usize = MAX_FRAME_LEN - SEAL_OVERHEAD;
/// Length of a frame's length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// Why an incoming sealed message was dropped. Nothing is retained from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than the fixed overhead: garbage or a truncated packet.
    #[error(
        "sealed message is {len} bytes, shorter than the {SEAL_OVERHEAD}-byte minimum; dropped"
    )]
    TooShort { len: usize },
    /// The version byte is not one this build understands (newer peer, or garbage).
    #[error(
        "sealed message has envelope version {version}, this build only speaks version \
         {VERSION}; dropped (upgrade this node if peers are newer)"
    )]
    UnknownVersion { version: u8 },
    /// No installed key authenticates it: wrong cluster key, tampering, or garbage.
    #[error(
        "sealed message failed authentication with all {tried} installed key(s); dropped \
         (is the sender using a key this node has not installed?)"
    )]
    Authentication { tried: usize },
}

/// Why a plaintext could not be sealed. Nothing was produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The plaintext does not fit the datagram or frame limit.
    #[error(
        "message of {size} bytes exceeds the {max}-byte limit for this transport; not sent \
         (use the stream transport or a smaller payload)"
    )]
    TooLarge { size: usize, max: usize },
}

/// Why a stream could not be decoded. After any of these the connection must be
/// closed: the decoder has discarded its buffer and will refuse further input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame header announced more than [`MAX_FRAME_LEN`] bytes.
    #[error(
        "stream frame announces {len} bytes, more than the {max}-byte limit; close the \
         connection"
    )]
    TooLarge { len: usize, max: usize },
    /// A complete frame failed to open.
    #[error("stream frame could not be opened: {0}; close the connection")]
    Open(#[from] OpenError),
    /// The stream ended in the middle of a frame.
    #[error(
        "stream ended with {buffered} bytes of an incomplete frame; the peer hung up mid-message"
    )]
    Truncated { buffered: usize },
    /// The decoder already failed earlier.
    #[error("stream decoder already failed; close the connection")]
    Poisoned,
}

fn cipher(key: &Key) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(key.as_bytes().into())
}

/// Seals `plaintext` with `key`. No size limit; see [`seal_datagram`] and
/// [`encode_frame`] for transport-checked variants.
pub fn seal<R: rand::CryptoRng + ?Sized>(key: &Key, plaintext: &[u8], rng: &mut R) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = [VERSION];
    let sealed = cipher(key)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        // ChaCha20-Poly1305 encryption only fails past 256 GiB of plaintext.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Seals a datagram plaintext with the keyring's primary key, refusing anything that
/// would exceed [`MAX_RECEIVED_DATAGRAM`] once sealed (every message is held to
/// [`MAX_PLAINTEXT`] when it is made; only a foca packet's MAC goes past it).
pub fn seal_datagram<R: rand::CryptoRng + ?Sized>(
    keyring: &Keyring,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let max = MAX_RECEIVED_DATAGRAM - SEAL_OVERHEAD;
    if plaintext.len() > max {
        return Err(SealError::TooLarge {
            size: plaintext.len(),
            max,
        });
    }
    Ok(seal(keyring.primary(), plaintext, rng))
}

/// Opens a sealed message with the primary key, then each other installed key.
pub fn open(keyring: &Keyring, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(OpenError::TooShort { len: sealed.len() });
    }
    let version = sealed[0];
    if version != VERSION {
        return Err(OpenError::UnknownVersion { version });
    }
    let nonce = Nonce::from_slice(&sealed[1..1 + NONCE_LEN]);
    let body = &sealed[1 + NONCE_LEN..];
    let aad = [version];
    for key in keyring.keys() {
        if let Ok(plain) = cipher(key).decrypt(
            nonce,
            Payload {
                msg: body,
                aad: &aad,
            },
        ) {
            return Ok(plain);
        }
    }
    Err(OpenError::Authentication {
        tried: keyring.len(),
    })
}

/// Seals `plaintext` as one length-prefixed stream frame.
pub fn encode_frame<R: rand::CryptoRng + ?Sized>(
    keyring: &Keyring,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    if plaintext.len() > MAX_FRAME_PLAINTEXT {
        return Err(SealError::TooLarge {
            size: plaintext.len(),
            max: MAX_FRAME_PLAINTEXT,
        });
    }
    let sealed = seal(keyring.primary(), plaintext, rng);
    let len = u32::try_from(sealed.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(FRAME_PREFIX_LEN + sealed.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Incremental decoder for a sealed frame stream: `feed` bytes as they arrive, then
/// call [`FrameDecoder::next_frame`] until it returns `Ok(None)`.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_len: usize,
    poisoned: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting frames up to [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_len(MAX_FRAME_LEN)
    }

    /// A decoder with a custom (smaller) frame limit.
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_len,
            poisoned: false,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Number of buffered, not yet decoded bytes.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete, opened frame, or `None` if more bytes are needed.
    pub fn next_frame(&mut self, keyring: &Keyring) -> Result<Option<Vec<u8>>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        if self.buf.len() < FRAME_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        prefix.copy_from_slice(&self.buf[..FRAME_PREFIX_LEN]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_len {
            return Err(self.poison(FrameError::TooLarge {
                len,
                max: self.max_len,
            }));
        }
        if self.buf.len() < FRAME_PREFIX_LEN + len {
            return Ok(None);
        }
        let opened = open(keyring, &self.buf[FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len]);
        self.buf.drain(..FRAME_PREFIX_LEN + len);
        match opened {
            Ok(plain) => Ok(Some(plain)),
            Err(e) => Err(self.poison(e.into())),
        }
    }

    /// Call at end of stream: errors if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.poisoned {
            Err(FrameError::Poisoned)
        } else if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }

    fn poison(&mut self, err: FrameError) -> FrameError {
        self.poisoned = true;
        self.buf = Vec::new();
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ring(seed: u64) -> Keyring {
        Keyring::new(Key::generate(&mut StdRng::seed_from_u64(seed)))
    }

    #[test]
    fn constants() {
        assert_eq!(SEAL_OVERHEAD, 29);
        assert_eq!(MAX_PLAINTEXT, 1371);
    }

    #[test]
    fn seal_open_roundtrip_and_layout() {
        let mut rng = StdRng::seed_from_u64(1);
        let r = ring(10);
        let sealed = seal_datagram(&r, b"hello", &mut rng).unwrap();
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(sealed[0], VERSION);
        assert_eq!(open(&r, &sealed).unwrap(), b"hello");
        // Fresh nonce every time.
        let again = seal_datagram(&r, b"hello", &mut rng).unwrap();
        assert_ne!(sealed, again);
        // Empty plaintext is fine.
        let empty = seal_datagram(&r, b"", &mut rng).unwrap();
        assert_eq!(open(&r, &empty).unwrap(), b"");
    }

    #[test]
    fn open_errors() {
        let mut rng = StdRng::seed_from_u64(2);
        let r = ring(10);
        let sealed = seal_datagram(&r, b"payload", &mut rng).unwrap();

        assert_eq!(
            open(&r, &sealed[..10]),
            Err(OpenError::TooShort { len: 10 })
        );

        let mut v = sealed.clone();
        v[0] = 2;
        assert_eq!(open(&r, &v), Err(OpenError::UnknownVersion { version: 2 }));

        let mut t = sealed.clone();
        *t.last_mut().unwrap() ^= 1;
        assert_eq!(open(&r, &t), Err(OpenError::Authentication { tried: 1 }));

        let other = ring(11);
        assert_eq!(
            open(&other, &sealed),
            Err(OpenError::Authentication { tried: 1 })
        );
    }

    #[test]
    fn version_byte_is_authenticated() {
        // Same bytes sealed "as version 1" must not open if the version check were
        // bypassed: tamper with version AND pretend it is known by re-sealing test.
        let mut rng = StdRng::seed_from_u64(3);
        let r = ring(10);
        let sealed = seal(r.primary(), b"x", &mut rng);
        let cipher = cipher(r.primary());
        let nonce = Nonce::from_slice(&sealed[1..13]);
        let wrong_aad = cipher.decrypt(
            nonce,
            Payload {
                msg: &sealed[13..],
                aad: &[2u8],
            },
        );
        assert!(wrong_aad.is_err());
    }

    #[test]
    fn rotation_opens_with_secondary_key() {
        let mut rng = StdRng::seed_from_u64(4);
        let old = ring(20);
        let new_key = Key::generate(&mut rng);
        let mut rotated = old.clone();
        rotated.install(new_key.clone());
        rotated.use_key(&new_key).unwrap();
        // New sender, old receiver that has installed the new key: ok.
        let sealed_new = seal_datagram(&rotated, b"n", &mut rng).unwrap();
        let mut receiver = old.clone();
        assert!(open(&receiver, &sealed_new).is_err());
        receiver.install(new_key);
        assert_eq!(open(&receiver, &sealed_new).unwrap(), b"n");
        // Old sender still accepted by the rotated node.
        let sealed_old = seal_datagram(&old, b"o", &mut rng).unwrap();
        assert_eq!(open(&rotated, &sealed_old).unwrap(), b"o");
    }

    #[test]
    fn datagram_size_limit() {
        let mut rng = StdRng::seed_from_u64(5);
        let r = ring(1);
        let max = vec![0u8; MAX_PLAINTEXT];
        assert_eq!(
            seal_datagram(&r, &max, &mut rng).unwrap().len(),
            MAX_DATAGRAM
        );
        let authed = vec![0u8; MAX_PLAINTEXT + crate::gossip::pairwise::AUTH_LEN];
        assert_eq!(
            seal_datagram(&r, &authed, &mut rng).unwrap().len(),
            MAX_RECEIVED_DATAGRAM
        );
        let over = vec![0u8; authed.len() + 1];
        assert_eq!(
            seal_datagram(&r, &over, &mut rng),
            Err(SealError::TooLarge {
                size: over.len(),
                max: authed.len()
            })
        );
    }

    #[test]
    fn frames_incremental() {
        let mut rng = StdRng::seed_from_u64(6);
        let r = ring(1);
        let mut stream = Vec::new();
        stream.extend(encode_frame(&r, b"first", &mut rng).unwrap());
        stream.extend(encode_frame(&r, &[7u8; 3000], &mut rng).unwrap());
        stream.extend(encode_frame(&r, b"", &mut rng).unwrap());

        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(7) {
            dec.feed(chunk);
            while let Some(f) = dec.next_frame(&r).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], b"first");
        assert_eq!(got[1], vec![7u8; 3000]);
        assert!(got[2].is_empty());
        dec.finish().unwrap();
    }

    #[test]
    fn frame_errors() {
        let mut rng = StdRng::seed_from_u64(7);
        let r = ring(1);
        let frame = encode_frame(&r, b"abc", &mut rng).unwrap();

        let mut dec = FrameDecoder::new();
        dec.feed(&frame[..frame.len() - 1]);
        assert_eq!(dec.next_frame(&r), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated {
                buffered: frame.len() - 1
            })
        );

        let mut small = FrameDecoder::with_max_len(10);
        small.feed(&frame);
        assert!(matches!(
            small.next_frame(&r),
            Err(FrameError::TooLarge { max: 10, .. })
        ));
        assert_eq!(small.next_frame(&r), Err(FrameError::Poisoned));

        let mut wrong = FrameDecoder::new();
        wrong.feed(&frame);
        assert!(matches!(
            wrong.next_frame(&ring(2)),
            Err(FrameError::Open(OpenError::Authentication { .. }))
        ));
        assert_eq!(wrong.buffered(), 0);
    }
}
