//! Fleet deploy: the signed deploy event, rollout waves, the desired state, and the
//! artifact fetcher.
//!
//! The event, the waves and the desired state are pure (no I/O, unit-tested); the fetcher
//! is the thin I/O shell that streams an artifact from S3, HTTP(S) or a file into the
//! release store, checking its sha256 before anything is published.

pub mod desired;
pub mod fetch;
pub mod rollout;
pub mod signed;
