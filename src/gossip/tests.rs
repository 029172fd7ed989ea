//! In-memory cluster simulation: real `foca::Foca` instances with our identity, handler,
//! packet budget and envelope, exchanging sealed datagrams through a test loop with a
//! virtual clock. No sockets, no real time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use foca::{AccumulatingRuntime, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::envelope::{self, MAX_DATAGRAM, OpenError};
use super::event::{EventError, MAX_EVENT_SIZE};
use super::handler::{CoreConfig, GossipCore, GossipFoca, Incoming, SharedCore};
use super::identity::{MAX_NODE_NAME_LEN, NodeId};
use super::keyring::{Key, Keyring};
use super::limits::recommended_foca_config;
use super::message::{Datagram, decode_datagram};
use super::query::Tags;

#[path = "tests_supersede.rs"]
mod supersede;

#[path = "tests_identity.rs"]
mod identity;

#[path = "tests_transition.rs"]
mod transition;

const EPOCH: Duration = Duration::from_secs(1_700_000_000);

struct Node {
    id: NodeId,
    keyring: Keyring,
    core: SharedCore,
    foca: GossipFoca<StdRng>,
    rt: AccumulatingRuntime<NodeId>,
    delivered: Vec<Incoming>,
    open_failures: Vec<OpenError>,
}

struct Sim {
    nodes: Vec<Node>,
    now: Duration,
    timers: Vec<(Duration, usize, Timer<NodeId>)>,
    net: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    rng: StdRng,
    max_sealed: usize,
}

impl Sim {
    fn new(ids: Vec<NodeId>, keyrings: Vec<Keyring>) -> Self {
        let n = ids.len() as u32;
        let nodes = ids
            .into_iter()
            .zip(keyrings)
            .enumerate()
            .map(|(i, (id, keyring))| {
                let core = SharedCore::new(GossipCore::new(
                    id.clone(),
                    Tags::new(),
                    CoreConfig::default(),
                    EPOCH,
                ));
                let foca =
                    core.new_foca(recommended_foca_config(n), StdRng::seed_from_u64(i as u64));
                Node {
                    id,
                    keyring,
                    core,
                    foca,
                    rt: AccumulatingRuntime::new(),
                    delivered: Vec::new(),
                    open_failures: Vec::new(),
                }
            })
            .collect();
        Self {
            nodes,
            now: Duration::ZERO,
            timers: Vec::new(),
            net: VecDeque::new(),
            rng: StdRng::seed_from_u64(99),
            max_sealed: 0,
        }
    }

    /// Moves everything node `i`'s runtime produced into the network / timer list.
    fn flush(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        while let Some((dst, data)) = node.rt.to_send() {
            assert!(data.len() <= super::limits::FOCA_MAX_PACKET_SIZE);
            let plain = node.core.lock().foca_datagram(&dst, &data);
            let sealed = envelope::seal_datagram(&node.keyring, &plain, &mut self.rng)
                .expect("foca packet fits a sealed datagram");
            self.max_sealed = self.max_sealed.max(sealed.len());
            self.net.push_back((node.id.addr, dst.addr, sealed));
        }
        while let Some((after, timer)) = node.rt.to_schedule() {
            self.timers.push((self.now + after, i, timer));
        }
        while node.rt.to_notify().is_some() {}
        node.delivered.extend(node.core.drain_incoming());
    }

    fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while let Some((src, dst, sealed)) = self.net.pop_front() {
            budget -= 1;
            assert!(budget > 0, "packet storm");
            let Some(i) = self.nodes.iter().position(|n| n.id.addr == dst) else {
                continue;
            };
            let node = &mut self.nodes[i];
            match envelope::open(&node.keyring, &sealed) {
                Ok(plain) => match decode_datagram(&plain).unwrap() {
                    Datagram::Foca { packet: pkt, auth } => {
                        // Screened against identities first, as the agent does.
                        let screened = node.core.lock().screen_packet(
                            pkt,
                            auth.as_ref(),
                            src,
                            super::screen::Stranger(u16::MAX),
                        );
                        if let Ok((super::screen::Screened::Pass { packet, .. }, _)) = screened {
                            // foca may refuse e.g. packets from a renamed identity; fine.
                            let _ = node.foca.handle_data(&packet, &mut node.rt);
                        }
                    }
                    Datagram::Direct(_) => unreachable!("no direct messages in this sim"),
                },
                Err(e) => node.open_failures.push(e),
            }
            self.flush(i);
        }
    }

    fn run_for(&mut self, dur: Duration) {
        let end = self.now + dur;
        loop {
            self.deliver_all();
            let Some(pos) = (0..self.timers.len()).min_by_key(|&p| self.timers[p].0) else {
                break;
            };
            if self.timers[pos].0 > end {
                break;
            }
            let (at, i, timer) = self.timers.swap_remove(pos);
            self.now = at;
            let node = &mut self.nodes[i];
            node.core.lock().tick(EPOCH + at);
            let _ = node.foca.handle_timer(timer, &mut node.rt);
            self.flush(i);
        }
        self.now = end;
    }

    fn join_all(&mut self) {
        let seed = self.nodes[0].id.clone();
        for i in 1..self.nodes.len() {
            let node = &mut self.nodes[i];
            node.foca.announce(seed.clone(), &mut node.rt).unwrap();
            self.flush(i);
        }
        self.run_for(Duration::from_secs(5));
    }

    fn events_at(&self, i: usize) -> Vec<&super::event::UserEvent> {
        self.nodes[i]
            .delivered
            .iter()
            .filter_map(|d| match d {
                Incoming::Event(e) => Some(e),
                Incoming::Query(_) | Incoming::Superseding(_) => None,
            })
            .collect()
    }
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(
        format!("node{i}"),
        format!("10.0.0.{i}:7946").parse().unwrap(),
        0,
    )
    .unwrap()
}

