//! Suspicions heard from other nodes, timed out here.
//!
//! foca starts a suspicion timer only when its own probe of a member fails; a suspicion
//! it hears of stays until another node's down verdict arrives or this node's own probe
//! round reaches the member, about N probe periods. Piggy-backed verdicts are sent a
//! bounded number of times, so some node may miss them all: at 100 nodes one node still
//! listed a crashed member 63 s later (the simulator). So each heard suspicion gets the
//! timer foca gives its own: if the member has not refuted it (a higher incarnation) when
//! it runs out, it is down here too, as SWIM's suspicion mechanism has it. A live member
//! hears the suspicion (it is gossiped) and refutes it in time.
//!
//! A down verdict about another member from a packet or push/pull state is itself taken
//! only as a suspicion where its sender is not to be believed outright (node identities:
//! one forged packet would fail a live member everywhere, [`crate::gossip::screen`],
//! [`crate::gossip::pushpull::screen_member`]), and always when it is below the
//! incarnation held (foca would drop it: it comes from a node that missed a refutation).
//! Such a suspicion sits at the incarnation held for the member
//! ([`crate::gossip::screen::suspicion_from_verdict`]): one raised above it (a forger's
//! `u16::MAX`) the member could never refute, and one below it foca would drop. A forged
//! verdict costs a refutation, not a member.

use foca::{Member, State};
use rand::rngs::StdRng;

use super::{AgentMachine, Effects, Now, Timer};
use crate::gossip::NodeId;
use crate::gossip::handler::GossipFoca;

/// Most suspicion timers pending beyond one per member.
const SLACK: usize = 64;

/// What this node holds, for the packet screen to weigh verdicts against.
pub(super) struct Held<'a> {
    pub foca: &'a GossipFoca<StdRng>,
    pub left: &'a crate::agent::members::LeftBook,
    pub incarnation: foca::Incarnation,
}

impl crate::gossip::screen::Receiver for Held<'_> {
    fn incarnation(&self) -> foca::Incarnation {
        self.incarnation
    }

    fn has_left(&self, id: &NodeId) -> bool {
        self.left.has_left(id)
    }

    fn held(&self, id: &NodeId) -> Option<foca::Incarnation> {
        (self.foca.iter_membership_state())
            .find(|m| m.id() == id)
            .map(Member::incarnation)
    }
}

impl<W, S> AgentMachine<W, S> {
    /// Starts a timer for each suspicion about another member heard from someone else
    /// (its own verdict, or a down verdict taken as one) that foca now holds: foca times
    /// out only the suspicions its own probes raise.
    pub(super) fn time_suspicions(
        &mut self,
        heard: impl IntoIterator<Item = Member<NodeId>>,
        out: &mut Effects<W, S>,
    ) {
        let after = super::foca_config(&self.settings, self.tuned_for).suspect_to_down_after;
        let cap = self.foca.num_members() + SLACK;
        for v in heard {
            let key = (v.id().name.clone(), v.id().bump, v.incarnation());
            let held = self.foca.iter_membership_state().any(|m| {
                m.id() == v.id()
                    && m.state() == State::Suspect
                    && m.incarnation() == v.incarnation()
            });
            if !held || self.suspicions.len() >= cap || !self.suspicions.insert(key) {
                continue;
            }
            let timer = Timer::SuspicionExpired {
                member: v.id().clone(),
                incarnation: v.incarnation(),
            };
            out.push(super::Effect::Schedule { after, timer });
        }
    }

    /// A suspicion's time ran out: a member still suspect at that incarnation is down.
    pub(super) fn suspicion_expired(
        &mut self,
        now: Now,
        member: NodeId,
        incarnation: foca::Incarnation,
        out: &mut Effects<W, S>,
    ) {
        self.suspicions
            .remove(&(member.name.clone(), member.bump, incarnation));
        let unrefuted = self.foca.iter_membership_state().any(|m| {
            m.id() == &member && m.state() == State::Suspect && m.incarnation() == incarnation
        });
        if !unrefuted {
            return;
        }
        tracing::debug!(node = %member.name, incarnation, "suspicion not refuted in time: down");
        let down = Member::new(member, incarnation, State::Down);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(down), true, &mut self.rt)
        {
            tracing::debug!(cause = %e, "applying an expired suspicion");
        }
        self.drain(now, out);
    }
}
