//! Request routing: path + method → an agent command, JSON in and out.
//! Every error is `{"error": "..."}` with a fitting status code.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{EventRequest, ForceLeaveRequest, KeyRequest, QueryRequest};
use crate::agent::{AgentError, AgentHandle, Command, KeyOp};
use crate::deploy::status::DeployView;
use crate::gossip::Filter;
use crate::gossip::event::EventError;
use crate::gossip::handler::CreateError;

/// Response body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Query timeout when the request names none.
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .unwrap_or_default()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &super::ErrorBody {
            error: message.into(),
        },
    )
}

fn agent_error(e: AgentError) -> Response<Body> {
    let status = match &e {
        AgentError::Create(CreateError::Event(EventError::EventTooLarge { .. })) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        AgentError::Create(_) | AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AgentError::NotFound(_) => StatusCode::NOT_FOUND,
        AgentError::Conflict(_) => StatusCode::CONFLICT,
        AgentError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// Whether the request carries the bearer token (always true without one: unix socket).
pub(super) fn authorized(req: &Request<Incoming>, token: Option<&Arc<String>>) -> bool {
    let Some(token) = token else { return true };
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same_secret(t.as_bytes(), token.as_bytes()))
}

/// Compares in constant time ([`subtle`]): the token is a secret, and a plain `==`
/// returns at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// The percent-decoded value of `key` in the query string.
fn query_param(uri: &hyper::Uri, key: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// What serves a request: one variant per row of [`ROUTES`], matched in [`route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Members,
    Info,
    Event,
    Query,
    Keys(KeyOp),
    Leave,
    ForceLeave,
    Monitor,
    Deploy,
    DeployProgress,
    Rollout,
    Revoke,
    Metrics,
}

/// Every endpoint: its path, its method (a known path with another method is a 405) and
/// what serves it. The one list: the 404/405 check and the dispatch both read it.
const ROUTES: &[(&str, Method, Endpoint)] = &[
    ("/v1/members", Method::GET, Endpoint::Members),
    ("/v1/info", Method::GET, Endpoint::Info),
    ("/v1/event", Method::POST, Endpoint::Event),
    ("/v1/query", Method::POST, Endpoint::Query),
    ("/v1/keys", Method::GET, Endpoint::Keys(KeyOp::List)),
    (
        "/v1/keys/install",
        Method::POST,
        Endpoint::Keys(KeyOp::Install),
    ),
    ("/v1/keys/use", Method::POST, Endpoint::Keys(KeyOp::Use)),
    (
        "/v1/keys/remove",
        Method::POST,
        Endpoint::Keys(KeyOp::Remove),
    ),
    ("/v1/leave", Method::POST, Endpoint::Leave),
    ("/v1/force-leave", Method::POST, Endpoint::ForceLeave),
    ("/v1/monitor", Method::GET, Endpoint::Monitor),
    ("/v1/deploy", Method::POST, Endpoint::Deploy),
    ("/v1/deploy/progress", Method::GET, Endpoint::DeployProgress),
    ("/v1/rollout", Method::POST, Endpoint::Rollout),
    ("/v1/revoke", Method::POST, Endpoint::Revoke),
    ("/v1/metrics", Method::GET, Endpoint::Metrics),
];

/// The endpoint at `path`; 404 for an unknown path, 405 for a known one with another
/// method.
fn route_check(method: &Method, path: &str) -> Result<Endpoint, (StatusCode, String)> {
    match ROUTES.iter().find(|(p, _, _)| *p == path) {
        None => Err((StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))),
        Some((_, m, _)) if m != method => Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path} (use {m})"),
        )),
        Some((_, _, endpoint)) => Ok(*endpoint),
    }
}

/// An answer, or the error response that replaces it (e.g. a body that is not JSON).
type Reply = Result<Response<Body>, Response<Body>>;

/// Handles one request.
pub async fn handle(
    req: Request<Incoming>,
    services: super::Services,
    token: Option<Arc<String>>,
) -> Response<Body> {
    if !authorized(&req, token.as_ref()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (rpc_token)",
        );
    }
    let endpoint = match route_check(req.method(), req.uri().path()) {
        Ok(endpoint) => endpoint,
        Err((status, message)) => return error(status, message),
    };
    route(req, endpoint, &services).await.unwrap_or_else(|e| e)
}

