//! The simulated network between nodes: per-link latency with jitter, random loss,
//! partitions. Sans-io and seeded like the rest of the simulator: the fate of every
//! packet is drawn from the run's random generator, in the order packets are sent.

use std::time::Duration;

use rand::{Rng, RngExt};

/// The network's settings for a run.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// One-way delay of every link.
    pub latency: Duration,
    /// Up to this much more, uniformly drawn per packet.
    pub jitter: Duration,
    /// Probability that a datagram is lost (0.0..=1.0). Streams (push/pull) are TCP:
    /// loss delays them by one retransmission timeout instead.
    pub loss: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(500),
            loss: 0.0,
        }
    }
}

/// TCP's initial retransmission timeout (RFC 6298), what a lost segment costs a stream.
const TCP_RTO: Duration = Duration::from_secs(1);

/// Who can reach whom.
pub struct Network {
    config: NetConfig,
    /// Each node's side of a partition; nodes on different sides cannot talk.
    side: Vec<u8>,
}

impl Network {
    pub fn new(config: NetConfig, nodes: usize) -> Self {
        Self {
            config,
            side: vec![0; nodes],
        }
    }

    pub fn config(&self) -> NetConfig {
        self.config
    }

    /// Splits the network: `side[i]` is node `i`'s side.
    pub fn partition(&mut self, side: Vec<u8>) {
        assert_eq!(side.len(), self.side.len(), "one side per node");
        self.side = side;
    }

    /// Everyone can talk again.
    pub fn heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
    }

    /// Whether `a` and `b` are on the same side.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b]
    }

    fn delay(&self, rng: &mut impl Rng) -> Duration {
        let jitter = self.config.jitter.as_nanos() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            rng.random_range(0..=jitter)
        };
        self.config.latency + Duration::from_nanos(extra)
    }

    /// When a datagram from `a` reaches `b`, or `None` if it is lost or cut off.
    pub fn datagram(&self, a: usize, b: usize, rng: &mut impl Rng) -> Option<Duration> {
        if !self.connected(a, b) {
            return None;
        }
        let lost = self.config.loss > 0.0 && rng.random_bool(self.config.loss.min(1.0));
        (!lost).then(|| self.delay(rng))
    }

    /// How long one direction of a stream exchange takes from `a` to `b` (`None` if
    /// cut off): the delay, plus an RTO for each segment the loss rate costs.
    pub fn stream(&self, a: usize, b: usize, rng: &mut impl Rng) -> Option<Duration> {
        if !self.connected(a, b) {
            return None;
        }
        let mut took = self.delay(rng);
        while self.config.loss > 0.0 && rng.random_bool(self.config.loss.min(1.0)) {
            took += TCP_RTO;
        }
        Some(took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn partitions_cut_and_heal() {
        let mut net = Network::new(NetConfig::default(), 3);
        let mut rng = StdRng::seed_from_u64(1);
        net.partition(vec![0, 0, 1]);
        assert!(net.datagram(0, 1, &mut rng).is_some());
        assert!(net.datagram(0, 2, &mut rng).is_none());
        assert!(net.stream(2, 1, &mut rng).is_none());
        net.heal();
        assert!(net.datagram(0, 2, &mut rng).is_some());
    }

    #[test]
    fn loss_drops_about_its_share_and_delay_stays_in_range() {
        let config = NetConfig {
            loss: 0.05,
            ..NetConfig::default()
        };
        let net = Network::new(config, 2);
        let mut rng = StdRng::seed_from_u64(7);
        let mut lost = 0;
        for _ in 0..20_000 {
            match net.datagram(0, 1, &mut rng) {
                None => lost += 1,
                Some(d) => assert!(d >= config.latency && d <= config.latency + config.jitter),
            }
        }
        assert!((800..1200).contains(&lost), "{lost} of 20000 lost at 5%");
    }
}
