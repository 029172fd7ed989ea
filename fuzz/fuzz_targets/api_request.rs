//! The control API's request path: raw bytes on one connection to the agent's HTTP/1.1
//! server (hyper with the API's buffer and header limits) and its router, `routes::handle`:
//! request lines, headers, the bearer token, route and method checks, query strings,
//! JSON and base64 bodies, and the deploy controller's admission of signed events and
//! orders. The agent behind it has stopped, so a command that reaches it is answered 503:
//! every step before that is the real one. The first byte picks unix socket (no token) or
//! TCP (token `fuzz-token`).
#![no_main]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use droot_fleet::agent::Agent;
use droot_fleet::api::{Services, routes, server};
use droot_fleet::deploy::config::DeployConfig;
use droot_fleet::deploy::controller::Controller;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Harness {
    rt: tokio::runtime::Runtime,
    services: Services,
    /// Kept (its view serves the API); the agent is dropped, so its commands fail.
    _controller: Controller,
}

thread_local! {
    static HARNESS: Harness = {
        let mut agent = Agent::new(droot_fleet_fuzz::settings("fuzz-node"));
        let config = DeployConfig {
            apps: BTreeMap::new(),
            trusted: vec![droot_fleet_fuzz::operator().verifying_key()],
            max_age: Duration::from_secs(86_400),
            max_skew: Duration::from_secs(300),
            fetch: Default::default(),
        };
        let controller = Controller::register(&mut agent, config);
        let services = Services {
            agent: agent.handle(),
            deploy: Some(controller.view()),
        };
        drop(agent);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Harness {
            rt,
            services,
            _controller: controller,
        }
    };
}

async fn exchange(services: Services, token: Option<Arc<String>>, request: &[u8]) {
    let (client, server_io) = tokio::io::duplex(64 << 10);
    let service = service_fn(move |req| {
        let (services, token) = (services.clone(), token.clone());
        async move { Ok::<_, Infallible>(routes::handle(req, services, token).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(server::HEADER_READ_TIMEOUT)
        .max_buf_size(server::MAX_BUF)
        .serve_connection(TokioIo::new(server_io), service);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        let _ = wr.write_all(request).await;
        let _ = wr.shutdown().await;
    };
    let read = async move {
        let mut answer = Vec::new();
        let _ = rd.read_to_end(&mut answer).await;
    };
    let _ = tokio::join!(conn, write, read);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, request)) = data.split_first() else {
        return;
    };
    let token = (mode & 1 == 1).then(|| Arc::new("fuzz-token".to_owned()));
    HARNESS.with(|h| {
        let run = exchange(h.services.clone(), token, request);
        h.rt.block_on(async {
            // A connection fed its whole input and closed ends at once; 10 s is a hang.
            tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .expect("the connection hung");
        });
    });
});