/// Calls `endpoint` (found by [`route_check`], so its method is right).
async fn route(req: Request<Incoming>, endpoint: Endpoint, services: &super::Services) -> Reply {
    let agent = &services.agent;
    Ok(match endpoint {
        Endpoint::Members => members(agent, req.uri()).await,
        Endpoint::Info => ok(agent.call(Command::Info).await),
        Endpoint::Event => event(agent, body(req).await?).await,
        Endpoint::Query => query(agent, body(req).await?).await,
        Endpoint::Keys(KeyOp::List) => keys(agent, KeyOp::List, None).await,
        Endpoint::Keys(op) => keys(agent, op, Some(body(req).await?)).await,
        Endpoint::Leave => ok(agent
            .call(Command::Leave)
            .await
            .map(|()| serde_json::json!({}))),
        Endpoint::ForceLeave => {
            let r: ForceLeaveRequest = body(req).await?;
            let left = agent
                .call(|reply| Command::ForceLeave {
                    node: r.node,
                    reply,
                })
                .await
                .and_then(|r| r);
            ok(left.map(|()| serde_json::json!({})))
        }
        Endpoint::Monitor => monitor(agent),
        Endpoint::Deploy => {
            let r: super::DeployRequest = body(req).await?;
            let view = services.deploy.as_deref();
            deploy(agent, view, &r.event)
                .await
                .unwrap_or_else(agent_error)
        }
        Endpoint::DeployProgress => deploy_progress(services, req.uri()),
        Endpoint::Rollout => {
            let r: super::RolloutRequest = body(req).await?;
            rollout(agent, services.deploy.as_deref(), &r.control)
                .await
                .unwrap_or_else(agent_error)
        }
        Endpoint::Revoke => {
            let r: super::RevokeRequest = body(req).await?;
            revoke(agent, &r.revocation).await
        }
        Endpoint::Metrics => metrics(services).await,
    })
}

/// The Prometheus text of the agent and its deploy controller.
pub(super) async fn metrics(services: &super::Services) -> Response<Body> {
    match super::metrics::gather(services).await {
        Ok(text) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(text)).boxed())
            .unwrap_or_default(),
        Err(e) => agent_error(e),
    }
}

async fn revoke(agent: &AgentHandle, text: &str) -> Response<Body> {
    use base64::Engine as _;
    let Ok(revocation) = base64::engine::general_purpose::STANDARD.decode(text.trim()) else {
        return error(StatusCode::BAD_REQUEST, "revocation is not base64");
    };
    let done = agent
        .call(|reply| Command::Revoke { revocation, reply })
        .await;
    ok(done.and_then(|r| r).map(|()| serde_json::json!({})))
}

/// 200 with `value` as JSON, or the agent's error.
fn ok<T: Serialize>(value: Result<T, AgentError>) -> Response<Body> {
    match value {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => agent_error(e),
    }
}

async fn members(agent: &AgentHandle, uri: &hyper::Uri) -> Response<Body> {
    let status = query_param(uri, "status");
    ok(agent.call(Command::Members).await.map(|mut list| {
        if let Some(s) = status {
            list.retain(|m| m.status == s);
        }
        list
    }))
}

async fn event(agent: &AgentHandle, r: EventRequest) -> Response<Body> {
    let payload = r.payload.into_bytes();
    let sent = agent
        .call(|reply| Command::Event {
            name: r.name,
            payload,
            reply,
        })
        .await;
    ok(sent.and_then(|r| r))
}

async fn query(agent: &AgentHandle, r: QueryRequest) -> Response<Body> {
    let mut filters: Vec<Filter> = r.nodes.into_iter().map(Filter::NodeName).collect();
    filters.extend(
        r.tags
            .into_iter()
            .map(|(key, value)| Filter::Tag { key, value }),
    );
    let timeout = r
        .timeout_ms
        .map_or(DEFAULT_QUERY_TIMEOUT, Duration::from_millis);
    let payload = r.payload.into_bytes();
    let answered = agent
        .call(|reply| Command::Query {
            name: r.name,
            payload,
            filters,
            timeout,
            reply,
        })
        .await;
    ok(answered.and_then(|r| r))
}

fn deploy_progress(services: &super::Services, uri: &hyper::Uri) -> Response<Body> {
    let id = query_param(uri, "event").unwrap_or_default();
    match services.deploy.as_ref().map(|d| d.progress(&id)) {
        None => error(
            StatusCode::NOT_FOUND,
            "this agent runs no deploy controller",
        ),
        Some(None) => error(
            StatusCode::NOT_FOUND,
            format!("deploy event {id:?} is not known to this agent (yet)"),
        ),
        Some(Some(p)) => json(StatusCode::OK, &p),
    }
}

/// Gossips a signed deploy event (base64) as the `_deploy` user event, once the local
/// controller checked it as a receiver would (a forged or stale event is a 400 here, not
/// a silent refusal on every node). Every node checks it again before acting on it.
async fn deploy(
    agent: &AgentHandle,
    view: Option<&dyn DeployView>,
    event_b64: &str,
) -> Result<Response<Body>, AgentError> {
    let payload = from_base64("event", event_b64)?;
    let event_id = match view {
        Some(v) => v.admit(&payload).map_err(AgentError::BadRequest)?,
        None => crate::deploy::signed::SignedEvent::decode_unverified(&payload)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?
            .event
            .id_hex(),
    };
    let ltime = gossip(agent, crate::deploy::status::EVENT_NAME, payload).await?;
    if let Some(v) = view {
        until_known(v, &event_id).await;
    }
    let accepted = crate::deploy::status::DeployAccepted {
        event_id: Some(event_id),
        ltime,
    };
    Ok(json(StatusCode::OK, &accepted))
}

