//! What the deploy pipeline reports, on the wire and to the operator: a node's outcome for
//! one event (gossiped as a small superseding broadcast per node and app), a node's answer
//! to the built-in `status` query, and the progress of one event as `event deploy --wait`
//! shows it.
//!
//! These are JSON (the API and the query answers) except [`NodeOutcome`], which travels in
//! gossip as postcard. Fields are only ever added, with `#[serde(default)]`, so that agents
//! of different releases keep reading each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Superseding-broadcast kind of the desired state: key = app, body = the signed event.
pub const DESIRED_KIND: &str = "deploy.desired";
/// Superseding-broadcast kind of a node's outcome: key = [`outcome_key`], body = postcard
/// [`NodeOutcome`].
pub const OUTCOME_KIND: &str = "deploy.outcome";
/// The user event that carries a signed deploy event (payload: its bytes).
pub const EVENT_NAME: &str = super::signed::EVENT_NAME;
/// The built-in query every agent answers with its [`NodeStatus`] (payload: an app name,
/// or empty for all).
pub const STATUS_QUERY: &str = "status";

/// The deploy controller's answers to the control API (sync: it keeps them ready). The
/// API serves any implementation; defined here so the controller need not know the API.
pub trait DeployView: Send + Sync + 'static {
    /// Where deploy event `event_id` (hex) stands, if this agent knows it.
    fn progress(&self, event_id: &str) -> Option<Progress>;
    /// Checks a signed event as this node would on receipt; its hex id, or why not.
    fn admit(&self, event: &[u8]) -> std::result::Result<String, String>;
    /// Checks a signed rollout order as this node would on receipt.
    fn admit_control(&self, control: &[u8]) -> std::result::Result<(), String>;
    /// The deploy side's metric families (`GET /v1/metrics`).
    fn metrics(&self) -> Vec<crate::metrics::Family> {
        Vec::new()
    }
}

/// The slot key of `node`'s outcome for `app`.
pub fn outcome_key(app: &str, node: &str) -> String {
    format!("{app}@{node}")
}

/// How a node's deploy of one event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Result {
    Ok,
    Failed,
    RolledBack,
}

impl Result {
    pub fn as_str(self) -> &'static str {
        match self {
            Result::Ok => "ok",
            Result::Failed => "failed",
            Result::RolledBack => "rolled_back",
        }
    }

    /// How an executor's outcome counts.
    pub fn of(outcome: &crate::deploy::activation::Outcome) -> Self {
        use crate::deploy::activation::Outcome;
        match outcome {
            Outcome::Ok { .. } => Result::Ok,
            Outcome::Failed { .. } => Result::Failed,
            Outcome::RolledBack { .. } => Result::RolledBack,
        }
    }
}

/// One node's outcome for one deploy event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOutcome {
    pub node: String,
    pub app: String,
    /// Hex event id.
    pub event_id: String,
    pub version: String,
    pub result: Result,
    /// Why it failed or rolled back (short).
    pub error: Option<String>,
    /// Unix seconds when the node finished.
    pub at: u64,
}

/// One app on one node, as the `status` query answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    pub app: String,
    /// The release `current` names.
    #[serde(default)]
    pub current: Option<String>,
    /// The release before it (what `rollback` goes back to).
    #[serde(default)]
    pub previous: Option<String>,
    /// Version and hex event id of the desired state, if any.
    #[serde(default)]
    pub desired_version: Option<String>,
    #[serde(default)]
    pub desired_event: Option<String>,
    /// The jail: `running`, `starting` (restart backoff), `stopped`, `failed`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub pid: Option<i32>,
    /// Unix seconds of the jail's last state change.
    #[serde(default)]
    pub since: Option<u64>,
    /// Releases on disk, in deploy order (oldest first).
    #[serde(default)]
    pub releases: Vec<String>,
    #[serde(default)]
    pub restarts: u32,
    /// What the node is doing about the desired state: `idle`, `activating VERSION`,
    /// `wave N waits for K (a, b)`, `halted by NODE (rolled_back)`, `not a target`.
    #[serde(default)]
    pub phase: String,
    /// The node's last outcome for this app.
    #[serde(default)]
    pub last: Option<NodeOutcome>,
}

/// A node's answer to the `status` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    #[serde(default)]
    pub apps: Vec<AppView>,
}

/// Where one deploy event stands across its targets, as the local agent sees it
/// (`GET /v1/deploy/progress?event=ID`, `event deploy --wait`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub event_id: String,
    pub app: String,
    pub version: String,
    /// Every target, sorted (unreachable ones included).
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub ok: Vec<String>,
    #[serde(default)]
    pub failed: Vec<String>,
    #[serde(default)]
    pub rolled_back: Vec<String>,
    /// Targets with no outcome yet that still may start or are deploying.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Targets that will not start: a failure halted the rollout before their wave.
    #[serde(default)]
    pub halted: Vec<String>,
    /// Error per failed or rolled-back node.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
    /// Targets that are unreachable (failed members): not waited for, so the deploy ends
    /// without them and is not a success; they converge to the desired state once back.
    #[serde(default)]
    pub unreachable: Vec<String>,
    /// Targets whose agents cannot read this event (they announce an older deploy event
    /// format): not reached and not waited for, so the deploy ends without them and is not
    /// a success; an upgrade of their agent and another deploy bring them along.
    #[serde(default)]
    pub too_old: Vec<String>,
    /// A newer deploy event of the same app replaced this one (hex id): the pending
    /// targets will deploy that one instead.
    #[serde(default)]
    pub superseded_by: Option<String>,
    /// The waves, in order.
    #[serde(default)]
    pub waves: Vec<Vec<String>>,
    /// The operator's latest order about this rollout: `paused`, `resumed`, `cancelled`.
    #[serde(default)]
    pub control: Option<String>,
}

impl Progress {
    /// Nothing more will happen: no target is pending, or a newer event replaced this one.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty() || self.superseded_by.is_some()
    }

    /// Every target is `ok` (so none is unreachable).
    pub fn is_success(&self) -> bool {
        !self.targets.is_empty() && self.ok.len() == self.targets.len()
    }
}

/// Answer to `POST /v1/deploy`, as the CLI reads it. Agents answer the carrying user event's
/// `{"id","ltime"}`; an `event_id` (the deploy event's hex id) is read when present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployAccepted {
    #[serde(default)]
    pub event_id: Option<String>,
    /// Lamport time of the user event that carries it.
    pub ltime: u64,
}
