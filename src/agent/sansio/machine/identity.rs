//! What the machine does about node identities ([`crate::gossip::vouch`]): foca packets
//! screened before foca reads them (a sender without a card makes the node ask it for a
//! push/pull, rate-limited), leave notices checked before they are recorded, and this
//! node's member card announced when it is due.

use std::net::SocketAddr;

use super::{AgentMachine, Effect, Effects, Metric, Now};
use crate::agent::sansio::Dial;
use crate::gossip::message::LeaveNotice;
use crate::gossip::screen::Screened;

impl<W, S> AgentMachine<W, S> {
    /// A foca packet from `from`: screened, then handed to foca.
    pub(super) fn foca_packet(
        &mut self,
        now: Now,
        pkt: &[u8],
        from: SocketAddr,
        out: &mut Effects<W, S>,
    ) {
        let screened = self.core.lock().screen_packet(pkt);
        match screened {
            Ok(Screened::Pass { packet, .. }) => {
                if let Err(e) = self.foca.handle_data(&packet, &mut self.rt) {
                    tracing::trace!(peer = %from, cause = %e, "foca refused a packet");
                }
                self.drain(now, out);
            }
            Ok(Screened::Refused { who }) => {
                tracing::trace!(peer = %from, node = %who.name, "packet from an identity without a member card dropped");
                if self.introductions.due(from, now.at) {
                    tracing::debug!(peer = %from, node = %who.name, "asking a sender without a known member card for a push/pull");
                    self.dial(from.to_string(), Dial::Sync, out);
                }
            }
            Err(_) => out.push(Effect::Count(Metric::Malformed)),
        }
    }

    /// A leave notice: recorded if the node said it itself, or (a force-leave) if this
    /// node already sees it failed.
    pub(super) fn leave_notice(&mut self, notice: LeaveNotice) {
        let seen_down = self
            .foca
            .iter_membership_state()
            .any(|m| m.id() == &notice.id && m.state() == foca::State::Down);
        if !self.core.lock().check_leave(&notice, seen_down) {
            tracing::debug!(node = %notice.id.name, "leave notice refused: not the node's own, and the node is not failed here");
            return;
        }
        tracing::info!(node = %notice.id.name, "member announced its leave");
        self.left.record(&notice.id);
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
