//! Release artifacts: tar, tar.gz and tar.zst archives, and the hardened streaming unpacker.
//!
//! Archives are read by our own streaming reader ([`tar`]), which reads what GNU tar reads
//! (every header format, PAX, long names, sparse files) or refuses it by name, and caps
//! extension headers. The unpacker treats every archive as hostile: each entry is checked,
//! and any violation fails the whole unpack with an error naming the entry. Callers unpack into a fresh staging
//! directory and only publish it on success, so a rejected archive leaves nothing behind.
//!
//! Speed: decompression runs on its own thread, feeding the tar reader through a bounded
//! queue of large buffers ([`pipeline`]), so inflating never waits for file writes and vice
//! versa; gzip members and zstd frames in the parallel layouts `publish` writes
//! ([`gzip_members`], [`zstd_frames`]) are decoded on every core ([`parallel_decode`]). Durability is one `syncfs(2)` at the end instead of an fsync per file.

pub mod block_writer;
pub mod entry_path;
pub mod format;
pub mod guard;
pub mod gzip_members;
pub mod parallel_decode;
pub mod pipeline;
mod sparse_file;
pub mod tar;
pub mod tree;
pub mod unpack;
pub mod zstd_frames;

pub use format::{Compression, detect};
pub use unpack::{
    DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, UnpackError, UnpackOptions, UnpackStats, unpack,
};
