//! The deploy controller on simulated nodes: the agent's real sans-io
//! [`Core`](crate::deploy::controller::core::Core) per node, fed as the controller's
//! shell feeds it (`_deploy` deliveries, superseding slots, the member list every
//! 500 ms, the sync rule), its slots published through the node's machine. Only the
//! activation is the simulator's: it takes a seeded time and always succeeds, so what a
//! run measures is the fleet's part, the desired state spreading and the waves.

use std::collections::BTreeSet;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngExt;

use super::cluster::Cluster;
use crate::agent::config::HandlerConfig;
use crate::agent::sansio::consumer_name::{consumer_handler, consumer_name};
use crate::deploy::activation::Outcome;
use crate::deploy::controller::core::{Core, Effect, Persisted, sync_reached};
use crate::deploy::controller::slot_kinds::{RESYNC_ORDER, slot_kinds};
use crate::deploy::controller::targets::MemberView;
use crate::deploy::signed::{
    DeployEvent, Options, Policy, Rollout, SignedEvent, Targets, Trust, Verifier,
};
use crate::deploy::status::{DESIRED_KIND, EVENT_NAME, Progress};
use crate::gossip::kinds::Kinds;
use crate::gossip::supersede::Superseding;

/// The app every simulated node runs.
pub const APP: &str = "web";
/// The controller's consumer (as the agent names it).
const CONSUMER: &str = "deploy";
/// How often the shell refreshes members and ticks the core (the agent's `TICK`).
pub(super) const TICK: Duration = Duration::from_millis(500);
/// Replay memory of each node's verifier.
const SEEN_IDS: usize = 4096;

/// The deploy side of a run: who signs, and how long one activation takes.
#[derive(Debug, Clone)]
pub struct DeploySetup {
    /// The operator's key (deterministic: the run is seeded).
    pub operator: [u8; 32],
    /// Each activation takes `activation` plus up to `jitter` more.
    pub activation: Duration,
    pub jitter: Duration,
}

impl Default for DeploySetup {
    fn default() -> Self {
        Self {
            operator: [7; 32],
            activation: Duration::from_secs(2),
            jitter: Duration::from_secs(1),
        }
    }
}

impl DeploySetup {
    fn trusted(&self) -> VerifyingKey {
        SigningKey::from_bytes(&self.operator).verifying_key()
    }

    /// The policy every node verifies with.
    fn policy(&self) -> Policy {
        Policy {
            trusted: Trust::Keys(vec![self.trusted()]),
            max_age: 3600,
            max_skew: 300,
        }
    }

    /// The slot kinds a node registers.
    pub(super) fn kinds(&self) -> Kinds {
        let mut kinds = Kinds::default();
        for (kind, policy) in slot_kinds(&self.policy().trusted) {
            kinds.register(kind, policy);
        }
        kinds
    }

    /// The consumer entry a node's settings carry.
    pub(super) fn handler(&self) -> HandlerConfig {
        consumer_handler(CONSUMER, EVENT_NAME)
    }
}

/// One node's controller.
pub(super) struct NodeController {
    pub(super) core: Core,
    /// Push/pull states this life merged (the sync rule's counter).
    pub(super) merged: u64,
    started: Duration,
    /// What the state file holds, restored at the next start.
    saved: Persisted,
}

impl NodeController {
    pub(super) fn new(node: &str, setup: &DeploySetup) -> Self {
        let verifier = Verifier::new(setup.policy(), SEEN_IDS);
        let apps = BTreeSet::from([APP.to_owned()]);
        NodeController {
            core: Core::new(node, apps, verifier),
            merged: 0,
            started: Duration::ZERO,
            saved: Persisted::default(),
        }
    }

    /// Whether members could change what the core does: it is not synced yet, or its app
    /// has a desired state it has not finished.
    fn busy(&self) -> bool {
        !self.core.is_synced() || self.core.phase(APP) != "idle"
    }

    /// The controller after a crash: a fresh core over what was persisted.
    pub(super) fn restarted(&self, node: &str, setup: &DeploySetup) -> Self {
        let mut c = Self::new(node, setup);
        c.saved = self.core.persisted();
        c
    }
}

/// An activation the simulator finishes later.
#[derive(Debug)]
pub(super) struct Activation {
    started: Duration,
    app: String,
    event_id: String,
    version: String,
}

impl Cluster {
    /// The simulated wall clock in Unix milliseconds (what a node stamps events with).
    fn wall_ms(&self) -> u64 {
        u64::try_from(self.now().wall.as_millis()).unwrap_or(u64::MAX)
    }

    /// Signs a deploy of `version` to every node in waves of `rollout` and has node
    /// `origin` send it as `event deploy` does; returns the event id.
    pub fn deploy(&mut self, origin: usize, version: &str, rollout: Rollout) -> String {
        let setup = self
            .config()
            .deploy
            .clone()
            .expect("a run with deploy set up");
        let issued_at_ms = self.wall_ms();
        let id: [u8; 16] = self.rng_mut().random();
        let event = DeployEvent {
            app: APP.into(),
            version: version.into(),
            url: format!("s3://artifacts/{APP}/{version}.tar.zst"),
            sha256: Some([0; 32]),
            targets: Targets::default(),
            rollout,
            issued_at_ms,
            id,
            options: Options::default(),
            chunks: None,
        };
        let key = SigningKey::from_bytes(&setup.operator);
        let signed = SignedEvent::sign(event, &key).expect("a deploy event encodes");
        let bytes = signed.encode().expect("a deploy event encodes");
        self.fire(origin, EVENT_NAME, bytes);
        signed.event.id_hex()
    }

