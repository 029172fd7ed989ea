//! The artifacts this node holds for its peers: each one being fetched (or fetched last)
//! is kept in a file beside the agent's state, piece by piece as the pieces arrive and
//! check against the artifact's chunk index, so that peers can take them from here instead
//! of from the store.
//!
//! A fetch announces its artifact as expected before it knows the index (the HEAD and the
//! index's GET take a moment, and peers that started a moment sooner already ask): a
//! request for an expected artifact waits for it to begin as for a piece on its way.
//!
//! Bounds: at most [`MAX_HELD`] artifacts held and as many expected (the oldest is let go
//! when another begins), one file each, as large as the artifact. A piece is served only once it is whole and checked;
//! a request for one still on its way waits for it at most as long as the caller allows.
//! The directory is emptied when the agent starts: what a previous run held is not known to
//! be whole.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::index::ChunkIndex;

/// Artifacts held at once: the one being fetched and the one before it.
pub const MAX_HELD: usize = 2;
/// Pieces read for peers at once: each is a 4 MiB buffer until it is sent (with its
/// sealed copy, about 12 MiB), so serving stays under 50 MiB whoever asks.
pub const MAX_SERVING: usize = 4;

/// The artifacts held, newest last.
#[derive(Debug)]
pub struct Held {
    dir: PathBuf,
    held: Mutex<VecDeque<Arc<Holding>>>,
    /// Artifacts whose fetch is about to begin, oldest first.
    expected: Mutex<VecDeque<[u8; 32]>>,
    /// Bumped whenever an artifact begins or is forgotten.
    changed: watch::Sender<u64>,
    /// Permits for pieces read for peers and not yet sent ([`MAX_SERVING`]).
    serving: Arc<Semaphore>,
}

/// A piece read for a peer; its permit returns when it is dropped (once sent).
#[derive(Debug)]
pub struct Served {
    pub bytes: Vec<u8>,
    /// Keep it until the bytes are sent.
    pub permit: OwnedSemaphorePermit,
}

