//! Whom to push to: eager push of a new event, and the periodic push/pull partner.
//!
//! Eager push sends a new user event straight to a few random live members (not its
//! origin, which has it), so delivery costs hops x RTT rather than hops x gossip
//! interval; gossip still carries it to everyone else. The fanout is configured, or
//! [`eager_fanout`] of the cluster size.

use std::net::SocketAddr;

use rand::Rng;
use rand::seq::IteratorRandom;

use crate::gossip::{NodeId, eager_fanout};

/// Eager push settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EagerPush {
    /// `eager_push`: push at all.
    pub enabled: bool,
    /// `eager_push_fanout`: how many peers (default: by cluster size).
    pub fanout: Option<usize>,
}

impl EagerPush {
    /// Up to the fanout distinct random `peers` (the live members, this node excluded)
    /// other than the event's `origin`; `cluster_size` counts this node too.
    pub fn targets<'a, R: Rng + ?Sized>(
        &self,
        peers: impl Iterator<Item = &'a NodeId>,
        cluster_size: usize,
        origin: &str,
        rng: &mut R,
    ) -> Vec<SocketAddr> {
        if !self.enabled {
            return Vec::new();
        }
        let fanout = self.fanout.unwrap_or_else(|| eager_fanout(cluster_size));
        peers
            .filter(|m| m.name != origin)
            .map(|m| m.addr)
            .sample(rng, fanout)
    }
}

/// A random live member other than `me` for the periodic push/pull.
pub fn sync_target<'a, R: Rng + ?Sized>(
    peers: impl Iterator<Item = &'a NodeId>,
    me: &str,
    rng: &mut R,
) -> Option<SocketAddr> {
    peers.filter(|m| m.name != me).map(|m| m.addr).choose(rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashSet;

    fn peers(n: u16) -> Vec<NodeId> {
        (1..=n)
            .map(|i| {
                NodeId::new(
                    format!("n{i}"),
                    format!("127.0.0.1:{i}").parse().unwrap(),
                    0,
                )
                .unwrap()
            })
            .collect()
    }

    fn on(fanout: Option<usize>) -> EagerPush {
        EagerPush {
            enabled: true,
            fanout,
        }
    }

    #[test]
    fn never_the_origin_distinct_and_at_most_fanout() {
        let ps = peers(20);
        let origin = ps[4].clone();
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let t = on(Some(5)).targets(ps.iter(), 21, &origin.name, &mut rng);
            assert_eq!(t.len(), 5);
            assert!(!t.contains(&origin.addr));
            assert_eq!(t.iter().collect::<HashSet<_>>().len(), 5);
        }
    }

    #[test]
    fn default_fanout_follows_cluster_size_and_small_clusters_get_all() {
        let mut rng = StdRng::seed_from_u64(1);
        let ps = peers(99);
        let t = on(None).targets(ps.iter(), 100, "elsewhere", &mut rng);
        assert_eq!(t.len(), eager_fanout(100));
        let ps = peers(2);
        let t = on(None).targets(ps.iter(), 3, "n1", &mut rng);
        assert_eq!(t, vec![ps[1].addr], "all but the origin");
    }

    #[test]
    fn disabled_pushes_nothing() {
        let mut rng = StdRng::seed_from_u64(1);
        let off = EagerPush {
            enabled: false,
            fanout: Some(3),
        };
        assert!(off.targets(peers(10).iter(), 11, "x", &mut rng).is_empty());
    }

    #[test]
    fn sync_partner_is_never_this_node() {
        let ps = peers(3);
        let mut seen = HashSet::new();
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            seen.insert(sync_target(ps.iter(), "n2", &mut rng).unwrap());
        }
        assert_eq!(seen, HashSet::from([ps[0].addr, ps[2].addr]));
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(sync_target(ps[1..2].iter(), "n2", &mut rng), None);
    }
}
