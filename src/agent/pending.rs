//! User-event handlers that are owed: journaled events whose handler processes could not
//! be started yet (out of file descriptors, EAGAIN, an unexecutable path, or a journal
//! that could not be written).
//!
//! Guarantee: a handler owed for an event is retried with [`backoff`] until its process
//! started, across restarts too: the snapshot lists what is owed ([`PendingRecord`]) and
//! the journal records every change after it ([`JournalLine`]). A start is journaled
//! *before* the process is spawned, so a crash can lose a start that was under way but
//! never runs a handler twice; a failed start is journaled as owed again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::HandlerConfig;
use super::handlers::{self, Trigger};
use crate::gossip::{EventId, UserEvent};

/// One line of the events journal: an event as JSON (the format of older versions),
/// or `{"retry": Mark}` / `{"failed": Mark}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalLine {
    /// A new event: it is delivered, and its matching handlers are being started.
    Delivered(UserEvent),
    /// This handler of an owed event is being started again.
    Retry(Mark),
    /// A handler's process could not be started: it is owed again.
    Failed(Mark),
}

/// The marker lines (externally tagged: serde's untagged enums cannot carry `u128` ids).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Marker {
    Retry(Mark),
    Failed(Mark),
}

impl JournalLine {
    /// The line's JSON (without the newline).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            Self::Delivered(ev) => serde_json::to_vec(ev),
            Self::Retry(m) => serde_json::to_vec(&Marker::Retry(m.clone())),
            Self::Failed(m) => serde_json::to_vec(&Marker::Failed(m.clone())),
        }
    }

    /// Parses one line.
    pub fn from_json(line: &[u8]) -> serde_json::Result<Self> {
        if let Ok(ev) = serde_json::from_slice::<UserEvent>(line) {
            return Ok(Self::Delivered(ev));
        }
        Ok(match serde_json::from_slice::<Marker>(line)? {
            Marker::Retry(m) => Self::Retry(m),
            Marker::Failed(m) => Self::Failed(m),
        })
    }
}

/// One handler of one event, named by the handler's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub id: EventId,
    pub command: Vec<String>,
}

/// An event with handlers still owed, as saved in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    pub event: UserEvent,
    /// Commands of the handlers still owed.
    pub owed: Vec<Vec<String>>,
}

/// The delay before attempt `attempts + 1`: 200 ms doubling, at most 30 s.
pub fn backoff(attempts: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << attempts.min(8));
    Duration::from_millis(ms).min(Duration::from_secs(30))
}

#[derive(Debug)]
struct Pending {
    event: UserEvent,
    owed: Vec<HandlerConfig>,
    /// Whether the event's `Delivered` line is in the journal yet.
    journaled: bool,
    attempts: u32,
}

/// What to start now for one event.
#[derive(Debug)]
pub struct Batch {
    pub event: UserEvent,
    pub handlers: Vec<HandlerConfig>,
    /// The journal line to write before spawning.
    pub lines: Vec<JournalLine>,
}

/// Owed handlers by event.
#[derive(Debug, Default)]
pub struct PendingHandlers {
    events: BTreeMap<EventId, Pending>,
}

fn trigger(ev: &UserEvent) -> Trigger {
    Trigger::User {
        name: ev.name.clone(),
        ltime: ev.ltime,
    }
}

impl PendingHandlers {
    /// Owes every handler of `configured` that takes the new event `ev`. Returns whether
    /// any does (events no handler takes are not journaled).
    pub fn owe_new(&mut self, ev: &UserEvent, configured: &[HandlerConfig]) -> bool {
        let t = trigger(ev);
        let owed: Vec<HandlerConfig> = configured
            .iter()
            .filter(|h| handlers::matches(&h.filter, &t))
            .cloned()
            .collect();
        if owed.is_empty() {
            return false;
        }
        self.events.insert(
            ev.id,
            Pending {
                event: ev.clone(),
                owed,
                journaled: false,
                attempts: 0,
            },
        );
        true
    }

    /// Takes everything owed for `id`, with the journal lines to write first.
    pub fn take(&mut self, id: EventId) -> Option<Batch> {
        let p = self.events.get_mut(&id)?;
        let handlers = std::mem::take(&mut p.owed);
        let lines = if p.journaled {
            handlers
                .iter()
                .map(|h| {
                    JournalLine::Retry(Mark {
                        id,
                        command: h.command.clone(),
                    })
                })
                .collect()
        } else {
            vec![JournalLine::Delivered(p.event.clone())]
        };
        Some(Batch {
            event: p.event.clone(),
            handlers,
            lines,
        })
    }

    /// The batch's journal lines are durable: its handlers may start. Forgets the
    /// event unless something was owed again meanwhile.
    pub fn journaled(&mut self, id: EventId) {
        if let Some(p) = self.events.get_mut(&id) {
            p.journaled = true;
            if p.owed.is_empty() {
                self.events.remove(&id);
            }
        }
    }

    /// The batch could not be journaled, or `handlers` could not be started: they are
    /// owed again. Returns the delay before the next attempt.
    pub fn failed(&mut self, ev: &UserEvent, handlers: Vec<HandlerConfig>) -> Duration {
        let p = self.events.entry(ev.id).or_insert_with(|| Pending {
            event: ev.clone(),
            owed: Vec::new(),
            journaled: true,
            attempts: 0,
        });
        p.owed.extend(handlers);
        let delay = backoff(p.attempts);
        p.attempts = p.attempts.saturating_add(1);
        delay
    }

