//! The executor task's stage step: the fetch into the release store, bounded by the
//! activation's deadline, a newer version and the executor's shutdown.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::store;
use super::{AppTask, Submit};
use crate::cancel::{Cancel, Reason};
use crate::deploy::activation::Source;
use crate::deploy::fetch;
use crate::deploy::phases::Phase;
use crate::release::layout::validate_version;

impl AppTask {
    /// Fetches `version` into the store (nothing to do when it is already there). The fetch
    /// is cancelled at `deadline`, when `rx` brings a deploy of another version, and when the
    /// executor stops; it then ends failed with nothing published.
    pub(super) async fn fetch(
        &mut self,
        version: &str,
        source: Source,
        deadline: tokio::time::Instant,
        rx: &watch::Receiver<Option<Submit>>,
    ) -> Result<(), String> {
        let Source {
            url,
            sha256,
            chunks,
            swarm,
        } = source;
        let layout = self.layout.clone();
        let cancel = self.stopping.child();
        let unpack = crate::artifact::UnpackOptions {
            max_bytes: self.app.max_bytes,
            max_ratio: self.app.max_ratio,
            cancel: cancel.clone(),
            ..self.opts.unpack.clone()
        };
        let mut fopts = self.opts.fetch.clone();
        if !store::is_present(&layout, version) {
            // A release already on disk is not fetched: no peers to ask.
            fopts.peers = self.peers(sha256, chunks, &swarm).await;
        }
        let hold = PeerHold(fopts.peers.as_ref().map(|p| (p.pieces.clone(), p.artifact)));
        let owned = version.to_string();
        let app = self.app.name.clone();
        let budget = self.app.deploy_timeout / 2;
        // When the object was open: unset if it never was; `None` when nothing was fetched.
        let opened: Arc<OnceLock<Option<Instant>>> = Arc::default();
        let (at, t0) = (opened.clone(), Instant::now());
        let job = tokio::task::spawn_blocking(move || {
            let version = owned;
            if store::is_present(&layout, &version) {
                let _ = at.set(None);
                return Ok(());
            }
            hold.begin();
            tracing::info!(%app, %url, %version, "fetching");
            let mut open_at = None;
            let r = retry_transient(&unpack.cancel, (&app, &url), budget, || {
                fetch::stage(
                    &layout,
                    &url,
                    sha256,
                    Some(&version),
                    &unpack,
                    &fopts,
                    &mut open_at,
                )
            });
            if open_at.is_some() {
                let _ = at.set(open_at);
            }
            hold.end(r.is_ok());
            match r {
                Ok(f) => {
                    if let Err(e) = store::record_digest(&layout, &version, &f.sha256) {
                        tracing::warn!(%app, %version, error = %e, "artifact digest not recorded");
                    }
                    Ok(())
                }
                Err(e) => Err(with_limit_hint(store::fetch_error(&e), &e, &app)),
            }
        });
        let r = bounded(job, &cancel, deadline, self.app.deploy_timeout, rx, version).await;
        // The job has ended (a cancelled one too): `opened` is final.
        match opened.get() {
            Some(None) => {}
            Some(Some(at)) => {
                self.timed(Phase::Fetch, at.saturating_duration_since(t0));
                self.timed(Phase::Unpack, at.elapsed());
            }
            None => self.timed(Phase::Fetch, t0.elapsed()),
        }
        self.refresh().await;
        r
    }
}

/// How long a fetch waits for the agent's member list before it goes to the store alone.
const MEMBERS_WAIT: Duration = Duration::from_secs(5);

/// The fan-out's side of one fetch: the artifact is expected by peers while the fetch
/// starts, held for them after it succeeded, and forgotten after it failed.
struct PeerHold(Option<(Arc<crate::agent::fanout::PeerPieces>, [u8; 32])>);

impl PeerHold {
    fn begin(&self) {
        if let Some((pieces, artifact)) = &self.0 {
            pieces.held().expect(*artifact);
        }
    }

    fn end(&self, ok: bool) {
        if let Some((pieces, artifact)) = &self.0 {
            pieces.held().settle(artifact);
            if !ok {
                pieces.held().forget(artifact);
            }
        }
    }
}

