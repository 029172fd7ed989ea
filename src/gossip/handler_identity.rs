//! [`GossipCore`]'s side of node identities ([`super::super::vouch`]): its own member
//! card, the checks of what others say in their names, and what a revocation or an
//! expired certificate takes away.

use super::*;
use crate::gossip::kinds::{KindPolicy, Owner};
use crate::gossip::pairwise::Opened;
use crate::gossip::screen;
use crate::gossip::vouch::{
    IdentityPolicy, MAX_REVOCATIONS, MEMBER_KIND, MemberCard, Mode, REVOKED_KIND, Refusal,
};

/// What [`GossipCore::check_identity`] found an item to be, to apply once it is kept.
pub(super) enum Checked {
    Nothing,
    Card(crate::gossip::vouch::Card),
    Revocation(crate::gossip::cert::RevocationBody),
}

/// The identity kinds every core knows.
pub(super) fn identity_kinds() -> [(&'static str, KindPolicy); 2] {
    let revocations = KindPolicy {
        owner: Owner::Fleet,
        max_slots: MAX_REVOCATIONS,
        per_origin: MAX_REVOCATIONS,
        check: None,
    };
    [
        (MEMBER_KIND, KindPolicy::node(1)),
        (REVOKED_KIND, revocations),
    ]
}

fn unix_secs(now: Duration) -> u64 {
    now.as_secs()
}

/// [`GossipCore::screen_packet`]'s answers: identities its cards vouch for (or a card the
/// packet carries) are admitted; a down verdict is taken as such only about a member whose
/// own leave was recorded, else as a suspicion; one about this node, at most at its own
/// incarnation (a suspicion at `u16::MAX` cannot be refuted: foca would rejoin).
struct PacketPolicy<'a, L> {
    identities: &'a crate::gossip::vouch::Identities,
    carried: Option<NodeId>,
    me: &'a NodeId,
    receiver: L,
}

impl<L: screen::Receiver> screen::Screen for PacketPolicy<'_, L> {
    fn admits(&self, id: &NodeId) -> bool {
        self.identities.admits(id) || self.carried.as_ref() == Some(id)
    }

    fn rewrite(&self, m: &foca::Member<NodeId>) -> Option<foca::Member<NodeId>> {
        use foca::{Member, State};
        let id = m.id().clone();
        if id == *self.me {
            let own = self.receiver.incarnation();
            let unchanged = m.state() == State::Alive
                || (m.state() == State::Suspect && m.incarnation() <= own);
            let incarnation = m.incarnation().min(own);
            return (!unchanged).then(|| Member::new(id, incarnation, State::Suspect));
        }
        if id.name == self.me.name || m.state() == State::Alive {
            return None;
        }
        if m.state() == State::Down && self.receiver.has_left(&id) {
            return None;
        }
        let held = self.receiver.held(&id);
        let suspicion = screen::suspicion_from_verdict(&id, m.state(), m.incarnation(), held);
        (m.state() == State::Down || suspicion.incarnation() != m.incarnation())
            .then_some(suspicion)
    }
}

/// How long before its end a node's certificate is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

impl GossipCore {
    /// Who may speak for which name, from now on (set before foca starts).
    pub fn set_identity_policy(&mut self, policy: IdentityPolicy) {
        self.identities = crate::gossip::vouch::Identities::new(policy);
        self.identities
            .restore_known(std::mem::take(&mut self.restored_enrolled));
        self.card_due = self.identities.own().is_some();
        // Revocations held before (a restart, a reload): in force again, and kept.
        for bytes in std::mem::take(&mut self.restored_revocations) {
            let origin = self.identity.name.clone();
            let Ok(item) = crate::gossip::vouch::revocation_slot(bytes, &origin) else {
                continue;
            };
            if let Ok(body) = self.identities.check_revocation(&item) {
                self.identities.revoke(&body);
                let limits = self.kinds.limits(REVOKED_KIND, self.now);
                self.latest.offer(&item, &limits, self.now);
            }
        }
    }

