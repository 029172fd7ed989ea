//! Push/pull in the foca-owning task: anti-entropy with live members, joining, and
//! reconnecting to failed members.
//!
//! Every outgoing exchange is a [`Dial`]: the dial itself runs in a spawned task
//! ([`net::push_pull`], sealed like every stream) and its result comes back to the
//! [`AgentTask`] as [`Input::PushPullDone`]; state is only touched here, in the task.
//!
//! - [`Dial::Sync`]: every `push_pull_interval`, a random live member.
//! - [`Dial::Join`]: the `join` addresses at start, retried with backoff, and again
//!   when no live member is left.
//! - [`Dial::Reconnect`]: every `reconnect_interval`, a random *failed* member
//!   ([`members::reconnect_target`]), at most one in flight. Serf's reconnect: after a
//!   partition longer than a stream timeout, nothing else crosses the healed link
//!   (live-member push/pull and probes only go to members seen alive).
//!
//! A successful join or reconnect merges the peer's state and then announces to the
//! peer: foca's `Feed` reply brings its live view. A remote state is merged with
//! [`screen_members`], so the peer's "down" verdicts never fail a member we see alive;
//! its verdict about *us* passes, and makes foca rejoin under a new bump (the only way
//! back into a view that declared us down).

use foca::Member;
use rand::seq::IteratorRandom;
use tokio::time::Instant;

use super::members;
use super::net::{self, Counters};
use super::scheduler::Scheduled;
use super::task::{AgentTask, Input};
use crate::gossip::PushPullState;
use crate::gossip::pushpull::screen_members;

/// Why a push/pull was dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// Periodic anti-entropy with a live member (or one that just came up).
    Sync,
    /// A `join` address.
    Join,
    /// A failed member, to re-merge after a partition.
    Reconnect,
}

/// Join rounds and the reconnect in flight.
#[derive(Debug, Default)]
pub struct DialState {
    join_attempts: u32,
    join_in_flight: usize,
    join_any_ok: bool,
    reconnect_in_flight: bool,
}

impl AgentTask {
    /// Our state, to be encoded at wire `version` (what the peer reads).
    pub(super) fn push_pull_state(&self, version: u16) -> PushPullState {
        let members: Vec<_> = self.foca.iter_membership_state().cloned().collect();
        self.core.lock().push_pull_state(members, version)
    }

    /// Merges a peer's state: events and clocks into the core, screened members
    /// into foca.
    pub(super) async fn merge_remote(&mut self, remote: PushPullState) {
        let from = remote.from.clone();
        let out = self.core.lock().merge_push_pull(&remote);
        Counters::add(&self.counters.push_pulls_merged);
        if !out.new_events.is_empty() {
            tracing::info!(peer = %from.name, events = out.new_events.len(), "push/pull delivered missed events");
        }
        let me = self.core.lock().identity().clone();
        let members = remote
            .members
            .into_iter()
            .chain(std::iter::once(Member::alive(from.clone())));
        let screened = screen_members(&me, self.foca.iter_membership_state(), members, |id| {
            self.left.has_left(id)
        });
        if !screened.suspect.is_empty() {
            let names: Vec<&str> = screened
                .suspect
                .iter()
                .map(|m| m.id().name.as_str())
                .collect();
            tracing::debug!(peer = %from.name, members = ?names, "push/pull: remote down verdicts applied as suspicions");
        }
        if let Err(e) = self
            .foca
            .apply_many(screened.apply.into_iter(), false, &mut self.rt)
        {
            tracing::debug!(cause = %e, "applying push/pull members");
        }
        if let Err(e) = self
            .foca
            .apply_many(screened.suspect.into_iter(), true, &mut self.rt)
        {
            tracing::debug!(cause = %e, "applying push/pull suspicions");
        }
        self.flush().await;
    }

