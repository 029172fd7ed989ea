//! What the [`AgentMachine`](super::AgentMachine) asks its executor to do, and the
//! timers it asks for.
//!
//! Effects come out in the order they must be carried out: a drain after a foca call
//! yields its sends, then its timers, then what its notifications and the core's
//! deliveries call for. Some effects are questions back to the machine (the executor
//! answers them by calling it again): [`Effect::StartOwed`] wants the free handler
//! slots, [`Effect::Journal`] and [`Effect::Dial`] want their outcome.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::AgentError;
use crate::agent::config::HandlerConfig;
use crate::agent::pending::{Batch, JournalLine};
use crate::agent::sansio::persisted::PersistedState;
use crate::gossip::supersede::Superseding;
use crate::gossip::{
    EventId, Keyring, NodeId, PushPullState, Query, QueryId, QueryResponse, QueryResult, UserEvent,
};

use crate::agent::sansio::Dial;

/// A handler's environment (set on top of the agent's own).
pub type Env = Vec<(String, String)>;

/// What fires after a delay. The executor keeps them in one ordered scheduler (foca
/// issue #26) and hands each back through
/// [`AgentMachine::timer`](super::AgentMachine::timer).
#[derive(Debug)]
pub enum Timer {
    Foca(foca::Timer<NodeId>),
    QueryDeadline(QueryId),
    RetryJoin,
    /// This event's backoff is over: start what is owed ([`crate::agent::pending`]).
    RetryHandlers(EventId),
    /// Ask one member still without tags ([`crate::agent::sansio::untagged`]).
    TagSweep,
    /// A down verdict heard as a suspicion ran out: down unless refuted.
    SuspicionExpired {
        member: NodeId,
        incarnation: foca::Incarnation,
    },
}

/// A counter the executor keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// A datagram opened but did not decode.
    Malformed,
    /// A new event pushed straight to one peer.
    EventPushed,
    /// A push/pull state merged.
    PushPullMerged,
    /// A foca packet or push/pull state from another address than its sender names
    /// (identities on): its sender's word was not taken.
    SpoofedSender,
}

/// One thing for the executor to do. `W` waits for a query's result (a reply channel
/// in the agent); `S` is a handler slot (a semaphore permit in the agent).
#[derive(Debug)]
pub enum Effect<W, S> {
    /// Seal `plain` with the keyring's primary key and send it to `to`.
    Send { to: SocketAddr, plain: Vec<u8> },
    /// Hand `timer` back after `after`.
    Schedule { after: Duration, timer: Timer },
    /// Drop the deadline timer of a query that finished early.
    CancelDeadline(QueryId),
    /// Push/pull with `target` (`HOST:PORT`), sending `state`; the outcome goes to
    /// [`AgentMachine::push_pull_done`](super::AgentMachine::push_pull_done).
    Dial {
        target: String,
        kind: Dial,
        state: Box<PushPullState>,
    },
    /// Append `lines` to the journal; with batches, hand them and the outcome to
    /// [`AgentMachine::journaled`](super::AgentMachine::journaled) once durable.
    Journal {
        lines: Vec<JournalLine>,
        batches: Vec<Batch<S>>,
    },
    /// Replace the state file.
    Snapshot(Box<PersistedState>),
    /// Owed handlers may start: call
    /// [`AgentMachine::start_owed`](super::AgentMachine::start_owed) with the free slots.
    StartOwed,
    /// Start these journaled handlers of `event`, each holding one of `slots` until it
    /// is done; one that cannot start (or a consumer that does not acknowledge) goes to
    /// [`AgentMachine::handler_failed`](super::AgentMachine::handler_failed), a
    /// consumer's acknowledgement to
    /// [`AgentMachine::consumer_acked`](super::AgentMachine::consumer_acked).
    SpawnEventHandlers {
        event: UserEvent,
        handlers: Vec<HandlerConfig>,
        env: Env,
        slots: Vec<S>,
    },
    /// Run member-event handlers (`event` is the kind): not journaled, not retried.
    RunHandlers {
        event: String,
        handlers: Vec<HandlerConfig>,
        env: Env,
        payload: Vec<u8>,
    },
    /// Run `query`'s command handler; its stdout goes to
    /// [`AgentMachine::handler_answer`](super::AgentMachine::handler_answer).
    RunQueryHandler {
        query: Query,
        handler: HandlerConfig,
        env: Env,
    },
    /// Send `answer` to `to` over a sealed TCP stream (too large for a datagram).
    StreamAnswer { to: NodeId, answer: QueryResponse },
    /// A cluster key operation changed the keyring: seal and open with `ring` from
    /// now on, and write it to `save_to` if set.
    Keyring {
        ring: Keyring,
        save_to: Option<PathBuf>,
    },
    /// A superseding item accepted as newer, for in-process subscribers.
    Superseding(Superseding),
    /// One line on the monitor stream.
    Monitor(serde_json::Value),
    /// Count one.
    Count(Metric),
    /// A query this node started is over: give `result` to `waiter`.
    QueryDone { waiter: W, result: QueryResult },
    /// A query could not start: nothing was sent.
    QueryFailed { waiter: W, error: AgentError },
}
