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

/// Compares in time independent of where the first difference is (the token is a
/// secret; a plain `==` returns early).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Handles one request.
pub async fn handle(
    req: Request<Incoming>,
    agent: AgentHandle,
    token: Option<Arc<String>>,
) -> Response<Body> {
    if !authorized(&req, token.as_ref()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (rpc_token)",
        );
    }
    let path = req.uri().path().to_owned();
    let result = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/members") => {
            let status = query_param(&req, "status").map(str::to_owned);
            agent.call(Command::Members).await.map(|mut list| {
                if let Some(s) = status {
                    list.retain(|m| m.status == s);
                }
                json(StatusCode::OK, &list)
            })
        }
        (Method::GET, "/v1/info") => agent
            .call(Command::Info)
            .await
            .map(|i| json(StatusCode::OK, &i)),
        (Method::POST, "/v1/event") => {
            let r: EventRequest = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let payload = r.payload.into_bytes();
            agent
                .call(|reply| Command::Event {
                    name: r.name,
                    payload,
                    reply,
                })
                .await
                .and_then(|r| r)
                .map(|r| json(StatusCode::OK, &r))
        }
        (Method::POST, "/v1/query") => {
            let r: QueryRequest = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
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
            agent
                .call(|reply| Command::Query {
                    name: r.name,
                    payload,
                    filters,
                    timeout,
                    reply,
                })
                .await
                .and_then(|r| r)
                .map(|r| json(StatusCode::OK, &r))
        }
        (Method::GET, "/v1/keys") => keys(&agent, KeyOp::List, None).await,
        (Method::POST, "/v1/keys/install" | "/v1/keys/use" | "/v1/keys/remove") => {
            let op = match path.as_str() {
                "/v1/keys/install" => KeyOp::Install,
                "/v1/keys/use" => KeyOp::Use,
                _ => KeyOp::Remove,
            };
            let r: KeyRequest = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            keys(&agent, op, Some(r.key)).await
        }
        (Method::POST, "/v1/leave") => agent
            .call(Command::Leave)
            .await
            .map(|()| json(StatusCode::OK, &serde_json::json!({}))),
        (Method::POST, "/v1/force-leave") => {
            let r: ForceLeaveRequest = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            agent
                .call(|reply| Command::ForceLeave {
                    node: r.node,
                    reply,
                })
                .await
                .and_then(|r| r)
                .map(|()| json(StatusCode::OK, &serde_json::json!({})))
        }
        (Method::GET, "/v1/monitor") => Ok(monitor(&agent)),
        (
            _,
            "/v1/members" | "/v1/info" | "/v1/event" | "/v1/query" | "/v1/keys" | "/v1/leave"
            | "/v1/force-leave" | "/v1/monitor" | "/v1/keys/install" | "/v1/keys/use"
            | "/v1/keys/remove",
        ) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} not allowed on {path}", req.method()),
            );
        }
        _ => return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    result.unwrap_or_else(agent_error)
}

async fn keys(
    agent: &AgentHandle,
    op: KeyOp,
    key: Option<String>,
) -> Result<Response<Body>, AgentError> {
    agent
        .call(|reply| Command::Keys { op, key, reply })
        .await
        .and_then(|r| r)
        .map(|r| json(StatusCode::OK, &r))
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