    /// Node `viewer`'s view of a deploy's progress (its `rollout status`).
    pub fn progress(&self, viewer: usize, event_id: &str) -> Option<Progress> {
        self.controller(viewer)?.core.progress(event_id)
    }

    /// How many up nodes hold `event_id` as their app's desired state.
    pub fn desired_reached(&self, event_id: &str) -> usize {
        (0..self.len())
            .filter(|&i| self.is_up(i))
            .filter_map(|i| self.controller(i)?.core.desired(APP))
            .filter(|ev| ev.id_hex() == event_id)
            .count()
    }

    /// The node starts: its controller restores its state file and announces its apps.
    pub(super) fn deploy_start(&mut self, i: usize) {
        let clock = self.clock();
        let now_ms = self.wall_ms();
        let Some(c) = self.controller_mut(i) else {
            return;
        };
        c.started = clock;
        let fx = c.core.restore(std::mem::take(&mut c.saved), now_ms);
        self.deploy_effects(i, fx);
    }

    /// A `_deploy` delivery to the consumer `h` stands for (others are not simulated).
    pub(super) fn deploy_delivery(
        &mut self,
        i: usize,
        event: &crate::gossip::UserEvent,
        h: HandlerConfig,
    ) {
        if consumer_name(&h) != Some(CONSUMER) {
            return;
        }
        let now_secs = self.now().wall.as_secs();
        if self.controller(i).is_some_and(|c| !c.busy()) {
            self.refresh_members(i);
        }
        if let Some(c) = self.controller_mut(i) {
            let fx = c.core.on_event(&event.payload, now_secs);
            self.deploy_effects(i, fx);
        }
        self.input(i, |m, _| m.consumer_acked(event.id, h));
    }

    /// A slot the node accepted as newer. A desired state may give an idle core work, so
    /// its members are brought up to date first ([`NodeController::busy`]).
    pub(super) fn deploy_slot(&mut self, i: usize, item: &Superseding) {
        let Some(c) = self.controller(i) else {
            return;
        };
        if item.kind == DESIRED_KIND && !c.busy() {
            self.refresh_members(i);
        }
        if let Some(c) = self.controller_mut(i) {
            let fx = c.core.on_slot(item);
            self.deploy_effects(i, fx);
        }
    }

    /// The shell's refresh: the sync rule, the member list, the core's tick. The
    /// simulator's one shortcut: a synced core with nothing to do skips it (its decisions
    /// do not depend on members then), so a thousand idle controllers cost nothing.
    pub(super) fn deploy_tick(&mut self, i: usize) {
        let Some(c) = self.controller(i) else {
            return;
        };
        if !c.busy() {
            return;
        }
        let clock = self.clock();
        let now_ms = self.wall_ms();
        let machine = self.node(i);
        let peers = machine.active_members();
        let grace = machine.settings().push_pull_interval;
        let sync = !c.core.is_synced()
            && sync_reached(c.merged, peers, clock.saturating_sub(c.started), grace);
        let held: Vec<Superseding> = match sync {
            true => (RESYNC_ORDER.iter())
                .flat_map(|kind| machine.superseding_items(kind))
                .collect(),
            false => Vec::new(),
        };
        let mut fx = Vec::new();
        if let Some(c) = self.controller_mut(i) {
            for item in &held {
                fx.extend(c.core.on_slot(item));
            }
        }
        self.deploy_effects(i, fx);
        self.refresh_members(i);
        let Some(c) = self.controller_mut(i) else {
            return;
        };
        let mut fx = Vec::new();
        if sync {
            fx.extend(c.core.on_synced());
        }
        fx.extend(c.core.on_tick(now_ms));
        self.deploy_effects(i, fx);
    }

    /// The member list into node `i`'s core.
    fn refresh_members(&mut self, i: usize) {
        let members: Vec<MemberView> = (self.node(i).members().into_iter())
            .map(MemberView::from_member)
            .collect();
        if let Some(c) = self.controller_mut(i) {
            let fx = c.core.on_members(members);
            self.deploy_effects(i, fx);
        }
    }

    /// An activation ends (it always succeeds here).
    pub(super) fn activated(&mut self, i: usize, a: Activation) {
        let now_ms = self.wall_ms();
        let finished = (i, a.started, self.clock());
        self.stats.activations.push(finished);
        let outcome = Outcome::Ok {
            event_id: a.event_id,
            version: a.version,
        };
        if let Some(c) = self.controller_mut(i) {
            let fx = c.core.on_finished(&a.app, &outcome, now_ms);
            self.deploy_effects(i, fx);
        }
    }

    fn deploy_effects(&mut self, i: usize, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Persist => {}
                Effect::Publish(item) => {
                    self.input(i, |m, now| {
                        let (result, effects) = m.publish_superseding(now, item);
                        if let Err(e) = result {
                            tracing::warn!(cause = %e, "simulated deploy slot not published");
                        }
                        effects
                    });
                }
                Effect::Activate { app, event, .. } => {
                    let setup = self.config().deploy.clone().expect("deploy set up");
                    let extra = self
                        .rng_mut()
                        .random_range(0..=setup.jitter.as_millis() as u64);
                    let after = setup.activation + Duration::from_millis(extra);
                    let a = Activation {
                        started: self.clock(),
                        app,
                        event_id: event.id_hex(),
                        version: event.version,
                    };
                    self.schedule_activation(i, after, a);
                }
            }
        }
    }
}
