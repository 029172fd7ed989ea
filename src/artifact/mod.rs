//! Release artifacts: tar, tar.gz and tar.zst archives, and the hardened streaming unpacker.
//!
//! The unpacker treats every archive as hostile. The `tar` crate skips `..` entries silently
//! and has no size limits, so each entry is checked here instead, and any violation fails
//! the whole unpack with an error naming the entry. Callers unpack into a fresh staging
//! directory and only publish it on success, so a rejected archive leaves nothing behind.
//!
//! Speed: decompression runs on its own thread, feeding the tar reader through a bounded
//! queue of large buffers ([`pipeline`]), so inflating never waits for file writes and vice
//! versa. Durability is one `syncfs(2)` at the end instead of an fsync per file.

pub mod entry_path;
pub mod format;
pub mod pipeline;
pub mod tree;
pub mod unpack;

pub use format::{Compression, detect};
pub use unpack::{UnpackError, UnpackOptions, UnpackStats, unpack};
