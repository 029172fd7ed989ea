//! The measurements of one (N, loss) configuration, each on the same converged cluster
//! in turn, and the Serf model's on a fresh one.

use std::time::{Duration, Instant};

use droot_fleet::deploy::rollout::wave_size;
use droot_fleet::deploy::signed::{MaxParallel, Rollout};
use droot_fleet::sim::serf::{SerfConfig, SerfModel};
use droot_fleet::sim::{Cluster, ClusterConfig, DeploySetup, NetConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const SEC: Duration = Duration::from_secs(1);
/// How long any one thing may take before the run reports it as not reached.
const LIMIT: Duration = Duration::from_secs(120);

/// What one configuration measured; `None`: not reached within [`LIMIT`].
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub nodes: usize,
    pub loss: f64,
    /// Every node enrolled (node identities required).
    #[serde(default)]
    pub identities: bool,
    pub converge: Option<Duration>,
    /// Time until every node delivered, per event.
    pub event_full: Vec<Option<Duration>>,
    /// Every (node, event) arrival after its fire.
    pub arrivals: Vec<Option<Duration>>,
    pub serf_full: Vec<Option<Duration>>,
    pub serf_arrivals: Vec<Option<Duration>>,
    /// Per event, the most hops from its origin to a node (each hop one forward), if it
    /// reached every node: ours, and the Serf model's.
    #[serde(default)]
    pub event_hops: Vec<Option<u32>>,
    #[serde(default)]
    pub serf_hops: Vec<Option<u32>>,
    pub tags: Option<Duration>,
    /// A `--max-parallel 10%` deploy: until every node holds it as desired, until every
    /// target reported ok (as its origin sees it), and in how many waves.
    #[serde(default)]
    pub deploy_desired: Option<Duration>,
    #[serde(default)]
    pub deploy_done: Option<Duration>,
    #[serde(default)]
    pub deploy_waves: usize,
    pub crash_noticed: Option<Duration>,
    pub rejoined: Option<Duration>,
    pub healed: Option<Duration>,
    pub idle_bytes: f64,
    pub storm_bytes: f64,
    pub serf_storm_bytes: f64,
    pub false_failures: u64,
    pub slow_nodes: usize,
    /// Live heap per node of the converged, idle cluster.
    pub heap_per_node: f64,
    pub wall: Duration,
}

pub struct Plan {
    pub nodes: usize,
    pub loss: f64,
    pub identities: bool,
    pub seed: u64,
    pub events: usize,
}

fn net(loss: f64) -> NetConfig {
    NetConfig {
        loss,
        ..NetConfig::default()
    }
}

/// Runs every measurement of `plan`.
pub fn run(plan: &Plan) -> Row {
    let started = Instant::now();
    let mut row = Row {
        nodes: plan.nodes,
        loss: plan.loss,
        identities: plan.identities,
        ..Row::default()
    };
    let heap_before = crate::HEAP.live();
    let mut config = ClusterConfig {
        net: net(plan.loss),
        deploy: Some(DeploySetup::default()),
        ..ClusterConfig::new(plan.nodes, plan.seed)
    };
    config.setup.identities = plan.identities;
    let mut c = Cluster::new(config);
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0xe7e7);
    row.converge = c.run_until_true(SEC / 10, LIMIT * 5, Cluster::converged);
    eprintln!(
        "  N={} loss={}: converged at {:?} ({:?} wall); push/pulls sync/join/reconnect {:?}, {} MB of state",
        plan.nodes,
        plan.loss,
        row.converge,
        started.elapsed(),
        c.stats.dials,
        c.stats.push_pull_bytes / 1_000_000
    );
    // Idle means after formation's broadcasts are spent (a minute later), over a whole
    // push/pull period (longer past 32 nodes).
    c.run_for(60 * SEC);
    let period = 30 * SEC * droot_fleet::gossip::limits::push_pull_every(plan.nodes);
    row.idle_bytes = bytes_per_node_second(&mut c, period, |_, _| {});
    row.heap_per_node = crate::HEAP.live().saturating_sub(heap_before) as f64 / plan.nodes as f64;
    let mark = |c: &Cluster, what: &str| {
        eprintln!(
            "    {what} done: {:?} virtual, {:?} wall",
            c.clock(),
            started.elapsed()
        );
    };
    events(&mut c, plan, &mut rng, &mut row);
    mark(&c, "events");
    deploy(&mut c, &mut rng, &mut row);
    mark(&c, "deploy");
    row.storm_bytes = bytes_per_node_second(&mut c, 10 * SEC, |c, k| {
        c.fire(k % c.len(), &format!("storm-{k}"), vec![0; 64]);
    });
    tags(&mut c, &mut rng, &mut row);
    mark(&c, "storm and tags");
    crash(&mut c, &mut rng, &mut row);
    mark(&c, "crash and restart");
    partition(&mut c, &mut row);
    mark(&c, "partition");
    slow(&mut c, &mut rng, &mut row);
    mark(&c, "slow nodes");
    serf(plan, &mut rng, &mut row);
    row.wall = started.elapsed();
    eprintln!(
        "  N={} loss={}: done in {:?}",
        plan.nodes, plan.loss, row.wall
    );
    row
}

