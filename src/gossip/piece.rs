//! The fan-out's two stream messages: a request for one piece of an artifact, named by
//! the artifact's sha256 and the piece's number, and the answer, the piece's bytes or
//! "not held". The receiver checks a piece against the artifact's chunk index; here only
//! the shape is checked.
//!
//! Request body: the 32-byte artifact digest, then the piece number as a big-endian u32.
//! Reply body: `0` (not held) or `1` followed by the bytes.
//!
//! The decoders say why a body is malformed; [`super::message`] names the message.

/// A piece's largest size on the wire: the fan-out's piece size.
pub const MAX_PIECE: usize = 4 << 20;

/// The request body.
pub fn encode_request(tag: u8, artifact: &[u8; 32], piece: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 32 + 4);
    out.push(tag);
    out.extend_from_slice(artifact);
    out.extend_from_slice(&piece.to_be_bytes());
    out
}

/// The reply body.
pub fn encode_reply(tag: u8, bytes: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bytes.map_or(0, <[u8]>::len));
    out.push(tag);
    match bytes {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(b);
        }
        None => out.push(0),
    }
    out
}

/// A request body's artifact and piece.
pub fn decode_request(body: &[u8]) -> Result<([u8; 32], u32), &'static str> {
    let fixed: &[u8; 36] = body.try_into().map_err(|_| "it must be 36 bytes")?;
    let (artifact, piece) = fixed.split_at(32);
    let artifact = artifact.try_into().unwrap_or([0; 32]);
    let piece = u32::from_be_bytes(piece.try_into().unwrap_or([0; 4]));
    Ok((artifact, piece))
}

/// A reply body's piece, if the peer held it.
pub fn decode_reply(body: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    match body.split_first() {
        Some((0, [])) => Ok(None),
        Some((1, bytes)) if bytes.len() <= MAX_PIECE => Ok(Some(bytes.to_vec())),
        Some((1, _)) => Err("the piece is over 4 MiB"),
        _ => Err("it must be 0, or 1 and the piece"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_and_bad_ones_are_refused() {
        let req = encode_request(13, &[4; 32], 70_000);
        assert_eq!(decode_request(&req[1..]).unwrap(), ([4; 32], 70_000));
        assert!(decode_request(&req[2..]).is_err());
        let rep = encode_reply(14, Some(b"abc"));
        assert_eq!(decode_reply(&rep[1..]).unwrap(), Some(b"abc".to_vec()));
        let none = encode_reply(14, None);
        assert_eq!(decode_reply(&none[1..]).unwrap(), None);
        for bad in [&b""[..], b"\x00x", b"\x02"] {
            assert!(decode_reply(bad).is_err(), "{bad:?}");
        }
        let mut huge = vec![1u8];
        huge.resize(MAX_PIECE + 2, 0);
        assert!(decode_reply(&huge).is_err());
    }
}
