//! What the machine does about node identities ([`crate::gossip::vouch`]): foca packets
//! screened before foca reads them (a sender without a card makes the node ask it for a
//! push/pull, rate-limited), leave notices checked before they are recorded, and this
//! node's member card announced when it is due.

use std::net::SocketAddr;

use super::{AgentMachine, Effect, Effects, Metric, Now};
use crate::agent::AgentError;
use crate::agent::sansio::Dial;
use crate::gossip::GossipCore;
use crate::gossip::message::LeaveNotice;
use crate::gossip::screen::Screened;
use crate::gossip::supersede::Superseding;
use crate::gossip::vouch::{self, Mode, REVOKED_KIND};

impl<W, S> AgentMachine<W, S> {
    /// A foca packet from `from`: screened, then handed to foca.
    pub(super) fn foca_packet(
        &mut self,
        now: Now,
        pkt: &[u8],
        auth: Option<&crate::gossip::pairwise::Auth>,
        from: SocketAddr,
        out: &mut Effects<W, S>,
    ) {
        let held = super::suspicion::Held {
            foca: &self.foca,
            left: &self.left,
            incarnation: self.incarnation,
        };
        let screened = self.core.lock().screen_packet(pkt, auth, from, held);
        match screened {
            Ok((
                Screened::Pass {
                    packet, suspected, ..
                },
                ask,
            )) => {
                if let Err(e) = self.foca.handle_data(&packet, &mut self.rt) {
                    tracing::trace!(peer = %from, cause = %e, "foca refused a packet");
                }
                self.drain(now, out);
                self.time_suspicions(suspected, out);
                if let Some(sender) = ask {
                    self.confirm_down(now, &sender, out);
                }
            }
            Ok((Screened::Refused { who }, _)) => {
                tracing::trace!(peer = %from, node = %who.name, "packet from an identity without a member card dropped");
                // Only a sender at the address it names is asked for its card.
                if who.addr == from && self.introductions.due(from, now.at) {
                    tracing::debug!(peer = %from, node = %who.name, "asking a sender without a known member card for a push/pull");
                    self.dial(from.to_string(), Dial::Sync, out);
                }
            }
            Ok((Screened::Doubted { sender }, _)) => self.confirm_down(now, &sender, out),
            Err(_) => out.push(Effect::Count(Metric::Malformed)),
        }
    }

    /// A packet said this node is down. Its sender is not authenticated, so the verdict
    /// is not taken from it (foca would rejoin under a new bump, at a forger's will): the
    /// node asks the member named as the sender, at the address its card names, over a
    /// push/pull of its own, and rejoins only if that member's own view says so
    /// ([`Self::push_pull_done`]). Bounded like introductions.
    pub(super) fn confirm_down(
        &mut self,
        now: Now,
        sender: &crate::gossip::NodeId,
        out: &mut Effects<W, S>,
    ) {
        if self.confirmations.due(sender.addr, now.at) {
            tracing::debug!(node = %sender.name, "a packet says this node is down: asking its sender");
            self.dial(sender.addr.to_string(), Dial::Sync, out);
        }
    }

    /// A leave notice: recorded if the node said it itself, or (a force-leave) if this
    /// node already sees it failed. The member is then down here at once: foca's own
    /// down verdict from the leaving node may arrive before the notice, and passes the
    /// screen only as a suspicion.
    pub(super) fn leave_notice(&mut self, now: Now, notice: LeaveNotice, out: &mut Effects<W, S>) {
        let held = self
            .foca
            .iter_membership_state()
            .find(|m| m.id() == &notice.id)
            .map(|m| (m.state(), m.incarnation()));
        let seen_down = held.is_some_and(|(state, _)| state == foca::State::Down);
        if !self.core.lock().check_leave(&notice, seen_down) {
            tracing::debug!(node = %notice.id.name, "leave notice refused: not the node's own, and the node is not failed here");
            return;
        }
        tracing::info!(node = %notice.id.name, "member announced its leave");
        self.left.record(&notice.id);
        if let Some((foca::State::Alive | foca::State::Suspect, incarnation)) = held {
            let down = foca::Member::new(notice.id, incarnation, foca::State::Down);
            if let Err(e) = self
                .foca
                .apply_many(std::iter::once(down), true, &mut self.rt)
            {
                tracing::debug!(cause = %e, "applying a leave");
            }
            self.drain(now, out);
        }
    }

    /// Gossips a revocation (an operator's `enroll revoke`), once this node checked it.
    pub fn revoke(&mut self, now: Now, bytes: &[u8]) -> (Result<(), AgentError>, Effects<W, S>) {
        let checked = revocation_slot(&self.core.lock(), bytes);
        let item = match checked {
            Ok(item) => item,
            Err(e) => return (Err(AgentError::BadRequest(e)), Vec::new()),
        };
        let (key, revoked) = (item.key.clone(), item.version);
        let (result, out) = self.publish_superseding(now, item);
        let held = self
            .core
            .lock()
            .superseding_item(REVOKED_KIND, &key)
            .map(|i| i.version);
        match result {
            Ok(()) if held >= Some(revoked) => {
                tracing::warn!(node_key = %key, "revocation accepted; gossiping it");
                (Ok(()), out)
            }
            Ok(()) => {
                let e = "this node did not keep the revocation: it holds a newer one for that \
                         key, the revocation was issued more than 10 minutes ahead of this \
                         node's clock, or its table of revocations is full";
                (Err(AgentError::Conflict(e.into())), out)
            }
            Err(e) => (Err(e), out),
        }
    }

    /// Broadcasts this node's member card if one is due (at start, after a rejoin).
    pub(super) fn announce_card(&mut self) {
        let card = self.core.lock().take_card();
        match card.map(|r| r.map(|bytes| self.foca.add_broadcast(&bytes))) {
            None | Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => tracing::warn!(cause = %e, "member card not announced"),
            Some(Err(e)) => tracing::warn!(cause = %e, "member card not announced"),
        }
    }
}

/// The slot that gossips a revocation, or why this node refuses it.
fn revocation_slot(core: &GossipCore, bytes: &[u8]) -> Result<Superseding, String> {
    if core.identities().mode() == Mode::Off {
        return Err("this agent has no enrollment_keys: node identities are off here".into());
    }
    let item = vouch::revocation_slot(bytes.to_vec(), "").map_err(|e| e.to_string())?;
    core.identities()
        .check_revocation(&item)
        .map_err(|e| e.to_string())?;
    Ok(item)
}