/// Mean bytes per node per second over `dur`, calling `each` every 100 ms.
fn bytes_per_node_second(
    c: &mut Cluster,
    dur: Duration,
    mut each: impl FnMut(&mut Cluster, usize),
) -> f64 {
    let before: u64 = c.stats.sent_bytes.iter().sum();
    let steps = (dur.as_millis() / 100) as usize;
    for k in 0..steps {
        each(c, k);
        c.run_for(SEC / 10);
    }
    let sent = c.stats.sent_bytes.iter().sum::<u64>() - before;
    sent as f64 / c.len() as f64 / dur.as_secs_f64()
}

fn events(c: &mut Cluster, plan: &Plan, rng: &mut StdRng, row: &mut Row) {
    for k in 0..plan.events {
        let name = format!("probe-{k}");
        let fired = c.clock();
        c.fire(rng.random_range(0..c.len()), &name, b"v42".to_vec());
        let n = c.up_count();
        let full = c.run_until_true(SEC / 1000, 30 * SEC, |c| c.reached(&name) >= n);
        row.event_full.push(full.map(|t| t - fired));
        let hops = c.stats.hops(&name).unwrap_or_default();
        row.event_hops.push(most_hops(hops, full.is_some()));
        let arrivals = c.stats.arrivals(&name).unwrap_or_default();
        row.arrivals
            .extend(arrivals.iter().map(|a| a.map(|t| t - fired)));
        c.run_for(2 * SEC);
    }
}

/// The most hops an event took to a node, if it reached every node (`all`).
fn most_hops(hops: &[Option<u32>], all: bool) -> Option<u32> {
    hops.iter().flatten().max().copied().filter(|_| all)
}

/// A deploy in waves of 10% from a random node; every activation takes 2-3 s.
fn deploy(c: &mut Cluster, rng: &mut StdRng, row: &mut Row) {
    let origin = rng.random_range(0..c.len());
    let rollout = Rollout {
        max_parallel: Some(MaxParallel::Percent(10)),
        canary: 0,
    };
    let start = c.clock();
    let id = c.deploy(origin, "v2", rollout);
    let n = c.up_count();
    row.deploy_waves = n.div_ceil(wave_size(n, rollout.max_parallel));
    row.deploy_desired = c
        .run_until_true(SEC / 100, LIMIT, |c| c.desired_reached(&id) >= n)
        .map(|t| t - start);
    let done = |c: &Cluster| {
        c.progress(origin, &id)
            .is_some_and(|p| p.targets.len() == n && p.ok.len() == n)
    };
    row.deploy_done = c
        .run_until_true(SEC / 10, LIMIT * 3, done)
        .map(|t| t - start);
}

