//! The byte budget of one UDP datagram, and the foca configuration that respects it.
//!
//! Why this exists: foca's `add_broadcast` accepts any item up to `max_packet_size`,
//! but an item only goes out if it fits in the room left *after* foca's header. An item
//! that never fits stays in foca's broadcast queue forever and silently never reaches
//! anyone. So every custom broadcast is capped at [`MAX_BROADCAST_ITEM`], computed for
//! the worst-case header, and user events/queries are capped from that.
//!
//! ```text
//! MAX_DATAGRAM (1400)                         sealed UDP datagram
//!  - SEAL_OVERHEAD (29)                       version + nonce + tag
//!  = MAX_PLAINTEXT (1371)
//!  - DATAGRAM_TAG_LEN (1)                     foca packet vs direct message
//!  = FOCA_MAX_PACKET_SIZE (1370)              -> foca Config::max_packet_size
//!    (+ 16-byte MAC between enrolled members: 1416 sealed, see pairwise.rs)
//!  - FOCA_HEADER_MAX (269)                    3 NodeIds + incarnation + message
//!  - 2 (update tally) - 2 (item length prefix)
//!  = MAX_BROADCAST_ITEM (1097)                one encoded custom broadcast
//! ```
//!
//! The worst header is `PingReq`/`IndirectPing`-style messages carrying a third
//! identity; with smaller names or IPv4 addresses there is simply spare room. Items
//! also wait while membership updates take the room, but never forever.

use std::num::{NonZeroU32, NonZeroUsize};

use super::envelope::MAX_PLAINTEXT;
use super::identity::MAX_NODE_ID_ENCODED_LEN;

/// The leading tag byte that tells foca packets from direct messages in a datagram.
pub const DATAGRAM_TAG_LEN: usize = 1;

/// The `max_packet_size` to configure foca with.
pub const FOCA_MAX_PACKET_SIZE: usize = MAX_PLAINTEXT - DATAGRAM_TAG_LEN;

/// Largest foca header: src + dst + a third identity inside the message, the
/// incarnation (u16 varint, 3 bytes), the message variant (1) and a probe number (1).
pub const FOCA_HEADER_MAX: usize = 3 * MAX_NODE_ID_ENCODED_LEN + 3 + 1 + 1;

/// foca's u16 count of piggybacked membership updates.
pub const FOCA_UPDATE_TALLY_LEN: usize = 2;

/// foca's u16 length prefix in front of each custom broadcast item.
pub const FOCA_ITEM_PREFIX_LEN: usize = 2;

/// Largest encoded custom broadcast item that is guaranteed to fit in a foca packet.
pub const MAX_BROADCAST_ITEM: usize =
    FOCA_MAX_PACKET_SIZE - FOCA_HEADER_MAX - FOCA_UPDATE_TALLY_LEN - FOCA_ITEM_PREFIX_LEN;

/// foca's LAN defaults (memberlist's `DefaultLANConfig`) with our packet size.
///
/// `cluster_size` is the number of members (the shell re-tunes as the cluster grows); it
/// sets how many times updates are retransmitted and how long suspicion lasts. Zero is
/// treated as one.
pub fn recommended_foca_config(cluster_size: u32) -> foca::Config {
    let size = NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
    let mut config = foca::Config::new_lan(size);
    config.max_packet_size = NonZeroUsize::new(FOCA_MAX_PACKET_SIZE).unwrap_or(NonZeroUsize::MIN);
    config.max_transmissions = max_transmissions(size.get());
    config
}

/// How many times each update (member change, event, query) is piggy-backed.
///
/// memberlist's `RetransmitMult * ceil(log10(N + 1))`, at least 4. foca's own formula
/// floors instead (4, 6, 8 at N = 10, 50, 100), which left a few percent of events
/// unreached by gossip until the next push/pull; rounding up gives 8, 8, 12.
pub fn max_transmissions(cluster_size: u32) -> std::num::NonZeroU8 {
    let rounds = f64::from(cluster_size.saturating_add(1))
        .log10()
        .ceil()
        .max(1.0);
    let tx = (4.0 * rounds).min(f64::from(u8::MAX)) as u8;
    std::num::NonZeroU8::new(tx.max(4)).unwrap_or(std::num::NonZeroU8::MIN)
}

/// How many `push_pull_interval`s apart a node's periodic push/pulls are in a cluster of
/// `cluster_size`: memberlist's `pushPullScale`, 1 up to 32 nodes, then
/// `ceil(log2(N) - log2(32)) + 1` (3 at 100, 6 at 1,000, 10 at 10,000). Each push/pull
/// carries the whole state, which grows with N, so a fixed interval made a node's idle
/// traffic grow linearly (2 KB/s at 1,000 in the simulator); scaled, it grows as N/log N.
pub fn push_pull_every(cluster_size: usize) -> u32 {
    if cluster_size <= 32 {
        return 1;
    }
    let over = (cluster_size as f64).log2() - 32f64.log2();
    over.ceil() as u32 + 1
}

