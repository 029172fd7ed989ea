//! Agents in memory: real [`AgentMachine`]s (foca included) passing their datagram and
//! push/pull effects to each other through a test loop with a virtual clock, the way
//! `gossip/tests.rs` runs foca clusters. No sockets, files, processes or real time.
//!
//! The loop plays the executor: it routes sends by address, runs dials against the
//! machine at the target (or fails them), keeps timers in time order, answers
//! [`Effect::StartOwed`] with the node's free slots, and records every other effect in
//! the node's log, in order. Journal writes wait in [`Node::disk`] until a test
//! completes them, so tests control what the disk does.

mod events;
mod joins;
mod queries;
mod suspicions;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{AgentMachine, Effect, Init, Now, Timer};
use crate::agent::config::{FileConfig, HandlerFile, Overrides, Settings};
use crate::agent::keys::insecure_keyring;
use crate::agent::pending::{Batch, PendingHandlers};
use crate::agent::queries::QueryRegistry;
use crate::agent::{AgentError, members::LeftBook};
use crate::gossip::message::{self, Datagram, Direct};
use crate::gossip::{CoreConfig, GossipCore, NodeId, PROTOCOL_VERSION, PushPullState, QueryResult};
use crate::wire;

const EPOCH: Duration = Duration::from_secs(1_700_000_000);
const SEC: Duration = Duration::from_secs(1);

/// A waiter is a label; a handler slot is nothing.
type Machine = AgentMachine<&'static str, ()>;
type E = Effect<&'static str, ()>;

/// How a test node is set up.
#[derive(Default)]
struct Setup {
    join: Vec<String>,
    tags: Vec<String>,
    /// `(event filter, program)`.
    handlers: Vec<(&'static str, &'static str)>,
    retry_interval: Option<&'static str>,
    retry_max: Option<u32>,
}

struct Node {
    id: NodeId,
    machine: Machine,
    /// Every effect the machine returned, in order (batches moved to `disk`, foca's
    /// timers left out).
    log: Vec<E>,
    done: Vec<(&'static str, QueryResult)>,
    failed: Vec<(&'static str, AgentError)>,
    /// Journal appends with batches, waiting for the test to complete them.
    disk: VecDeque<Vec<Batch<()>>>,
    /// Handler slots free when the machine asks.
    free_slots: usize,
    /// A node that is not up drops what reaches it, and its timers.
    up: bool,
}

struct Sim {
    nodes: Vec<Node>,
    base: Instant,
    clock: Duration,
    seq: u64,
    timers: Vec<(Duration, u64, usize, Timer)>,
    net: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    dials: VecDeque<(usize, String, crate::agent::sansio::Dial, PushPullState)>,
}

fn addr(i: usize) -> String {
    format!("10.0.0.{}:7946", i + 1)
}

fn settings(name: &str, i: usize, setup: &Setup) -> Settings {
    let file = FileConfig {
        handlers: (setup.handlers.iter())
            .map(|(event, program)| HandlerFile {
                event: (*event).to_owned(),
                command: vec![(*program).to_owned()],
                timeout: None,
            })
            .collect(),
        retry_interval: setup.retry_interval.map(str::to_owned),
        retry_max: setup.retry_max,
        ..FileConfig::default()
    };
    let flags = Overrides {
        node: Some(name.to_owned()),
        bind: Some(addr(i)),
        join: setup.join.clone(),
        tags: setup.tags.clone(),
        data_dir: Some("/nonexistent/machine-test".into()),
        insecure: true,
        ..Overrides::default()
    };
    Settings::merge(file, &flags).expect("test settings are valid")
}

/// The operator's signing key, which every test machine trusts.
fn operator() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42; 32])
}

