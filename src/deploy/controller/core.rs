//! The deploy controller's logic, sans-io: signed events and gossip slots in, effects
//! (start an activation, publish a slot, persist) out. The shell ([`super`]) does the I/O.
//!
//! What it decides:
//! - An event from the `_deploy` user event passes the [`Verifier`] (trusted signature,
//!   not stale, not from the future, not replayed); one from a `deploy.desired` slot (push/pull
//!   repair, a node that was away) needs a trusted signature only — it is the latest
//!   desired state, whatever its age. Either way it must be newer than the app's desired
//!   event to matter ([`DesiredState`]).
//! - A desired event is acted on once: when this node runs the app, is a target, and its
//!   wave may start ([`Plan::may_start`]). Finished events are remembered per app (and
//!   persisted), so a restarted agent does not redo finished work; an activation that was
//!   cut short by a restart is started again (activation is idempotent: the version
//!   already `current` is a no-op).
//! - Each outcome is one superseding slot per (app, node), so waves and `--wait` see it
//!   without O(N²) traffic.
//! - Nothing starts before the node is [synced](Core::on_synced): a node that just started
//!   knows only itself, so every plan would be one wave with it alone, and it would deploy
//!   an event that the others' outcomes halted or that waits in a later wave. Until then an
//!   accepted event is recorded and persisted, and its phase says why it waits.

use std::collections::{BTreeMap, BTreeSet};

pub use super::persisted::Persisted;
use super::targets::{self, Context, MemberView, Standing};
use super::waiting::Waiting;
use crate::deploy::activation::Outcome;
use crate::deploy::control::{Action, CONTROL_KIND, Control, Orders, SignedControl};
use crate::deploy::desired::DesiredState;
use crate::deploy::rollout::Decision;
use crate::deploy::signed::{DeployEvent, SignedEvent, Trust, Verifier, VerifyError};
use crate::deploy::status::{
    DESIRED_KIND, NodeOutcome, OUTCOME_KIND, Progress, Result as Res, outcome_key,
};
use crate::gossip::supersede::Superseding;

/// Superseding kind of a node's list of apps (key: node, body: postcard `Vec<String>`).
pub const APPS_KIND: &str = "deploy.apps";
/// How many recent events are remembered for `--wait` progress.
const RECENT: usize = 256;
/// Most apps rollout orders are kept for.
const MAX_ORDERS: usize = 4096;
/// Longest error text put in an outcome slot.
const MAX_ERROR: usize = 300;

/// The slot version of a desired event: ordered like [`DesiredState`] (issued-at, then id),
/// with two id bytes to tell events of the same millisecond apart (42 bits of milliseconds
/// last until 2109).
pub fn desired_version(ev: &DeployEvent) -> u64 {
    crate::gossip::kinds::fleet_version(ev.issued_at_ms, u16::from_be_bytes([ev.id[0], ev.id[1]]))
}

/// Whether a node knows enough of the cluster to decide on waves: it merged a push/pull
/// since it started (the others' app lists, outcomes and desired state came with it), or it
/// has been up for `grace` with no other member alive to ask.
pub fn sync_reached(
    push_pulls: u64,
    peers_alive: usize,
    up: std::time::Duration,
    grace: std::time::Duration,
) -> bool {
    push_pulls > 0 || (peers_alive == 0 && up >= grace)
}

/// The phase of a desired event while the node is not synced.
pub const SYNCING: &str = "waiting for the cluster's state (first push/pull)";

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Deploy `event` for its app on this node (the executor queues per app).
    /// `signer`: the id of the key that signed it ([`SignedEvent::signer_id`]).
    Activate {
        app: String,
        event: DeployEvent,
        signer: Option<String>,
        /// Who else has the artifact: the earlier waves' targets and this node's wave.
        swarm: crate::fanout::owners::Swarm,
    },
    /// Broadcast a superseding item from this node (the agent sets its origin and
    /// signature).
    Publish(Superseding),
    /// Write [`Persisted`] before acknowledging what caused it.
    Persist,
}

