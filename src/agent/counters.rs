//! The agent's packet and stream counters, shared by the socket loops and the task: exposed
//! by `GET /v1/info` and `GET /v1/metrics`, and what tests wait on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gossip::envelope::OpenError;

/// Packet counters, exposed by `GET /v1/info` and `GET /v1/metrics`. They only grow, for
/// the agent's life.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    /// Bytes of the datagrams received (sealed, as they arrived) and sent.
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_dropped_auth: AtomicU64,
    pub packets_dropped_short: AtomicU64,
    pub packets_dropped_version: AtomicU64,
    pub packets_dropped_oversize: AtomicU64,
    pub packets_dropped_malformed: AtomicU64,
    pub streams_accepted: AtomicU64,
    pub streams_dropped_auth: AtomicU64,
    pub streams_failed: AtomicU64,
    pub streams_evicted: AtomicU64,
    pub events_pushed: AtomicU64,
    /// Push/pull states merged (either side): tests wait on it for anti-entropy rounds.
    pub push_pulls_merged: AtomicU64,
    /// Packets and push/pull states from another address than their sender names, with
    /// node identities on: their sender's word was not taken.
    pub spoofed_senders: AtomicU64,
    /// Handler processes run (every attempt), and those that could not start, timed out
    /// or exited non-zero.
    pub handler_runs: AtomicU64,
    pub handler_failures: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_n(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts one handler run; `ok`: it started and exited 0.
    pub fn handler_ran(&self, ok: bool) {
        Self::add(&self.handler_runs);
        if !ok {
            Self::add(&self.handler_failures);
        }
    }

    /// Counts a datagram or frame that did not open, by cause.
    pub fn count_open_error(&self, err: &OpenError) {
        Self::add(match err {
            OpenError::TooShort { .. } => &self.packets_dropped_short,
            OpenError::UnknownVersion { .. } => &self.packets_dropped_version,
            OpenError::Authentication { .. } => &self.packets_dropped_auth,
        });
    }

    /// Snapshot as a name → value map.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("packets_received", get(&self.packets_received)),
            ("packets_sent", get(&self.packets_sent)),
            ("bytes_received", get(&self.bytes_received)),
            ("bytes_sent", get(&self.bytes_sent)),
            ("packets_dropped_auth", get(&self.packets_dropped_auth)),
            ("packets_dropped_short", get(&self.packets_dropped_short)),
            (
                "packets_dropped_version",
                get(&self.packets_dropped_version),
            ),
            (
                "packets_dropped_oversize",
                get(&self.packets_dropped_oversize),
            ),
            (
                "packets_dropped_malformed",
                get(&self.packets_dropped_malformed),
            ),
            ("streams_accepted", get(&self.streams_accepted)),
            ("streams_dropped_auth", get(&self.streams_dropped_auth)),
            ("streams_failed", get(&self.streams_failed)),
            ("streams_evicted", get(&self.streams_evicted)),
            ("events_pushed", get(&self.events_pushed)),
            ("push_pulls_merged", get(&self.push_pulls_merged)),
            ("spoofed_senders", get(&self.spoofed_senders)),
            ("handler_runs", get(&self.handler_runs)),
            ("handler_failures", get(&self.handler_failures)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