/// How long a sent deploy event may take to reach this agent's own controller.
const KNOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (bounded) until the local controller has taken in the event it was just handed,
/// so that its progress can be asked for as soon as the sender has the id. Past the
/// deadline the answer goes out anyway: the event is gossiped, and a later ask finds it.
async fn until_known(view: &dyn DeployView, event_id: &str) {
    let deadline = tokio::time::Instant::now() + KNOWN_DEADLINE;
    while view.progress(event_id).is_none() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                event = event_id,
                "the controller has not taken in the event after {KNOWN_DEADLINE:?}; \
                 it is gossiped, and its progress will show once it has"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The bytes of a base64 field of a request.
fn from_base64(field: &str, text: &str) -> Result<Vec<u8>, AgentError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| AgentError::BadRequest(format!("`{field}` is not base64: {e}")))
}

/// Sends `payload` as the user event `name`; its Lamport time.
async fn gossip(agent: &AgentHandle, name: &str, payload: Vec<u8>) -> Result<u64, AgentError> {
    let name = name.to_owned();
    agent
        .call(|reply| Command::Event {
            name,
            payload,
            reply,
        })
        .await
        .and_then(|r| r)
        .map(|r| r.ltime)
}

/// Gossips a signed rollout order (base64) as the `_rollout` user event, once the local
/// controller checked it as a receiver would. Every node checks it again.
async fn rollout(
    agent: &AgentHandle,
    view: Option<&dyn DeployView>,
    control_b64: &str,
) -> Result<Response<Body>, AgentError> {
    let payload = from_base64("control", control_b64)?;
    let view =
        view.ok_or_else(|| AgentError::BadRequest("this agent runs no deploy controller".into()))?;
    view.admit_control(&payload)
        .map_err(AgentError::BadRequest)?;
    let ltime = gossip(agent, crate::deploy::control::CONTROL_EVENT, payload).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "ltime": ltime })))
}

async fn keys(agent: &AgentHandle, op: KeyOp, req: Option<KeyRequest>) -> Response<Body> {
    let (key, auth) = req.map_or((None, None), |r| (Some(r.key), r.auth));
    ok(agent
        .call(|reply| Command::Keys {
            op,
            key,
            auth,
            reply,
        })
        .await
        .and_then(|r| r))
}

/// What the monitor stream is waiting on.
struct MonitorState {
    rx: tokio::sync::broadcast::Receiver<String>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// The agent stopped: send what is buffered, then end the stream.
    draining: bool,
}

/// NDJSON lines until the agent stops; then the lines already published (e.g. "left
/// the cluster") and a clean end of the chunked body, so `droot-fleet monitor` can
/// tell a shutdown from a broken connection.
fn monitor(agent: &AgentHandle) -> Response<Body> {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let state = MonitorState {
        rx: agent.monitor(),
        stop: agent.stopping(),
        draining: false,
    };
    let frame = |mut line: String| {
        line.push('\n');
        Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
    };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if s.draining || *s.stop.borrow() {
                s.draining = true;
                return match s.rx.try_recv() {
                    Ok(line) => Some((frame(line), s)),
                    Err(TryRecvError::Lagged(_)) => continue,
                    Err(_) => None,
                };
            }
            tokio::select! {
                biased;
                r = s.rx.recv() => match r {
                    Ok(line) => return Some((frame(line), s)),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
                r = s.stop.changed() => {
                    if r.is_err() {
                        s.draining = true;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_queries_and_routes() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cret", b"s3cret!"));
        // Regression (issue 10): query strings were not percent-decoded.
        let uri: hyper::Uri = "/v1/members?x=1&status=f%61iled".parse().unwrap();
        assert_eq!(query_param(&uri, "status").as_deref(), Some("failed"));
        assert_eq!(query_param(&uri, "nope"), None);
        assert_eq!(
            route_check(&Method::GET, "/v1/members"),
            Ok(Endpoint::Members)
        );
        for (i, (p, m, e)) in ROUTES.iter().enumerate() {
            // A second row for a path would never be reached.
            assert!(ROUTES[..i].iter().all(|(q, _, _)| q != p), "{p} twice");
            assert_eq!(route_check(m, p), Ok(*e));
            let other = if *m == Method::GET {
                Method::POST
            } else {
                Method::GET
            };
            assert_eq!(
                route_check(&other, p).unwrap_err().0,
                StatusCode::METHOD_NOT_ALLOWED
            );
        }
        assert_eq!(
            route_check(&Method::GET, "/v1/nope").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }
}
