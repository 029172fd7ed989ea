//! N real agent machines driven over the simulated [`Network`] on a virtual clock: the
//! simulator's executor. It plays the part of `agent::task`: it routes sends and dials,
//! keeps every timer and periodic tick on one [`Timeline`], and watches the machines'
//! monitor lines for what a run measures (deliveries, failures).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::deploy::{self, Activation, DeploySetup, NodeController};
use super::net::{NetConfig, Network};
use super::node::{self, EPOCH, Machine, NodeSetup};
use super::trace::{Stats, Trace};
use crate::agent::sansio::machine::Metric;
use crate::agent::sansio::{Dial, Effect, Now, Timer};
use crate::gossip::envelope::SEAL_OVERHEAD;
use crate::gossip::message::StreamMessage;
use crate::gossip::{PushPullState, QueryResponse};
use crate::timeline::Timeline;

#[path = "streams.rs"]
mod streams;
pub use streams::agreeing_exchange_bytes;
use streams::stream_size;

/// A run's shape.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub seed: u64,
    pub net: NetConfig,
    pub setup: NodeSetup,
    /// Join addresses per node (earlier nodes, the first always among them).
    pub seeds: usize,
    /// Node `i` starts at `i * start_spacing`.
    pub start_spacing: Duration,
    /// Run the deploy controller on every node.
    pub deploy: Option<DeploySetup>,
}

impl ClusterConfig {
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            net: NetConfig::default(),
            setup: NodeSetup::for_cluster(nodes),
            seeds: 3,
            start_spacing: Duration::from_millis(2),
            deploy: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Tick {
    PushPull,
    Reconnect,
    Snapshot,
    /// The deploy controller's refresh.
    Deploy,
}

enum Item {
    Start(usize),
    Datagram {
        from: usize,
        to: usize,
        plain: Vec<u8>,
    },
    Timer {
        node: usize,
        life: u32,
        timer: Timer,
    },
    Tick {
        node: usize,
        life: u32,
        tick: Tick,
    },
    DialArrive {
        from: usize,
        life: u32,
        to: usize,
        kind: Dial,
        state: Box<PushPullState>,
    },
    DialBack {
        node: usize,
        life: u32,
        target: usize,
        kind: Dial,
        result: Result<Box<PushPullState>, String>,
    },
    Answer {
        to: usize,
        answer: Box<QueryResponse>,
    },
    Activated {
        node: usize,
        life: u32,
        activation: Box<Activation>,
    },
}

impl Item {
    fn tick(node: usize, life: u32, tick: Tick) -> Self {
        Item::Tick { node, life, tick }
    }

