//! The chunk index of an artifact: the sha256 of every [`CHUNK`]-byte piece of the object,
//! written by `publish` beside the artifact and pinned by its digest in the signed deploy
//! event. With it a node can take a piece from any peer and check it on arrival, so a peer
//! that serves a bad piece is caught at that piece, not after the whole object.
//!
//! Encoding: the magic line [`MAGIC`], the sha256 of the whole object, the piece size and
//! the object size as big-endian u64, then one 32-byte digest per piece. The object's own
//! digest ties an index to one artifact: an index left beside a replaced artifact is not
//! taken for the new one. A decoder refuses anything else: a
//! wrong count, a piece size other than [`CHUNK`], more than [`MAX_CHUNKS`] pieces.

use sha2::{Digest, Sha256};

/// Bytes per piece: the fetcher's ranged GET size, so one piece is one range.
pub const CHUNK: u64 = 4 << 20;
/// Most pieces an index may list: 256 GiB of artifact, an index of 2 MiB.
pub const MAX_CHUNKS: usize = 65_536;
/// What an encoded index starts with.
pub const MAGIC: &[u8] = b"droot-fleet chunks 1\n";
/// What the index's name adds to the artifact's (`s3://b/web/v1.tar.gz.chunks`).
pub const SUFFIX: &str = ".chunks";
/// Largest encoded index.
pub const MAX_ENCODED: usize = HEADER + 32 * MAX_CHUNKS;
/// Bytes before the first piece digest.
const HEADER: usize = MAGIC.len() + 32 + 16;

/// The digest of every piece of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    /// The sha256 of the whole object.
    pub artifact: [u8; 32],
    /// The object's length in bytes.
    pub size: u64,
    /// sha256 of bytes `i * CHUNK .. min((i + 1) * CHUNK, size)`, for every `i`.
    pub digests: Vec<[u8; 32]>,
}

/// Why bytes are not a chunk index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error(
        "not a droot-fleet chunk index (it does not start with {:?})",
        String::from_utf8_lossy(MAGIC)
    )]
    Magic,
    #[error("the chunk index is cut short or has bytes past its last digest")]
    Length,
    #[error("the chunk index uses {0}-byte pieces; this agent reads only {CHUNK}-byte ones")]
    PieceSize(u64),
    #[error("the chunk index lists {count} pieces for {size} bytes; it must list {want}")]
    Count { count: usize, size: u64, want: u64 },
    #[error(
        "the chunk index describes {size} bytes, more than {} pieces of {CHUNK}",
        MAX_CHUNKS
    )]
    TooLarge { size: u64 },
}

impl ChunkIndex {
    /// How many pieces an object of `size` bytes has.
    pub fn count_for(size: u64) -> u64 {
        size.div_ceil(CHUNK)
    }

    /// Bytes `start..end` of piece `i` (`None` past the end).
    pub fn range(&self, i: usize) -> Option<(u64, u64)> {
        let start = (i as u64).checked_mul(CHUNK)?;
        let end = start.checked_add(CHUNK)?.min(self.size);
        (i < self.digests.len() && start < end).then_some((start, end))
    }

    /// Whether `bytes` is exactly piece `i`.
    pub fn checks(&self, i: usize, bytes: &[u8]) -> bool {
        let want = self.range(i).map(|(s, e)| (e - s) as usize);
        want == Some(bytes.len()) && Sha256::digest(bytes)[..] == self.digests[i][..]
    }

    /// The encoded form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 32 * self.digests.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.artifact);
        out.extend_from_slice(&CHUNK.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        for d in &self.digests {
            out.extend_from_slice(d);
        }
        out
    }

    /// Reads an encoded index, refusing anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(IndexError::Magic)?;
        if rest.len() < 48 || (rest.len() - 48) % 32 != 0 {
            return Err(IndexError::Length);
        }
        let artifact: [u8; 32] = rest[..32].try_into().unwrap_or([0; 32]);
        let rest = &rest[32..];
        let word = |at: usize| u64::from_be_bytes(rest[at..at + 8].try_into().unwrap_or([0; 8]));
        let (piece, size) = (word(0), word(8));
        if piece != CHUNK {
            return Err(IndexError::PieceSize(piece));
        }
        let want = Self::count_for(size);
        if want > MAX_CHUNKS as u64 {
            return Err(IndexError::TooLarge { size });
        }
        let digests: Vec<[u8; 32]> = rest[16..]
            .chunks_exact(32)
            .map(|d| d.try_into().unwrap_or([0; 32]))
            .collect();
        if digests.len() as u64 != want {
            return Err(IndexError::Count {
                count: digests.len(),
                size,
                want,
            });
        }
        Ok(Self {
            artifact,
            size,
            digests,
        })
    }

    /// The sha256 of the encoded index: what a deploy event pins.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// Builds the index of a stream as it passes, piece by piece.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    piece: Sha256,
    in_piece: u64,
    size: u64,
    digests: Vec<[u8; 32]>,
}