fn shared_key_ring() -> Keyring {
    Keyring::new(Key::generate(&mut StdRng::seed_from_u64(1234)))
}

#[test]
fn user_event_reaches_every_node_exactly_once() {
    let n = 5;
    let ring = shared_key_ring();
    let mut sim = Sim::new((0..n).map(node_id).collect(), vec![ring; n]);
    sim.join_all();
    for node in &sim.nodes {
        assert_eq!(
            node.foca.num_members(),
            n - 1,
            "{} sees everyone",
            node.id.name
        );
    }

    let mut rng = StdRng::seed_from_u64(5);
    let (ev, bytes) = sim.nodes[2]
        .core
        .lock()
        .create_event(&mut rng, "deploy", b"app@v42".to_vec())
        .unwrap();
    assert!(sim.nodes[2].foca.add_broadcast(&bytes).unwrap());
    sim.flush(2);

    sim.run_for(Duration::from_secs(10));
    for i in 0..n {
        let got = sim.events_at(i);
        assert_eq!(got, vec![&ev], "node{i} got the event exactly once");
        assert!(sim.nodes[i].open_failures.is_empty());
    }
    // Long after: gossip settled, still exactly once, and the backlog drained.
    sim.run_for(Duration::from_secs(30));
    for i in 0..n {
        assert_eq!(sim.events_at(i).len(), 1);
        assert_eq!(sim.nodes[i].foca.custom_broadcast_backlog(), 0);
    }
    assert!(sim.max_sealed <= MAX_DATAGRAM);
}

#[test]
fn packet_sealed_with_wrong_key_is_rejected() {
    let ring = shared_key_ring();
    let intruder_ring = Keyring::new(Key::generate(&mut StdRng::seed_from_u64(666)));
    let mut sim = Sim::new(
        (0..3).map(node_id).collect(),
        vec![ring.clone(), ring, intruder_ring],
    );
    sim.join_all();
    // Node 2 (wrong key) announced to node 0: dropped as unauthenticated, so nobody
    // learns about it; nodes 0 and 1 never see each other either (1 only announced
    // to 0, which works).
    assert!(matches!(
        sim.nodes[0].open_failures.first(),
        Some(OpenError::Authentication { tried: 1 })
    ));
    let names: Vec<_> = sim.nodes[0]
        .foca
        .iter_members()
        .map(|m| m.id().name.clone())
        .collect();
    assert_eq!(names, vec!["node1".to_owned()]);
    assert_eq!(sim.nodes[2].foca.num_members(), 0);

    // An event from a legit node never reaches the intruder.
    let mut rng = StdRng::seed_from_u64(5);
    let (_, bytes) = sim.nodes[1]
        .core
        .lock()
        .create_event(&mut rng, "deploy", vec![])
        .unwrap();
    sim.nodes[1].foca.add_broadcast(&bytes).unwrap();
    sim.flush(1);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.events_at(0).len(), 1);
    assert!(sim.events_at(2).is_empty());
}

/// The largest event the cap allows travels through real foca packets between nodes
/// with maximal identities (64-byte names, IPv6), and one byte more is refused.
#[test]
fn largest_event_fits_a_foca_packet() {
    let big_id = |i: u16| {
        NodeId::new(
            format!("{i}{}", "n".repeat(MAX_NODE_NAME_LEN - 1)),
            format!("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:{i:x}]:65535")
                .parse()
                .unwrap(),
            u16::MAX,
        )
        .unwrap()
    };
    let ring = shared_key_ring();
    let mut sim = Sim::new((1..=3).map(big_id).collect(), vec![ring; 3]);
    sim.join_all();

    let mut rng = StdRng::seed_from_u64(5);
    let name = "deploy";
    let payload = vec![0xAB; MAX_EVENT_SIZE - name.len()];
    let (ev, bytes) = sim.nodes[0]
        .core
        .lock()
        .create_event(&mut rng, name, payload.clone())
        .unwrap();
    sim.nodes[0].foca.add_broadcast(&bytes).unwrap();
    sim.flush(0);
    sim.run_for(Duration::from_secs(10));
    for i in 0..3 {
        assert_eq!(sim.events_at(i), vec![&ev], "node {i}");
    }
    assert_eq!(sim.nodes[0].foca.custom_broadcast_backlog(), 0, "not stuck");
    assert!(sim.max_sealed <= MAX_DATAGRAM);

    let mut too_big = payload;
    too_big.push(0);
    let err = sim.nodes[0]
        .core
        .lock()
        .create_event(&mut rng, name, too_big)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        EventError::EventTooLarge {
            size: MAX_EVENT_SIZE + 1,
            max: MAX_EVENT_SIZE
        }
        .to_string()
    );
}

