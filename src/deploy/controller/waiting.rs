//! A node waiting for earlier waves, remembered so that each outcome costs O(log N).
//!
//! Deciding afresh ([`super::targets::Standing`]) costs O(N): targets matched, ranked by
//! sha256 and cut into waves. Every outcome slot of a rollout reaches every node, so
//! deciding afresh on each made a rollout O(N²) per node (seconds of CPU per agent at a
//! thousand nodes, minutes at ten thousand). While a node waits, most outcomes cannot
//! change its decision: an `ok` from a target it already counted only shortens the list
//! it waits for. Such an outcome is absorbed here; anything else (a failure, a node that
//! was no target, another event, the last one it waited for) is decided afresh, as is
//! every change of members, apps, orders or the desired event.

use std::collections::BTreeSet;

use crate::deploy::status::{NodeOutcome, Result as Res};

/// One app's wait for the targets of earlier waves.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// The desired event's id (hex).
    pub event_id: String,
    /// Every target of the event, sorted.
    targets: Vec<String>,
    /// Alive targets of earlier waves that have not reported `ok`.
    pending: BTreeSet<String>,
    /// This node's wave, from 1.
    wave: usize,
    /// The event has a progress deadline: time alone may change the decision.
    pub timed: bool,
}

impl Waiting {
    pub fn new(
        event_id: String,
        targets: Vec<String>,
        pending: Vec<String>,
        wave: usize,
        timed: bool,
    ) -> Self {
        debug_assert!(targets.is_sorted());
        Waiting {
            event_id,
            targets,
            pending: pending.into_iter().collect(),
            wave,
            timed,
        }
    }

    /// Takes `o` in if it leaves this node waiting (on fewer targets, maybe): `false` when
    /// the decision must be made afresh.
    pub fn absorb(&mut self, o: &NodeOutcome) -> bool {
        let counted = o.event_id == self.event_id
            && o.result == Res::Ok
            && self.targets.binary_search(&o.node).is_ok();
        if !counted {
            return false;
        }
        self.pending.remove(&o.node);
        !self.pending.is_empty()
    }

    /// The phase a waiting node reports.
    pub fn phase(&self) -> String {
        let first: Vec<&str> = self.pending.iter().take(3).map(String::as_str).collect();
        format!(
            "wave {} waits for {} ({})",
            self.wave,
            self.pending.len(),
            first.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(node: &str, event: &str, result: Res) -> NodeOutcome {
        NodeOutcome {
            node: node.into(),
            app: "web".into(),
            event_id: event.into(),
            version: "v2".into(),
            result,
            error: None,
            at: 1,
        }
    }

    fn waiting() -> Waiting {
        let targets = ["a", "b", "c", "d"].map(String::from).to_vec();
        let pending = ["a", "b"].map(String::from).to_vec();
        Waiting::new("e1".into(), targets, pending, 2, false)
    }

    #[test]
    fn an_ok_from_a_counted_target_only_shortens_the_wait() {
        let mut w = waiting();
        assert!(w.absorb(&outcome("a", "e1", Res::Ok)));
        assert_eq!(w.phase(), "wave 2 waits for 1 (b)");
        // A target of its own or a later wave: nothing it waits for.
        assert!(w.absorb(&outcome("d", "e1", Res::Ok)));
        assert_eq!(w.phase(), "wave 2 waits for 1 (b)");
        // The last one it waited for: decide afresh.
        assert!(!w.absorb(&outcome("b", "e1", Res::Ok)));
    }

    #[test]
    fn failures_strangers_and_other_events_are_decided_afresh() {
        for o in [
            outcome("a", "e1", Res::Failed),
            outcome("d", "e1", Res::RolledBack),
            outcome("x", "e1", Res::Ok),
            outcome("a", "e0", Res::Ok),
        ] {
            assert!(!waiting().absorb(&o), "{o:?}");
        }
    }
}
