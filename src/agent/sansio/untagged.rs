//! Members whose tags this node has not learned yet.
//!
//! A new member's tags normally arrive by gossip (its own announcement) right after the
//! member itself. Dialing a push/pull with every member that came up without tags, to
//! learn them at once, made a cluster's formation cost one push/pull per pair of nodes,
//! each carrying the whole state: cubic in the cluster size, and it never finished in
//! the simulator at 1,000 nodes. So such a member waits here instead. Every
//! [`SWEEP_EVERY`], a sweep drops those whose tags arrived (or that are gone) and dials
//! one of the rest: a push/pull brings every slot the peer holds, usually the others'
//! tags too. At most one sweep is pending, and the set holds at most one name per member.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::{Rng, RngExt};

/// How long a member may stay without tags before this node asks it.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// See the module docs.
#[derive(Debug, Default)]
pub struct Untagged {
    names: BTreeSet<String>,
    sweep_pending: bool,
}

impl Untagged {
    /// `name` came up without tags. True: schedule a sweep (none is pending).
    pub fn add(&mut self, name: &str) -> bool {
        self.names.insert(name.to_owned());
        !std::mem::replace(&mut self.sweep_pending, true)
    }

    /// The sweep fired: forgets the names `settled` says need nothing more (tags known,
    /// or no longer a member) and picks one of the rest to dial. True in the second
    /// place: schedule the next sweep.
    pub fn sweep(
        &mut self,
        settled: impl Fn(&str) -> bool,
        rng: &mut impl Rng,
    ) -> (Option<String>, bool) {
        self.names.retain(|n| !settled(n));
        self.sweep_pending = !self.names.is_empty();
        if self.names.is_empty() {
            return (None, false);
        }
        let k = rng.random_range(0..self.names.len());
        (self.names.iter().nth(k).cloned(), true)
    }

    /// How many members wait.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn one_sweep_pending_and_settled_names_leave() {
        let mut u = Untagged::default();
        let mut rng = StdRng::seed_from_u64(1);
        assert!(u.add("a"), "the first name schedules a sweep");
        assert!(!u.add("b"), "a sweep is already pending");
        assert!(!u.add("a"));
        assert_eq!(u.len(), 2);
        let (dial, again) = u.sweep(|n| n == "a", &mut rng);
        assert_eq!((dial.as_deref(), again), (Some("b"), true));
        let (dial, again) = u.sweep(|_| true, &mut rng);
        assert_eq!((dial, again), (None, false));
        assert!(u.is_empty());
        assert!(
            u.add("c"),
            "after the last sweep a new name schedules one again"
        );
    }
}
