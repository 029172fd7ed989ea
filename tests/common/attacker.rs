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

    /// A sealed datagram to `to` whose IP and UDP source say `from` (a raw socket: root on
    /// any host of the network can write one).
    pub fn datagram_from(&self, from: &str, to: &str, plain: &[u8]) {
        let sealed = droot_fleet::gossip::envelope::seal_datagram(
            &self.ring.read().unwrap(),
            plain,
            &mut rand::rng(),
        )
        .unwrap();
        send_spoofed_udp(from.parse().unwrap(), to.parse().unwrap(), &sealed);
    }
}

/// One IPv4 UDP datagram with a forged source, through a raw socket (`IPPROTO_RAW` implies
/// that we write the IP header; the kernel fills in its checksum). UDP checksum 0: none.
fn send_spoofed_udp(from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only");
    };
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let mut pkt = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    pkt[2..4].copy_from_slice(&(udp_len + 20).to_be_bytes());
    pkt.extend_from_slice(&from.ip().octets());
    pkt.extend_from_slice(&to.ip().octets());
    pkt.extend_from_slice(&from.port().to_be_bytes());
    pkt.extend_from_slice(&to.port().to_be_bytes());
    pkt.extend_from_slice(&udp_len.to_be_bytes());
    pkt.extend_from_slice(&[0, 0]);
    pkt.extend_from_slice(payload);
    // SAFETY: plain socket calls on a descriptor we own; `dest` outlives the sendto.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut dest: libc::sockaddr_in = std::mem::zeroed();
        dest.sin_family = libc::AF_INET as libc::sa_family_t;
        dest.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        let sent = libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const dest).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(sent, pkt.len() as isize, "raw sendto: {err}");
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
/// writes (and without a MAC, an enrolled receiver that requires identities drops it).
pub fn foca_datagram(
    header: &foca::Header<NodeId>,
    updates: &[foca::Member<NodeId>],
    broadcasts: &[Vec<u8>],
) -> Vec<u8> {
    let pkt = foca_packet(header, updates, broadcasts);
    droot_fleet::gossip::message::encode_foca_datagram(&pkt, None)
}

/// The bare foca packet of [`foca_datagram`].
pub fn foca_packet(
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
    pkt
}

/// The node key in an identity file: a member's, stolen (root on that host reads it).
pub fn node_key(identity_file: &Path) -> ed25519_dalek::SigningKey {
    let text = std::fs::read_to_string(identity_file).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    droot_fleet::keytext::signing_key_from_text(v["node_key"].as_str().unwrap(), "node key")
        .unwrap()
}

/// [`foca_datagram`] with the MAC the holder of `stolen` makes for the member whose node
/// key is `receiver` (public: every member card carries it).
pub fn authed_datagram(
    stolen: &ed25519_dalek::SigningKey,
    receiver: &ed25519_dalek::VerifyingKey,
    header: &foca::Header<NodeId>,
    broadcasts: &[Vec<u8>],
) -> Vec<u8> {
    let pkt = foca_packet(header, &[], broadcasts);
    let mut keys = droot_fleet::gossip::pairwise::PairKeys::new(stolen);
    let auth = keys.seal(receiver, &pkt, now_ms()).unwrap();
    droot_fleet::gossip::message::encode_foca_datagram(&pkt, Some(&auth))
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
