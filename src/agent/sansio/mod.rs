//! The agent's logic without I/O: state machines that take inputs (with the time as an
//! argument) and return effects, the way `foca` does, so they can be tested without a
//! network, a disk or a clock. [`AgentMachine`] owns all of the protocol state; the
//! task ([`super::task`]) is its thin executor: it feeds it what arrives and carries out
//! the [`Effect`]s it returns (sends, timers, dials, journal and state-file writes,
//! handler processes, replies).
//!
//! | file | concept |
//! |---|---|
//! | [`machine`] | the agent's state machine: foca, the core, and everything below, as inputs → effects |
//! | [`machine::Effect`] | what the executor does for it (`machine/effect.rs`) |
//! | `machine/pushpull.rs` | push/pull: answering, merging, sync/join/reconnect dials |
//! | `machine/events.rs` | notifications, user events: eager push, owed handlers, journaling order |
//! | `machine/queries.rs` | queries from this node, and answering others' (key operations too) |
//! | `machine/tests/` | machines passing datagrams to each other in memory |
//! | [`queries`] | query lifecycle on the origin: pending queries, deadlines, completion |
//! | [`dials`] | join rounds with backoff, the one reconnect in flight |
//! | [`introduce`] | push/pulls with senders whose member card is unknown, rate-limited |
//! | `machine/identity.rs` | packets screened against member cards, leave notices, own card |
//! | [`push`] | eager push targets, the push/pull partner |
//! | [`keys`] | key dispatch: the key query's payload, the answers' fan-in |
//! | [`key_command`] | the key query's name and payload, and how each node applies it |
//! | [`untagged`] | members up without tags, asked one per sweep |
//! | [`answer`] | answering side: who answers a query, and the answer's route back |
//! | [`persisted`] | what the state file holds ([`persisted::PersistedState`]), built by the machine |
//! | [`deploy_format`] | which deploy events this agent reads, announced in a reserved tag |
//! | [`consumer_name`] | how an in-process consumer stands among the owed handlers (its name rules) |
//! | [`trigger`] | what a handler is run for: which `[[handler]]`s it selects, their environment |

pub mod answer;
pub mod consumer_name;
pub mod deploy_format;
pub mod dials;
pub mod introduce;
pub mod key_command;
pub mod keys;
pub mod machine;
pub mod persisted;
pub mod push;
pub mod queries;
pub mod trigger;
pub mod untagged;

pub use dials::{Dial, DialEffect, Dials, JoinPolicy};
pub use machine::{AgentMachine, Effect, Init, Now, Timer};
pub use push::EagerPush;
pub use queries::{QueryBook, QueryEffect};
