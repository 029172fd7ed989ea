//! The scrape-only listener of `metrics_addr`: HTTP/1.1 that answers `GET /metrics` and
//! `GET /v1/metrics` with the Prometheus text and everything else with 404.
//!
//! It takes no token (Prometheus scrapes it as it is), so it must never be a way in or a
//! way to wear the agent down: it reads nothing but request heads (no route takes a body),
//! holds at most [`MAX_CONNECTIONS`] connections (more are closed at once), buffers at
//! most [`MAX_BUF`] bytes per connection, wants each request head within
//! [`HEADER_READ_TIMEOUT`] (also between requests on a kept-alive connection) and closes
//! any connection after [`CONNECTION_DEADLINE`]. A scrape costs two reads of the agent's
//! state, so the connection bound also bounds the agent work it can cause.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Services;
use super::routes::Body;
use crate::log_throttle::LogThrottle;

/// Most scrape connections open at once.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest read buffer of one connection.
pub const MAX_BUF: usize = 8 * 1024;
/// Longest a connection stays open, whatever it does.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Pause after a failed accept, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The paths that answer.
const PATHS: [&str; 2] = ["/metrics", "/v1/metrics"];

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves scrapes until `stop` flips.
pub async fn run(listener: TcpListener, services: Services, mut stop: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    let mut failures = LogThrottle::new(crate::log_throttle::PERIOD);
    let mut refused = LogThrottle::new(crate::log_throttle::PERIOD);
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) if conns.len() >= MAX_CONNECTIONS => {
                drop(stream);
                if let Some(left_out) = refused.due(std::time::Instant::now()) {
                    tracing::warn!(
                        max = MAX_CONNECTIONS,
                        left_out,
                        "metrics listener full; closed a new connection (left_out: more since the last such line)"
                    );
                }
            }
            Ok((stream, _)) => {
                conns.spawn(connection(stream, services.clone(), stop.clone()));
            }
            Err(e) => {
                if let Some(left_out) = failures.due(std::time::Instant::now()) {
                    tracing::warn!(cause = %e, left_out, "metrics listener accept failed; retrying every {ACCEPT_BACKOFF:?}");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    conns.abort_all();
}

/// One connection, until the client closes it, its deadline, or the agent stops.
async fn connection(
    stream: tokio::net::TcpStream,
    services: Services,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let services = services.clone();
        async move { Ok::<_, Infallible>(answer(&req, &services).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(stream), service);
    let result = tokio::select! {
        r = tokio::time::timeout(CONNECTION_DEADLINE, conn) => r.unwrap_or(Ok(())),
        _ = stop.wait_for(|stopped| *stopped) => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(cause = %e, "metrics connection ended with an error");
    }
}

/// The metrics for `GET` of one of [`PATHS`]; 404 for anything else.
async fn answer<B>(req: &Request<B>, services: &Services) -> Response<Body> {
    if req.method() == Method::GET && PATHS.contains(&req.uri().path()) {
        return super::routes::metrics(services).await;
    }
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from_static(
                b"not found: this port serves GET /metrics only\n",
            ))
            .boxed(),
        )
        .unwrap_or_default()
}
