//! Serves the control API: accept loop over a unix socket (mode 0600) or loopback TCP,
//! one hyper HTTP/1.1 connection task per client, until the stop signal.
//!
//! Bounded against idle-connection floods (any local user can reach loopback TCP): at
//! most [`MAX_CONNECTIONS`] are open, a connection that has not shown the token is the
//! first to go when they are all taken ([`Slots`]), request headers must arrive within
//! [`HEADER_READ_TIMEOUT`], and each connection buffers at most [`MAX_BUF`] bytes.
//! Accept errors (e.g. out of file descriptors) back off instead of spinning.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use super::Services;
use crate::agent::slots::{Admit, Proof, Slots};
use crate::log_throttle::LogThrottle;
use crate::wire::RpcAddr;

/// Most control API connections open at once.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a client may take to send a request's headers (also while idle between
/// requests on a kept-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest read buffer of one connection (bodies stream through it).
pub const MAX_BUF: usize = 16 * 1024;
/// Pause after a failed accept (EMFILE and the like), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound control API listener.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `addr`. A stale unix socket (nobody answering) is replaced; a live one is
    /// an error (another agent runs there).
    pub async fn bind(addr: &RpcAddr) -> std::io::Result<Self> {
        match addr {
            RpcAddr::Tcp(a) => Ok(Self::Tcp(TcpListener::bind(a).await?)),
            RpcAddr::Unix(path) => {
                use std::os::unix::fs::PermissionsExt;
                if let Some(dir) = path.parent() {
                    // The socket's own directory 0700, whatever the umask.
                    crate::dirs::create_dir_all_mode(dir, 0o755, 0o700)?;
                }
                if path.exists() {
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("{} is in use by a running agent", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                // Bound under a temporary name, made 0600, then renamed into place: the socket
                // is never reachable at its real path with the umask's mode.
                let mut tmp_name = std::ffi::OsString::from(".");
                tmp_name.push(path.file_name().unwrap_or_default());
                tmp_name.push(format!(".{}.tmp", std::process::id()));
                let tmp = path.with_file_name(tmp_name);
                let _ = std::fs::remove_file(&tmp);
                let listener = UnixListener::bind(&tmp)?;
                let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                    .and_then(|()| std::fs::rename(&tmp, path));
                if let Err(e) = placed {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                Ok(Self::Unix(listener, path.clone()))
            }
        }
    }
}

fn serve<IO>(
    conns: &mut tokio::task::JoinSet<()>,
    slots: &mut Slots,
    io: IO,
    handle: Services,
    token: Option<Arc<String>>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match slots.admit() {
        Admit::Free => {}
        Admit::Evicted => {
            tracing::debug!("control API full: closed the oldest unproven connection")
        }
        Admit::Full => {
            tracing::warn!(
                max = MAX_CONNECTIONS,
                "control API full of authorised connections; refusing one"
            );
            return;
        }
    }
    let proof = Proof::default();
    let proven = proof.clone();
    let mut stop = handle.agent.stopping();
    let task = conns.spawn(async move {
        let service = service_fn(move |req| {
            let (handle, token) = (handle.clone(), token.clone());
            if super::routes::authorized(&req, token.as_ref()) {
                proven.set();
            }
            async move { Ok::<_, Infallible>(super::routes::handle(req, handle, token).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_BUF)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = stopped(&mut stop) => {
                // Finish the response in flight (a monitor stream ends on stop), then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(cause = %e, "control API connection ended with an error");
        }
    });
    slots.insert(task, proof);
}

/// Completes once the stop flag is `true` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let now = *stop.borrow_and_update();
        if now || stop.changed().await.is_err() {
            return;
        }
    }
}

/// How long open connections get to finish their answer once the agent stops.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Accepts connections until `stop` flips, then lets open connections finish their
/// answers (bounded by `DRAIN_TIMEOUT`). `token` is required on TCP.
pub async fn run(
    listener: Listener,
    handle: Services,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let token = token.map(Arc::new);
    let mut conns = tokio::task::JoinSet::new();
    let mut slots = Slots::new(MAX_CONNECTIONS);
    let mut failures = LogThrottle::new(crate::log_throttle::PERIOD);
    loop {
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        let accepted = match &listener {
            Listener::Unix(l, _) => tokio::select! {
                _ = stop.changed() => break,
                // The socket is 0600: whoever connects is root or the agent's user.
                r = l.accept() => r.map(|(s, _)| serve(&mut conns, &mut slots, s, handle.clone(), None)),
            },
            Listener::Tcp(l) => tokio::select! {
                _ = stop.changed() => break,
                r = l.accept() => r.map(|(s, _)| serve(&mut conns, &mut slots, s, handle.clone(), token.clone())),
            },
        };
        if let Err(e) = accepted {
            if let Some(left_out) = failures.due(std::time::Instant::now()) {
                tracing::warn!(cause = %e, left_out, "control API accept failed; retrying every {ACCEPT_BACKOFF:?} (left_out: failures since the last such line)");
            }
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}