impl AppTask {
    /// Who may hold the pieces of an artifact whose event pins it and its chunk index: the
    /// live members of `swarm`; `None` without both pins or without the agent.
    async fn peers(
        &self,
        artifact: Option<[u8; 32]>,
        index: Option<[u8; 32]>,
        swarm: &crate::fanout::owners::Swarm,
    ) -> Option<fetch::peers::Peers> {
        let (artifact, index, agent) = (artifact?, index?, self.opts.agent.as_ref()?);
        let pieces = agent.peer_pieces()?;
        let members = agent.call(crate::agent::Command::Members);
        let list = tokio::time::timeout(MEMBERS_WAIT, members)
            .await
            .ok()?
            .ok()?;
        let me = self.opts.node.clone();
        let alive: std::collections::HashMap<String, std::net::SocketAddr> = list
            .into_iter()
            .filter(|m| m.status == "alive" && m.name != me)
            .filter_map(|m| Some((m.name, m.addr.parse().ok()?)))
            .collect();
        let among = |names: &[String]| {
            (names.iter())
                .filter_map(|n| Some((n.clone(), *alive.get(n)?)))
                .collect()
        };
        Some(fetch::peers::Peers {
            me,
            holders: among(&swarm.holders),
            fetching: among(&swarm.fetching),
            pieces,
            artifact,
            index,
        })
    }
}

/// First wait between two tries of a fetch that failed for a reason that may pass.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Tries that ended with the body cut off: each may have fetched and unpacked most of the
/// artifact, so a server that cuts off every time gets no more than these.
const MAX_CUT_OFFS: u32 = 3;

