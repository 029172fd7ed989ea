//! Stopping work that blocks: a token that a deadline, a newer deploy or the agent's
//! shutdown trips, and a `Read` that fails for good once it is tripped.
//!
//! A fetch and an unpack run on blocking threads that no async cancellation reaches: an
//! aborted task leaves its `spawn_blocking` thread running, and the runtime then waits for
//! it at exit. So the blocking side polls the token on every read ([`CancellableRead`]),
//! and async producers that feed it wait on [`Cancel::cancelled`] and stop, which wakes a
//! reader blocked on their channel. A token may have a parent (the executor's shutdown
//! token): tripping the parent trips every child, not the other way round.
//!
//! A leaf module: the unpacker, the fetcher and the executor share it.

use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Why work was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The app's `deploy_timeout` passed.
    Deadline(Duration),
    /// A deploy of this newer version of the app arrived.
    Superseded(String),
    /// The agent is stopping.
    Shutdown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Deadline(d) => write!(
                f,
                "the deploy took longer than its deploy_timeout of {}",
                humantime::format_duration(*d)
            ),
            Reason::Superseded(v) => write!(f, "a deploy of {v} replaced it"),
            Reason::Shutdown => f.write_str("the agent is stopping"),
        }
    }
}

#[derive(Default)]
struct Inner {
    reason: Mutex<Option<Reason>>,
    notify: Notify,
    parent: Option<Cancel>,
}

/// A cancellation token; clones share it. The default one is never tripped unless
/// [`Cancel::cancel`] is called on it.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancel")
            .field("reason", &self.reason())
            .finish()
    }
}

impl Cancel {
    /// A token tripped by [`cancel`](Self::cancel) on it, or on `self`.
    pub fn child(&self) -> Cancel {
        Cancel {
            inner: Arc::new(Inner {
                parent: Some(self.clone()),
                ..Inner::default()
            }),
        }
    }

    /// Trips the token (the first reason stays) and wakes everything waiting on it.
    pub fn cancel(&self, reason: Reason) {
        {
            let mut r = self.inner.reason.lock().unwrap_or_else(|p| p.into_inner());
            r.get_or_insert(reason);
        }
        self.inner.notify.notify_waiters();
    }

    /// Why it was tripped (its own reason first, else its parent's); `None` while it is not.
    pub fn reason(&self) -> Option<Reason> {
        let own = self
            .inner
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        own.or_else(|| self.inner.parent.as_ref().and_then(Cancel::reason))
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Waits until the token (or an ancestor) is tripped; returns why.
    pub async fn cancelled(&self) -> Reason {
        let mut chain = vec![self];
        while let Some(p) = chain.last().and_then(|c| c.inner.parent.as_ref()) {
            chain.push(p);
        }
        loop {
            // Registered before the check, so a trip in between is not missed.
            let waits: Vec<_> = chain.iter().map(|c| c.inner.notify.notified()).collect();
            let mut waits: Vec<_> = waits.into_iter().map(Box::pin).collect();
            for w in &mut waits {
                w.as_mut().enable();
            }
            if let Some(r) = self.reason() {
                return r;
            }
            futures_util::future::select_all(waits).await;
        }
    }

    /// The error a [`CancellableRead`] returns once the token is tripped.
    pub fn error(&self) -> Option<io::Error> {
        self.reason().map(|r| io::Error::other(Cancelled(r)))
    }
}

/// The payload of the `io::Error` a [`CancellableRead`] fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stopped: {0}")]
pub struct Cancelled(pub Reason);

/// A reader that fails once `cancel` is tripped: before each read, after a read that
/// ended (so a producer that stops on cancellation never looks like a clean end), and
/// instead of the error of a read the cancellation broke off.
pub struct CancellableRead<R> {
    inner: R,
    cancel: Cancel,
}

impl<R> CancellableRead<R> {
    pub fn new(inner: R, cancel: Cancel) -> Self {
        CancellableRead { inner, cancel }
    }
}

impl<R: Read> Read for CancellableRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.cancel.error() {
            return Err(e);
        }
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => match self.cancel.error() {
                Some(e) => Err(e),
                None => Ok(0),
            },
            Ok(n) => Ok(n),
            Err(e) => Err(self.cancel.error().unwrap_or(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_trips_its_children_not_the_other_way() {
        let parent = Cancel::default();
        let (a, b) = (parent.child(), parent.child());
        a.cancel(Reason::Superseded("v3".into()));
        assert!(a.is_cancelled() && !b.is_cancelled() && !parent.is_cancelled());
        parent.cancel(Reason::Shutdown);
        assert_eq!(b.reason(), Some(Reason::Shutdown));
        // The first reason stays.
        assert_eq!(a.reason(), Some(Reason::Superseded("v3".into())));
        a.cancel(Reason::Shutdown);
        assert_eq!(a.reason(), Some(Reason::Superseded("v3".into())));
    }

    #[test]
    fn an_endless_reader_stops_at_the_next_read() {
        let cancel = Cancel::default();
        let mut r = CancellableRead::new(io::repeat(0), cancel.clone());
        let mut buf = [1u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 64);
        cancel.cancel(Reason::Deadline(Duration::from_secs(5)));
        let e = r.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("deploy_timeout of 5s"), "{e}");
        // Never retried as `Interrupted` by a copy loop.
        assert_ne!(e.kind(), io::ErrorKind::Interrupted);
        // A producer that stopped because of the cancellation is no clean end.
        let mut ended = CancellableRead::new(io::empty(), cancel);
        assert!(ended.read(&mut buf).is_err());
    }

    #[tokio::test]
    async fn waiters_wake_on_a_trip_of_any_ancestor() {
        let root = Cancel::default();
        let leaf = root.child().child();
        let waiter = tokio::spawn({
            let leaf = leaf.clone();
            async move { leaf.cancelled().await }
        });
        tokio::task::yield_now().await;
        root.cancel(Reason::Shutdown);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, Reason::Shutdown);
        // Already tripped: returns at once.
        assert_eq!(leaf.cancelled().await, Reason::Shutdown);
    }
}