fn tags(c: &mut Cluster, rng: &mut StdRng, row: &mut Row) {
    let who = rng.random_range(0..c.len());
    let tags: droot_fleet::gossip::Tags = [("role".to_owned(), "canary".to_owned())].into();
    let start = c.clock();
    c.set_tags(who, tags.clone());
    let seen = c.run_until_true(SEC / 100, LIMIT, |c| {
        (0..c.len()).all(|i| c.tags_seen(i, who).as_ref() == Some(&tags))
    });
    row.tags = seen.map(|t| t - start);
}

fn crash(c: &mut Cluster, rng: &mut StdRng, row: &mut Row) {
    let who = rng.random_range(1..c.len());
    let start = c.clock();
    c.crash(who);
    row.crash_noticed = c
        .run_until_true(SEC / 10, LIMIT, Cluster::converged)
        .map(|t| t - start);
    let start = c.clock();
    c.restart(who);
    let back = c.run_until_true(SEC / 10, LIMIT, |c| {
        c.up_count() == c.len() && c.converged()
    });
    row.rejoined = back.map(|t| t - start);
}

fn partition(c: &mut Cluster, row: &mut Row) {
    let half = c.len() / 2;
    let side = (0..c.len()).map(|i| u8::from(i >= half)).collect();
    c.network().partition(side);
    let split = c.run_until_true(SEC, LIMIT, |c| {
        (0..c.len())
            .all(|i| c.active_members(i) + 1 == if i >= half { c.len() - half } else { half })
    });
    c.network().heal();
    if split.is_none() {
        eprintln!("    the partition never split the views within {LIMIT:?}");
        for i in 0..c.len() {
            let want = if i >= half { c.len() - half } else { half };
            if c.active_members(i) + 1 != want {
                eprintln!(
                    "      n{i} lists {} active, its side has {want}",
                    c.active_members(i) + 1
                );
            }
        }
    }
    let start = c.clock();
    row.healed = c
        .run_until_true(SEC / 10, LIMIT * 2, Cluster::converged)
        .map(|t| t - start);
}

/// 1% of nodes (at least one) each paused for 2 s at random times over 60 s.
fn slow(c: &mut Cluster, rng: &mut StdRng, row: &mut Row) {
    let before = c.stats.false_failures;
    let count = (c.len() / 100).max(1);
    let slow: Vec<usize> = (0..count).map(|_| rng.random_range(0..c.len())).collect();
    for _ in 0..6 {
        for &i in &slow {
            c.pause(i, 2 * SEC);
        }
        c.run_for(10 * SEC);
    }
    c.run_for(30 * SEC);
    row.slow_nodes = count;
    row.false_failures = c.stats.false_failures - before;
}

fn serf(plan: &Plan, rng: &mut StdRng, row: &mut Row) {
    let mut m = SerfModel::new(plan.nodes, plan.seed, net(plan.loss), SerfConfig::default());
    m.run_until(SEC);
    for _ in 0..plan.events {
        let fired = m.clock();
        let id = m.fire(rng.random_range(0..plan.nodes));
        m.run_until(fired + 30 * SEC);
        let arrivals = m.arrivals(id);
        let full = arrivals.iter().all(Option::is_some);
        let last = arrivals.iter().flatten().max().copied();
        row.serf_full.push(last.filter(|_| full).map(|t| t - fired));
        row.serf_hops.push(most_hops(m.hops(id), full));
        row.serf_arrivals
            .extend(arrivals.iter().map(|a| a.map(|t| t - fired)));
    }
    let before: u64 = m.sent_bytes.iter().sum();
    let start = m.clock();
    for k in 0..100u32 {
        m.fire(k as usize % plan.nodes);
        m.run_until(start + SEC / 10 * (k + 1));
    }
    let sent = m.sent_bytes.iter().sum::<u64>() - before;
    row.serf_storm_bytes = sent as f64 / plan.nodes as f64 / 10.0;
}
