//! The simulator's streams: a push/pull dial as TCP legs over the simulated network,
//! the peer's answer, and what each frame costs on the wire.

use std::time::Duration;

use super::{Cluster, Item, index_of};
use crate::agent::sansio::Dial;
use crate::gossip::PushPullState;
use crate::gossip::envelope::{FRAME_PREFIX_LEN, SEAL_OVERHEAD};
use crate::gossip::message::{StreamMessage, encode_stream};
use crate::sim::node;

/// How long a dial to an unreachable peer takes to fail (the agent's stream timeout).
pub(super) const DIAL_TIMEOUT: Duration = crate::agent::net::STREAM_TIMEOUT;

impl Cluster {
    pub(super) fn dial_arrives(
        &mut self,
        from: usize,
        life: u32,
        to: usize,
        kind: Dial,
        state: PushPullState,
    ) {
        let back = |result| Item::DialBack {
            node: from,
            life,
            target: to,
            kind,
            result,
        };
        if !self.nodes[to].up {
            let at = self.clock + self.config.net.latency;
            let refused = format!("connecting to {}: connection refused", node::address(to));
            self.timeline.push(at, back(Err(refused)));
            return;
        }
        let peer = node::address(from).ip();
        let version = crate::gossip::PROTOCOL_VERSION;
        let now = self.now();
        let (reply, effects) = self.nodes[to]
            .machine
            .push_pull_request(now, state, version, peer);
        self.from = Some(from);
        self.apply(to, effects);
        self.from = None;
        let size = state_size(&reply);
        self.stats.sent(to, size);
        self.stats.push_pull_bytes += size as u64;
        let at = match self.net.stream(to, from, &mut self.rng) {
            Some(d) => self.clock + d,
            None => self.clock + DIAL_TIMEOUT,
        };
        self.timeline.push(at, back(Ok(Box::new(reply))));
    }

    pub(super) fn dial(&mut self, i: usize, target: &str, kind: Dial, state: Box<PushPullState>) {
        let life = self.nodes[i].life;
        let size = state_size(&state);
        self.stats.sent(i, size);
        self.stats.push_pull_bytes += size as u64;
        self.stats.dials[match kind {
            Dial::Sync => 0,
            Dial::Join => 1,
            Dial::Reconnect => 2,
        }] += 1;
        let j = target
            .parse()
            .ok()
            .and_then(|a| index_of(a, self.nodes.len()));
        let Some(j) = j else {
            let result = Err(format!("no such peer {target}"));
            self.timeline.push(
                self.clock,
                Item::DialBack {
                    node: i,
                    life,
                    target: i,
                    kind,
                    result,
                },
            );
            return;
        };
        // A TCP handshake, then the request.
        let legs = [
            self.net.stream(i, j, &mut self.rng),
            self.net.stream(j, i, &mut self.rng),
            self.net.stream(i, j, &mut self.rng),
        ];
        if legs.iter().any(Option::is_none) {
            let result = Err(format!("stream with {target} timed out"));
            let item = Item::DialBack {
                node: i,
                life,
                target: j,
                kind,
                result,
            };
            self.timeline.push(self.clock + DIAL_TIMEOUT, item);
            return;
        }
        let took: Duration = legs.iter().flatten().sum();
        let item = Item::DialArrive {
            from: i,
            life,
            to: j,
            kind,
            state,
        };
        self.timeline.push(self.clock + took, item);
    }
}

/// What a push/pull state costs on the wire: the frame prefix, the seal, a tag byte, the
/// state (encoded without a copy of it).
pub(super) fn state_size(state: &PushPullState) -> usize {
    let mut body = Vec::new();
    let _ = crate::gossip::versioned::encode_state(state, &mut body);
    FRAME_PREFIX_LEN + SEAL_OVERHEAD + 1 + body.len()
}

/// What a stream message costs on the wire: the frame prefix, the seal, the message.
pub(super) fn stream_size(msg: &StreamMessage) -> usize {
    FRAME_PREFIX_LEN + SEAL_OVERHEAD + encode_stream(msg).map_or(0, |b| b.len())
}

/// What one periodic anti-entropy exchange costs on the wire between two nodes whose views
/// of `members` members agree: the digest request and the answer, in bytes (sealed
/// frames). Measured on the real encoders, without simulating the fleet.
pub fn agreeing_exchange_bytes(members: usize) -> (usize, usize) {
    use crate::gossip::{CoreConfig, GossipCore, NodeId, digest};
    let ids = (0..members).map(|i| NodeId::new(node::name(i), node::address(i), 0));
    let view: Vec<foca::Member<NodeId>> = ids
        .map(|id| foca::Member::alive(id.expect("a valid node name")))
        .collect();
    let me = view[0].id().clone();
    let core = GossipCore::new(me, Default::default(), CoreConfig::default(), node::EPOCH);
    let request = core.push_pull_digest(&view, true);
    let theirs = match digest::requested(&request) {
        Some(Ok(d)) => d,
        _ => unreachable!("a digest request carries its digest"),
    };
    let version = crate::gossip::PROTOCOL_VERSION;
    let (answer, differing) = core.push_pull_answer(view, &theirs, version);
    debug_assert!(!differing.any());
    (state_size(&request), state_size(&answer))
}