    /// New identity settings (a SIGHUP: a renewed certificate, other enrollment keys,
    /// identities now required). Everything held is checked again under them: cards,
    /// revocations, and what nodes said about themselves (an unsigned word kept while
    /// identities were not required goes); this node's card is announced again.
    pub fn reload_identity_policy(&mut self, policy: IdentityPolicy) {
        let known: Vec<(String, u64)> = self
            .identities
            .known()
            .map(|(n, u)| (n.clone(), *u))
            .collect();
        self.restored_revocations = self
            .superseding_items(REVOKED_KIND)
            .into_iter()
            .map(|i| i.body)
            .collect();
        let cards = self.superseding_items(MEMBER_KIND);
        self.latest
            .retain(|i| i.kind != REVOKED_KIND && i.kind != MEMBER_KIND);
        self.restored_enrolled = known;
        self.set_identity_policy(policy);
        let now = unix_secs(self.now);
        let limits = self.kinds.limits(MEMBER_KIND, self.now);
        for item in cards {
            if let Ok(card) = self.identities.check_card(&item, now) {
                self.identities.learn_card(&item.origin, card);
                self.latest.offer(&item, &limits, self.now);
            }
        }
        let (ids, kinds, me) = (&self.identities, &self.kinds, &self.identity.name);
        self.latest.retain(|i| {
            i.origin == *me
                || matches!(i.kind.as_str(), MEMBER_KIND | REVOKED_KIND)
                || !kinds.policy(&i.kind).is_none_or(|p| p.owner == Owner::Node)
                || ids.check_node_item(i).is_ok()
        });
        self.rebuild_tag_book();
    }

    /// The tags learned, again from the tag slots held (after slots went).
    fn rebuild_tag_book(&mut self) {
        let mut book = crate::gossip::pushpull::TagBook::new();
        for item in self.latest.items().filter(|i| i.kind == TAGS_KIND) {
            if let Ok(tags) = postcard::from_bytes::<Tags>(&item.body) {
                book.learn(&item.key, item.version, &tags);
            }
        }
        self.tag_book = book;
    }

    /// Warns, once a day, while this node's certificate ends within a week.
    pub(super) fn warn_if_expiring(&mut self) {
        let Some(own) = self.identities.own() else {
            return;
        };
        let (now, end) = (unix_secs(self.now), own.cert().body().not_after);
        let soon = end.saturating_sub(now) < EXPIRY_WARNING.as_secs();
        let due = self
            .expiry_warned
            .is_none_or(|at| now.saturating_sub(at) >= 24 * 3600);
        if soon && due {
            self.expiry_warned = Some(now);
            tracing::warn!(
                node = %own.name(),
                expires_in_s = end.saturating_sub(now),
                "this node's certificate expires soon: enroll it again, install the new \
                 identity file and send SIGHUP"
            );
        }
    }

    /// The identities in force.
    pub fn identities(&self) -> &crate::gossip::vouch::Identities {
        &self.identities
    }

    /// Whether a foca identity may be taken into the membership
    /// ([`crate::gossip::vouch::Identities::admits`]).
    pub fn admits(&self, id: &NodeId) -> bool {
        self.identities.admits(id)
    }

    /// The bytes announcing this node's member card, when one is due (at start, and
    /// after the identity changed); each once.
    pub fn take_card(&mut self) -> Option<Result<Vec<u8>, CreateError>> {
        if !std::mem::take(&mut self.card_due) {
            return None;
        }
        let own = self.identities.own()?;
        let card = MemberCard {
            cert: own.cert().encode(),
            addr: self.identity.addr,
            bump: self.identity.bump,
        };
        let body = postcard::to_stdvec(&card).unwrap_or_default();
        let now_ms = u64::try_from(self.now.as_millis()).unwrap_or(u64::MAX);
        self.card_version = now_ms.max(self.card_version.saturating_add(1));
        let name = self.identity.name.clone();
        Some(self.create_superseding(MEMBER_KIND, &name, self.card_version, body))
    }