fn machine(name: &str, i: usize, setup: &Setup) -> (NodeId, Machine) {
    let settings = settings(name, i, setup);
    let id = NodeId::new(name, settings.advertise, 0).unwrap();
    let core = GossipCore::new(
        id.clone(),
        settings.tags.clone(),
        CoreConfig::default(),
        EPOCH,
    );
    let init = Init {
        registry: QueryRegistry::with_builtins(name, false),
        settings,
        core,
        kinds: Default::default(),
        keyring: insecure_keyring(),
        key_authority: crate::agent::key_auth::KeyAuthority::new(crate::deploy::signed::Policy {
            trusted: crate::deploy::signed::Trust::Keys(vec![operator().verifying_key()]),
            max_age: 3600,
            max_skew: 300,
        }),
        left: LeftBook::default(),
        pending: PendingHandlers::default(),
        rng: StdRng::seed_from_u64(i as u64),
        foca_rng: StdRng::seed_from_u64(100 + i as u64),
    };
    (id, AgentMachine::new(init))
}

/// A copy of a timer the log can keep (foca's are not logged).
fn twin(t: &Timer) -> Option<Timer> {
    match t {
        Timer::Foca(_) => None,
        Timer::QueryDeadline(id) => Some(Timer::QueryDeadline(*id)),
        Timer::RetryJoin => Some(Timer::RetryJoin),
        Timer::TagSweep => Some(Timer::TagSweep),
        Timer::RetryHandlers(id) => Some(Timer::RetryHandlers(*id)),
        Timer::SuspicionExpired {
            member,
            incarnation,
        } => Some(Timer::SuspicionExpired {
            member: member.clone(),
            incarnation: *incarnation,
        }),
    }
}

/// What a datagram plaintext carries, for assertions.
fn direct(plain: &[u8]) -> Option<Direct> {
    match message::decode_datagram(plain) {
        Ok(Datagram::Direct(d)) => Some(d),
        _ => None,
    }
}

impl Sim {
    /// Nodes `a`, `b`, ... set up as given, not started.
    fn new(setups: Vec<Setup>) -> Self {
        let nodes = setups
            .iter()
            .enumerate()
            .map(|(i, setup)| {
                let name = ((b'a' + i as u8) as char).to_string();
                let (id, machine) = machine(&name, i, setup);
                Node {
                    id,
                    machine,
                    log: Vec::new(),
                    done: Vec::new(),
                    failed: Vec::new(),
                    disk: VecDeque::new(),
                    free_slots: 16,
                    up: true,
                }
            })
            .collect();
        Self {
            nodes,
            base: Instant::now(),
            clock: Duration::ZERO,
            seq: 0,
            timers: Vec::new(),
            net: VecDeque::new(),
            dials: VecDeque::new(),
        }
    }

    /// `n` nodes, each joining `a`, started and run until everyone sees everyone.
    fn cluster(mut setups: Vec<Setup>) -> Self {
        for s in setups.iter_mut().skip(1) {
            s.join = vec![addr(0)];
        }
        let n = setups.len();
        let mut sim = Self::new(setups);
        for i in 0..n {
            sim.start(i, Vec::new());
        }
        sim.run_for(5 * SEC);
        for node in &sim.nodes {
            let alive = node
                .machine
                .members()
                .iter()
                .filter(|m| m.status == "alive")
                .count();
            assert_eq!(alive, n, "{} sees everyone", node.id.name);
        }
        sim
    }

    fn now(&self) -> Now {
        Now {
            at: self.base + self.clock,
            wall: EPOCH + self.clock,
        }
    }

    fn start(&mut self, i: usize, rejoin: Vec<NodeId>) {
        let now = self.now();
        let effects = self.nodes[i].machine.start(now, rejoin);
        self.apply(i, effects);
    }

    /// Runs `input` on node `i` and carries out what it returns.
    fn input(&mut self, i: usize, input: impl FnOnce(&mut Machine, Now) -> Vec<E>) {
        let now = self.now();
        let effects = input(&mut self.nodes[i].machine, now);
        self.apply(i, effects);
    }

