//! The baseline a run is compared with: how Serf spreads a user event through
//! memberlist, on the same [`Network`]. Every node knows every other (a converged
//! cluster). A node that learns an event queues it with a transmit budget of
//! `retransmit_mult · ⌈log10(N+1)⌉`; every gossip interval it sends its queue to
//! `fanout` random nodes, and every probe interval it piggybacks the queue on a ping to
//! one random node (whose ack piggybacks that node's queue back). Each copy sent spends
//! one transmit; a spent event leaves the queue. These are memberlist's LAN defaults.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::net::{NetConfig, Network};
use crate::timeline::Timeline;

/// memberlist's knobs (`DefaultLANConfig`).
#[derive(Debug, Clone, Copy)]
pub struct SerfConfig {
    pub fanout: usize,
    pub gossip_interval: Duration,
    pub probe_interval: Duration,
    pub retransmit_mult: u32,
}

impl Default for SerfConfig {
    fn default() -> Self {
        Self {
            fanout: 3,
            gossip_interval: Duration::from_millis(200),
            probe_interval: Duration::from_secs(1),
            retransmit_mult: 4,
        }
    }
}

impl SerfConfig {
    /// Copies of one event a node sends before it drops it.
    pub fn transmit_limit(&self, nodes: usize) -> u32 {
        let scale = ((nodes + 1) as f64).log10().ceil() as u32;
        self.retransmit_mult * scale.max(1)
    }
}

enum Item {
    Gossip(usize),
    Probe(usize),
    Packet {
        to: usize,
        from: usize,
        ack: bool,
        events: Vec<u32>,
    },
}

/// The model's cluster; see the module docs.
pub struct SerfModel {
    config: SerfConfig,
    nodes: usize,
    net: Network,
    rng: StdRng,
    timeline: Timeline<Duration, Item>,
    clock: Duration,
    /// Per node: `(event, transmits left)`.
    queues: Vec<Vec<(u32, u32)>>,
    /// Per event: when each node learned it.
    arrivals: Vec<Vec<Option<Duration>>>,
    /// Per event: each node's hop from its origin (0).
    hops: Vec<Vec<Option<u32>>>,
    /// Bytes each node sent (a 40-byte header and 64 bytes per event carried).
    pub sent_bytes: Vec<u64>,
}

/// What one event copy costs on the wire in this model (a small user event).
const EVENT_BYTES: u64 = 64;
const HEADER_BYTES: u64 = 40;

impl SerfModel {
    pub fn new(nodes: usize, seed: u64, net: NetConfig, config: SerfConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5e7f);
        let mut timeline = Timeline::default();
        for i in 0..nodes {
            let g = rng.random_range(0..config.gossip_interval.as_micros() as u64);
            let p = rng.random_range(0..config.probe_interval.as_micros() as u64);
            timeline.push(Duration::from_micros(g), Item::Gossip(i));
            timeline.push(Duration::from_micros(p), Item::Probe(i));
        }
        Self {
            config,
            nodes,
            net: Network::new(net, nodes),
            rng,
            timeline,
            clock: Duration::ZERO,
            queues: vec![Vec::new(); nodes],
            arrivals: Vec::new(),
            hops: Vec::new(),
            sent_bytes: vec![0; nodes],
        }
    }

    pub fn clock(&self) -> Duration {
        self.clock
    }

    pub fn network(&mut self) -> &mut Network {
        &mut self.net
    }

    /// Node `origin` fires a new event now; its number.
    pub fn fire(&mut self, origin: usize) -> u32 {
        let id = u32::try_from(self.arrivals.len()).expect("fewer than 2^32 events");
        self.arrivals.push(vec![None; self.nodes]);
        self.hops.push(vec![None; self.nodes]);
        self.learn(origin, id, 0);
        id
    }

    /// When each node learned event `id`.
    pub fn arrivals(&self, id: u32) -> &[Option<Duration>] {
        &self.arrivals[id as usize]
    }

    /// Each node's hop count for event `id`.
    pub fn hops(&self, id: u32) -> &[Option<u32>] {
        &self.hops[id as usize]
    }

    fn learn(&mut self, node: usize, id: u32, hop: u32) {
        let slot = &mut self.arrivals[id as usize][node];
        if slot.is_none() {
            *slot = Some(self.clock);
            self.hops[id as usize][node] = Some(hop);
            let limit = self.config.transmit_limit(self.nodes);
            self.queues[node].push((id, limit));
        }
    }

    pub fn run_until(&mut self, until: Duration) {
        while let Some((at, item)) = self.timeline.pop_until(until) {
            self.clock = at;
            match item {
                Item::Gossip(i) => {
                    // memberlist gossips only when it has something to say.
                    let fanout = if self.queues[i].is_empty() {
                        0
                    } else {
                        self.config.fanout
                    };
                    for _ in 0..fanout {
                        let to = self.random_peer(i);
                        self.send(i, to, false);
                    }
                    let next = self.clock + self.config.gossip_interval;
                    self.timeline.push(next, Item::Gossip(i));
                }
                Item::Probe(i) => {
                    let to = self.random_peer(i);
                    self.send(i, to, false);
                    let next = self.clock + self.config.probe_interval;
                    self.timeline.push(next, Item::Probe(i));
                }
                Item::Packet {
                    to,
                    from,
                    ack,
                    events,
                } => {
                    for id in events {
                        let via = self.hops[id as usize][from].unwrap_or_default();
                        self.learn(to, id, via + 1);
                    }
                    if !ack {
                        self.send(to, from, true);
                    }
                }
            }
        }
        self.clock = self.clock.max(until);
    }

    fn random_peer(&mut self, i: usize) -> usize {
        let j = self.rng.random_range(0..self.nodes - 1);
        if j >= i { j + 1 } else { j }
    }

    /// A packet from `from` to `to` carrying (and spending) `from`'s queue.
    fn send(&mut self, from: usize, to: usize, ack: bool) {
        let queue = &mut self.queues[from];
        let events: Vec<u32> = queue.iter().map(|(id, _)| *id).collect();
        queue.iter_mut().for_each(|(_, left)| *left -= 1);
        queue.retain(|(_, left)| *left > 0);
        self.sent_bytes[from] += HEADER_BYTES + EVENT_BYTES * events.len() as u64;
        if let Some(d) = self.net.datagram(from, to, &mut self.rng) {
            let item = Item::Packet {
                to,
                from,
                ack,
                events,
            };
            self.timeline.push(self.clock + d, item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transmit_limit_is_memberlists() {
        let c = SerfConfig::default();
        assert_eq!(c.transmit_limit(100), 12);
        assert_eq!(c.transmit_limit(1000), 16);
        assert_eq!(c.transmit_limit(10_000), 20);
    }

    #[test]
    fn an_event_reaches_everyone_without_loss() {
        let mut m = SerfModel::new(200, 1, NetConfig::default(), SerfConfig::default());
        let id = m.fire(0);
        m.run_until(Duration::from_secs(5));
        assert!(m.arrivals(id).iter().all(Option::is_some));
        let hops: Vec<u32> = m.hops(id).iter().map(|h| h.unwrap()).collect();
        assert_eq!(hops[0], 0);
        let most = *hops.iter().max().unwrap();
        // log3(200) is about 5: a few more for random peers that already knew it.
        assert!((4..=12).contains(&most), "{most} hops");
    }
}
