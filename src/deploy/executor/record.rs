//! The executor task's record of each activation: the release it started from, whether it
//! is a rollback, the signer of its event, the phase durations measured, and the journal
//! entry written when it ends (before its outcome is reported).

use std::collections::VecDeque;
use std::time::Duration;

use super::AppTask;
use crate::deploy::activation::Outcome;
use crate::deploy::app::{AppConfig, Probe};
use crate::deploy::executor::Submit;
use crate::deploy::journal::{self, Entry, Journal, Kind};
use crate::deploy::phases::{Phase, PhaseTimes};
use crate::deploy::status::Result as Res;
use crate::release::Layout;

/// How many submits' signers are remembered: the one active, the one waiting, and a few
/// it replaced.
const SIGNERS: usize = 4;

/// The activation under way, as its journal entry will show it.
#[derive(Debug, Clone)]
struct Attempt {
    event_id: String,
    from: Option<String>,
    kind: Kind,
    phases: PhaseTimes,
}

/// What the task keeps for the journal.
#[derive(Debug, Default)]
pub(in crate::deploy::executor) struct Recorder {
    /// `None` when it could not be read at start (logged): outcomes are then not recorded.
    journal: Option<Journal>,
    attempt: Option<Attempt>,
    /// `(event id, signer)` of the latest submits.
    signers: VecDeque<(String, Option<String>)>,
}

/// Reads the app's journal (in its store's state dir); `None`, logged, when it cannot be.
pub(in crate::deploy::executor) async fn load(app: &AppConfig) -> Option<Journal> {
    let path = Layout::new(&app.root).tool_dir().join(journal::FILE);
    let r = tokio::task::spawn_blocking(move || Journal::open(&path, journal::KEEP)).await;
    match r {
        Ok(Ok((j, 0))) => Some(j),
        Ok(Ok((j, skipped))) => {
            tracing::warn!(app = %app.name, skipped, "deploy journal: lines that are no entry were skipped (torn by a crash, or not written by droot-fleet)");
            Some(j)
        }
        Ok(Err(e)) => {
            tracing::error!(app = %app.name, error = %e, "deploy journal not loaded; outcomes are not recorded until the agent restarts");
            None
        }
        Err(e) => {
            tracing::error!(app = %app.name, error = %e, "deploy journal not loaded");
            None
        }
    }
}

impl AppTask {
    pub(in crate::deploy::executor) fn with_journal(mut self, journal: Option<Journal>) -> Self {
        self.record.journal = journal;
        self
    }

    /// Remembers who signed `req`, for its entry.
    pub(super) fn note_signer(&mut self, req: &Submit) {
        let s = &mut self.record.signers;
        s.retain(|(id, _)| *id != req.event_id);
        s.push_back((req.event_id.clone(), req.signer.clone()));
        while s.len() > SIGNERS {
            s.pop_front();
        }
    }

    /// Starts the record of the activation under way, at its first effect.
    pub(super) fn begin(&mut self) {
        let Some(req) = self.machine.active() else {
            return;
        };
        if self
            .record
            .attempt
            .as_ref()
            .is_some_and(|a| a.event_id == req.event_id)
        {
            return;
        }
        let current = self.machine.current().map(str::to_owned);
        let view = self.shared().view.clone();
        let kind = Kind::of(
            &req.version,
            current.as_deref(),
            view.previous.as_deref(),
            &view.releases,
        );
        self.record.attempt = Some(Attempt {
            event_id: req.event_id.clone(),
            from: current,
            kind,
            phases: PhaseTimes::default(),
        });
    }

    /// Adds `d` to `phase` of the activation under way.
    pub(super) fn timed(&mut self, phase: Phase, d: Duration) {
        if let Some(a) = self.record.attempt.as_mut() {
            a.phases.add(phase, d);
        }
    }

    /// The phase a health check of this app stands for.
    pub(super) fn check_phase(&self) -> Phase {
        match &self.app.health {
            Some(h) if h.probe == Probe::Notify => Phase::Ready,
            _ => Phase::Health,
        }
    }

    /// Appends `outcome` to the journal; returns its phase durations.
    pub(super) async fn record(&mut self, outcome: &Outcome) -> PhaseTimes {
        let (event_id, version) = (outcome.event_id(), outcome.version());
        let attempt = match self.record.attempt.take() {
            Some(a) if a.event_id == event_id => a,
            // Ended before the machine began it (refused, or already current).
            _ => Attempt {
                event_id: event_id.to_owned(),
                from: self.machine.current().map(str::to_owned),
                kind: Kind::Deploy,
                phases: PhaseTimes::default(),
            },
        };
        let signer = self
            .record
            .signers
            .iter()
            .find(|(id, _)| id == event_id)
            .and_then(|(_, s)| s.clone());
        let entry = Entry {
            kind: attempt.kind,
            event_id: event_id.to_owned(),
            signer,
            from: attempt.from,
            to: version.to_owned(),
            outcome: Res::of(outcome),
            error: outcome.error().map(str::to_owned),
            phases_ms: attempt.phases,
            at: crate::wall::secs(),
        };
        self.append(entry).await;
        attempt.phases
    }

    async fn append(&mut self, entry: Entry) {
        let Some(mut j) = self.record.journal.take() else {
            return;
        };
        let layout = self.layout.clone();
        let done = tokio::task::spawn_blocking(move || {
            let r = match layout.tool_dir().exists() {
                true => Ok(()),
                false => layout.ensure(true).map_err(|e| e.to_string()),
            };
            let r = r.and_then(|()| j.append(entry).map_err(|e| e.to_string()));
            (j, r)
        })
        .await;
        let j = match done {
            Ok((j, Ok(()))) => j,
            Ok((j, Err(e))) => {
                tracing::warn!(app = %self.app.name, error = %e, "deploy outcome not recorded in the journal");
                j
            }
            Err(e) => {
                tracing::error!(app = %self.app.name, error = %e, "deploy journal lost to an internal error; outcomes are not recorded until the agent restarts");
                return;
            }
        };
        self.shared().journal = j.entries().cloned().collect();
        self.record.journal = Some(j);
    }
}
