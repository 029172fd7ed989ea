//! A fixed number of connection slots for an accept loop (control API, gossip TCP).
//!
//! Without a cap, anyone who can connect (any local user on the loopback control API,
//! anyone on the network for gossip TCP) could hold thousands of idle connections: file
//! descriptors run out, the state file and journal cannot be written, and authorised
//! callers time out. With [`Slots`] at most `cap` connections are open at once.
//!
//! A connection is *proven* once it showed the secret (a valid bearer token, or a frame
//! sealed with a cluster key). When every slot is taken, a new connection evicts the
//! oldest unproven one, so a flood of silent connections cannot keep an authorised
//! caller out: its connection proves itself within a round trip, long before a flood
//! cycles through every slot. Only when every slot is proven is a new one refused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::AbortHandle;

/// Marks a connection as proven (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Proof(Arc<AtomicBool>);

impl Proof {
    /// The connection showed the secret: it can no longer be evicted.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What [`Slots::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// A slot was free.
    Free,
    /// The oldest unproven connection was closed to make room.
    Evicted,
    /// Every slot holds a proven connection: refuse this one.
    Full,
}

/// The open connections of one accept loop (owned by that loop, no locking).
#[derive(Debug)]
pub struct Slots {
    cap: usize,
    open: VecDeque<(AbortHandle, Proof)>,
}

impl Slots {
    /// At most `cap` (at least 1) connections.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            open: VecDeque::new(),
        }
    }

    /// Number of connections still running.
    pub fn len(&mut self) -> usize {
        self.open.retain(|(task, _)| !task.is_finished());
        self.open.len()
    }

    /// Whether no connection runs.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Makes room for a new connection if possible. On [`Admit::Full`] drop it.
    pub fn admit(&mut self) -> Admit {
        if self.len() < self.cap {
            return Admit::Free;
        }
        match self.open.iter().position(|(_, proof)| !proof.get()) {
            Some(i) => {
                if let Some((task, _)) = self.open.remove(i) {
                    task.abort();
                }
                Admit::Evicted
            }
            None => Admit::Full,
        }
    }

    /// Records the task serving an admitted connection and its proof flag.
    pub fn insert(&mut self, task: AbortHandle, proof: Proof) {
        self.open.push_back((task, proof));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn evicts_the_oldest_unproven_and_refuses_when_all_proven() {
        let mut slots = Slots::new(2);
        let idle = || tokio::spawn(std::future::pending::<()>());
        let (a, b, c) = (idle(), idle(), idle());
        let (pa, pb) = (Proof::default(), Proof::default());
        assert_eq!(slots.admit(), Admit::Free);
        slots.insert(a.abort_handle(), pa.clone());
        assert_eq!(slots.admit(), Admit::Free);
        slots.insert(b.abort_handle(), pb.clone());
        pa.set();
        // Full: b (unproven) goes, a (proven) stays.
        assert_eq!(slots.admit(), Admit::Evicted);
        assert!(b.await.unwrap_err().is_cancelled());
        let pc = Proof::default();
        slots.insert(c.abort_handle(), pc.clone());
        pc.set();
        assert_eq!(slots.admit(), Admit::Full);
        // A finished connection frees its slot.
        a.abort();
        let _ = a.await;
        assert_eq!(slots.admit(), Admit::Free);
        assert_eq!(slots.len(), 1);
    }
}
