//! The control API's wire types and address, shared by the agent, the API server and
//! its client.
//!
//! A leaf module (it depends on neither [`crate::agent`] nor [`crate::api`]): the agent
//! answers commands with these types and the server serialises them, so neither side
//! needs the other. Re-exported from [`crate::api`] (and [`RpcAddr`] from
//! [`crate::agent::config`]) so both paths keep working.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the control API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl RpcAddr {
    /// Parses `unix:PATH` or `tcp:IP:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty unix socket path".into());
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = text.strip_prefix("tcp:") {
            addr.parse()
                .map(Self::Tcp)
                .map_err(|e| format!("{addr:?} is not IP:PORT: {e}"))
        } else {
            Err(format!(
                "{text:?} must start with `unix:` or `tcp:` (e.g. unix:/run/droot-fleet/agent.sock)"
            ))
        }
    }
}

impl std::fmt::Display for RpcAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A member as listed by `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
    /// `alive`, `suspect`, `left` or `failed`.
    pub status: String,
    pub tags: BTreeMap<String, String>,
    /// The deploy event format its agent reads ([`crate::deploy::signed::DEPLOY_FORMAT`];
    /// 1 for an agent that announces none).
    #[serde(default = "base_format")]
    pub deploy_format: u16,
    /// The apps its agent announced it runs (its `deploy.apps` announcement); absent
    /// until that announcement reached this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// The member's verified node identity, if node identities are on and its card is
    /// known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<MemberIdentity>,
}

fn base_format() -> u16 {
    1
}

impl Member {
    /// Its deploy format, `None` while its tags are not known: a member listed with no tags
    /// at all may be one whose tags (the format among them) have not arrived yet, or an old
    /// agent with none.
    pub fn known_format(&self) -> Option<u16> {
        (self.deploy_format > 1 || !self.tags.is_empty()).then_some(self.deploy_format)
    }
}

/// A member's verified node identity (its member card's certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdentity {
    /// Its node public key (base64).
    pub node_key: String,
    /// When its certificate expires (Unix seconds).
    pub expires: u64,
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
    /// Node identities: `off`, `transition` or `required`.
    #[serde(default)]
    pub identity_mode: String,
    /// This node's own verified identity, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<MemberIdentity>,
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
    /// Node name regexes (any may match).
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
    /// The operator's signature of this operation; each node refuses a change without
    /// one unless it is a `--dev` agent that trusts no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::agent::key_auth::KeyAuth>,
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

/// `POST /v1/revoke`: a revocation made by `droot-fleet enroll revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// Standard base64 of the encoded revocation.
    pub revocation: String,
}

/// Error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
