//! What the agent task reacts to besides timers and signals ([`Input`]), and the
//! handler [`Slot`] its journal batches carry. In a file of their own because the I/O
//! parts (sockets, disk writer, shell) send or name them and the task ([`super::task`])
//! drives those parts: so they depend on this file, never on the task.

use std::net::SocketAddr;

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::Command;
use super::config::HandlerConfig;
use super::pending::Batch;
use super::sansio::Dial;
use crate::gossip::{EventId, NodeId, PushPullState, QueryId, QueryResponse, UserEvent};

/// What the task reacts to besides timers and signals.
#[derive(Debug)]
pub enum Input {
    /// An opened datagram.
    Datagram { plain: Vec<u8>, from: SocketAddr },
    /// A peer started a push/pull with us; answer with our state.
    PushPullRequest {
        state: PushPullState,
        /// The protocol version of the peer's stream hello.
        peer_version: u16,
        /// Where the connection came from.
        peer: SocketAddr,
        reply: oneshot::Sender<PushPullState>,
    },
    /// Our outgoing push/pull finished.
    PushPullDone {
        target: String,
        kind: Dial,
        result: Result<PushPullState, String>,
    },
    /// A query answer that came over TCP.
    QueryResponse(QueryResponse),
    /// A query handler process finished; send its stdout to the origin.
    HandlerAnswer {
        id: QueryId,
        origin: NodeId,
        payload: Vec<u8>,
    },
    /// A control API request.
    Api(Command),
    /// The disk writer journaled these handler batches (or failed to).
    Journaled {
        batches: Vec<Batch<Slot>>,
        result: Result<(), String>,
    },
    /// An event handler finished (or failed to start) and freed its slot.
    HandlerSlotFree,
    /// An event handler's process could not be spawned: it is owed again.
    HandlerFailed {
        event: UserEvent,
        handler: HandlerConfig,
    },
    /// An in-process consumer acknowledged an event.
    ConsumerAcked {
        event: EventId,
        handler: HandlerConfig,
    },
}

/// A handler slot: taken before its journal line is written, held until it is done.
pub type Slot = OwnedSemaphorePermit;
