//! Leaderless rollout waves: which targets go first, and whether a node may start now.
//!
//! Every node computes the same plan from the same inputs, with no coordinator: targets are
//! ranked by sha256(event id, node name) (stable across hosts and Rust versions), the first
//! `canary` of them form a wave of their own, and the rest are cut into waves of
//! `max_parallel` (a count, or a percentage of all targets rounded up). With neither flag
//! there is one wave. Guarantees: the waves partition the targets (each exactly once), the
//! plan does not depend on the order the targets are given in, and [`Plan::may_start`]
//! never lets a node start after a `failed` or `rolled_back` outside its own wave.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::signed::{MaxParallel, Rollout};

/// A node's reported result for one deploy event.
pub use super::status::Result as Outcome;

/// The answer to "may this node start deploying now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Start,
    /// Alive targets of earlier waves that have not reported `ok` yet.
    Wait {
        pending: Vec<String>,
    },
    /// A target outside this node's wave failed or rolled back.
    Halted {
        by: String,
        outcome: Outcome,
    },
    /// The node is not among the targets.
    NotTarget,
    /// No target may start: the operator paused or cancelled the rollout, or
    /// `--min-healthy` leaves no room. `for_good`: it never will (cancelled).
    Held {
        why: String,
        for_good: bool,
    },
}

/// The waves of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub waves: Vec<Vec<String>>,
}

fn rank(event_id: &[u8; 16], node: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(event_id);
    h.update((node.len() as u64).to_le_bytes());
    h.update(node.as_bytes());
    h.finalize().into()
}

/// How many of `total` targets one wave holds.
pub fn wave_size(total: usize, max: Option<MaxParallel>) -> usize {
    match max {
        None => total.max(1),
        Some(MaxParallel::Count(n)) => (n as usize).max(1),
        Some(MaxParallel::Percent(p)) => (total * usize::from(p)).div_ceil(100).max(1),
    }
}

impl Plan {
    /// Splits `targets` (duplicates ignored) into waves for the event `event_id`.
    pub fn new(event_id: &[u8; 16], targets: &[String], rollout: &Rollout) -> Plan {
        let unique: BTreeSet<&String> = targets.iter().collect();
        let mut ranked: Vec<([u8; 32], String)> = unique
            .into_iter()
            .map(|n| (rank(event_id, n), n.clone()))
            .collect();
        ranked.sort();
        let mut names: Vec<String> = ranked.into_iter().map(|(_, n)| n).collect();
        let mut waves = Vec::new();
        let canary = (rollout.canary as usize).min(names.len());
        if canary > 0 {
            waves.push(names.drain(..canary).collect());
        }
        let size = wave_size(names.len() + canary, rollout.max_parallel);
        while !names.is_empty() {
            let n = size.min(names.len());
            waves.push(names.drain(..n).collect());
        }
        Plan { waves }
    }

    /// The targets of the waves before `node`'s (they hold the artifact) and of its own
    /// (they fetch it with `node`), without `node`.
    pub fn swarm_of(&self, node: &str) -> crate::fanout::owners::Swarm {
        let wave = self.wave_of(node).unwrap_or(0);
        let others = |w: &Vec<String>| w.iter().filter(|n| *n != node).cloned().collect();
        let holders: Vec<Vec<String>> = self.waves[..wave].iter().map(others).collect();
        crate::fanout::owners::Swarm {
            holders: holders.concat(),
            fetching: self.waves.get(wave).map_or_else(Vec::new, others),
        }
    }

    /// The wave index of `node`.
    pub fn wave_of(&self, node: &str) -> Option<usize> {
        self.waves.iter().position(|w| w.iter().any(|n| n == node))
    }

    /// Whether `node` may start: every alive target of earlier waves reported `ok`, and no
    /// target outside its wave reported `failed` or `rolled_back`.
    pub fn may_start(
        &self,
        node: &str,
        alive: &BTreeSet<String>,
        outcomes: &BTreeMap<String, Outcome>,
    ) -> Decision {
        let Some(mine) = self.wave_of(node) else {
            return Decision::NotTarget;
        };
        for (i, wave) in self.waves.iter().enumerate() {
            if i == mine {
                continue;
            }
            for n in wave {
                if let Some(o @ (Outcome::Failed | Outcome::RolledBack)) = outcomes.get(n) {
                    return Decision::Halted {
                        by: n.clone(),
                        outcome: *o,
                    };
                }
            }
        }
        let pending: Vec<String> = self.waves[..mine]
            .iter()
            .flatten()
            .filter(|n| alive.contains(*n) && outcomes.get(*n) != Some(&Outcome::Ok))
            .cloned()
            .collect();
        if pending.is_empty() {
            Decision::Start
        } else {
            Decision::Wait { pending }
        }
    }
}

/// The targets that have not reported within `deadline_s` of the time they could start:
/// the event's issue time for the first wave, for each later one the last report of the
/// waves before it (once every alive target there reported `ok`). They count as failed.
pub fn late(
    plan: &Plan,
    alive: &BTreeSet<String>,
    reported: &BTreeMap<String, (Outcome, u64)>,
    issued_s: u64,
    now_s: u64,
    deadline_s: u64,
) -> BTreeSet<String> {
    let mut late = BTreeSet::new();
    let mut open = issued_s;
    for wave in &plan.waves {
        for n in wave {
            if !reported.contains_key(n) && now_s > open.saturating_add(deadline_s) {
                late.insert(n.clone());
            }
        }
        let all_ok = (wave.iter())
            .filter(|n| alive.contains(*n))
            .all(|n| matches!(reported.get(n), Some((Outcome::Ok, _))));
        // A late target halts the waves after it: they never open.
        if !all_ok || wave.iter().any(|n| late.contains(n)) {
            break;
        }
        let last = wave
            .iter()
            .filter_map(|n| reported.get(n))
            .map(|(_, at)| *at);
        open = last.fold(open, u64::max);
    }
    late
}

#[cfg(test)]
mod tests;
