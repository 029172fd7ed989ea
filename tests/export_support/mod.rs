//! Support code for `tests/export.rs` (a subdirectory, so Cargo does not build it as a test).

pub mod archives;
pub mod engine;
