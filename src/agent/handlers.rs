//! Event and query handler processes: the I/O half of handlers. Which handlers an
//! event selects and the environment they get are decided without I/O, in
//! [`crate::agent::sansio::trigger`].
//!
//! Each matching `[[handler]]` runs as its own process (so handlers for one event run
//! concurrently) in its own process group, with the payload on stdin and the
//! environment of [`trigger::env`](crate::agent::sansio::trigger::env) (the
//! `DROOT_FLEET_*` variables are listed there).
//!
//! Everything else is inherited from the agent's own environment (`PATH`, `HOME`,
//! `LANG`, `DROOT_FLEET_RPC_TOKEN`, …), as is its working directory and user. Inherited
//! event-context variables (`DROOT_FLEET_EVENT`, `_USER_EVENT`, `_QUERY_NAME`, `_LTIME`,
//! `_NODE`, `_MEMBER`, `_TAG_*` — e.g. from an agent started by another handler) are
//! removed first, so a handler never sees a stale name or tag. So is `NOTIFY_SOCKET`
//! (see [`crate::sd_notify`]): only the agent speaks to its service manager.
//!
//! At the timeout the whole process group gets SIGKILL and a warning is logged.
//! stdout/stderr are logged; for queries stdout is the answer. Memory is bounded: only
//! the last [`LOG_TAIL`] bytes of logged output and the first [`MAX_ANSWER`] bytes of an
//! answer are kept, and at most `max_concurrent_handlers` run at once ([`Limiter`]);
//! the others wait their turn.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::config::HandlerConfig;
use super::net::Counters;
use super::sansio::trigger::is_event_context_var;

/// Why a handler produced no result.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("could not start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program:?} timed out after {timeout:?}; its process group was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program:?}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// How much of a user or member handler's stdout and of any handler's stderr is kept
/// (the last bytes; older output is counted and dropped) for the log.
pub const LOG_TAIL: usize = 8 * 1024;
/// How much of a query handler's stdout (its answer) is kept: the first bytes.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// Handlers allowed to run at once, shared by every handler of the agent. A handler
/// waits here (in arrival order) before its process starts; its timeout starts after.
pub type Limiter = std::sync::Arc<tokio::sync::Semaphore>;

/// A new [`Limiter`] for `max` concurrent handlers (at least 1).
pub fn limiter(max: usize) -> Limiter {
    std::sync::Arc::new(tokio::sync::Semaphore::new(max.max(1)))
}

/// A handler process that started.
pub struct Running {
    program: String,
    timeout: Duration,
    child: tokio::process::Child,
    answer: bool,
}

/// Starts one handler process (the payload goes to its stdin). `answer`: its stdout is
/// a query answer (keep the head), otherwise only logged (keep the tail).
pub fn start(
    handler: &HandlerConfig,
    env: &[(String, String)],
    stdin: Vec<u8>,
    answer: bool,
) -> Result<Running, HandlerError> {
    let program = handler.command[0].clone();
    let mut cmd = tokio::process::Command::new(&program);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(is_event_context_var) {
            cmd.env_remove(k);
        }
    }
    // The service manager's socket is the agent's: a handler must not speak as it.
    cmd.env_remove(crate::sd_notify::ENV);
    cmd.args(&handler.command[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| HandlerError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let Some(mut input) = child.stdin.take() {
        tokio::spawn(async move {
            // A handler that does not read stdin is fine.
            let _ = input.write_all(&stdin).await;
        });
    }
    Ok(Running {
        program,
        timeout: handler.timeout,
        child,
        answer,
    })
}

/// Reads `r` to its end, keeping at most `cap` bytes: the first ones (`head`) or the
/// last ones. Returns them and how many bytes were dropped.
async fn capture(
    r: Option<impl tokio::io::AsyncRead + Unpin>,
    cap: usize,
    head: bool,
) -> (Vec<u8>, u64) {
    use tokio::io::AsyncReadExt;
    let (mut kept, mut dropped) = (Vec::new(), 0u64);
    let Some(mut r) = r else {
        return (kept, dropped);
    };
    let mut buf = [0u8; 4096];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > cap {
            let extra = kept.len() - cap;
            dropped += extra as u64;
            if head {
                kept.truncate(cap);
            } else {
                kept.drain(..extra);
            }
        }
    }
    (kept, dropped)
}

impl Running {
    /// Waits for the handler (killing its process group at the timeout), logs its
    /// output and returns stdout (bounded, see [`LOG_TAIL`] and [`MAX_ANSWER`]).
    pub async fn finish(self) -> Result<Vec<u8>, HandlerError> {
        self.finish_status().await.map(|(out, _)| out)
    }

    /// [`Self::finish`], and whether the handler exited 0.
    pub async fn finish_status(mut self) -> Result<(Vec<u8>, bool), HandlerError> {
        let pid = self.child.id();
        let (out_cap, head) = if self.answer {
            (MAX_ANSWER, true)
        } else {
            (LOG_TAIL, false)
        };
        let stdout = capture(self.child.stdout.take(), out_cap, head);
        let stderr = capture(self.child.stderr.take(), LOG_TAIL, false);
        let program = self.program;
        let all = async {
            let ((out, out_dropped), (err, err_dropped), status) =
                tokio::join!(stdout, stderr, self.child.wait());
            status.map(|s| (s, out, out_dropped, err, err_dropped))
        };
        match tokio::time::timeout(self.timeout, all).await {
            Ok(Ok((status, out, out_dropped, err, err_dropped))) => {
                tracing::info!(
                    handler = %program,
                    status = %status,
                    stdout = %String::from_utf8_lossy(&out).trim_end(),
                    stderr = %String::from_utf8_lossy(&err).trim_end(),
                    stdout_dropped = out_dropped,
                    stderr_dropped = err_dropped,
                    "handler finished"
                );
                Ok((out, status.success()))
            }
            Ok(Err(source)) => Err(HandlerError::Wait { program, source }),
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Err(HandlerError::Timeout {
                    program,
                    timeout: self.timeout,
                })
            }
        }
    }
}

