//! The agent's side of the fleet fan-out ([`crate::fanout`]), handed to the deploy
//! fetcher: the artifacts this node holds for its peers, and asking a peer for a piece
//! over the gossip TCP with the agent's keyring.

use std::net::SocketAddr;
use std::sync::Arc;

use super::net::{self, SharedKeyring, StreamError};
use crate::fanout::held::Held;

/// The held artifacts and the way to peers' ones.
#[derive(Debug)]
pub struct PeerPieces {
    held: Arc<Held>,
    keyring: SharedKeyring,
}

impl PeerPieces {
    pub fn new(held: Arc<Held>, keyring: SharedKeyring) -> Self {
        Self { held, keyring }
    }

    /// What this node holds (the fetcher adds pieces as they arrive).
    pub fn held(&self) -> &Arc<Held> {
        &self.held
    }

    /// Piece `piece` of `artifact` from the agent at `addr` (unchecked), or `None` when it
    /// does not hold it.
    pub async fn ask(
        &self,
        addr: SocketAddr,
        artifact: [u8; 32],
        piece: u32,
    ) -> Result<Option<Vec<u8>>, StreamError> {
        net::fetch_piece(addr, artifact, piece, &self.keyring).await
    }
}