    /// What the state file must keep: everything owed, and what is being journaled.
    pub fn records(&self) -> Vec<PendingRecord> {
        self.events
            .values()
            .filter(|p| !p.owed.is_empty())
            .map(|p| PendingRecord {
                event: p.event.clone(),
                owed: p.owed.iter().map(|h| h.command.clone()).collect(),
            })
            .collect()
    }

    /// Ids of the events with handlers owed.
    pub fn ids(&self) -> Vec<EventId> {
        self.events
            .iter()
            .filter(|(_, p)| !p.owed.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Rebuilds what is owed from the state file's records and the journal written
    /// after it, against the handlers configured now (a handler no longer configured
    /// is dropped with a warning). Also returns the events the journal delivered.
    pub fn restore(
        records: Vec<PendingRecord>,
        journal: Vec<JournalLine>,
        configured: &[HandlerConfig],
    ) -> (Self, Vec<UserEvent>) {
        let mut owed: BTreeMap<EventId, (UserEvent, Vec<Vec<String>>)> = records
            .into_iter()
            .map(|r| (r.event.id, (r.event, r.owed)))
            .collect();
        let mut known: BTreeMap<EventId, UserEvent> = BTreeMap::new();
        let mut delivered = Vec::new();
        for line in journal {
            match line {
                JournalLine::Delivered(ev) => {
                    known.insert(ev.id, ev.clone());
                    delivered.push(ev);
                }
                JournalLine::Retry(retry) => {
                    if let Some((_, cmds)) = owed.get_mut(&retry.id)
                        && let Some(i) = cmds.iter().position(|c| *c == retry.command)
                    {
                        cmds.remove(i);
                    }
                }
                JournalLine::Failed(failed) => {
                    let ev = owed
                        .get(&failed.id)
                        .map(|(e, _)| e.clone())
                        .or_else(|| known.get(&failed.id).cloned());
                    if let Some(ev) = ev {
                        owed.entry(failed.id)
                            .or_insert_with(|| (ev, Vec::new()))
                            .1
                            .push(failed.command);
                    }
                }
            }
        }
        let mut out = Self::default();
        for (id, (event, cmds)) in owed {
            let t = trigger(&event);
            let handlers: Vec<HandlerConfig> = cmds
                .iter()
                .filter_map(|c| {
                    let h = configured
                        .iter()
                        .find(|h| h.command == *c && handlers::matches(&h.filter, &t));
                    if h.is_none() {
                        tracing::warn!(event = %event.name, command = ?c, "an owed handler is no longer configured; dropped");
                    }
                    h.cloned()
                })
                .collect();
            if !handlers.is_empty() {
                out.events.insert(
                    id,
                    Pending {
                        event,
                        owed: handlers,
                        journaled: true,
                        attempts: 0,
                    },
                );
            }
        }
        (out, delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::EventFilter;

    fn h(cmd: &str) -> HandlerConfig {
        HandlerConfig {
            filter: EventFilter::User(None),
            command: vec![cmd.to_owned()],
            timeout: Duration::from_secs(1),
        }
    }

    fn ev(id: u128) -> UserEvent {
        UserEvent::new(EventId(id), "n1", 3, "deploy", b"v1".to_vec()).unwrap()
    }

    #[test]
    fn owed_until_started_then_forgotten() {
        let mut p = PendingHandlers::default();
        let (a, b) = (h("/a"), h("/b"));
        assert!(p.owe_new(&ev(1), &[a.clone(), b.clone()]));
        let batch = p.take(EventId(1)).unwrap();
        assert_eq!(batch.lines, vec![JournalLine::Delivered(ev(1))]);
        assert_eq!(batch.handlers.len(), 2);
        // Journaling failed: everything is owed again.
        assert_eq!(p.failed(&ev(1), batch.handlers), backoff(0));
        assert_eq!(p.records()[0].owed.len(), 2);
        let batch = p.take(EventId(1)).unwrap();
        assert!(matches!(batch.lines[0], JournalLine::Delivered(_)));
        p.journaled(EventId(1));
        assert!(p.records().is_empty());
        // /b could not be spawned: owed again, retried with a Retry line.
        assert_eq!(p.failed(&ev(1), vec![b.clone()]), backoff(0));
        let batch = p.take(EventId(1)).unwrap();
        assert_eq!(
            batch.lines,
            vec![JournalLine::Retry(Mark {
                id: EventId(1),
                command: vec!["/b".into()]
            })]
        );
        p.journaled(EventId(1));
        assert!(p.ids().is_empty());
        assert!(backoff(20) <= Duration::from_secs(30));
    }

    #[test]
    fn restore_replays_the_journal_after_the_snapshot() {
        let (a, b) = (h("/a"), h("/b"));
        let mark = |id, c: &str| Mark {
            id: EventId(id),
            command: vec![c.to_owned()],
        };
        let records = vec![PendingRecord {
            event: ev(1),
            owed: vec![vec!["/a".into()], vec!["/gone".into()]],
        }];
        let journal = vec![
            JournalLine::Delivered(ev(2)),
            JournalLine::Failed(mark(2, "/b")),
            JournalLine::Retry(mark(1, "/a")),
        ];
        // Lines round-trip through JSON, old plain-event lines included.
        for l in &journal {
            assert_eq!(&JournalLine::from_json(&l.to_json().unwrap()).unwrap(), l);
        }
        let (p, delivered) = PendingHandlers::restore(records, journal, &[a, b]);
        assert_eq!(delivered, vec![ev(2)]);
        let recs = p.records();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].event, ev(2));
        assert_eq!(recs[0].owed, vec![vec!["/b".to_owned()]]);
    }
}
