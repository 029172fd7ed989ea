//! Sans-io gossip core (in progress).

pub mod envelope;
pub mod event;
pub mod identity;
pub mod keyring;
pub mod lamport;
pub mod limits;
pub mod query;
