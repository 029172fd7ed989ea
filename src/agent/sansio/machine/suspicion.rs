//! Down verdicts that arrive as suspicions, timed out here.
//!
//! With node identities, a "down" verdict about another member is not taken from the
//! packet or push/pull state that carries it (its sender is not authenticated: one
//! forged packet would fail a live member everywhere), only as a suspicion
//! ([`crate::gossip::screen`], [`crate::gossip::pushpull::screen_member`]). foca starts
//! no timer for a suspicion it hears of, so a member that really died stayed suspect
//! here until this node's own probe of it failed: up to a whole probe round, about N
//! probe periods (the simulator found a crashed node still suspect on a fifth of 100
//! nodes after 120 s). So each such suspicion gets the timer foca gives its own: if the
//! member has not refuted it (a higher incarnation) when it runs out, it is down here
//! too, as SWIM's suspicion mechanism has it. A live member hears the suspicion (it is
//! gossiped) and refutes it in time; a forged verdict costs a refutation, not a member.
//! The screens keep each such suspicion at most at the incarnation held for the member
//! ([`crate::gossip::screen::suspicion_at_most_held`]): one raised above it (a forger's
//! `u16::MAX`) the member could never refute, and it would end in a failure.

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
    /// Starts a timer for each suspicion that came as someone else's down verdict.
    pub(super) fn time_suspicions(
        &mut self,
        verdicts: Vec<Member<NodeId>>,
        out: &mut Effects<W, S>,
    ) {
        let after = super::foca_config(&self.settings, self.tuned_for).suspect_to_down_after;
        let cap = self.foca.num_members() + SLACK;
        for v in verdicts {
            let key = (v.id().name.clone(), v.id().bump, v.incarnation());
            let held = self.foca.iter_membership_state().any(|m| m.id() == v.id());
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
