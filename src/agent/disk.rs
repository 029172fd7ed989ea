//! The agent's disk writer: one thread that does every file write of the agent task
//! (journal appends, state file, keyring file), so a slow disk never stalls the task
//! that owns foca (its probes would time out).
//!
//! Guarantees: jobs run one at a time in the order they were sent, so a state file
//! written after a journal append covers it and removes it, and an append sent after
//! the state was taken lands in the next journal. A journal append answers the task
//! with [`Input::Journaled`]: handlers start only after their line is durable.
//! [`DiskWriter::flush`] waits until everything sent before it is written.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::input::{Input, Slot};
use super::pending::{Batch, JournalLine};
use super::sansio::persisted::PersistedState;
use super::snapshot;
use crate::gossip::Keyring;

/// One write.
enum Job {
    /// Append lines; with batches, answer [`Input::Journaled`].
    Journal {
        lines: Vec<JournalLine>,
        batches: Vec<Batch<Slot>>,
    },
    Snapshot(Box<PersistedState>),
    Keyring(PathBuf, Keyring),
    Flush(oneshot::Sender<()>),
}

/// Handle of the writer thread.
#[derive(Debug, Clone)]
pub struct DiskWriter {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Journal { .. } => "Journal",
            Self::Snapshot(_) => "Snapshot",
            Self::Keyring(..) => "Keyring",
            Self::Flush(_) => "Flush",
        })
    }
}

impl DiskWriter {
    /// Starts the writer thread for `data_dir`; journal results go to `tx`.
    pub fn start(data_dir: PathBuf, tx: mpsc::Sender<Input>) -> std::io::Result<Self> {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("droot-fleet-disk".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    run(&data_dir, job, &tx);
                }
            })?;
        Ok(Self { jobs })
    }

    /// Appends `lines`; for `batches` the task gets [`Input::Journaled`] afterwards.
    pub fn journal(&self, lines: Vec<JournalLine>, batches: Vec<Batch<Slot>>) {
        let _ = self.jobs.send(Job::Journal { lines, batches });
    }

    /// Replaces the state file (and removes the journal it covers).
    pub fn snapshot(&self, state: PersistedState) {
        let _ = self.jobs.send(Job::Snapshot(Box::new(state)));
    }

    /// Rewrites the keyring file.
    pub fn keyring(&self, path: PathBuf, ring: Keyring) {
        let _ = self.jobs.send(Job::Keyring(path, ring));
    }

    /// Waits until every job sent before is done.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn run(data_dir: &std::path::Path, job: Job, tx: &mpsc::Sender<Input>) {
    match job {
        Job::Journal { lines, batches } => {
            let result = snapshot::journal_append(data_dir, &lines).map_err(|e| e.to_string());
            if batches.is_empty() {
                if let Err(e) = result {
                    // A failed start journaled as owed; still retried while the agent runs.
                    tracing::debug!(cause = %e, "journaling a failed handler start");
                }
            } else {
                let _ = tx.blocking_send(Input::Journaled { batches, result });
            }
        }
        Job::Snapshot(state) => {
            if let Err(e) = snapshot::save(data_dir, &state) {
                tracing::error!(cause = %e, "saving agent state");
            }
        }
        Job::Keyring(path, ring) => {
            if let Err(e) = super::keys::save(&path, &ring) {
                tracing::error!(cause = %e, "keyring changed in memory but not saved");
            }
        }
        Job::Flush(done) => {
            let _ = done.send(());
        }
    }
}
