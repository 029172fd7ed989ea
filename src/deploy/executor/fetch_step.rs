//! The executor task's stage step: the fetch into the release store, bounded by the
//! activation's deadline, a newer version and the executor's shutdown.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

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
        let Source { url, sha256 } = source;
        let layout = self.layout.clone();
        let cancel = self.stopping.child();
        let unpack = crate::artifact::UnpackOptions {
            max_bytes: self.app.max_bytes,
            max_ratio: self.app.max_ratio,
            cancel: cancel.clone(),
            ..self.opts.unpack.clone()
        };
        let fopts = self.opts.fetch.clone();
        let owned = version.to_string();
        let app = self.app.name.clone();
        // When the object was open: unset if it never was; `None` when nothing was fetched.
        let opened: Arc<OnceLock<Option<Instant>>> = Arc::default();
        let (at, t0) = (opened.clone(), Instant::now());
        let job = tokio::task::spawn_blocking(move || {
            let version = owned;
            if store::is_present(&layout, &version) {
                let _ = at.set(None);
                return Ok(());
            }
            tracing::info!(%app, %url, %version, "fetching");
            let mut open_at = None;
            let r = fetch::stage(
                &layout,
                &url,
                sha256,
                Some(&version),
                &unpack,
                &fopts,
                &mut open_at,
            );
            if open_at.is_some() {
                let _ = at.set(open_at);
            }
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
