//! The agent's control API: HTTP/1.1 + JSON, on a unix socket (mode 0600) or on
//! loopback TCP with a bearer token.
//!
//! The wire types shared by the agent, the server ([`server`], [`routes`]) and the typed
//! client the CLI uses ([`client`]) live in the leaf module [`crate::wire`] (re-exported
//! here), so all sides agree by construction and the agent does not depend on the API.
//!
//! | endpoint | body | answer |
//! |---|---|---|
//! | `GET /v1/members?status=S` | | `[{"name","addr","status","tags"}]` |
//! | `GET /v1/info` | | [`Info`] |
//! | `POST /v1/event` | [`EventRequest`] | [`EventResponse`] (422 when too large) |
//! | `POST /v1/query` | [`QueryRequest`] | [`QueryResponse`] |
//! | `GET /v1/keys` | | [`KeysResponse`] |
//! | `POST /v1/keys/install`, `/use`, `/remove` | [`KeyRequest`] | [`KeysResponse`] |
//! | `POST /v1/leave` | | `{}` |
//! | `POST /v1/force-leave` | [`ForceLeaveRequest`] | `{}` |
//! | `GET /v1/monitor` | | NDJSON stream of log lines and events |
//! | `POST /v1/deploy` | [`DeployRequest`] (a signed deploy event) | [`DeployAccepted`](crate::deploy::status::DeployAccepted) (400 naming why this agent would refuse it) |
//! | `GET /v1/deploy/progress?event=ID` | | [`Progress`](crate::deploy::status::Progress) of that event (404 while unknown) |
//! | `POST /v1/revoke` | [`RevokeRequest`] (a signed revocation) | `{}` (400 naming why this agent refuses it) |
//! | `GET /v1/metrics` | | Prometheus text format 0.0.4 ([`metrics`]); also on `metrics_addr` ([`metrics_listener`]) |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status.

pub mod client;
pub mod metrics;
pub mod metrics_listener;
pub mod routes;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::deploy::status::DeployView;

pub use crate::wire::{
    ErrorBody, EventRequest, EventResponse, ForceLeaveRequest, Info, KeyRequest, KeysResponse,
    Member, NodeKeyResult, QueryAnswer, QueryRequest, QueryResponse, RevokeRequest,
};

/// What the control API serves: the agent, and the deploy controller's view if it runs.
#[derive(Clone)]
pub struct Services {
    pub agent: crate::agent::AgentHandle,
    pub deploy: Option<std::sync::Arc<dyn DeployView>>,
}

/// `POST /v1/rollout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRequest {
    /// Standard base64 of the encoded signed rollout order.
    pub control: String,
}

/// `POST /v1/deploy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Standard base64 of the encoded signed deploy event.
    pub event: String,
}