/// Runs `attempt` again while it fails for a reason that may pass (the store unreachable
/// or busy, the body cut off: a host cut off from it, a store restarting), waiting about
/// 1 s, 2 s, ... 30 s between tries (with jitter, so a fleet does not retry in step), for
/// at most `budget` (half the deploy timeout: the rest is for the start and the health
/// check) and [`MAX_CUT_OFFS`] cut-offs. A cancel (the deploy's timeout, a newer version,
/// shutdown) during a wait ends it as cancelled. A failed try leaves nothing staged, so a
/// retry starts clean.
fn retry_transient<T>(
    cancel: &Cancel,
    (app, url): (&str, &str),
    budget: Duration,
    mut attempt: impl FnMut() -> Result<T, fetch::DeployError>,
) -> Result<T, fetch::DeployError> {
    let started = Instant::now();
    let (mut wait, mut cut_offs) = (RETRY_FIRST, 0);
    loop {
        let r = attempt();
        let e = match &r {
            Err(e) if e.is_transient() => e,
            _ => return r,
        };
        cut_offs += u32::from(e.is_cut_off());
        let pause = wait.mul_f64(0.5 + rand::random::<f64>());
        let over = started.elapsed() + pause > budget;
        if cancel.is_cancelled() || cut_offs >= MAX_CUT_OFFS || over {
            return r;
        }
        let error = store::fetch_error(e);
        tracing::warn!(%app, %url, %error, retry_in = ?pause, "fetch failed; trying again");
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if let Some(reason) = cancel.reason() {
                let url = url.to_string();
                return Err(fetch::FetchError::Cancelled { url, reason }.into());
            }
            std::thread::sleep(Duration::from_millis(100).min(pause));
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// `error`, naming the `[apps.NAME]` key that raises the limit the unpack hit, if it hit one.
fn with_limit_hint(error: String, e: &fetch::DeployError, app: &str) -> String {
    use crate::artifact::UnpackError;
    let fetch::DeployError::Release(crate::release::ReleaseError::Unpack(u)) = e else {
        return error;
    };
    let key = match u {
        UnpackError::TooLarge { .. } => "max_bytes",
        UnpackError::Expansion { .. } => "max_ratio",
        _ => return error,
    };
    store::truncate(format!("{error} (apps.{app}.{key})"), store::MAX_ERROR)
}

/// Waits for a fetch `job`, cancelling it at `deadline` or when `rx` brings a deploy of a
/// version other than `version`; a cancelled job still runs to its (prompt) end, so its
/// staging directory is gone before the next step.
async fn bounded(
    mut job: tokio::task::JoinHandle<Result<(), String>>,
    cancel: &Cancel,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
    rx: &watch::Receiver<Option<Submit>>,
    version: &str,
) -> Result<(), String> {
    tokio::select! {
        r = &mut job => return joined(r),
        () = tokio::time::sleep_until(deadline) => cancel.cancel(Reason::Deadline(timeout)),
        newer = newer_version(rx.clone(), version) => cancel.cancel(Reason::Superseded(newer)),
    }
    joined(job.await)
}

fn joined(r: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), String> {
    r.unwrap_or_else(|e| Err(format!("internal error: {e}")))
}

/// Waits until `rx` (a clone: the task's own receiver still sees the change) holds a deploy
/// of a valid version other than `version`; returns that version.
async fn newer_version(mut rx: watch::Receiver<Option<Submit>>, version: &str) -> String {
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        let newer = rx.borrow_and_update().as_ref().and_then(|s| {
            (s.version != version && validate_version(&s.version).is_ok())
                .then(|| s.version.clone())
        });
        if let Some(v) = newer {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::fetch::{DeployError, FetchError};

    const MINUTE: Duration = Duration::from_secs(60);

    fn retry<T>(
        cancel: &Cancel,
        budget: Duration,
        attempt: impl FnMut() -> Result<T, DeployError>,
    ) -> Result<T, DeployError> {
        retry_transient(cancel, ("web", "s3://b/k"), budget, attempt)
    }

    fn unreachable() -> DeployError {
        DeployError::Fetch(FetchError::Unreachable {
            url: "s3://b/k".into(),
            endpoint: "http://10.0.0.1:3900".into(),
            detail: "connection refused".into(),
        })
    }

    #[test]
    fn an_unreachable_store_is_tried_again_a_missing_object_is_not() {
        let cancel = Cancel::default();
        let mut tries = 0;
        let r = retry(&cancel, MINUTE, || {
            tries += 1;
            if tries == 1 {
                Err(unreachable())
            } else {
                Ok(tries)
            }
        });
        assert_eq!(r.unwrap(), 2);
        let mut tries = 0;
        let r: Result<(), _> = retry(&cancel, MINUTE, || {
            tries += 1;
            Err(DeployError::Fetch(FetchError::HttpNotFound {
                url: "http://x/a".into(),
            }))
        });
        assert!(r.is_err());
        assert_eq!(tries, 1, "a 404 is final");
        let busy = FetchError::HttpStatus {
            url: "http://x/a".into(),
            status: 503,
        };
        assert!(busy.is_transient());
        let refused = FetchError::HttpStatus {
            url: "http://x/a".into(),
            status: 403,
        };
        assert!(!refused.is_transient());
        // A body cut off mid-transfer, as the unpacker reports it, is worth another try; a
        // corrupt one is not.
        let unpack = |e| {
            let r = crate::release::ReleaseError::Unpack(crate::artifact::UnpackError::Read(e));
            DeployError::Release(r)
        };
        let cut = crate::deploy::fetch::stream::cut_off("s3://b/k: connection lost".into());
        assert!(unpack(cut).is_transient());
        let corrupt = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad gzip header");
        assert!(!unpack(corrupt).is_transient());
    }

    #[test]
    fn a_cancel_ends_the_retries_with_the_last_error() {
        let cancel = Cancel::default();
        let mut tries = 0;
        let r: Result<(), _> = retry(&cancel, MINUTE, || {
            tries += 1;
            cancel.cancel(Reason::Shutdown);
            Err(unreachable())
        });
        assert!(matches!(
            r,
            Err(DeployError::Fetch(FetchError::Unreachable { .. }))
        ));
        assert_eq!(tries, 1);
    }

    #[test]
    fn a_cancel_during_the_wait_says_why_and_cut_offs_are_bounded() {
        let cancel = Cancel::default();
        let canceller = cancel.clone();
        let r: Result<(), _> = retry(&cancel, MINUTE, || {
            let c = canceller.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                c.cancel(Reason::Superseded("v9".into()));
            });
            Err(unreachable())
        });
        let e = store::fetch_error(&r.unwrap_err());
        assert!(e.contains("v9"), "{e}");
        // A store that cuts every body off is tried MAX_CUT_OFFS times, not until the budget.
        let mut tries = 0;
        let r: Result<(), _> = retry(&Cancel::default(), MINUTE, || {
            tries += 1;
            let cut = crate::deploy::fetch::stream::cut_off("s3://b/k: connection lost".into());
            let e = crate::artifact::UnpackError::Read(cut);
            Err(DeployError::Release(crate::release::ReleaseError::Unpack(
                e,
            )))
        });
        assert!(r.is_err());
        assert_eq!(tries, MAX_CUT_OFFS);
        // Retries stop once the next wait would pass the budget: the last error is returned.
        let mut tries = 0;
        let short = Duration::from_millis(100);
        let r: Result<(), _> = retry(&Cancel::default(), short, || {
            tries += 1;
            Err(unreachable())
        });
        assert!(matches!(
            r,
            Err(DeployError::Fetch(FetchError::Unreachable { .. }))
        ));
        assert_eq!(tries, 1);
    }
}