    /// Carries out `effects` of node `i` in order, as the executor does.
    fn apply(&mut self, i: usize, effects: Vec<E>) {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            let more = self.carry_out(i, effect);
            for e in more.into_iter().rev() {
                queue.push_front(e);
            }
        }
    }

    fn carry_out(&mut self, i: usize, effect: E) -> Vec<E> {
        let now = self.now();
        let (clock, seq) = (self.clock, self.seq);
        let node = &mut self.nodes[i];
        let logged = match effect {
            Effect::Send { to, plain } => {
                self.net.push_back((node.id.addr, to, plain.clone()));
                Effect::Send { to, plain }
            }
            Effect::Schedule { after, timer } => {
                let copy = twin(&timer);
                self.seq += 1;
                self.timers.push((clock + after, seq, i, timer));
                match copy {
                    Some(timer) => Effect::Schedule { after, timer },
                    None => return Vec::new(),
                }
            }
            Effect::CancelDeadline(id) => {
                self.timers.retain(|(_, _, n, t)| {
                    *n != i || !matches!(t, Timer::QueryDeadline(q) if *q == id)
                });
                Effect::CancelDeadline(id)
            }
            Effect::Dial {
                target,
                kind,
                state,
            } => {
                self.dials
                    .push_back((i, target.clone(), kind, (*state).clone()));
                Effect::Dial {
                    target,
                    kind,
                    state,
                }
            }
            Effect::Journal { lines, batches } => {
                if !batches.is_empty() {
                    node.disk.push_back(batches);
                }
                let batches = Vec::new();
                Effect::Journal { lines, batches }
            }
            Effect::StartOwed => {
                node.log.push(Effect::StartOwed);
                let want = node.machine.owed_now(now).min(node.free_slots);
                return node.machine.start_owed(now, vec![(); want]);
            }
            Effect::QueryDone { waiter, result } => {
                node.done.push((waiter, result));
                return Vec::new();
            }
            Effect::QueryFailed { waiter, error } => {
                node.failed.push((waiter, error));
                return Vec::new();
            }
            other => other,
        };
        node.log.push(logged);
        Vec::new()
    }

    fn at(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.id.addr == addr && n.up)
    }

    /// Delivers datagrams and runs dials until nothing is in flight.
    fn settle(&mut self) {
        let mut budget = 100_000;
        loop {
            budget -= 1;
            assert!(budget > 0, "packet storm");
            if let Some((from, to, plain)) = self.net.pop_front() {
                if let Some(j) = self.at(to) {
                    self.input(j, |m, now| m.datagram(now, &plain, from));
                }
                continue;
            }
            let Some((i, target, kind, state)) = self.dials.pop_front() else {
                return;
            };
            let peer = target.parse().ok().and_then(|a| self.at(a));
            let result = match peer {
                Some(j) => {
                    let now = self.now();
                    let from = state.from.addr.ip();
                    let (reply, effects) =
                        self.nodes[j]
                            .machine
                            .push_pull_request(now, state, PROTOCOL_VERSION, from);
                    self.apply(j, effects);
                    Ok(reply)
                }
                None => Err(format!("connecting to {target}: connection refused")),
            };
            if self.nodes[i].up {
                self.input(i, |m, now| m.push_pull_done(now, target, kind, result));
            }
        }
    }

    /// Runs the cluster for `dur` of virtual time.
    fn run_for(&mut self, dur: Duration) {
        let end = self.clock + dur;
        loop {
            self.settle();
            let next = (0..self.timers.len()).min_by_key(|&p| (self.timers[p].0, self.timers[p].1));
            let Some(pos) = next.filter(|&p| self.timers[p].0 <= end) else {
                break;
            };
            let (at, _, i, timer) = self.timers.remove(pos);
            self.clock = at;
            if self.nodes[i].up {
                self.input(i, |m, now| m.timer(now, timer));
            }
        }
        self.clock = end;
    }

    /// Node `i`'s view of the member `name`.
    fn member(&self, i: usize, name: &str) -> wire::Member {
        let members = self.nodes[i].machine.members();
        members
            .into_iter()
            .find(|m| m.name == name)
            .expect("a known member")
    }
}