    /// A foca packet to `dst` as a datagram plaintext: with its MAC when both ends are
    /// enrolled ([`crate::gossip::pairwise`]).
    pub fn foca_datagram(&mut self, dst: &NodeId, packet: &[u8]) -> Vec<u8> {
        let now_ms = u64::try_from(self.now.as_millis()).unwrap_or(u64::MAX);
        let auth = self.identities.packet_auth(&dst.name, packet, now_ms);
        crate::gossip::message::encode_foca_datagram(packet, auth.as_ref())
    }

    /// Screens a foca packet from UDP source `from`, with its MAC and stamp if it has them,
    /// before `Foca::handle_data` (see [`crate::gossip::screen`]); with identities off only
    /// stale down verdicts are rewritten ([`screen::StaleDownPolicy`]). `receiver` says what this node holds (its own incarnation, the
    /// leaves recorded, the incarnation held for each member). Also returns the sender when
    /// the packet said this node is down: the caller asks it over a push/pull of its own
    /// ([`screen::Screened::Doubted`] carries it too).
    pub fn screen_packet<'a>(
        &mut self,
        pkt: &'a [u8],
        auth: Option<&crate::gossip::pairwise::Auth>,
        from: std::net::SocketAddr,
        receiver: impl screen::Receiver,
    ) -> Result<(screen::Screened<'a>, Option<NodeId>), screen::Malformed> {
        let parsed = screen::parse(pkt)?;
        if self.identities.mode() == Mode::Off {
            if parsed.header.message == foca::Message::TurnUndead {
                return Ok((screen::Screened::pass(pkt), None));
            }
            let policy = screen::StaleDownPolicy {
                me: &self.identity,
                receiver,
            };
            return Ok((screen::screen(pkt, &parsed, &policy), None));
        }
        // A card vouches for an address: a packet in its name from elsewhere is not its.
        if parsed.header.src.addr != from {
            self.stats.packets_spoofed += 1;
            let who = parsed.header.src.clone();
            return Ok((screen::Screened::Refused { who }, None));
        }
        let (authentic, carried) = self.packet_authentic(&parsed, pkt, auth);
        if !authentic {
            let who = parsed.header.src.clone();
            return Ok((screen::Screened::Refused { who }, None));
        }
        let policy = PacketPolicy {
            identities: &self.identities,
            carried,
            me: &self.identity,
            receiver,
        };
        let screened = screen::screen(pkt, &parsed, &policy);
        let mut ask = None;
        match &screened {
            screen::Screened::Pass { dropped, .. } => {
                self.stats.updates_refused_identity += *dropped as u64;
                ask = parsed
                    .says_down(&self.identity)
                    .then(|| parsed.header.src.clone());
            }
            screen::Screened::Refused { .. } => self.stats.packets_refused_identity += 1,
            screen::Screened::Doubted { .. } => {}
        }
        Ok((screened, ask))
    }

    /// The identity vouched for by the sender's own member card in the packet, if it
    /// carries one newer than the one held that would be kept (a node that just started or
    /// restarted announces it first). Only the sender's card is looked at, and only after
    /// the bounds: a packet costs at most one certificate check.
    fn card_carried(
        &mut self,
        parsed: &screen::Parsed<'_>,
    ) -> Option<(NodeId, ed25519_dalek::VerifyingKey)> {
        let src = &parsed.header.src;
        let item =
            parsed.broadcasts().find_map(
                |bytes| match crate::gossip::message::decode_broadcast(bytes) {
                    Ok(Broadcast::Superseding(i))
                        if i.kind == MEMBER_KIND && i.origin == src.name =>
                    {
                        Some(i)
                    }
                    _ => None,
                },
            )?;
        let limits = self.kinds.limits(MEMBER_KIND, self.now);
        if self.latest.check(&item, &limits) != crate::gossip::latest::Offer::Newer {
            return None;
        }
        if !self.identities.take_check(unix_secs(self.now)) {
            self.stats.checks_deferred += 1;
            return None;
        }
        let card = self
            .identities
            .check_card(&item, unix_secs(self.now))
            .ok()?;
        let id = card.vouched(&item.origin);
        (id == *src).then(|| (id, *card.node_key()))
    }

    /// Whether a packet may speak for its sender, and the sender's identity if the packet
    /// carried a newer card of it. The MAC is checked first under the card held (no
    /// signature check); only a packet whose sender has no card vouching for it here has
    /// its carried card checked ([`Self::card_carried`], metered). A MAC that does not
    /// verify is a forgery (`packets_forged`), an old stamp a replay (`packets_replayed`);
    /// none, from an enrolled sender while
    /// identities are required, is dropped (`packets_unauthenticated`): the sender lacks
    /// this node's card, and the push/pull the caller then starts gives it.
    fn packet_authentic(
        &mut self,
        parsed: &screen::Parsed<'_>,
        pkt: &[u8],
        auth: Option<&crate::gossip::pairwise::Auth>,
    ) -> (bool, Option<NodeId>) {
        let src = &parsed.header.src;
        let held = (self.identities.card(&src.name))
            .filter(|c| c.vouched(&src.name) == *src)
            .map(|c| *c.node_key());
        let (key, carried) = match held {
            Some(key) => (Some(key), None),
            None => match self.card_carried(parsed) {
                Some((id, key)) => (Some(key), Some(id)),
                None => (None, None),
            },
        };
        let authentic = match (key, auth) {
            (Some(key), Some(auth)) => {
                let now_ms = u64::try_from(self.now.as_millis()).unwrap_or(u64::MAX);
                match self.identities.open_packet(&key, pkt, auth, now_ms) {
                    Opened::Authentic => true,
                    Opened::Forged => {
                        self.stats.packets_forged += 1;
                        false
                    }
                    Opened::Replayed => {
                        self.stats.packets_replayed += 1;
                        false
                    }
                }
            }
            (Some(_), None) if self.identities.mode() == Mode::Required => {
                self.stats.packets_unauthenticated += 1;
                false
            }
            _ => true,
        };
        (authentic, carried)
    }

    /// The identity checks of an item before it may enter [`Latest`]; `local`: this
    /// node made it. What passed is returned, to be applied once kept.
    pub(super) fn check_identity(
        &mut self,
        item: &Superseding,
        local: bool,
        metered: bool,
    ) -> Result<Checked, Refusal> {
        let off = self.identities.mode() == Mode::Off;
        let verifies =
            matches!(item.kind.as_str(), MEMBER_KIND | REVOKED_KIND) || item.sig.is_some();
        if metered && !off && verifies && !self.identities.take_check(unix_secs(self.now)) {
            return Err(Refusal::Busy);
        }
        match item.kind.as_str() {
            MEMBER_KIND | REVOKED_KIND if off => Err(Refusal::IdentitiesOff),
            MEMBER_KIND => self
                .identities
                .check_card(item, unix_secs(self.now))
                .map(Checked::Card),
            REVOKED_KIND => self
                .identities
                .check_revocation(item)
                .map(Checked::Revocation),
            _ if local || off => Ok(Checked::Nothing),
            // Node kinds, and kinds this build does not know: only their origin may say them.
            kind if self
                .kinds
                .policy(kind)
                .is_none_or(|p| p.owner == Owner::Node) =>
            {
                self.identities
                    .check_node_item(item)
                    .map(|()| Checked::Nothing)
            }
            _ => Ok(Checked::Nothing),
        }
    }

    /// What a kept identity item changes: a card is learned (and what its origin said
    /// before it arrived is checked against it), a revocation withdraws the cards of its
    /// key and everything said under them.
    pub(super) fn identity_kept(&mut self, item: &Superseding, checked: Checked) {
        match checked {
            Checked::Nothing => {}
            Checked::Card(card) => {
                self.identities.learn_card(&item.origin, card);
                let (ids, kinds, origin) = (&self.identities, &self.kinds, &item.origin);
                self.latest.retain(|i| {
                    i.origin != *origin
                        || i.kind == MEMBER_KIND
                        || !kinds.policy(&i.kind).is_none_or(|p| p.owner == Owner::Node)
                        || ids.check_node_item(i).is_ok()
                });
            }
            Checked::Revocation(r) => {
                let gone = self.identities.revoke(&r);
                self.forget_nodes(&gone);
            }
        }
    }

    /// Drops revocations and cards past their time, and what the dropped cards vouched.
    pub(super) fn expire_identities(&mut self) {
        let now = unix_secs(self.now);
        let gone = self.identities.expire(now);
        self.forget_nodes(&gone);
        self.latest.retain(|i| {
            i.kind != REVOKED_KIND
                || crate::gossip::cert::Revocation::decode(&i.body)
                    .is_ok_and(|r| r.body().until >= now)
        });
    }

    /// Forgets every node-owned slot of `names` (their cards are gone), this node's own
    /// excepted.
    fn forget_nodes(&mut self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        for name in names {
            if *name == self.identity.name {
                tracing::error!(node = %name, "this node's own certificate was revoked or expired: the others no longer hear it; enroll it again and install its new identity");
            } else {
                tracing::warn!(node = %name, "member card withdrawn (revoked or expired): the node no longer speaks in this cluster");
            }
        }
        let kinds = &self.kinds;
        let me = &self.identity.name;
        self.latest.retain(|i| {
            !kinds.is_node_owned(&i.kind) || i.origin == *me || !names.contains(&i.origin)
        });
        self.tag_book
            .retain(|n| n == me.as_str() || !names.iter().any(|g| g == n));
    }

    /// Signs an answer this node sends (when it has an identity).
    pub fn sign_response(&self, r: &mut crate::gossip::query::QueryResponse) {
        self.identities.sign_response(r);
    }

    /// Whether an answer may be counted as its sender's.
    pub fn check_response(&mut self, r: &crate::gossip::query::QueryResponse) -> bool {
        let ok = self.identities.check_response(r).is_ok();
        if !ok {
            self.stats.refused_identity += 1;
        }
        ok
    }

    /// Whether a query from `origin` may be answered. Its answers go to `origin.addr`,
    /// which nobody vouches for: any gossip-key holder could have every member answer at
    /// an address of its choosing. With identities on, only an identity this node admits
    /// is answered (in [`Mode::Required`], the address its name's card names).
    pub fn may_answer(&mut self, origin: &NodeId) -> bool {
        let ok = *origin == self.identity || self.identities.admits(origin);
        if !ok {
            self.stats.refused_identity += 1;
        }
        ok
    }

    /// This node's leave notice, signed when it has an identity.
    pub fn leave_notice(&self) -> crate::gossip::message::LeaveNotice {
        let id = self.identity.clone();
        let sig = self.identities.sign_leave(&id);
        crate::gossip::message::LeaveNotice { id, sig }
    }

    /// Whether a leave notice may be recorded. One signed by the node that left always
    /// may; an unsigned one (an operator's force-leave, relayed) only for a member this
    /// node already sees failed (`seen_down`), or for a name without a card.
    pub fn check_leave(
        &mut self,
        notice: &crate::gossip::message::LeaveNotice,
        seen_down: bool,
    ) -> bool {
        let signed = notice.sig.is_some()
            && self
                .identities
                .check_leave(&notice.id, notice.sig.as_ref())
                .is_ok();
        let ok = signed
            || (notice.sig.is_none()
                && (seen_down || self.identities.check_leave(&notice.id, None).is_ok()));
        if !ok {
            self.stats.refused_identity += 1;
        }
        ok
    }
}

#[cfg(test)]
#[path = "handler_identity_tests.rs"]
mod tests;