impl IndexBuilder {
    /// The next bytes of the object.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((CHUNK - self.in_piece) as usize).min(bytes.len());
            self.piece.update(&bytes[..take]);
            (self.in_piece, self.size) = (self.in_piece + take as u64, self.size + take as u64);
            bytes = &bytes[take..];
            if self.in_piece == CHUNK {
                self.digests
                    .push(std::mem::take(&mut self.piece).finalize().into());
                self.in_piece = 0;
            }
        }
    }

    /// The index of everything passed, whose sha256 is `artifact`; `None` for an object
    /// over [`MAX_CHUNKS`] pieces.
    pub fn finish(mut self, artifact: [u8; 32]) -> Option<ChunkIndex> {
        if self.in_piece > 0 {
            self.digests.push(self.piece.finalize().into());
        }
        (self.digests.len() <= MAX_CHUNKS).then_some(ChunkIndex {
            artifact,
            size: self.size,
            digests: self.digests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(bytes: &[u8], cuts: &[usize]) -> ChunkIndex {
        let mut b = IndexBuilder::default();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            b.update(&bytes[at..c]);
            at = c;
        }
        b.finish(Sha256::digest(bytes).into()).unwrap()
    }

    #[test]
    fn pieces_do_not_depend_on_how_the_stream_was_cut() {
        let data: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| (i % 251) as u8).collect();
        let one = index_of(&data, &[]);
        let many = index_of(&data, &[1, 4096, CHUNK as usize, CHUNK as usize + 1]);
        assert_eq!(one, many);
        assert_eq!(one.digests.len(), 3);
        assert_eq!(one.size, data.len() as u64);
        for i in 0..3 {
            let (s, e) = one.range(i).unwrap();
            assert!(one.checks(i, &data[s as usize..e as usize]));
        }
        assert_eq!(one.range(3), None);
        let mut bad = data[..CHUNK as usize].to_vec();
        bad[7] ^= 1;
        assert!(!one.checks(0, &bad), "a flipped byte");
        assert!(!one.checks(0, &data[..CHUNK as usize - 1]), "a short piece");
        assert!(!one.checks(9, &data[..1]), "no such piece");
        assert_eq!(one.artifact, <[u8; 32]>::from(Sha256::digest(&data)));
        let empty = IndexBuilder::default().finish([0; 32]).unwrap();
        assert_eq!(empty.digests.len(), 0);
    }

    #[test]
    fn an_index_round_trips_and_malformed_ones_are_named() {
        let data = vec![7u8; CHUNK as usize + 1];
        let index = index_of(&data, &[]);
        let bytes = index.encode();
        assert_eq!(ChunkIndex::decode(&bytes).unwrap(), index);
        assert_eq!(index.digest(), <[u8; 32]>::from(Sha256::digest(&bytes)));
        assert_eq!(ChunkIndex::decode(b"hello"), Err(IndexError::Magic));
        assert_eq!(
            ChunkIndex::decode(&bytes[..bytes.len() - 1]),
            Err(IndexError::Length)
        );
        let mut more = bytes.clone();
        more.extend_from_slice(&[0; 32]);
        assert!(matches!(
            ChunkIndex::decode(&more),
            Err(IndexError::Count {
                count: 3,
                want: 2,
                ..
            })
        ));
        let mut piece = bytes.clone();
        piece[MAGIC.len() + 32 + 7] = 1;
        assert!(matches!(
            ChunkIndex::decode(&piece),
            Err(IndexError::PieceSize(_))
        ));
        let mut huge = bytes.clone();
        huge[HEADER - 8..HEADER].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            ChunkIndex::decode(&huge),
            Err(IndexError::TooLarge { .. })
        ));
    }
}
