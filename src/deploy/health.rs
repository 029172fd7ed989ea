//! Health checks: probe an app until it passes or the deadline ends, every interval.
//!
//! - `tcp`: a TCP connect. `http`: an HTTP/1.1 GET (hyper's client, plain `http://`) that
//!   must answer 2xx. The jail shares the host's network, so both reach the app directly.
//! - `exec`: the command runs in a **fresh jail on the same release** — a child
//!   `droot-fleet run --root RELEASE` with the app's user, group, binds and env, but its own
//!   mount and PID namespaces, the same capability cut and seccomp filter. It sees the app's
//!   files and network, not its processes. We do not `nsenter` the running jail: that would
//!   mean trusting `/proc/PID/ns` and `/proc/PID/root` of a process the jailed code controls,
//!   and re-applying by hand the chroot, user, capabilities and seccomp that `run` already
//!   gets right (a check that forgot one would run with more rights than the app). `--cp` is
//!   not repeated: the host files were copied when the app started.
//!
//! Attempts start only before the deadline and each is bounded by [`attempt_timeout`]; an
//! exec check that overruns is SIGKILLed, and its jail (init has PDEATHSIG) goes with it.
//! What an exec check prints is the release's to decide: only its last [`OUTPUT_TAIL`]
//! bytes of each stream are kept (for the error), the rest is read and dropped, so a check
//! that prints without end costs the agent no more memory than that.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

use super::app::{HealthConfig, HttpTarget, JailSettings, Probe};

/// Why a health check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health check failed {attempts} time(s) within {deadline:?}; last: {last}")]
    Deadline {
        attempts: u32,
        deadline: Duration,
        last: String,
    },
}

/// Where an `exec` check runs: the binary and the release of the running app.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The droot-fleet binary.
    pub exe: PathBuf,
    /// The release directory the app runs from.
    pub root: PathBuf,
    pub jail: JailSettings,
}

/// Probes every `interval` until one attempt passes (returns how many it took) or no new
/// attempt may start before the deadline.
pub async fn wait_healthy(cfg: &HealthConfig, ctx: &ExecContext) -> Result<u32, HealthError> {
    let end = Instant::now() + cfg.deadline;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match check_once(&cfg.probe, ctx, attempt_timeout(cfg)).await {
            Ok(()) => {
                tracing::debug!(attempts, "health check passed");
                return Ok(attempts);
            }
            Err(e) => e,
        };
        tracing::debug!(attempts, error = %last, "health check attempt failed");
        if Instant::now() + cfg.interval >= end {
            return Err(HealthError::Deadline {
                attempts,
                deadline: cfg.deadline,
                last,
            });
        }
        sleep(cfg.interval).await;
    }
}

/// How long one attempt may take: the interval, at least 5 s. An attempt is started only
/// before the deadline, and then runs to its end, so a check that fails reports the real
/// error rather than a cut-off; the whole check ends by `deadline` plus this.
pub fn attempt_timeout(cfg: &HealthConfig) -> Duration {
    cfg.interval.max(Duration::from_secs(5))
}

/// One attempt, within `budget`; the error says what failed.
pub async fn check_once(probe: &Probe, ctx: &ExecContext, budget: Duration) -> Result<(), String> {
    let attempt = async {
        match probe {
            Probe::Tcp(addr) => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("tcp connect {addr}: {e}")),
            Probe::Http(t) => http_get(t).await,
            Probe::Exec(cmd) => exec(ctx, cmd).await,
            // The supervisor hears it from the instance; nothing to probe from outside.
            Probe::Notify => Err("readiness by notification is not probed".into()),
        }
    };
    timeout(budget, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {budget:?}")))
}

async fn http_get(t: &HttpTarget) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("GET {}: {what}: {e}", t.url);
    let stream = TcpStream::connect(&t.authority)
        .await
        .map_err(|e| fail("connect", &e))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| fail("handshake", &e))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(&t.path)
        .header(hyper::header::HOST, &t.authority)
        .header(hyper::header::USER_AGENT, "droot-fleet-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail("request", &e))?;
    let resp = sender.send_request(req).await;
    driver.abort();
    let status = resp.map_err(|e| fail("request", &e))?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("GET {}: status {status}", t.url))
    }
}

/// How much of each output stream of an exec check is kept: its last bytes.
pub const OUTPUT_TAIL: usize = 4096;

async fn exec(ctx: &ExecContext, cmd: &[String]) -> Result<(), String> {
    let args: Vec<OsString> = ctx.jail.launch(&ctx.root, cmd, false).to_args();
    let mut child = tokio::process::Command::new(&ctx.exe)
        .args(&args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", ctx.exe.display()))?;
    let (status, text) = wait_with_tail(&mut child).await;
    let status = status.map_err(|e| format!("waiting for {}: {e}", ctx.exe.display()))?;
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} exited with {status}: {}",
        last_chars(&text, 300)
    ))
}

/// Waits for `child`, reading its piped stdout and stderr to their end: its status and the
/// last [`OUTPUT_TAIL`] bytes of each (stderr first), as text.
pub(crate) async fn wait_with_tail(
    child: &mut tokio::process::Child,
) -> (std::io::Result<std::process::ExitStatus>, String) {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (stdout, stderr, status) = tokio::join!(tail(stdout), tail(stderr), child.wait());
    let mut text = String::from_utf8_lossy(&stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&stdout));
    (status, text)
}

/// The last `n` characters of `text`, trimmed.
pub(crate) fn last_chars(text: &str, n: usize) -> String {
    let rev: Vec<char> = text.trim().chars().rev().take(n).collect();
    rev.into_iter().rev().collect()
}

/// Reads `pipe` to its end, keeping only its last [`OUTPUT_TAIL`] bytes.
async fn tail(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::with_capacity(2 * OUTPUT_TAIL);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > OUTPUT_TAIL {
                    kept.drain(..kept.len() - OUTPUT_TAIL);
                }
            }
        }
    }
}