    /// The node this item happens at.
    fn node(&self) -> usize {
        match self {
            Item::Start(n) | Item::Answer { to: n, .. } => *n,
            Item::Datagram { to, .. } | Item::DialArrive { to, .. } => *to,
            Item::Timer { node, .. }
            | Item::Tick { node, .. }
            | Item::DialBack { node, .. }
            | Item::Activated { node, .. } => *node,
        }
    }
}

pub(super) struct SimNode {
    pub(super) machine: Machine,
    pub(super) up: bool,
    /// Bumped at every crash: timers and dials of an earlier life are dropped.
    pub(super) life: u32,
    pub(super) bump: u16,
    /// A paused node (SIGSTOP) handles nothing before this.
    pub(super) paused_until: Duration,
    pub(super) join: Vec<usize>,
    pub(super) deploy: Option<NodeController>,
}

/// The simulated cluster; see the module docs.
pub struct Cluster {
    config: ClusterConfig,
    nodes: Vec<SimNode>,
    timeline: Timeline<Duration, Item>,
    clock: Duration,
    base: Instant,
    net: Network,
    rng: StdRng,
    /// The peer whose datagram or stream a node handles now (for [`Stats::hops`]).
    pub(super) from: Option<usize>,
    /// What a run measures.
    pub stats: Stats,
    pub trace: Trace,
}

/// Node index of a simulated address.
fn index_of(addr: SocketAddr, nodes: usize) -> Option<usize> {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let n = (u32::from(ip) & 0x00ff_ffff) as usize;
    (1..=nodes).contains(&n).then(|| n - 1)
}

impl Cluster {
    /// The nodes, built and queued to start one after another.
    pub fn new(config: ClusterConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut timeline = Timeline::default();
        let nodes = (0..config.nodes)
            .map(|i| {
                let join = join_list(i, config.seeds, &mut rng);
                let machine = node::machine(
                    i,
                    0,
                    &join,
                    &config.setup,
                    config.deploy.as_ref(),
                    config.seed,
                );
                timeline.push(config.start_spacing * i as u32, Item::Start(i));
                let deploy =
                    (config.deploy.as_ref()).map(|d| NodeController::new(&node::name(i), d));
                SimNode {
                    machine,
                    up: true,
                    life: 0,
                    bump: 0,
                    paused_until: Duration::ZERO,
                    join,
                    deploy,
                }
            })
            .collect();
        Self {
            net: Network::new(config.net, config.nodes),
            stats: Stats::new(config.nodes),
            trace: Trace::default(),
            config,
            nodes,
            timeline,
            clock: Duration::ZERO,
            base: Instant::now(),
            rng,
            from: None,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time since the run began.
    pub fn clock(&self) -> Duration {
        self.clock
    }

    pub fn network(&mut self) -> &mut Network {
        &mut self.net
    }

    pub(super) fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub(super) fn node(&self, i: usize) -> &Machine {
        &self.nodes[i].machine
    }

    pub(super) fn machine_mut(&mut self, i: usize) -> &mut Machine {
        &mut self.nodes[i].machine
    }

    pub(super) fn node_mut(&mut self, i: usize) -> &mut SimNode {
        &mut self.nodes[i]
    }

    pub(super) fn controller(&self, i: usize) -> Option<&NodeController> {
        self.nodes[i].deploy.as_ref()
    }

    pub(super) fn controller_mut(&mut self, i: usize) -> Option<&mut NodeController> {
        self.nodes[i].deploy.as_mut()
    }

    pub(super) fn rng_mut(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Node `i`'s `activation` ends `after` from now (unless it crashes first).
    pub(super) fn schedule_activation(&mut self, i: usize, after: Duration, a: Activation) {
        let life = self.nodes[i].life;
        let item = Item::Activated {
            node: i,
            life,
            activation: Box::new(a),
        };
        self.timeline.push(self.clock + after, item);
    }

    /// Whether node `i` runs (it may be paused).
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    /// Queues node `i`'s start now.
    pub(super) fn start_now(&mut self, i: usize) {
        self.timeline.push(self.clock, Item::Start(i));
    }

    pub(super) fn now(&self) -> Now {
        Now {
            at: self.base + self.clock,
            wall: EPOCH + self.clock,
        }
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some((at, item)) = self.timeline.pop_until(until) {
            self.clock = at;
            self.step(item);
        }
        self.clock = self.clock.max(until);
    }

    /// Runs for `dur` of virtual time.
    pub fn run_for(&mut self, dur: Duration) {
        self.run_until(self.clock + dur);
    }

    /// Runs in steps of `step` until `done` holds or `limit` has passed; the time it held.
    pub fn run_until_true(
        &mut self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> Option<Duration> {
        let end = self.clock + limit;
        while self.clock < end {
            if done(self) {
                return Some(self.clock);
            }
            self.run_for(step);
        }
        done(self).then_some(self.clock)
    }

    fn step(&mut self, item: Item) {
        let i = item.node();
        let node = &self.nodes[i];
        if node.up && self.clock < node.paused_until {
            let at = node.paused_until;
            self.timeline.push(at, item);
            return;
        }
        self.trace.step(self.clock, i, &item_tag(&item));
        match item {
            Item::Start(i) => self.start(i),
            Item::Datagram { from, to, plain } => self.datagram(from, to, &plain),
            Item::Timer { node, life, timer } => {
                if self.alive(node, life) {
                    self.input(node, |m, now| m.timer(now, timer));
                }
            }
            Item::Tick { node, life, tick } => self.tick(node, life, tick),
            Item::DialArrive {
                from,
                life,
                to,
                kind,
                state,
            } => self.dial_arrives(from, life, to, kind, *state),
            Item::DialBack {
                node,
                life,
                target,
                kind,
                result,
            } => {
                if self.alive(node, life) {
                    let addr = node::address(target).to_string();
                    let result = result.map(|s| *s);
                    self.input_from(node, target, |m, now| {
                        m.push_pull_done(now, addr, kind, result)
                    });
                }
            }
            Item::Answer { to, answer } => {
                if self.nodes[to].up {
                    self.input(to, |m, now| m.query_response(now, *answer));
                }
            }
            Item::Activated {
                node,
                life,
                activation,
            } => {
                if self.alive(node, life) {
                    self.activated(node, *activation);
                }
            }
        }
    }

    fn alive(&self, i: usize, life: u32) -> bool {
        self.nodes[i].up && self.nodes[i].life == life
    }

    fn start(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        self.input(i, |m, now| m.start(now, Vec::new()));
        self.deploy_start(i);
        let life = self.nodes[i].life;
        let deploy = self.nodes[i].deploy.is_some().then_some(Tick::Deploy);
        for tick in [Tick::PushPull, Tick::Reconnect, Tick::Snapshot]
            .into_iter()
            .chain(deploy)
        {
            let every = self.tick_interval(i, tick);
            let phase = self.rng.random_range(0..every.as_millis().max(1) as u64);
            let at = self.clock + Duration::from_millis(phase);
            self.timeline.push(at, Item::tick(i, life, tick));
        }
    }

    fn tick_interval(&self, i: usize, tick: Tick) -> Duration {
        let s = self.nodes[i].machine.settings();
        match tick {
            Tick::PushPull => s.push_pull_interval,
            Tick::Reconnect => s.reconnect_interval,
            Tick::Snapshot => s.snapshot_interval,
            Tick::Deploy => deploy::TICK,
        }
    }

    fn tick(&mut self, i: usize, life: u32, tick: Tick) {
        if !self.alive(i, life) {
            return;
        }
        match tick {
            Tick::PushPull => self.input(i, |m, _| m.push_pull_tick()),
            Tick::Reconnect => self.input(i, |m, _| m.reconnect_tick()),
            Tick::Snapshot => self.input(i, |m, now| m.snapshot_tick(now)),
            Tick::Deploy => self.deploy_tick(i),
        }
        let at = self.clock + self.tick_interval(i, tick);
        self.timeline.push(at, Item::tick(i, life, tick));
    }

    fn datagram(&mut self, from: usize, to: usize, plain: &[u8]) {
        if !self.nodes[to].up {
            return;
        }
        let addr = node::address(from);
        self.input_from(to, from, |m, now| m.datagram(now, plain, addr));
    }

    /// [`Self::input`] for what peer `from` sent.
    pub(super) fn input_from(
        &mut self,
        i: usize,
        from: usize,
        input: impl FnOnce(&mut Machine, Now) -> Vec<Effect<(), ()>>,
    ) {
        self.from = Some(from);
        self.input(i, input);
        self.from = None;
    }

    /// Runs `input` on node `i` and carries out what it returns.
    pub(super) fn input(
        &mut self,
        i: usize,
        input: impl FnOnce(&mut Machine, Now) -> Vec<Effect<(), ()>>,
    ) {
        let now = self.now();
        let effects = input(&mut self.nodes[i].machine, now);
        self.apply(i, effects);
    }

    /// Carries out `effects` of node `i` in order, as the agent's task does.
    fn apply(&mut self, i: usize, effects: Vec<Effect<(), ()>>) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            let more = self.carry_out(i, effect);
            for e in more.into_iter().rev() {
                queue.push_front(e);
            }
        }
    }

    fn carry_out(&mut self, i: usize, effect: Effect<(), ()>) -> Vec<Effect<(), ()>> {
        let now = self.now();
        let life = self.nodes[i].life;
        match effect {
            Effect::Send { to, plain } => self.send(i, to, plain),
            Effect::Schedule { after, timer } => {
                let item = Item::Timer {
                    node: i,
                    life,
                    timer,
                };
                self.timeline.push(self.clock + after, item);
            }
            Effect::Dial {
                target,
                kind,
                state,
            } => self.dial(i, &target, kind, state),
            Effect::Journal { batches, .. } if !batches.is_empty() => {
                return self.nodes[i].machine.journaled(now, batches, Ok(()));
            }
            Effect::StartOwed => {
                let m = &mut self.nodes[i].machine;
                let want = m.owed_now(now);
                return m.start_owed(now, vec![(); want]);
            }
            Effect::StreamAnswer { to, answer } => {
                let size = stream_size(&StreamMessage::QueryResponse(answer.clone()));
                self.stats.sent(i, size);
                let Some(j) = index_of(to.addr, self.nodes.len()) else {
                    return Vec::new();
                };
                if let Some(d) = self.net.stream(i, j, &mut self.rng) {
                    let answer = Box::new(answer);
                    self.timeline
                        .push(self.clock + d, Item::Answer { to: j, answer });
                }
            }
            Effect::Monitor(line) => self.stats.monitor(i, self.clock, self.from, &line),
            Effect::Superseding(item) => self.deploy_slot(i, &item),
            Effect::SpawnEventHandlers {
                event, handlers, ..
            } => {
                for h in handlers {
                    self.deploy_delivery(i, &event, h);
                }
            }
            Effect::Count(Metric::PushPullMerged) => {
                if let Some(c) = self.nodes[i].deploy.as_mut() {
                    c.merged += 1;
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn send(&mut self, i: usize, to: SocketAddr, plain: Vec<u8>) {
        self.stats.sent(i, plain.len() + SEAL_OVERHEAD);
        self.trace.send(plain.len());
        let Some(j) = index_of(to, self.nodes.len()) else {
            return;
        };
        match self.net.datagram(i, j, &mut self.rng) {
            Some(d) => {
                let item = Item::Datagram {
                    from: i,
                    to: j,
                    plain,
                };
                self.timeline.push(self.clock + d, item);
            }
            None => self.stats.lost += 1,
        }
    }
}

/// Node `i`'s join addresses: the first node and up to `seeds - 1` other earlier ones.
fn join_list(i: usize, seeds: usize, rng: &mut StdRng) -> Vec<usize> {
    if i == 0 {
        return Vec::new();
    }
    let mut join = vec![0];
    for _ in 1..seeds.min(i) {
        let j = rng.random_range(0..i);
        if !join.contains(&j) {
            join.push(j);
        }
    }
    join
}

fn item_tag(item: &Item) -> [u8; 1] {
    [match item {
        Item::Start(_) => 0,
        Item::Datagram { .. } => 1,
        Item::Timer { .. } => 2,
        Item::Tick { .. } => 3,
        Item::DialArrive { .. } => 4,
        Item::DialBack { .. } => 5,
        Item::Answer { .. } => 6,
        Item::Activated { .. } => 7,
    }]
}