/// The cluster size to re-tune foca for, if any: whenever the cluster (us included) grows
/// past the size it is tuned for, and when it shrinks to half of that or less (a little
/// hysteresis, so a flapping member does not re-tune back and forth). Never below
/// `expected`, the configured floor.
pub fn retune_size(tuned_for: u32, members: u32, expected: u32) -> Option<u32> {
    let size = members.max(expected).max(1);
    let grew = size > tuned_for;
    let halved = size.saturating_mul(2) <= tuned_for;
    (grew || halved).then_some(size)
}

/// How many peers a node forwards a new event to at once ("eager push"): its successor in
/// name order and random others ([`crate::agent::sansio::EagerPush`]).
///
/// With random targets alone, a node is missed by every push with probability about
/// e^-f, and ln N + 2 left about e^-2 ≈ 0.14 stragglers per event waiting for gossip (the
/// N = 100 latency tail); the successor closes that gap, and the random targets keep the
/// hop count near log N.
pub fn eager_fanout(cluster_size: usize) -> usize {
    let n = cluster_size.max(1) as f64;
    (n.ln().ceil() as usize + 2).max(3)
}

#[cfg(test)]
mod tests {

    #[test]
    fn push_pulls_spread_out_like_memberlists_as_the_cluster_grows() {
        let every: Vec<u32> = [1, 32, 33, 100, 1_000, 10_000]
            .into_iter()
            .map(push_pull_every)
            .collect();
        assert_eq!(every, [1, 1, 2, 3, 6, 10]);
    }

    use super::*;
    use crate::gossip::identity::{MAX_NODE_NAME_LEN, NodeId};

    #[test]
    fn retune_on_growth_and_halving_only() {
        assert_eq!(retune_size(16, 17, 16), Some(17));
        assert_eq!(retune_size(16, 16, 16), None);
        assert_eq!(
            retune_size(16, 3, 16),
            None,
            "never below the configured floor"
        );
        assert_eq!(retune_size(100, 60, 16), None, "small shrink: keep");
        assert_eq!(retune_size(100, 50, 16), Some(50));
        assert_eq!(retune_size(100, 0, 0), Some(1));
    }

    #[test]
    fn tuning_grows_with_the_cluster() {
        assert_eq!(max_transmissions(1).get(), 4);
        assert_eq!(max_transmissions(10).get(), 8);
        assert_eq!(max_transmissions(50).get(), 8);
        assert_eq!(max_transmissions(100).get(), 12);
        assert_eq!(max_transmissions(u32::MAX).get(), 40);
        assert_eq!(recommended_foca_config(100).max_transmissions.get(), 12);
        assert_eq!(eager_fanout(0), 3);
        assert_eq!(eager_fanout(10), 5);
        assert_eq!(eager_fanout(100), 7);
        assert_eq!(eager_fanout(1000), 9);
    }

    #[test]
    fn budget_numbers() {
        assert_eq!(FOCA_MAX_PACKET_SIZE, 1370);
        assert_eq!(FOCA_HEADER_MAX, 269);
        assert_eq!(MAX_BROADCAST_ITEM, 1097);
        assert_eq!(
            recommended_foca_config(5).max_packet_size.get(),
            FOCA_MAX_PACKET_SIZE
        );
    }

    /// The real worst-case foca header, as encoded by foca's postcard codec, is within
    /// the budget.
    #[test]
    fn worst_header_fits_budget() {
        let worst = NodeId::new(
            "z".repeat(MAX_NODE_NAME_LEN),
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap(),
            u16::MAX,
        )
        .unwrap();
        let messages = [
            foca::Message::Ping(255),
            foca::Message::PingReq {
                target: worst.clone(),
                probe_number: 255,
            },
            foca::Message::IndirectPing {
                origin: worst.clone(),
                probe_number: 255,
            },
            foca::Message::IndirectAck {
                target: worst.clone(),
                probe_number: 255,
            },
            foca::Message::ForwardedAck {
                origin: worst.clone(),
                probe_number: 255,
            },
            foca::Message::Broadcast,
        ];
        for message in messages {
            let header = foca::Header {
                src: worst.clone(),
                src_incarnation: u16::MAX,
                dst: worst.clone(),
                message,
            };
            let len = postcard::to_stdvec(&header).unwrap().len();
            assert!(len <= FOCA_HEADER_MAX, "{len} > {FOCA_HEADER_MAX}");
        }
    }
}
