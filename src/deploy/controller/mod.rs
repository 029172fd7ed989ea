//! The deploy controller: the pure [`core`] plus its shell (see `service`).

pub mod core;
mod persisted;
pub mod service;
pub mod slot_kinds;
pub mod targets;
mod waiting;

pub use service::Controller;
