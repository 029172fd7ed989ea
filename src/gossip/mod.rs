//! Sans-io gossip core (in progress).

pub mod envelope;
pub mod identity;
pub mod keyring;
pub mod lamport;
