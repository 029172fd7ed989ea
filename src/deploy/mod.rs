//! Fleet deploy: the signed deploy event, rollout waves, the desired state, the artifact
//! fetcher, the per-app activation state machine, and the jail supervisor with its health
//! checks; the deploy journal of each app and the `history` query that reads it.
//!
//! The event, the waves, the desired state, the activation machine and the restart policy
//! are pure (no I/O, unit-tested). The fetcher (streams an artifact from S3, HTTP(S) or a file
//! into the release store, checking its sha256 before anything is published), the supervisor
//! (child `droot-fleet run` processes, adoption after a restart) and the health checks are the
//! thin I/O shells around them.

pub mod activation;
pub mod app;
pub mod config;
pub mod control;
pub mod controller;
pub mod desired;
pub mod executor;
pub mod fetch;
pub mod health;
pub mod history;
pub mod hooks;
pub mod journal;
pub mod listen;
pub mod metrics;
pub mod phases;
pub mod rollout;
pub mod signed;
pub mod status;
pub mod supervisor;