    pub(super) fn spawn_push_pull(&self, target: String, kind: Dial) {
        // A peer we never heard a versioned state from gets the format every version
        // reads; its reply tells us its version for the next time.
        let version = self
            .foca
            .iter_membership_state()
            .find(|m| m.id().addr.to_string() == target)
            .map_or(1, |m| self.core.lock().peer_version(&m.id().name));
        let state = self.push_pull_state(version);
        let (keyring, tx) = (self.keyring.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = match tokio::net::lookup_host(&target).await {
                Ok(mut addrs) => match addrs.next() {
                    Some(addr) => net::push_pull(addr, state, keyring)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err(format!("{target} resolves to no address")),
                },
                Err(e) => Err(format!("resolving {target}: {e}")),
            };
            let _ = tx
                .send(Input::PushPullDone {
                    target,
                    kind,
                    result,
                })
                .await;
        });
    }

    pub(super) fn start_push_pull(&mut self) {
        let me = self.core.lock().identity().name.clone();
        let target = self
            .foca
            .iter_members()
            .filter(|m| m.id().name != me)
            .map(|m| m.id().addr)
            .choose(&mut self.rng);
        if let Some(addr) = target {
            self.spawn_push_pull(addr.to_string(), Dial::Sync);
        }
    }

    pub(super) fn start_reconnect(&mut self) {
        if self.dials.reconnect_in_flight || self.stop {
            return;
        }
        let me = self.core.lock().identity().clone();
        let target = members::reconnect_target(
            &me,
            self.foca.iter_membership_state(),
            &self.left,
            &mut self.rng,
        );
        if let Some(id) = target {
            tracing::debug!(node = %id.name, addr = %id.addr, "reconnecting to a failed member");
            self.dials.reconnect_in_flight = true;
            self.spawn_push_pull(id.addr.to_string(), Dial::Reconnect);
        }
    }

    pub(super) fn start_join_round(&mut self) {
        if self.settings.join.is_empty() || self.dials.join_in_flight > 0 || self.stop {
            return;
        }
        self.dials.join_in_flight = self.settings.join.len();
        self.dials.join_any_ok = false;
        for target in self.settings.join.clone() {
            self.spawn_push_pull(target, Dial::Join);
        }
    }

    pub(super) async fn push_pull_done(
        &mut self,
        target: String,
        kind: Dial,
        result: Result<PushPullState, String>,
    ) {
        if kind == Dial::Reconnect {
            self.dials.reconnect_in_flight = false;
        }
        match result {
            Ok(remote) => {
                let from = remote.from.clone();
                self.merge_remote(remote).await;
                if kind != Dial::Sync {
                    let _ = self.foca.announce(from, &mut self.rt);
                    self.flush().await;
                }
                match kind {
                    Dial::Join => {
                        self.dials.join_any_ok = true;
                        tracing::info!(peer = %target, "joined via push/pull");
                    }
                    Dial::Reconnect => {
                        tracing::info!(peer = %target, "reconnected to a failed member via push/pull");
                    }
                    Dial::Sync => {}
                }
            }
            Err(e) => match kind {
                Dial::Join => tracing::warn!(peer = %target, cause = %e, "join attempt failed"),
                Dial::Reconnect => tracing::debug!(peer = %target, cause = %e, "reconnect failed"),
                Dial::Sync => tracing::debug!(peer = %target, cause = %e, "push/pull failed"),
            },
        }
        if kind == Dial::Join {
            self.join_round_progress();
        }
    }

    fn join_round_progress(&mut self) {
        let d = &mut self.dials;
        d.join_in_flight = d.join_in_flight.saturating_sub(1);
        if d.join_in_flight > 0 {
            return;
        }
        if d.join_any_ok {
            d.join_attempts = 0;
            return;
        }
        d.join_attempts += 1;
        let attempts = d.join_attempts;
        let max = self.settings.retry_max;
        if !self.settings.retry_join || (max != 0 && attempts >= max) {
            tracing::error!(
                attempts,
                "could not join any address; giving up (retry_join)"
            );
            return;
        }
        let base = self.settings.retry_interval;
        let backoff = base.saturating_mul(1 << attempts.min(3).saturating_sub(1));
        tracing::info!(retry_in = ?backoff, attempts, "will retry joining");
        self.sched
            .submit(Instant::now(), backoff, Scheduled::RetryJoin);
    }
}