/// Waits for a slot of `limiter`, then runs one handler to completion, counted in
/// `counters` ([`Counters::handler_ran`]). Returns stdout.
pub async fn run(
    limiter: &Limiter,
    counters: &Counters,
    handler: &HandlerConfig,
    env: &[(String, String)],
    stdin: Vec<u8>,
    answer: bool,
) -> Result<Vec<u8>, HandlerError> {
    let _permit = limiter.acquire().await;
    let ran = match start(handler, env, stdin, answer) {
        Ok(running) => running.finish_status().await,
        Err(e) => Err(e),
    };
    counters.handler_ran(matches!(ran, Ok((_, true))));
    ran.map(|(out, _)| out)
}

/// Spawns each of `handlers` (member events: not journaled, not retried) in its own
/// task behind `limiter`; failures are logged with the `event` kind.
pub fn spawn_each(
    limiter: &Limiter,
    counters: &std::sync::Arc<Counters>,
    handlers: Vec<HandlerConfig>,
    env: &[(String, String)],
    payload: &[u8],
    event: &str,
) {
    for h in handlers {
        let (env, payload, event) = (env.to_vec(), payload.to_vec(), event.to_owned());
        let (limiter, counters) = (limiter.clone(), counters.clone());
        tokio::spawn(async move {
            if let Err(e) = run(&limiter, &counters, &h, &env, payload, false).await {
                tracing::warn!(event = %event, cause = %e, "handler failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::{EventFilter, RpcAddr};
    use crate::agent::sansio::trigger::{Trigger, env};
    use crate::gossip::Tags;

    fn h(filter: EventFilter, cmd: &[&str], timeout_ms: u64) -> HandlerConfig {
        HandlerConfig {
            filter,
            command: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn env_stdin_and_timeout() {
        let tags = Tags::from([("dc-1".to_owned(), "eu".to_owned())]);
        let env = env(
            &Trigger::User {
                name: "x".into(),
                ltime: 4,
            },
            "n1",
            &RpcAddr::Unix("/tmp/x.sock".into()),
            &tags,
        );
        let cat = h(
            EventFilter::All,
            &[
                "sh",
                "-c",
                "cat; echo \" $DROOT_FLEET_USER_EVENT $DROOT_FLEET_LTIME $DROOT_FLEET_TAG_DC_1\"",
            ],
            5000,
        );
        let lim = limiter(4);
        let c = Counters::default();
        let out = run(&lim, &c, &cat, &env, b"hi".to_vec(), true)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "hi x 4 eu\n");
        let slow = h(EventFilter::All, &["sh", "-c", "sleep 30; echo done"], 200);
        let start = std::time::Instant::now();
        let err = run(&lim, &c, &slow, &env, vec![], false).await.unwrap_err();
        assert!(matches!(err, HandlerError::Timeout { .. }));
        assert!(start.elapsed() < Duration::from_secs(5));
        // A non-zero exit still answers, and counts as a failure.
        let exit3 = h(EventFilter::All, &["sh", "-c", "echo no; exit 3"], 5000);
        let out = run(&lim, &c, &exit3, &env, vec![], true).await.unwrap();
        assert_eq!(out, b"no\n");
        let missing = h(EventFilter::All, &["/nonexistent/handler"], 5000);
        let err = run(&lim, &c, &missing, &env, vec![], true)
            .await
            .unwrap_err();
        assert!(matches!(err, HandlerError::Spawn { .. }));
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((get(&c.handler_runs), get(&c.handler_failures)), (4, 3));
    }

    /// Regression (issue 10, item 5): all of a handler's output was kept in memory.
    #[tokio::test]
    async fn output_is_bounded() {
        let lim = limiter(2);
        let c = Counters::default();
        let env = Vec::new();
        let noisy = |n: usize| {
            h(
                EventFilter::All,
                &[
                    "sh",
                    "-c",
                    &format!("head -c {n} /dev/zero | tr '\\0' a; echo -n END"),
                ],
                10_000,
            )
        };
        let out = run(&lim, &c, &noisy(3_000_000), &env, vec![], false)
            .await
            .unwrap();
        assert_eq!(out.len(), LOG_TAIL);
        assert!(out.ends_with(b"aEND"), "the tail is kept");
        let out = run(&lim, &c, &noisy(3_000_000), &env, vec![], true)
            .await
            .unwrap();
        assert_eq!(out.len(), MAX_ANSWER, "an answer keeps its head");
    }

    /// Regression (issue 10, item 5): any number of handlers ran at once.
    #[tokio::test]
    async fn limiter_queues_handlers() {
        let lim = limiter(1);
        let c = Counters::default();
        let timed = h(
            EventFilter::All,
            &["sh", "-c", "date +%s%N; sleep 0.3; date +%s%N"],
            10_000,
        );
        let env = Vec::new();
        let (a, b) = tokio::join!(
            run(&lim, &c, &timed, &env, vec![], true),
            run(&lim, &c, &timed, &env, vec![], true)
        );
        let span = |out: Vec<u8>| -> (u128, u128) {
            let text = String::from_utf8(out).unwrap();
            let mut it = text.lines().map(|l| l.parse::<u128>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        };
        let (a, b) = (span(a.unwrap()), span(b.unwrap()));
        assert!(
            a.1 <= b.0 || b.1 <= a.0,
            "ran at the same time: {a:?} {b:?}"
        );
    }
}
