//! What one node's gossip state costs per member, measured in the simulator on real
//! agent machines: the live heap of two converged clusters of different sizes, per
//! node, and its slope in the cluster size. A regression in any per-member book (foca's
//! members, tags, cards, slots, the event log) fails here.

use std::time::Duration;

use droot_fleet::sim::heap::Counting;
use droot_fleet::sim::{Cluster, ClusterConfig};

#[global_allocator]
static HEAP: Counting = Counting::new();

/// What a node may hold per member it knows, in heap bytes. Measured at about 1.1 KB
/// (the base per node about 60 KB) when this was written; the bound leaves room.
const MAX_BYTES_PER_MEMBER: f64 = 2048.0;

/// Live heap bytes per node of a converged, idle cluster of `n`.
fn per_node(n: usize) -> f64 {
    let before = HEAP.live();
    let mut c = Cluster::new(ClusterConfig::new(n, 5));
    let sec = Duration::from_secs(1);
    let at = c.run_until_true(sec / 10, 120 * sec, Cluster::converged);
    assert!(
        at.is_some(),
        "{n} nodes did not converge in 120 s of virtual time"
    );
    // A push/pull interval of idleness: what an idle agent settles at.
    c.run_for(35 * sec);
    assert!(c.converged(), "{n} nodes fell apart while idle");
    let bytes = HEAP.live().saturating_sub(before);
    drop(c);
    bytes as f64 / n as f64
}

#[test]
fn a_nodes_state_grows_by_a_bounded_amount_per_member() {
    let (small, large) = (30, 120);
    let a = per_node(small);
    let b = per_node(large);
    let slope = (b - a) / (large - small) as f64;
    println!(
        "live heap per node: {a:.0} B at N={small}, {b:.0} B at N={large}; {slope:.0} B per member"
    );
    assert!(
        slope > 0.0,
        "no growth with N measured: the accounting is broken"
    );
    assert!(
        slope < MAX_BYTES_PER_MEMBER,
        "each member costs every node {slope:.0} B of heap (bound {MAX_BYTES_PER_MEMBER} B)"
    );
}
