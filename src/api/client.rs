//! A small typed client for the control API (used by the CLI and the tests).
//! One connection per request; the unix socket or loopback TCP with a bearer token.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    ErrorBody, EventRequest, EventResponse, ForceLeaveRequest, Info, KeyRequest, KeysResponse,
    Member, QueryRequest, QueryResponse,
};
use crate::deploy::status::{DeployAccepted, Progress};
use crate::wire::RpcAddr;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent at {addr}: is `droot-fleet agent` running? set --rpc or DROOT_FLEET_RPC")]
    NoAgent {
        addr: RpcAddr,
        source: std::io::Error,
    },
    #[error("talking to the agent at {addr}: {reason}")]
    Http { addr: RpcAddr, reason: String },
    /// The agent refused the request; `message` is its error text.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the agent: {0}")]
    Decode(String),
}

/// Control API client.
#[derive(Debug, Clone)]
pub struct Client {
    addr: RpcAddr,
    token: Option<String>,
}

type Incoming = hyper::body::Incoming;

impl Client {
    pub fn new(addr: RpcAddr, token: Option<String>) -> Self {
        Self { addr, token }
    }

    pub fn addr(&self) -> &RpcAddr {
        &self.addr
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let http = |e: hyper::Error| ClientError::Http {
            addr: self.addr.clone(),
            reason: e.to_string(),
        };
        let no_agent = |source| ClientError::NoAgent {
            addr: self.addr.clone(),
            source,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "droot-fleet");
        if let Some(t) = &self.token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        macro_rules! go {
            ($stream:expr) => {{
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new($stream))
                        .await
                        .map_err(http)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender.send_request(req).await.map_err(http)
            }};
        }
        match &self.addr {
            RpcAddr::Unix(p) => go!(tokio::net::UnixStream::connect(p).await.map_err(no_agent)?),
            RpcAddr::Tcp(a) => go!(tokio::net::TcpStream::connect(a).await.map_err(no_agent)?),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn members(&self, status: Option<&str>) -> Result<Vec<Member>, ClientError> {
        let path = match status {
            Some(s) => format!("/v1/members?status={s}"),
            None => "/v1/members".into(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn info(&self) -> Result<Info, ClientError> {
        self.call(Method::GET, "/v1/info", None::<&()>).await
    }

    pub async fn event(&self, name: &str, payload: &str) -> Result<EventResponse, ClientError> {
        let req = EventRequest {
            name: name.into(),
            payload: payload.into(),
        };
        self.call(Method::POST, "/v1/event", Some(&req)).await
    }

    pub async fn query(&self, req: &QueryRequest) -> Result<QueryResponse, ClientError> {
        self.call(Method::POST, "/v1/query", Some(req)).await
    }

    /// `op` is `list`, `install`, `use` or `remove`; a change carries the operator's
    /// signature of it ([`crate::agent::key_auth::sign`]).
    pub async fn keys(
        &self,
        op: &str,
        key: Option<&str>,
        auth: Option<crate::agent::key_auth::KeyAuth>,
    ) -> Result<KeysResponse, ClientError> {
        match key {
            None => self.call(Method::GET, "/v1/keys", None::<&()>).await,
            Some(k) => {
                let req = KeyRequest {
                    key: k.into(),
                    auth,
                };
                self.call(Method::POST, &format!("/v1/keys/{op}"), Some(&req))
                    .await
            }
        }
    }

    pub async fn leave(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/leave", Some(&serde_json::json!({})))
            .await
            .map(drop)
    }

    pub async fn force_leave(&self, node: &str) -> Result<(), ClientError> {
        let req = ForceLeaveRequest { node: node.into() };
        self.call::<serde_json::Value>(Method::POST, "/v1/force-leave", Some(&req))
            .await
            .map(drop)
    }

    /// Hands a revocation (encoded) to the agent, which checks and gossips it.
    pub async fn revoke(&self, revocation: &[u8]) -> Result<(), ClientError> {
        use base64::Engine as _;
        let req = crate::wire::RevokeRequest {
            revocation: base64::engine::general_purpose::STANDARD.encode(revocation),
        };
        self.call::<serde_json::Value>(Method::POST, "/v1/revoke", Some(&req))
            .await
            .map(drop)
    }

    /// Streams monitor lines to `each` until the agent closes the stream (`Ok`: it is
    /// shutting down); a connection that breaks off mid-stream is an error.
    pub async fn monitor(&self, mut each: impl FnMut(&str)) -> Result<(), ClientError> {
        let resp = self.send(Method::GET, "/v1/monitor", None).await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http {
                addr: self.addr.clone(),
                reason: format!(
                    "the monitor stream broke off: the agent stopped without closing it \
                     (killed or crashed?): {e}"
                ),
            })?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    each(String::from_utf8_lossy(&line).trim_end());
                }
            }
        }
        Ok(())
    }

    /// `POST /v1/deploy`: hands a signed deploy event (its wire bytes) to the agent.
    pub async fn deploy(&self, event: &[u8]) -> Result<DeployAccepted, ClientError> {
        use base64::Engine as _;
        let req = super::DeployRequest {
            event: base64::engine::general_purpose::STANDARD.encode(event),
        };
        self.call(Method::POST, "/v1/deploy", Some(&req)).await
    }

    /// `POST /v1/rollout` of a signed rollout order.
    pub async fn rollout(&self, control: &[u8]) -> Result<serde_json::Value, ClientError> {
        use base64::Engine as _;
        let req = super::RolloutRequest {
            control: base64::engine::general_purpose::STANDARD.encode(control),
        };
        self.call(Method::POST, "/v1/rollout", Some(&req)).await
    }

    /// `GET /v1/deploy/progress`: `None` while the agent has not seen the event (404).
    pub async fn deploy_progress(&self, event_id: &str) -> Result<Option<Progress>, ClientError> {
        let path = format!("/v1/deploy/progress?event={event_id}");
        match self.call(Method::GET, &path, None::<&()>).await {
            Ok(p) => Ok(Some(p)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
