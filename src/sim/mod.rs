//! A deterministic simulator of a whole fleet's gossip: N real
//! [`AgentMachine`](crate::agent::sansio::AgentMachine)s (foca, the gossip core, the
//! agent's rules) over a simulated network on a virtual clock, in one process.
//!
//! One 2-core machine cannot run thousands of agent processes, so what droot-fleet
//! claims past a few hundred nodes is shown here, on the same sans-io code the agents
//! run: only the executor is the simulator's ([`cluster`]). Everything random (packet
//! fates, start phases, join addresses, each machine's generators) comes from the run's
//! seed, and every step folds into a [`trace::Trace`] hash: one seed, one run.
//!
//! | file | concept |
//! |---|---|
//! | [`net`] | latency, jitter, loss, partitions |
//! | [`node`] | one node's machine, built from an agent's settings |
//! | `deploy.rs` | the deploy controller's core on every node; deploys and their waves |
//! | [`cluster`] | the executor: routes sends, dials and timers between the machines, on one [`crate::timeline::Timeline`] |
//! | [`heap`] | a counting allocator: what each node's state costs |
//! | `ops.rs` | what a scenario does: events, crashes, restarts, pauses, tag changes |
//! | [`trace`] | what a run records: bytes, losses, arrivals, false failures, the hash |
//! | [`serf`] | the baseline: Serf/memberlist's broadcast model on the same network |

pub mod cluster;
mod deploy;
pub mod heap;
pub mod net;
pub mod node;
mod ops;
pub mod serf;
#[cfg(test)]
mod tests;
pub mod trace;

pub use cluster::{Cluster, ClusterConfig, agreeing_exchange_bytes};
pub use deploy::{APP, DeploySetup};
pub use net::{NetConfig, Network};
