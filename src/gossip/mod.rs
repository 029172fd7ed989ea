//! Sans-io gossip core (in progress).

pub mod envelope;
pub mod event;
pub mod handler;
pub mod identity;
pub mod keyring;
pub mod lamport;
pub mod limits;
pub mod message;
pub mod pushpull;
pub mod query;

#[cfg(test)]
mod tests;
