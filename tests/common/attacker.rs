//! A holder of a cluster's gossip key and nothing else (one leaked host has it), as the
//! identity attack tests use it: it speaks the agent's own push/pull and datagrams with
//! the cluster's keyring.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use droot_fleet::agent::net::push_pull;
use droot_fleet::gossip::supersede::{Superseding, encode_items};
use droot_fleet::gossip::versioned::{Extension, ext};
use droot_fleet::gossip::{Keyring, NodeId, PROTOCOL_VERSION, PushPullState};

/// A holder of the cluster's gossip key, and nothing else.
pub struct Attacker {
    ring: Arc<RwLock<Keyring>>,
    rt: tokio::runtime::Runtime,
    pub id: NodeId,
}

impl Attacker {
    pub fn new(keyring: &Path, name: &str, addr: &str) -> Self {
        let ring = droot_fleet::agent::keys::load(keyring).expect("the cluster keyring");
        Self {
            ring: Arc::new(RwLock::new(ring)),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            id: NodeId::new(name, addr.parse().unwrap(), 1).unwrap(),
        }
    }

    /// A push/pull state from the attacker, carrying `items` and claiming `members`.
    pub fn state(
        &self,
        items: &[Superseding],
        members: Vec<foca::Member<NodeId>>,
    ) -> PushPullState {
        let refs: Vec<&Superseding> = items.iter().collect();
        PushPullState {
            from: self.id.clone(),
            tags: [("role".to_owned(), "ghost".to_owned())].into(),
            members,
            event_ltime: 0,
            query_ltime: 0,
            events: Vec::new(),
            version: PROTOCOL_VERSION,
            extensions: vec![Extension {
                tag: ext::SIGNED_SUPERSEDING,
                bytes: encode_items(&refs, true),
            }],
        }
    }

    /// One push/pull with the agent at `to`; its reply.
    pub fn push(&self, to: &str, state: PushPullState) -> Result<PushPullState, String> {
        let addr: SocketAddr = to.parse().unwrap();
        self.rt
            .block_on(push_pull(addr, state, self.ring.clone()))
            .map_err(|e| e.to_string())
    }

    /// A sealed datagram to `to`.
    pub fn datagram(&self, to: &str, plain: &[u8]) {
        let sealed = droot_fleet::gossip::envelope::seal_datagram(
            &self.ring.read().unwrap(),
            plain,
            &mut rand::rng(),
        )
        .unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.send_to(&sealed, to).unwrap();
    }
}

pub fn now_ms() -> u64 {
    u64::try_from(droot_fleet::wall::now().as_millis()).unwrap()
}

pub fn slot(kind: &str, key: &str, origin: &str, version: u64, body: Vec<u8>) -> Superseding {
    Superseding {
        kind: kind.into(),
        key: key.into(),
        version,
        origin: origin.into(),
        body,
        sig: None,
    }
}

/// A foca packet as a datagram plaintext: `header`, then `updates` (foca's own layout:
/// a big-endian `u16` count, then each member), then `broadcasts` (each length-prefixed).
/// Nothing in it says who really sent it: the header's `src` is whatever the sender
/// writes.
pub fn foca_datagram(
    header: &foca::Header<NodeId>,
    updates: &[foca::Member<NodeId>],
    broadcasts: &[Vec<u8>],
) -> Vec<u8> {
    let mut pkt = postcard::to_stdvec(header).unwrap();
    pkt.extend_from_slice(&u16::try_from(updates.len()).unwrap().to_be_bytes());
    for m in updates {
        pkt.extend(postcard::to_stdvec(m).unwrap());
    }
    for b in broadcasts {
        pkt.extend_from_slice(&u16::try_from(b.len()).unwrap().to_be_bytes());
        pkt.extend_from_slice(b);
    }
    droot_fleet::gossip::message::encode_foca_datagram(&pkt)
}

impl Attacker {
    /// What the agent at `to` tells a push/pull peer: its own identity (`from`) and the
    /// members it knows, each with its current bump.
    pub fn learn(&self, to: &str) -> PushPullState {
        self.push(to, self.state(&[], Vec::new()))
            .expect("push/pull answered")
    }
}

/// The identity named `name` in a push/pull reply (its sender or a member it lists).
pub fn identity_in(state: &PushPullState, name: &str) -> NodeId {
    if state.from.name == name {
        return state.from.clone();
    }
    state
        .members
        .iter()
        .map(|m| m.id().clone())
        .find(|id| id.name == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", state.members))
}