/// The controller state of one node.
pub struct Core {
    node: String,
    apps: BTreeSet<String>,
    verifier: Verifier,
    desired: DesiredState,
    recent: BTreeMap<String, DeployEvent>,
    recent_order: Vec<String>,
    done: BTreeMap<String, String>,
    started: BTreeMap<String, String>,
    outcomes: BTreeMap<String, NodeOutcome>,
    node_apps: BTreeMap<String, BTreeSet<String>>,
    members: BTreeMap<String, MemberView>,
    phase: BTreeMap<String, String>,
    last_version: u64,
    synced: bool,
    /// The operator's rollout orders per app.
    orders: BTreeMap<String, Orders>,
    /// This node's clock, as last told (progress deadlines).
    now_ms: u64,
    /// Apps whose desired event waits for earlier waves here ([`Waiting`]).
    waits: BTreeMap<String, Waiting>,
}

impl Core {
    /// `apps`: the apps this node runs. `verifier` checks events from the event path.
    pub fn new(node: &str, apps: BTreeSet<String>, verifier: Verifier) -> Self {
        let mut node_apps = BTreeMap::new();
        node_apps.insert(node.to_owned(), apps.clone());
        Core {
            node: node.to_owned(),
            apps,
            verifier,
            desired: DesiredState::new(),
            recent: BTreeMap::new(),
            recent_order: Vec::new(),
            done: BTreeMap::new(),
            started: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            node_apps,
            members: BTreeMap::from([(node.to_owned(), me(node, Default::default()))]),
            phase: BTreeMap::new(),
            last_version: 0,
            synced: false,
            orders: BTreeMap::new(),
            now_ms: 0,
            waits: BTreeMap::new(),
        }
    }

    /// The node now knows the cluster's state (see [`sync_reached`]): due events may start.
    pub fn on_synced(&mut self) -> Vec<Effect> {
        if self.synced {
            return Vec::new();
        }
        self.synced = true;
        self.evaluate_all()
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Restores what was persisted and says what to (re)publish and (re)start; `now_ms`
    /// versions this node's app announcement.
    pub fn restore(&mut self, p: Persisted, now_ms: u64) -> Vec<Effect> {
        if !p.desired.is_empty() {
            match self
                .desired
                .merge(&p.desired, &self.verifier.policy.trusted)
            {
                Ok(r) => {
                    for e in r.refused {
                        tracing::warn!(cause = %e, "persisted desired state entry dropped");
                    }
                }
                Err(e) => tracing::warn!(cause = %e, "persisted desired state unreadable"),
            }
        }
        self.done = p.done;
        self.verifier.restore_seen(&p.seen);
        for o in p.outcomes {
            self.outcomes.insert(outcome_key(&o.app, &o.node), o);
        }
        let mut fx = vec![self.announce_apps(now_ms)];
        let held: Vec<SignedEvent> = self.desired.iter().map(|(_, s)| s.clone()).collect();
        for s in held {
            self.remember(&s.event);
            fx.extend(publish_desired(&s));
        }
        let own: Vec<NodeOutcome> = self
            .outcomes
            .values()
            .filter(|o| o.node == self.node)
            .cloned()
            .collect();
        for o in own {
            fx.push(self.publish_outcome(&o, now_ms));
        }
        fx.extend(self.evaluate_all());
        fx
    }

    /// This node's app list, as a slot.
    fn announce_apps(&mut self, now_ms: u64) -> Effect {
        let list: Vec<String> = self.apps.iter().cloned().collect();
        let version = self.next_version(now_ms);
        let body = postcard::to_allocvec(&list).unwrap_or_default();
        publish(APPS_KIND, self.node.clone(), version, body)
    }

    fn trust(&self) -> &Trust {
        &self.verifier.policy.trusted
    }

    fn next_version(&mut self, now_ms: u64) -> u64 {
        self.last_version = now_ms.max(self.last_version + 1);
        self.last_version
    }

    /// The clock moved: a progress deadline may have passed.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Effect> {
        self.now_ms = self.now_ms.max(now_ms);
        if !self.synced {
            return Vec::new();
        }
        // A wait with no progress deadline changes with outcomes, members and orders, not
        // with time.
        let apps: Vec<String> = (self.apps.iter())
            .filter(|a| self.waits.get(*a).is_none_or(|w| w.timed))
            .cloned()
            .collect();
        apps.iter().flat_map(|a| self.evaluate(a)).collect()
    }

