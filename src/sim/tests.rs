//! The simulator's own guarantees, on small clusters of real machines: events arrive
//! under loss, a partition heals, one seed gives one trace.

use std::time::Duration;

use super::{Cluster, ClusterConfig, NetConfig};

const SEC: Duration = Duration::from_secs(1);

fn converged(n: usize, seed: u64, loss: f64) -> Cluster {
    let mut config = ClusterConfig::new(n, seed);
    config.net = NetConfig {
        loss,
        ..NetConfig::default()
    };
    let mut c = Cluster::new(config);
    let at = c.run_until_true(SEC / 10, 60 * SEC, Cluster::converged);
    assert!(at.is_some(), "{n} nodes did not converge in 60 s");
    c
}

#[test]
fn an_event_reaches_every_node_under_five_percent_loss() {
    let mut c = converged(24, 1, 0.05);
    c.fire(3, "hello", b"x".to_vec());
    let reached = c.run_until_true(SEC / 20, 20 * SEC, |c| c.reached("hello") == 24);
    assert!(reached.is_some(), "reached {} of 24", c.reached("hello"));
    assert!(c.stats.lost > 0, "5% loss dropped nothing");
}

#[test]
fn a_partition_fails_the_other_side_and_heals() {
    let mut c = converged(16, 2, 0.0);
    let side: Vec<u8> = (0..16).map(|i| u8::from(i >= 8)).collect();
    c.network().partition(side);
    let split = c.run_until_true(SEC, 120 * SEC, |c| {
        (0..16).all(|i| c.node(i).active_members() == 7)
    });
    assert!(split.is_some(), "each side did not see only itself");
    c.network().heal();
    let healed = c.run_until_true(SEC, 120 * SEC, Cluster::converged);
    assert!(healed.is_some(), "the partition did not heal in 120 s");
    c.fire(12, "after", Vec::new());
    let reached = c.run_until_true(SEC / 20, 10 * SEC, |c| c.reached("after") == 16);
    assert!(
        reached.is_some(),
        "the event after the heal reached {}",
        c.reached("after")
    );
}

#[test]
fn a_crashed_node_is_declared_failed_and_rejoins_after_a_restart() {
    let mut c = converged(12, 3, 0.0);
    c.crash(5);
    let down = c.run_until_true(SEC, 60 * SEC, Cluster::converged);
    assert!(down.is_some(), "the crash was not noticed");
    assert!(c.stats.true_failures > 0);
    c.restart(5);
    let back = c.run_until_true(SEC, 60 * SEC, |c| c.converged() && c.up_count() == 12);
    assert!(back.is_some(), "the restarted node did not rejoin");
    assert_eq!(
        c.stats.false_failures, 0,
        "a healthy node was declared failed"
    );
}

#[test]
fn a_tag_change_reaches_every_node() {
    let mut c = converged(12, 4, 0.01);
    let tags: crate::gossip::Tags = [("role".to_owned(), "db".to_owned())].into();
    c.set_tags(7, tags.clone());
    let seen = c.run_until_true(SEC / 10, 30 * SEC, |c| {
        (0..12).all(|i| c.tags_seen(i, 7).as_ref() == Some(&tags))
    });
    assert!(seen.is_some(), "the new tags did not reach every node");
}

#[test]
fn one_seed_gives_one_trace_and_another_seed_another() {
    let run = |seed| {
        let mut c = converged(10, seed, 0.02);
        c.fire(0, "e", Vec::new());
        c.run_for(5 * SEC);
        (c.trace.hash(), c.stats.sent_bytes.clone())
    };
    let (a, bytes) = run(9);
    assert_eq!(run(9), (a, bytes), "the same seed gave another run");
    assert_ne!(run(10).0, a, "another seed gave the same trace");
}
