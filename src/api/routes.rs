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

/// Every endpoint and its method (a known path with another method is a 405).
const ROUTES: &[(&str, Method)] = &[
    ("/v1/members", Method::GET),
    ("/v1/info", Method::GET),
    ("/v1/event", Method::POST),
    ("/v1/query", Method::POST),
    ("/v1/keys", Method::GET),
    ("/v1/keys/install", Method::POST),
    ("/v1/keys/use", Method::POST),
    ("/v1/keys/remove", Method::POST),
    ("/v1/leave", Method::POST),
    ("/v1/force-leave", Method::POST),
    ("/v1/monitor", Method::GET),
];

/// 404 for an unknown path, 405 for a known one with another method.
fn route_check(method: &Method, path: &str) -> Result<(), (StatusCode, String)> {
    match ROUTES.iter().find(|(p, _)| *p == path) {
        None => Err((StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))),
        Some((_, m)) if m != method => Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path} (use {m})"),
        )),
        Some(_) => Ok(()),
    }
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
    if let Err((status, message)) = route_check(req.method(), &path) {
        return error(status, message);
    }
    let result = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/members") => {
            let status = query_param(req.uri(), "status");
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
        assert!(route_check(&Method::GET, "/v1/members").is_ok());
        for (p, m) in ROUTES {
            assert!(route_check(m, p).is_ok());
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
