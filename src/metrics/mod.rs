//! Prometheus metrics: the text exposition format (version 0.0.4) and a histogram.
//!
//! A leaf module of plain values: whoever counts (the agent's packet counters, the deploy
//! controller's outcomes) builds [`Family`] values from a snapshot of what it holds, and
//! [`render`] turns them into text. Rendering is pure, so every rule of the format
//! (HELP and TYPE lines, escaping, a histogram's cumulative `_bucket` lines ending at
//! `le="+Inf"`, its `_sum` and `_count`) is unit-tested here without a server.
//!
//! Conventions the builders follow: names start with `droot_fleet_`, counters end in
//! `_total`, units are base units in the name (`_seconds`, `_bytes`), and label values come
//! only from bounded sets (app names from the config, fixed reasons and outcomes), never
//! from a node name, an event id or an error text.

pub mod histogram;
pub mod text;

pub use histogram::Histogram;
pub use text::{CONTENT_TYPE, Family, Kind, Sample, Value, render};