/// A query reaches matching nodes only, once each, and the origin answers itself.
#[test]
fn query_reaches_matching_nodes_once() {
    use super::query::{Filter, QueryResponse, QueryTracker, Recorded};
    use std::time::Instant;

    let ring = shared_key_ring();
    let mut sim = Sim::new((0..4).map(node_id).collect(), vec![ring; 4]);
    sim.join_all();

    let mut rng = StdRng::seed_from_u64(8);
    let (q, bytes) = sim.nodes[0]
        .core
        .lock()
        .create_query(
            &mut rng,
            "uptime",
            vec![],
            vec![Filter::NodeName("node[0-2]".into())],
            Duration::from_secs(3),
        )
        .unwrap();
    let start = Instant::now();
    let alive: Vec<_> = std::iter::once(sim.nodes[0].id.clone())
        .chain(sim.nodes[0].foca.iter_members().map(|m| m.id().clone()))
        .map(|id| (id, Some(Tags::new())))
        .collect();
    let mut tracker = QueryTracker::new(&q, start, alive).unwrap();
    sim.nodes[0].foca.add_broadcast(&bytes).unwrap();
    sim.flush(0);
    sim.run_for(Duration::from_secs(10));

    for i in 0..4 {
        let queries: Vec<_> = sim.nodes[i]
            .delivered
            .iter()
            .filter(|d| matches!(d, Incoming::Query(_)))
            .collect();
        assert_eq!(queries.len(), usize::from(i <= 2), "node{i}");
        if i <= 2 {
            let resp = QueryResponse {
                id: q.id,
                from: sim.nodes[i].id.clone(),
                payload: vec![i as u8],
                sig: None,
            };
            assert_eq!(tracker.record(resp, start), Recorded::Accepted);
        }
    }
    assert!(tracker.is_complete());
    assert!(tracker.finish().missing.is_empty());
}

/// Restarting an agent from its snapshot (new bump) never re-delivers old events.
#[test]
fn restart_from_snapshot_does_not_redeliver() {
    let ring = shared_key_ring();
    let mut sim = Sim::new((0..3).map(node_id).collect(), vec![ring; 3]);
    sim.join_all();
    let mut rng = StdRng::seed_from_u64(5);
    let (ev, bytes) = sim.nodes[0]
        .core
        .lock()
        .create_event(&mut rng, "deploy", b"v1".to_vec())
        .unwrap();
    sim.nodes[0].foca.add_broadcast(&bytes).unwrap();
    sim.flush(0);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.events_at(2), vec![&ev]);

    // "Restart" node 2: persist, rebuild core + foca with bump + 1, rejoin.
    let snap = sim.nodes[2].core.lock().snapshot();
    let json = serde_json::to_vec(&snap).unwrap();
    let snap: super::handler::CoreSnapshot = serde_json::from_slice(&json).unwrap();
    let mut new_id = snap.identity.clone();
    new_id.bump += 1;
    let core = SharedCore::new(GossipCore::restore(
        new_id.clone(),
        Tags::new(),
        CoreConfig::default(),
        snap,
        EPOCH + sim.now,
    ));
    let foca = core.new_foca(recommended_foca_config(3), StdRng::seed_from_u64(77));
    let node = &mut sim.nodes[2];
    node.core = core;
    node.foca = foca;
    node.id = new_id;
    node.delivered.clear();
    sim.timers.retain(|t| t.1 != 2);
    let seed = sim.nodes[0].id.clone();
    let restarted = &mut sim.nodes[2];
    restarted.foca.announce(seed, &mut restarted.rt).unwrap();
    sim.flush(2);
    sim.run_for(Duration::from_secs(5));

    // The restarted identity replaced the old one everywhere, at once.
    for i in 0..2 {
        let peers: Vec<_> = sim.nodes[i]
            .foca
            .iter_members()
            .map(|m| m.id().clone())
            .collect();
        assert!(peers.contains(&sim.nodes[2].id), "node{i}: {peers:?}");
        assert_eq!(peers.len(), 2);
    }
    // Push/pull from node 0 brings the old event again: not delivered.
    let state = sim.nodes[0]
        .core
        .lock()
        .push_pull_state(sim.nodes[0].foca.iter_membership_state().cloned(), 2);
    let out = sim.nodes[2].core.lock().merge_push_pull(&state, true);
    assert!(out.new_events.is_empty());
    assert_eq!(out.duplicates, 1);
    assert!(sim.nodes[2].core.drain_incoming().is_empty());
}
