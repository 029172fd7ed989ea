//! What a simulated run records: bytes per node, packets lost, when each tracked event
//! reached each node, failures declared about healthy nodes, and a hash of every step
//! so that two runs of one seed can be compared.

use std::collections::BTreeMap;
use std::time::Duration;

/// FNV-1a over every step of a run: the same seed must give the same hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace(u64);

impl Default for Trace {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Trace {
    fn fold(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// An item handled at `at` by node `node`.
    pub fn step(&mut self, at: Duration, node: usize, tag: &[u8]) {
        self.fold(&at.as_nanos().to_le_bytes());
        self.fold(&node.to_le_bytes());
        self.fold(tag);
    }

    /// A datagram of `len` bytes sent.
    pub fn send(&mut self, len: usize) {
        self.fold(&len.to_le_bytes());
    }

    pub fn hash(&self) -> u64 {
        self.0
    }
}

/// The counters of a run.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Bytes each node put on the wire (datagrams and stream frames, sealed).
    pub sent_bytes: Vec<u64>,
    /// Datagrams the network dropped.
    pub lost: u64,
    /// User events delivered, over all nodes.
    pub deliveries: u64,
    /// `member-failed` verdicts about nodes never paused or crashed.
    pub false_failures: u64,
    /// `member-failed` verdicts about nodes that were paused or crashed.
    pub true_failures: u64,
    /// Push/pulls started: sync, join, reconnect.
    pub dials: [u64; 3],
    /// Bytes of push/pull states sent (both directions).
    pub push_pull_bytes: u64,
    /// Nodes that were ever paused or crashed.
    pub disturbed: Vec<bool>,
    /// Finished deploy activations: node, started, finished.
    pub activations: Vec<(usize, Duration, Duration)>,
    tracked: BTreeMap<String, Vec<Option<Duration>>>,
    /// Per tracked event, each node's hop from its origin (0): one more than the hop of
    /// the peer whose datagram or stream brought it.
    hops: BTreeMap<String, Vec<Option<u32>>>,
}

impl Stats {
    pub fn new(nodes: usize) -> Self {
        Self {
            sent_bytes: vec![0; nodes],
            lost: 0,
            deliveries: 0,
            false_failures: 0,
            true_failures: 0,
            dials: [0; 3],
            push_pull_bytes: 0,
            disturbed: vec![false; nodes],
            activations: Vec::new(),
            tracked: BTreeMap::new(),
            hops: BTreeMap::new(),
        }
    }

    pub fn sent(&mut self, node: usize, bytes: usize) {
        self.sent_bytes[node] += bytes as u64;
    }

    /// Records when the user event `name`, fired at `origin`, reaches each node, and
    /// over how many hops.
    pub fn track(&mut self, name: &str, origin: usize) {
        let nodes = self.sent_bytes.len();
        self.tracked.insert(name.to_owned(), vec![None; nodes]);
        let mut hops = vec![None; nodes];
        hops[origin] = Some(0);
        self.hops.insert(name.to_owned(), hops);
    }

    /// Each node's hop count for the tracked event `name` (`None`: not reached, or
    /// brought by a peer whose own hop is unknown).
    pub fn hops(&self, name: &str) -> Option<&[Option<u32>]> {
        self.hops.get(name).map(Vec::as_slice)
    }

    /// When each node first delivered the tracked event `name`.
    pub fn arrivals(&self, name: &str) -> Option<&[Option<Duration>]> {
        self.tracked.get(name).map(Vec::as_slice)
    }

    /// A machine's monitor line at node `node`, while it handled what peer `from` sent
    /// (`None`: a timer or a tick).
    pub fn monitor(
        &mut self,
        node: usize,
        at: Duration,
        from: Option<usize>,
        line: &serde_json::Value,
    ) {
        match (line["type"].as_str(), line["event"].as_str()) {
            (Some("event"), Some("user")) => {
                self.deliveries += 1;
                let name = line["name"].as_str().unwrap_or_default();
                let Some(slot) = self.tracked.get_mut(name).and_then(|v| v.get_mut(node)) else {
                    return;
                };
                if slot.is_some() {
                    return;
                }
                *slot = Some(at);
                let hops = self.hops.get_mut(name).expect("tracked with its hops");
                let via = from.and_then(|f| hops.get(f).copied().flatten());
                if let Some(h) = via {
                    hops[node].get_or_insert(h + 1);
                }
            }
            (Some("member"), Some("member-failed")) => {
                let about = line["node"].as_str().and_then(super::node::index_of_name);
                match about.and_then(|j| self.disturbed.get(j)) {
                    Some(false) => self.false_failures += 1,
                    _ => self.true_failures += 1,
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracked_event_records_its_first_arrival_per_node() {
        let mut s = Stats::new(4);
        s.track("e", 0);
        let line = serde_json::json!({"type": "event", "event": "user", "name": "e"});
        s.monitor(1, Duration::from_millis(5), Some(0), &line);
        s.monitor(1, Duration::from_millis(9), Some(3), &line);
        s.monitor(2, Duration::from_millis(7), Some(1), &line);
        s.monitor(3, Duration::from_millis(8), None, &line);
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(s.arrivals("e").unwrap(), &[None, ms(5), ms(7), ms(8)]);
        assert_eq!(s.hops("e").unwrap(), &[Some(0), Some(1), Some(2), None]);
        assert_eq!(s.deliveries, 4);
    }

    #[test]
    fn failures_of_undisturbed_nodes_count_as_false() {
        let mut s = Stats::new(2);
        s.disturbed[1] = true;
        let failed =
            |n: &str| serde_json::json!({"type": "member", "event": "member-failed", "node": n});
        s.monitor(0, Duration::ZERO, None, &failed("n1"));
        s.monitor(0, Duration::ZERO, None, &failed("n0"));
        assert_eq!((s.false_failures, s.true_failures), (1, 1));
    }

    #[test]
    fn the_trace_hash_depends_on_every_step() {
        let (mut a, mut b) = (Trace::default(), Trace::default());
        a.step(Duration::from_millis(1), 0, &[1]);
        b.step(Duration::from_millis(1), 0, &[2]);
        assert_ne!(a, b);
    }
}