    /// A signed rollout order of a `_rollout` user event, received at `now` (unix seconds).
    pub fn on_control(&mut self, bytes: &[u8], now: u64) -> Vec<Effect> {
        let policy = &self.verifier.policy;
        let signed = match SignedControl::decode(bytes, &policy.trusted, now, policy.max_skew) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(cause = %e, "rollout order refused");
                return Vec::new();
            }
        };
        let c = signed.control.clone();
        if !self.offer_control(c.clone()) {
            return Vec::new();
        }
        tracing::info!(app = %c.app, event = %hex::encode(c.event_id), order = c.action.as_str(), "rollout order");
        let body = signed.bytes().to_vec();
        let mut fx = vec![publish(CONTROL_KIND, c.slot_key(), c.slot_version(), body)];
        fx.extend(self.evaluate(&c.app));
        fx
    }

    /// Keeps `c` if it is newer than the app's order of its kind ([`Orders::offer`]).
    fn offer_control(&mut self, c: Control) -> bool {
        if !self.orders.contains_key(&c.app) && self.orders.len() >= MAX_ORDERS {
            return false;
        }
        self.orders.entry(c.app.clone()).or_default().offer(c)
    }

    /// Checks a rollout order the local operator hands in, as a receiver would, and that it
    /// is about the app's desired deploy, which is not cancelled.
    pub fn admit_control(&self, bytes: &[u8], now: u64) -> Result<Control, VerifyError> {
        let policy = &self.verifier.policy;
        let c = SignedControl::decode(bytes, &policy.trusted, now, policy.max_skew)?.control;
        let id = hex::encode(c.event_id);
        if self.desired(&c.app).is_none_or(|d| d.id != c.event_id) {
            return Err(VerifyError::Malformed(format!(
                "{id} is not the desired deploy of {} on this agent: a newer one replaced it, or it is unknown here",
                c.app
            )));
        }
        let orders = self.orders.get(&c.app);
        if orders.and_then(|o| o.about(&c.event_id)) == Some(Action::Cancel) {
            return Err(VerifyError::Malformed(format!(
                "the rollout of {id} was cancelled; a cancel is final: deploy again to go on"
            )));
        }
        Ok(c)
    }

    /// The signed event of a `_deploy` user event, received at `now` (unix seconds).
    pub fn on_event(&mut self, bytes: &[u8], now: u64) -> Vec<Effect> {
        self.now_ms = self.now_ms.max(now * 1000);
        let signed = match self.verifier.accept(bytes, now) {
            Ok(s) => s,
            // Delivered again because the state file could not be written the first time:
            // write it now (the event is already the desired one).
            Err(e @ VerifyError::Replayed { .. }) if self.is_desired(bytes) => {
                tracing::warn!(cause = %e, "deploy event refused; nothing fetched");
                return vec![Effect::Persist];
            }
            Err(e) => {
                tracing::warn!(cause = %e, "deploy event refused; nothing fetched");
                return Vec::new();
            }
        };
        if matches!(self.trust(), Trust::DevUnverified) {
            tracing::warn!(id = %signed.event.id_hex(), "--dev: deploy event accepted WITHOUT a signature check");
        }
        self.remember(&signed.event);
        let app = signed.event.app.clone();
        let mut fx = publish_desired(&signed);
        if !self.desired.offer(signed) {
            tracing::info!(%app, "deploy event is older than the app's desired state; ignored");
            return Vec::new();
        }
        fx.push(Effect::Persist);
        fx.extend(self.evaluate(&app));
        fx
    }

    /// A superseding item this node accepted (its kind's validator already ran).
    pub fn on_slot(&mut self, item: &Superseding) -> Vec<Effect> {
        match item.kind.as_str() {
            DESIRED_KIND => {
                let Ok(signed) = SignedEvent::decode_trusted(&item.body, self.trust()) else {
                    return Vec::new();
                };
                self.remember(&signed.event);
                let app = signed.event.app.clone();
                if !self.desired.offer(signed) {
                    return Vec::new();
                }
                let mut fx = vec![Effect::Persist];
                fx.extend(self.evaluate(&app));
                fx
            }
            OUTCOME_KIND => match postcard::from_bytes::<NodeOutcome>(&item.body) {
                Ok(o) if item.key == outcome_key(&o.app, &o.node) => {
                    let app = o.app.clone();
                    let wait = self.waits.get_mut(&app);
                    let phase = wait.and_then(|w| w.absorb(&o).then(|| w.phase()));
                    self.outcomes.insert(item.key.clone(), o);
                    match phase {
                        Some(phase) => {
                            self.phase.insert(app, phase);
                            Vec::new()
                        }
                        None => self.evaluate(&app),
                    }
                }
                _ => Vec::new(),
            },
            CONTROL_KIND => match SignedControl::decode_signed(&item.body, self.trust()) {
                Ok(s)
                    if s.control.slot_key() == item.key
                        && self.offer_control(s.control.clone()) =>
                {
                    self.evaluate(&s.control.app)
                }
                _ => Vec::new(),
            },
            APPS_KIND => match postcard::from_bytes::<Vec<String>>(&item.body) {
                Ok(list) if item.key != self.node => {
                    self.node_apps
                        .insert(item.key.clone(), list.into_iter().collect());
                    self.evaluate_all()
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// The member list changed (or was polled).
    pub fn on_members(&mut self, members: Vec<MemberView>) -> Vec<Effect> {
        let mut new: BTreeMap<String, MemberView> =
            members.into_iter().map(|m| (m.name.clone(), m)).collect();
        // This node is always a live member of its own view.
        let tags = new.remove(&self.node).map(|m| m.tags).unwrap_or_default();
        new.insert(self.node.clone(), me(&self.node, tags));
        if new == self.members {
            return Vec::new();
        }
        self.members = new;
        self.evaluate_all()
    }

    /// The executor finished an activation of `app`.
    pub fn on_finished(&mut self, app: &str, outcome: &Outcome, now_ms: u64) -> Vec<Effect> {
        self.now_ms = self.now_ms.max(now_ms);
        let (event_id, version, result) = (outcome.event_id(), outcome.version(), Res::of(outcome));
        let error = match outcome {
            Outcome::RolledBack { error, to, .. } => Some(format!("{error} (back on {to})")),
            other => other.error().map(str::to_owned),
        };
        let o = NodeOutcome {
            node: self.node.clone(),
            app: app.to_owned(),
            event_id: event_id.to_owned(),
            version: version.to_owned(),
            result,
            error: error.map(|e| truncate(&e, MAX_ERROR)),
            at: now_ms / 1000,
        };
        self.done.insert(app.to_owned(), event_id.to_owned());
        if self.started.get(app).is_some_and(|s| s == event_id) {
            self.started.remove(app);
        }
        self.outcomes
            .insert(outcome_key(app, &self.node), o.clone());
        let mut fx = vec![Effect::Persist, self.publish_outcome(&o, now_ms)];
        fx.extend(self.evaluate_all());
        fx
    }

    fn publish_outcome(&mut self, o: &NodeOutcome, now_ms: u64) -> Effect {
        let version = self.next_version(now_ms);
        let body = postcard::to_allocvec(o).unwrap_or_default();
        publish(OUTCOME_KIND, outcome_key(&o.app, &o.node), version, body)
    }

    fn is_desired(&self, bytes: &[u8]) -> bool {
        SignedEvent::decode_unverified(bytes).is_ok_and(|s| {
            self.desired
                .get(&s.event.app)
                .is_some_and(|d| d.event.id == s.event.id)
        })
    }

    fn remember(&mut self, ev: &DeployEvent) {
        let id = ev.id_hex();
        if self.recent.insert(id.clone(), ev.clone()).is_none() {
            self.recent_order.push(id);
            if self.recent_order.len() > RECENT {
                let old = self.recent_order.remove(0);
                self.recent.remove(&old);
            }
        }
    }

    fn evaluate_all(&mut self) -> Vec<Effect> {
        let apps: Vec<String> = self.apps.iter().cloned().collect();
        apps.iter().flat_map(|a| self.evaluate(a)).collect()
    }

    /// Starts the app's desired event here if it is due.
    fn evaluate(&mut self, app: &str) -> Vec<Effect> {
        self.waits.remove(app);
        if !self.apps.contains(app) {
            return Vec::new();
        }
        let Some((ev, signer)) = self
            .desired
            .get(app)
            .map(|s| (s.event.clone(), s.signer_id()))
        else {
            self.phase.insert(app.into(), "idle".into());
            return Vec::new();
        };
        let id = ev.id_hex();
        if self.done.get(app) == Some(&id) {
            self.phase.insert(app.into(), "idle".into());
            return Vec::new();
        }
        if self.started.get(app) == Some(&id) {
            return Vec::new();
        }
        if !self.synced {
            self.phase.insert(app.into(), SYNCING.into());
            return Vec::new();
        }
        let cx = Context {
            orders: self.orders.get(app),
            now_ms: self.now_ms,
        };
        let standing = Standing::new(&ev, &self.members, &self.node_apps, &self.outcomes, cx);
        let phase = match standing.decide(&self.node) {
            Decision::Start => {
                self.started.insert(app.into(), id);
                self.phase
                    .insert(app.into(), format!("activating {}", ev.version));
                let swarm = standing.plan.swarm_of(&self.node);
                return vec![Effect::Activate {
                    app: app.into(),
                    event: ev,
                    signer,
                    swarm,
                }];
            }
            Decision::Wait { pending } => {
                let wave = standing.plan.wave_of(&self.node).unwrap_or(0) + 1;
                let timed = ev.options.progress_deadline_secs.is_some();
                let wait = Waiting::new(id, standing.targets, pending, wave, timed);
                let phase = wait.phase();
                self.waits.insert(app.into(), wait);
                phase
            }
            Decision::Halted { by, outcome } => format!("halted by {by} ({})", outcome.as_str()),
            Decision::NotTarget => "not a target".into(),
            Decision::Held { why, .. } => why,
        };
        self.phase.insert(app.into(), phase);
        Vec::new()
    }

    /// What to write to disk.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            desired: self.desired.encode(),
            done: self.done.clone(),
            outcomes: self
                .outcomes
                .values()
                .filter(|o| o.node == self.node)
                .cloned()
                .collect(),
            seen: self.verifier.seen(),
        }
    }

    /// Progress of a known event (hex id).
    pub fn progress(&self, id: &str) -> Option<Progress> {
        let ev = self.recent.get(id)?;
        let cx = Context {
            orders: self.orders.get(&ev.app),
            now_ms: self.now_ms,
        };
        let mut p = targets::progress(ev, &self.members, &self.node_apps, &self.outcomes, cx);
        p.superseded_by = self
            .desired(&ev.app)
            .filter(|d| d.id != ev.id && desired_version(d) > desired_version(ev))
            .map(DeployEvent::id_hex);
        Some(p)
    }

    /// Checks an event the local operator hands in, as a receiver would (signature,
    /// age, replay), without recording it: a refused one is an error for the operator at
    /// once, and a replay is never gossiped.
    pub fn admit(&self, bytes: &[u8], now: u64) -> Result<DeployEvent, VerifyError> {
        self.verifier.check(bytes, now).map(|s| s.event)
    }

    /// The desired event of `app`.
    pub fn desired(&self, app: &str) -> Option<&DeployEvent> {
        self.desired.get(app).map(|s| &s.event)
    }

    /// What this node is doing about `app`.
    pub fn phase(&self, app: &str) -> String {
        self.phase
            .get(app)
            .cloned()
            .unwrap_or_else(|| "idle".into())
    }

    /// This node's last outcome for `app`.
    pub fn last_outcome(&self, app: &str) -> Option<&NodeOutcome> {
        self.outcomes.get(&outcome_key(app, &self.node))
    }

    /// The apps this node runs.
    pub fn apps(&self) -> &BTreeSet<String> {
        &self.apps
    }
}

/// This node as a member of its own view: always alive.
fn me(node: &str, tags: crate::gossip::Tags) -> MemberView {
    MemberView {
        name: node.to_owned(),
        alive: true,
        failed: false,
        tags,
        deploy_format: Some(crate::deploy::signed::DEPLOY_FORMAT),
    }
}

fn publish(kind: &str, key: String, version: u64, body: Vec<u8>) -> Effect {
    Effect::Publish(Superseding {
        kind: kind.to_owned(),
        key,
        version,
        origin: String::new(),
        body,
        sig: None,
    })
}

fn publish_desired(s: &SignedEvent) -> Vec<Effect> {
    match s.encode() {
        Ok(body) => vec![publish(
            DESIRED_KIND,
            s.event.app.clone(),
            desired_version(&s.event),
            body,
        )],
        Err(_) => Vec::new(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
