//! `query status --format json`: the shape operators script against.
//!
//! `{"responses":[{"node","apps":{"APP":{"version","state","pid","since","releases",
//! "last_deploy":{"event_id","version","outcome","error","at"}, ...}}}],"missing":[]}`.
//! Apps are keyed by name so `jq '.responses[].apps.web.version'` works; fields beyond
//! these (previous, desired, phase, restarts) are added, never renamed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::status::{InvalidAnswer, StatusAnswers};
use crate::deploy::status::{AppView, NodeOutcome};

#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pub responses: Vec<NodeJson<'a>>,
    /// Matching nodes that did not answer in time.
    pub missing: &'a [String],
    /// Answers that are not a node status.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub invalid: &'a [InvalidAnswer],
}

#[derive(Debug, Serialize)]
pub struct NodeJson<'a> {
    pub node: &'a str,
    pub apps: BTreeMap<&'a str, AppJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct AppJson<'a> {
    /// The release `current` names (null before the first deploy).
    pub version: Option<&'a str>,
    /// `running`, `starting`, `stopped` or `failed` (`unknown` if the supervisor did not say).
    pub state: &'a str,
    pub pid: Option<i32>,
    /// Unix seconds of the jail's last state change.
    pub since: Option<u64>,
    /// Releases on disk, oldest first.
    pub releases: &'a [String],
    /// This node's last deploy of the app.
    pub last_deploy: Option<LastDeploy<'a>>,
    /// The release before `version` (what `rollback` goes back to).
    pub previous: Option<&'a str>,
    /// The app's desired version and event (the latest accepted deploy event).
    pub desired_version: Option<&'a str>,
    pub desired_event: Option<&'a str>,
    /// What the node is doing about the desired state (`idle`, `activating v2`, ...).
    pub phase: &'a str,
    pub restarts: u32,
}

#[derive(Debug, Serialize)]
pub struct LastDeploy<'a> {
    pub event_id: &'a str,
    pub version: &'a str,
    /// `ok`, `failed` or `rolled_back`.
    pub outcome: &'static str,
    pub error: Option<&'a str>,
    /// Unix seconds when it finished.
    pub at: u64,
}

impl<'a> AppJson<'a> {
    fn of(v: &'a AppView) -> Self {
        AppJson {
            version: v.current.as_deref(),
            state: if v.state.is_empty() {
                "unknown"
            } else {
                &v.state
            },
            pid: v.pid,
            since: v.since,
            releases: &v.releases,
            last_deploy: v.last.as_ref().map(LastDeploy::of),
            previous: v.previous.as_deref(),
            desired_version: v.desired_version.as_deref(),
            desired_event: v.desired_event.as_deref(),
            phase: &v.phase,
            restarts: v.restarts,
        }
    }
}

impl<'a> LastDeploy<'a> {
    fn of(o: &'a NodeOutcome) -> Self {
        LastDeploy {
            event_id: &o.event_id,
            version: &o.version,
            outcome: o.result.as_str(),
            error: o.error.as_deref(),
            at: o.at,
        }
    }
}

/// The JSON view of parsed answers.
pub fn view(s: &StatusAnswers) -> StatusJson<'_> {
    StatusJson {
        responses: s
            .responses
            .iter()
            .map(|n| NodeJson {
                node: &n.node,
                apps: n
                    .apps
                    .iter()
                    .map(|v| (v.app.as_str(), AppJson::of(v)))
                    .collect(),
            })
            .collect(),
        missing: &s.missing,
        invalid: &s.invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::status::{NodeStatus, Result as Outcome};

    #[test]
    fn the_issue_shape() {
        let s = StatusAnswers {
            responses: vec![NodeStatus {
                node: "n1".into(),
                apps: vec![AppView {
                    app: "web".into(),
                    current: Some("v2".into()),
                    previous: Some("v1".into()),
                    state: "running".into(),
                    pid: Some(7),
                    since: Some(100),
                    releases: vec!["v1".into(), "v2".into()],
                    last: Some(NodeOutcome {
                        node: "n1".into(),
                        app: "web".into(),
                        event_id: "ab".into(),
                        version: "v2".into(),
                        result: Outcome::RolledBack,
                        error: Some("health".into()),
                        at: 5,
                    }),
                    ..Default::default()
                }],
            }],
            missing: vec!["n2".into()],
            ..Default::default()
        };
        let v = serde_json::to_value(view(&s)).unwrap();
        let web = &v["responses"][0]["apps"]["web"];
        assert_eq!(v["responses"][0]["node"], "n1");
        assert_eq!(web["version"], "v2");
        assert_eq!(web["state"], "running");
        assert_eq!(web["pid"], 7);
        assert_eq!(web["since"], 100);
        assert_eq!(web["releases"], serde_json::json!(["v1", "v2"]));
        assert_eq!(
            web["last_deploy"],
            serde_json::json!({"event_id": "ab", "version": "v2", "outcome": "rolled_back",
                "error": "health", "at": 5})
        );
        assert_eq!(v["missing"], serde_json::json!(["n2"]));
        assert!(v.get("invalid").is_none());
    }
}
