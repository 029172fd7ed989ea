//! Sans-io gossip core of `droot-fleet agent`: everything the agent speaks, nothing it
//! does. No sockets, clocks, files or tokio here: time comes in as arguments
//! (`Instant` for deadlines, wall-clock `Duration` since the UNIX epoch for persisted
//! ages), randomness as an `&mut impl Rng`, and output goes to queues the caller drains
//! — the same model as foca itself. That keeps every rule unit-testable, including a
//! whole in-memory cluster of real foca instances (`tests.rs`).
//!
//! # Map
//!
//! | module | concept |
//! |---|---|
//! | [`keyring`] | 32-byte keys (base64), the keyring (`install`/`use`/`remove`), its JSON file |
//! | [`envelope`] | ChaCha20-Poly1305 seal/open of datagrams, sealed TCP frames, [`envelope::FrameDecoder`] |
//! | [`limits`] | the 1400-byte datagram budget and [`limits::recommended_foca_config`] |
//! | [`identity`] | [`NodeId`] (foca `Identity`: restart bump replaces the old member) |
//! | [`cert`] | node certificates and revocations, signed by an enrollment key |
//! | [`vouch`] | node identities: member cards, who may speak for which name |
//! | [`screen`] | foca packets screened against node identities before foca reads them |
//! | [`lamport`] | Lamport clocks for events and queries |
//! | [`event`] | [`UserEvent`], [`EventLog`] exactly-once delivery, [`MAX_EVENT_SIZE`] |
//! | [`query`] | [`Query`], filters, [`QueryTracker`] on the origin |
//! | [`message`] | tagged postcard wire messages for the broadcast/datagram/stream channels |
//! | [`pushpull`] | anti-entropy state exchange and its merge |
//! | [`versioned`] | push/pull wire versions and extension records |
//! | [`supersede`] | broadcasts a newer version replaces; relaying unknown broadcast types |
//! | [`kinds`] | what each superseding kind may hold and who speaks for it; version bounds |
//! | [`latest`] | the newest item of every slot, within its kind's bounds |
//! | [`handler`] | [`GossipCore`] state, [`SharedCore`], foca's [`GossipHandler`] |
//!
//! # How the agent shell wires it (to be written on top of this)
//!
//! - **One task owns foca** ([`handler::GossipFoca`], built by
//!   [`SharedCore::new_foca`] with [`limits::recommended_foca_config`]) and a
//!   `foca::AccumulatingRuntime`. Nothing else touches foca. HTTP/CLI requests reach
//!   that task through a channel. After *every* foca call, the task drains the runtime:
//!   - `to_send()` → [`message::encode_foca_datagram`] → [`envelope::seal_datagram`]
//!     with the current [`Keyring`] → UDP `send_to(dst.addr)`;
//!   - `to_schedule()` → the timer scheduler (below);
//!   - `to_notify()` → membership events (`MemberUp/Down`, `Rejoin(id)` →
//!     [`GossipCore::set_identity`], `Defunct` → log/rejoin policy);
//!   - then [`SharedCore::drain_incoming`] → deliver [`handler::Incoming::Event`]s;
//!     answer [`handler::Incoming::Query`]s with a [`QueryResponse`] to
//!     `query.origin.addr` via [`message::encode_direct`] (on `TooLarge`, a TCP frame
//!     with [`message::StreamMessage::QueryResponse`]).
//! - **Timers through one ordered scheduler**: a single min-heap of
//!   `(fire_at: Instant, seq, foca::Timer)` owned by the same task (tokio
//!   `sleep_until` on the head), so foca sees timers in order; plus the shell's own
//!   periodic jobs (push/pull every ~30 s, reconnect every ~10 s, [`GossipCore::tick`] + snapshot every few
//!   seconds, query deadlines from [`QueryTracker::deadline`]).
//! - **Seal everything, open everything, count failures**: each incoming datagram →
//!   [`envelope::open`] (count [`envelope::OpenError`] by variant, never log each
//!   packet) → [`message::decode_datagram`] → `Foca::handle_data` or the direct
//!   handler. Datagrams larger than [`envelope::MAX_RECEIVED_DATAGRAM`] are dropped
//!   unread.
//! - **Local events/queries**: [`GossipCore::create_event`] /
//!   [`GossipCore::create_query`] return bytes for `Foca::add_broadcast` (the origin
//!   then delivers its own event through the handler). Lock with
//!   [`SharedCore::lock`], *drop the guard*, then call foca: foca calls back into the
//!   handler, which locks too.
//! - **Push/pull** over TCP: connect to a random member, send
//!   [`message::StreamMessage::PushPullRequest`] of [`GossipCore::push_pull_state`]
//!   (members from `foca.iter_membership_state()`), read the reply with a
//!   [`envelope::FrameDecoder`], [`GossipCore::merge_push_pull`], then
//!   [`pushpull::screen_members`] and `foca.apply_many` (never the remote list as is:
//!   its "down" verdicts would fail members we see alive). Do one right after
//!   joining, and periodically with a random *failed* member (reconnect) so a healed
//!   partition re-merges.
//! - **Restart**: persist [`GossipCore::snapshot`] (serde) atomically; on start,
//!   [`GossipCore::restore`] with `snapshot.identity` bumped (`bump + 1`) so peers
//!   replace the old incarnation at once and no event is delivered twice.
//! - **Keys**: the keyring lives in the shell (a file with [`keyring::KeyringFile`]
//!   JSON); hand the current one to seal/open. Cluster-wide rotation = run
//!   `install`, `use`, `remove` on every node (e.g. via a query the shell defines).

pub mod cert;
pub mod digest;
pub mod envelope;
pub mod event;
pub mod handler;
pub mod identity;
pub mod keyring;
pub mod kinds;
pub mod lamport;
pub mod latest;
pub mod limits;
pub mod message;
pub mod pairwise;
pub mod piece;
pub mod pushpull;
pub mod query;
pub mod screen;
pub mod supersede;
pub mod versioned;
pub mod vouch;

#[cfg(test)]
mod tests;

pub use envelope::{
    FrameDecoder, MAX_DATAGRAM, MAX_PLAINTEXT, MAX_RECEIVED_DATAGRAM, OpenError, SEAL_OVERHEAD,
};
pub use event::{EventId, EventLog, EventLogConfig, MAX_EVENT_SIZE, UserEvent};
pub use handler::{CoreConfig, CoreSnapshot, GossipCore, GossipHandler, Incoming, SharedCore};
pub use identity::{NodeId, validate_node_name};
pub use keyring::{Key, Keyring};
pub use lamport::LamportClock;
pub use limits::{
    FOCA_MAX_PACKET_SIZE, MAX_BROADCAST_ITEM, eager_fanout, max_transmissions,
    recommended_foca_config, retune_size,
};
pub use message::PROTOCOL_VERSION;
pub use pushpull::PushPullState;
pub use query::{Filter, Query, QueryId, QueryResponse, QueryResult, QueryTracker, Tags};
