//! Fleet fan-out: a node takes the pieces of an artifact from peers that already hold
//! them, so the store serves an artifact about once per fleet rather than once per host.
//!
//! - [`index`]: the chunk index (a sha256 per piece) that `publish` writes beside the
//!   artifact and a deploy event pins, so every piece from a peer is checked on arrival.
//! - [`held`]: the artifacts this node holds for its peers, piece by piece.
//! - [`owners`]: which peers to ask for a piece, the same order on every node.
//!
//! The pieces travel over the agent's gossip TCP (sealed with the gossip key); the fetcher
//! in [`crate::deploy::fetch`] asks peers first and falls back to the store, which is never
//! more than one timeout away.

pub mod held;
pub mod index;
pub mod owners;
