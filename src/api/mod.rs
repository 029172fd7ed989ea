//! The agent's control API: HTTP/1.1 + JSON, on a unix socket (mode 0600) or on
//! loopback TCP with a bearer token.
//!
//! This file holds the wire types shared by the server ([`server`], [`routes`]) and the
//! typed client the CLI uses ([`client`]), so both sides agree by construction.
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
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status.

pub mod client;
pub mod routes;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A member as listed by `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
    /// `alive`, `suspect`, `left` or `failed`.
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub addr: String,
    pub tags: BTreeMap<String, String>,
    pub bump: u16,
    pub members_alive: usize,
    /// Packet and protocol counters (`packets_dropped_auth`, `events_delivered`, …).
    pub counters: BTreeMap<String, u64>,
}

/// `POST /v1/event`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRequest {
    pub name: String,
    #[serde(default)]
    pub payload: String,
}

/// Answer to `POST /v1/event`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventResponse {
    /// Event id, hex.
    pub id: String,
    pub ltime: u64,
}

/// `POST /v1/query`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryRequest {
    pub name: String,
    #[serde(default)]
    pub payload: String,
    /// Node name regexes (all must match).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Tag regexes by key.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One answer to a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAnswer {
    pub node: String,
    /// The answer as text (invalid UTF-8 is replaced).
    pub payload: String,
}

/// Answer to `POST /v1/query`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryResponse {
    pub answers: Vec<QueryAnswer>,
    /// Matching members that did not answer in time.
    pub missing: Vec<String>,
}

/// `POST /v1/keys/{install,use,remove}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRequest {
    pub key: String,
}

/// One node's result of a cluster-wide key operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeyResult {
    pub node: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Installed keys, primary first (for `list`).
    #[serde(default)]
    pub keys: Vec<String>,
}

/// Answer to the key endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeysResponse {
    pub results: Vec<NodeKeyResult>,
    /// Members that did not answer.
    pub missing: Vec<String>,
    /// For `list`: how many nodes have each key installed.
    #[serde(default)]
    pub keys: BTreeMap<String, usize>,
    /// For `list`: how many nodes use each key as primary.
    #[serde(default)]
    pub primary: BTreeMap<String, usize>,
}

impl KeysResponse {
    /// Whether every node answered and succeeded.
    pub fn all_ok(&self) -> bool {
        self.missing.is_empty() && self.results.iter().all(|r| r.ok)
    }
}

/// `POST /v1/force-leave`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForceLeaveRequest {
    pub node: String,
}

/// Error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
