//! Whom to push to: eager push of a new event, and the periodic push/pull partner.
//!
//! Eager push sends a new user event straight to a few live members (not its origin,
//! which has it), so delivery costs hops x RTT rather than hops x gossip interval; gossip
//! still carries it to anyone it missed. The fanout is configured, or [`eager_fanout`] of
//! the cluster size.
//!
//! One of the targets is this node's successor: the next member after it in name order
//! (skipping the origin). Random targets alone miss some node with probability about
//! N·e^-fanout per event (e^-2 at the default fanout: one event in seven at N = 100 left
//! a node waiting for gossip, hundreds of milliseconds, which was the latency tail). With
//! every node that has the event also pushing it to its successor, the origin's successor
//! gets it, then that node's, and so on round the ring: with one view of the members and
//! no loss, every node is reached, a missed one by its predecessor one hop later.

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
    /// Up to the fanout distinct `peers` (the live members, this node, `me`, excluded)
    /// other than the event's `origin`: this node's successor and random others;
    /// `cluster_size` counts this node too.
    pub fn targets<'a, R: Rng + ?Sized>(
        &self,
        peers: impl Iterator<Item = &'a NodeId> + Clone,
        cluster_size: usize,
        origin: &str,
        me: &str,
        rng: &mut R,
    ) -> Vec<SocketAddr> {
        let fanout = self.fanout.unwrap_or_else(|| eager_fanout(cluster_size));
        if !self.enabled || fanout == 0 {
            return Vec::new();
        }
        let others = peers.filter(|m| m.name != origin);
        let Some(next) = successor(others.clone(), me) else {
            return Vec::new();
        };
        let mut targets = (others.filter(|m| m.name != next.name))
            .map(|m| m.addr)
            .sample(rng, fanout - 1);
        targets.push(next.addr);
        targets
    }
}

/// The member after `me` in name order, round the ring: the first name above `me`, else
/// the first of all.
fn successor<'a>(peers: impl Iterator<Item = &'a NodeId>, me: &str) -> Option<&'a NodeId> {
    let (mut above, mut first): (Option<&NodeId>, Option<&NodeId>) = (None, None);
    for m in peers {
        if m.name.as_str() > me && above.is_none_or(|a| m.name < a.name) {
            above = Some(m);
        }
        if first.is_none_or(|f| m.name < f.name) {
            first = Some(m);
        }
    }
    above.or(first)
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
            let t = on(Some(5)).targets(ps.iter(), 21, &origin.name, "n0", &mut rng);
            assert_eq!(t.len(), 5);
            assert!(!t.contains(&origin.addr));
            assert_eq!(t.iter().collect::<HashSet<_>>().len(), 5);
        }
    }

    #[test]
    fn default_fanout_follows_cluster_size_and_small_clusters_get_all() {
        let mut rng = StdRng::seed_from_u64(1);
        let ps = peers(99);
        let t = on(None).targets(ps.iter(), 100, "elsewhere", "n0", &mut rng);
        assert_eq!(t.len(), eager_fanout(100));
        let ps = peers(2);
        let t = on(None).targets(ps.iter(), 3, "n1", "n0", &mut rng);
        assert_eq!(t, vec![ps[1].addr], "all but the origin");
    }

    #[test]
    fn disabled_pushes_nothing() {
        let mut rng = StdRng::seed_from_u64(1);
        let off = EagerPush {
            enabled: false,
            fanout: Some(3),
        };
        assert!(
            off.targets(peers(10).iter(), 11, "x", "n0", &mut rng)
                .is_empty()
        );
    }

    /// Whatever the random picks, each node pushes to the next name (the origin skipped),
    /// so the pushes alone reach every node round the ring.
    #[test]
    fn every_node_pushes_to_its_successor_so_the_ring_reaches_everyone() {
        let ps = peers(30);
        let others = |me: String| ps.iter().filter(move |p| p.name != me);
        let mut rng = StdRng::seed_from_u64(7);
        let next = |me: &str, rng: &mut StdRng| {
            let t = on(Some(1)).targets(others(me.to_owned()), 30, "n4", me, rng);
            assert_eq!(t.len(), 1);
            ps.iter().find(|p| p.addr == t[0]).unwrap().name.clone()
        };
        // Name order: n1, n10, ..., n19, n2, n20, ..., n29, n3, n30, n4, ...
        assert_eq!(next("n1", &mut rng), "n10");
        assert_eq!(next("n30", &mut rng), "n5", "the origin n4 skipped");
        assert_eq!(next("n9", &mut rng), "n1", "round the ring");
        let (mut reached, mut at) = (HashSet::from(["n4".to_string()]), "n4".to_string());
        while reached.len() < 30 {
            at = next(&at, &mut rng);
            assert!(
                reached.insert(at.clone()),
                "{at} twice before all were reached"
            );
        }
        let t = on(Some(4)).targets(others("n1".into()), 30, "n4", "n1", &mut rng);
        assert_eq!(t.len(), 4);
        assert!(t.contains(&ps[9].addr), "n10 among them: {t:?}");
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