/// One artifact held: its index, its file and which pieces it has.
#[derive(Debug)]
pub struct Holding {
    artifact: [u8; 32],
    index: ChunkIndex,
    file: File,
    path: PathBuf,
    have: Mutex<Vec<bool>>,
    /// Bumped on every piece put and when the holding is let go.
    changed: watch::Sender<u64>,
    gone: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Held {
    /// The registry over `dir`, created 0700 if missing and emptied of what a previous run
    /// left there.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::dirs::create_dir_all_mode(dir, 0o700, 0o700)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            held: Mutex::default(),
            expected: Mutex::default(),
            changed: watch::channel(0).0,
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
        })
    }

    /// Announces that a fetch of `artifact` is about to begin: peers asking for its pieces
    /// wait for it instead of being told no.
    pub fn expect(&self, artifact: [u8; 32]) {
        let mut expected = lock(&self.expected);
        if !expected.contains(&artifact) {
            expected.push_back(artifact);
        }
        while expected.len() > MAX_HELD {
            expected.pop_front();
        }
    }

    /// The artifact held, waiting until `deadline` for an expected one to begin.
    async fn holding(
        &self,
        artifact: &[u8; 32],
        deadline: tokio::time::Instant,
    ) -> Option<Arc<Holding>> {
        let mut rx = self.changed.subscribe();
        loop {
            if let Some(h) = lock(&self.held).iter().find(|h| &h.artifact == artifact) {
                return Some(h.clone());
            }
            if !lock(&self.expected).contains(artifact) {
                return None;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// The fetch of `artifact` ended: it is no longer expected (what it began to hold is
    /// kept).
    pub fn settle(&self, artifact: &[u8; 32]) {
        lock(&self.expected).retain(|a| a != artifact);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Starts holding `artifact` (or goes on with it, when a fetch of it is tried again), and
    /// lets the oldest go beyond [`MAX_HELD`].
    pub fn begin(&self, artifact: [u8; 32], index: ChunkIndex) -> io::Result<Arc<Holding>> {
        let mut held = lock(&self.held);
        if let Some(at) = held.iter().position(|h| h.artifact == artifact) {
            if held[at].index == index {
                return Ok(held[at].clone());
            }
            // Another index for the same artifact (only a crafted one differs): what was
            // held under the first is not served under the second.
            if let Some(old) = held.remove(at) {
                old.let_go();
            }
        }
        let path = self.dir.join(hex::encode(artifact));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        if let Err(e) = file.set_len(index.size) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let pieces = index.digests.len();
        let holding = Arc::new(Holding {
            artifact,
            index,
            file,
            path,
            have: Mutex::new(vec![false; pieces]),
            changed: watch::channel(0).0,
            gone: AtomicBool::new(false),
        });
        held.push_back(holding.clone());
        while held.len() > MAX_HELD {
            if let Some(old) = held.pop_front() {
                old.let_go();
            }
        }
        drop(held);
        self.settle(&artifact);
        Ok(holding)
    }

    /// Stops holding `artifact` (its fetch failed): peers waiting for a piece are told no.
    pub fn forget(&self, artifact: &[u8; 32]) {
        let mut held = lock(&self.held);
        if let Some(at) = held.iter().position(|h| &h.artifact == artifact)
            && let Some(h) = held.remove(at)
        {
            h.let_go();
        }
        drop(held);
        self.settle(artifact);
    }

    /// Stops holding `holding` if it is still held (its pieces turned out wrong): unlike
    /// [`Held::forget`], a holding that replaced it is kept.
    pub fn let_go(&self, holding: &Arc<Holding>) {
        let mut held = lock(&self.held);
        if let Some(at) = held.iter().position(|h| Arc::ptr_eq(h, holding))
            && let Some(h) = held.remove(at)
        {
            h.let_go();
        }
        drop(held);
        self.settle(&holding.artifact);
    }

    /// Piece `i` of `artifact`, waiting up to `wait` for one on its way (or for an
    /// expected artifact to begin); `None` when it is neither held nor expected, or did
    /// not arrive in time.
    pub async fn piece(&self, artifact: &[u8; 32], i: usize, wait: Duration) -> Option<Served> {
        let deadline = tokio::time::Instant::now() + wait;
        let holding = self.holding(artifact, deadline).await?;
        let (start, end) = holding.index.range(i)?;
        if !holding.wait_for(i, deadline).await {
            return None;
        }
        let permit = self.serving.clone().acquire_owned();
        let permit = tokio::time::timeout_at(deadline, permit).await.ok()?.ok()?;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; (end - start) as usize];
            holding.file.read_exact_at(&mut buf, start).ok()?;
            Some(buf)
        })
        .await
        .ok()??;
        Some(Served { bytes, permit })
    }

    /// How many artifacts are held.
    pub fn len(&self) -> usize {
        lock(&self.held).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Holding {
    /// The artifact's index.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// Stores piece `i`, which the caller checked against the index.
    pub fn put(&self, i: usize, bytes: &[u8]) -> io::Result<()> {
        let Some((start, _)) = self.index.range(i) else {
            return Ok(());
        };
        if !self.gone.load(Ordering::Acquire) {
            self.file.write_all_at(bytes, start)?;
            lock(&self.have)[i] = true;
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    fn has(&self, i: usize) -> bool {
        lock(&self.have).get(i).copied().unwrap_or(false)
    }

    /// Waits until piece `i` is here (true) or `deadline` passes or the holding is let go.
    async fn wait_for(&self, i: usize, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.changed.subscribe();
        loop {
            if self.gone.load(Ordering::Acquire) {
                return false;
            }
            if self.has(i) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    fn let_go(&self) {
        self.gone.store(true, Ordering::Release);
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "held artifact not removed");
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for h in lock(&self.held).drain(..) {
            h.let_go();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::index::{CHUNK, IndexBuilder};

    fn index(data: &[u8]) -> ChunkIndex {
        let mut b = IndexBuilder::default();
        b.update(data);
        b.finish([0; 32]).unwrap()
    }

    #[tokio::test]
    async fn a_piece_is_served_once_put_and_waited_for_until_then() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("left-over"), b"x").unwrap();
        let held = Arc::new(Held::open(dir.path()).unwrap());
        assert!(
            !dir.path().join("left-over").exists(),
            "a previous run's file is gone"
        );
        let data: Vec<u8> = (0..CHUNK + 10).map(|i| (i % 13) as u8).collect();
        let art = [1u8; 32];
        let h = held.begin(art, index(&data)).unwrap();
        let quick = Duration::from_millis(20);
        assert!(held.piece(&art, 0, quick).await.is_none(), "not here yet");
        assert!(held.piece(&[9; 32], 0, quick).await.is_none(), "not held");
        let waiter = tokio::spawn({
            let held = held.clone();
            async move { held.piece(&art, 1, Duration::from_secs(30)).await }
        });
        h.put(1, &data[CHUNK as usize..]).unwrap();
        assert_eq!(
            waiter.await.unwrap().unwrap().bytes,
            &data[CHUNK as usize..]
        );
        h.put(0, &data[..CHUNK as usize]).unwrap();
        let first = held.piece(&art, 0, quick).await.unwrap();
        assert_eq!(first.bytes, &data[..CHUNK as usize]);
        let at_once = Duration::from_secs(3600);
        let past = tokio::time::timeout(Duration::from_secs(10), held.piece(&art, 2, at_once));
        assert!(past.await.unwrap().is_none(), "past the end: no at once");
        // At most MAX_SERVING pieces are out at once; the next waits for one to be sent.
        let mut out = vec![first];
        for _ in 1..MAX_SERVING {
            out.push(held.piece(&art, 0, quick).await.unwrap());
        }
        assert!(
            held.piece(&art, 0, quick).await.is_none(),
            "all permits out"
        );
        out.pop();
        assert!(held.piece(&art, 0, quick).await.is_some(), "one came back");
    }

    #[tokio::test]
    async fn an_expected_artifact_is_waited_for_until_it_begins_or_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let held = Arc::new(Held::open(dir.path()).unwrap());
        let data = b"piece".to_vec();
        let art = [2u8; 32];
        held.expect(art);
        let waiter = tokio::spawn({
            let held = held.clone();
            async move { held.piece(&art, 0, Duration::from_secs(60)).await }
        });
        while held.changed.receiver_count() == 0 {
            tokio::task::yield_now().await;
        }
        held.begin(art, index(&data))
            .unwrap()
            .put(0, &data)
            .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().bytes, data);
        let other = [3u8; 32];
        held.expect(other);
        let waiter = tokio::spawn({
            let held = held.clone();
            async move { held.piece(&other, 0, Duration::from_secs(60)).await }
        });
        while held.changed.receiver_count() == 0 {
            tokio::task::yield_now().await;
        }
        held.forget(&other);
        let answer = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert!(answer.unwrap().unwrap().is_none());
    }

    #[tokio::test]
    async fn at_most_max_held_and_a_forgotten_one_answers_no_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let held = Arc::new(Held::open(dir.path()).unwrap());
        let idx = index(b"abc");
        for n in 0..4u8 {
            held.begin([n; 32], idx.clone()).unwrap();
        }
        assert_eq!(held.len(), MAX_HELD);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), MAX_HELD);
        let waiter = tokio::spawn({
            let held = held.clone();
            async move { held.piece(&[3; 32], 0, Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        held.forget(&[3; 32]);
        let answer = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert!(answer.unwrap().unwrap().is_none());
        assert_eq!(held.len(), 1);
    }

    #[tokio::test]
    async fn another_index_for_a_held_artifact_starts_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held::open(dir.path()).unwrap();
        let first = held.begin([7; 32], index(b"abc")).unwrap();
        first.put(0, b"abc").unwrap();
        let again = held.begin([7; 32], index(b"abc")).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same index goes on with it"
        );
        let other = held.begin([7; 32], index(b"xyz")).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other.index(), &index(b"xyz"));
        assert_eq!(held.len(), 1);
        let wait = Duration::from_millis(1);
        assert!(
            held.piece(&[7; 32], 0, wait).await.is_none(),
            "nothing put under it yet"
        );
        // The first one's fetch lets go of what it held: the one that replaced it stays.
        held.let_go(&first);
        assert_eq!(held.len(), 1);
        other.put(0, b"xyz").unwrap();
        let served = held
            .piece(&[7; 32], 0, wait)
            .await
            .expect("the new one serves");
        assert_eq!(served.bytes, b"xyz");
        held.let_go(&other);
        assert!(held.is_empty());
    }
}
