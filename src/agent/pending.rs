//! User-event handlers that are owed: delivered events whose handler processes have not
//! started yet — waiting for one of the `max_concurrent_handlers` slots (first come,
//! first served), or after a failure (out of file descriptors, EAGAIN, an unexecutable
//! path, or a journal that could not be written).
//!
//! Guarantee: a handler owed for an event is started once a slot is free, and retried
//! with [`backoff`] after a failure, until its process started — across restarts too:
//! the snapshot lists what is owed ([`PendingRecord`]) and the journal records every
//! change after it ([`JournalLine`]). A start is journaled *before* the process is
//! spawned, with its slot already held, so a crash can lose a start that was under way
//! but never runs a handler twice; a failed start is journaled as owed again.
//!
//! An in-process consumer ([`super::consumers`]) is owed the other way round: it is
//! journaled as owed *before* delivery and stays owed (in flight, listed in the state
//! file) until its acknowledgement is journaled, so it is never lost.

use std::collections::BTreeMap;
use std::time::Duration;

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::config::HandlerConfig;
use super::sansio::consumer_name::consumer_name;
use super::sansio::trigger::{Trigger, matches};
use crate::gossip::{EventId, UserEvent};

/// One line of the events journal: an event as JSON (the format of older versions),
/// or `{"retry": Mark}` / `{"owed": Mark}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalLine {
    /// A new event: it is delivered, and its matching handlers are being started.
    Delivered(UserEvent),
    /// This handler of an owed event is being started again.
    Retry(Mark),
    /// This handler is owed: not started yet (no free slot), or its process could
    /// not be started.
    Owed(Mark),
}

/// The marker lines (externally tagged: serde's untagged enums cannot carry `u128` ids).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Marker {
    Retry(Mark),
    Owed(Mark),
}

impl JournalLine {
    /// The line's JSON (without the newline).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            Self::Delivered(ev) => serde_json::to_vec(ev),
            Self::Retry(m) => serde_json::to_vec(&Marker::Retry(m.clone())),
            Self::Owed(m) => serde_json::to_vec(&Marker::Owed(m.clone())),
        }
    }

    /// Parses one line.
    pub fn from_json(line: &[u8]) -> serde_json::Result<Self> {
        if let Ok(ev) = serde_json::from_slice::<UserEvent>(line) {
            return Ok(Self::Delivered(ev));
        }
        Ok(match serde_json::from_slice::<Marker>(line)? {
            Marker::Retry(m) => Self::Retry(m),
            Marker::Owed(m) => Self::Owed(m),
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
    /// Consumers handed the event, not acknowledged yet (still owed on disk).
    in_flight: Vec<HandlerConfig>,
    /// Whether the event's `Delivered` line is in the journal yet.
    journaled: bool,
    /// Whether that line is on its way to the disk (nothing else is taken meanwhile).
    journaling: bool,
    attempts: u32,
    /// Not retried before this (after a failure).
    retry_at: Option<Instant>,
    /// Arrival order: owed handlers start first come, first served.
    seq: u64,
}

/// What to start now for one event. `S` is a handler slot (a semaphore permit in the
/// agent, anything in tests).
#[derive(Debug)]
pub struct Batch<S> {
    pub event: UserEvent,
    pub handlers: Vec<HandlerConfig>,
    /// The journal lines to write before spawning.
    pub lines: Vec<JournalLine>,
    /// One concurrency slot per handler, taken before journaling.
    pub slots: Vec<S>,
}

/// Owed handlers by event.
#[derive(Debug, Default)]
pub struct PendingHandlers {
    events: BTreeMap<EventId, Pending>,
    seq: u64,
}

fn trigger(ev: &UserEvent) -> Trigger {
    Trigger::User {
        name: ev.name.clone(),
        ltime: ev.ltime,
    }
}

fn marks(id: EventId, hs: &[HandlerConfig], line: fn(Mark) -> JournalLine) -> Vec<JournalLine> {
    hs.iter()
        .map(|h| {
            line(Mark {
                id,
                command: h.command.clone(),
            })
        })
        .collect()
}

impl PendingHandlers {
    fn insert(&mut self, event: UserEvent, owed: Vec<HandlerConfig>, journaled: bool) {
        self.seq += 1;
        self.events.insert(
            event.id,
            Pending {
                event,
                owed,
                in_flight: Vec::new(),
                journaled,
                journaling: false,
                attempts: 0,
                retry_at: None,
                seq: self.seq,
            },
        );
    }

    /// Owes every handler of `configured` that takes the new event `ev`. Returns whether
    /// any does (events no handler takes are not journaled).
    pub fn owe_new(&mut self, ev: &UserEvent, configured: &[HandlerConfig]) -> bool {
        let t = trigger(ev);
        let owed: Vec<HandlerConfig> = configured
            .iter()
            .filter(|h| matches(&h.filter, &t))
            .cloned()
            .collect();
        if owed.is_empty() {
            return false;
        }
        self.insert(ev.clone(), owed, false);
        true
    }

    /// How many handlers of `id` could be taken now.
    pub fn owed_len(&self, id: EventId) -> usize {
        self.events
            .get(&id)
            .filter(|p| p.journaled || !p.journaling)
            .map_or(0, |p| p.owed.len())
    }

    /// Takes up to `max` handlers owed for `id`, with the journal lines to write first
    /// (the first batch of an event also records the rest as still owed).
    pub fn take<S>(&mut self, id: EventId, max: usize) -> Option<Batch<S>> {
        let p = self.events.get_mut(&id)?;
        if max == 0 || p.owed.is_empty() || (!p.journaled && p.journaling) {
            return None;
        }
        let handlers: Vec<HandlerConfig> = p.owed.drain(..max.min(p.owed.len())).collect();
        let (consumers, processes): (Vec<HandlerConfig>, Vec<HandlerConfig>) = handlers
            .iter()
            .cloned()
            .partition(|h| consumer_name(h).is_some());
        let lines = if p.journaled {
            // A consumer's `Owed` line is still in force until its ack.
            marks(id, &processes, JournalLine::Retry)
        } else {
            p.journaling = true;
            let mut lines = vec![JournalLine::Delivered(p.event.clone())];
            lines.extend(marks(id, &p.owed, JournalLine::Owed));
            lines.extend(marks(id, &consumers, JournalLine::Owed));
            lines
        };
        p.in_flight.extend(consumers);
        Some(Batch {
            event: p.event.clone(),
            handlers,
            lines,
            slots: Vec::new(),
        })
    }

    /// The batch's journal lines are durable: its handlers may start. Forgets the
    /// event once nothing is owed.
    pub fn journaled(&mut self, id: EventId) {
        if let Some(p) = self.events.get_mut(&id) {
            p.journaled = true;
            p.journaling = false;
            if p.owed.is_empty() && p.in_flight.is_empty() {
                self.events.remove(&id);
            }
        }
    }

    /// Consumer `handler` acknowledged event `id`: returns the line to journal (it is
    /// no longer owed), or `None` if it was not in flight.
    pub fn acked(&mut self, id: EventId, handler: &HandlerConfig) -> Option<JournalLine> {
        let p = self.events.get_mut(&id)?;
        let i = p.in_flight.iter().position(|h| h == handler)?;
        p.in_flight.remove(i);
        if p.owed.is_empty() && p.in_flight.is_empty() && !p.journaling {
            self.events.remove(&id);
        }
        Some(JournalLine::Retry(Mark {
            id,
            command: handler.command.clone(),
        }))
    }

    /// The batch could not be journaled, or `handlers` could not be started: they are
    /// owed again, not before the returned delay.
    pub fn failed(
        &mut self,
        ev: &UserEvent,
        handlers: Vec<HandlerConfig>,
        now: Instant,
    ) -> Duration {
        if !self.events.contains_key(&ev.id) {
            self.insert(ev.clone(), Vec::new(), true);
        }
        let p = self.events.get_mut(&ev.id).expect("inserted above");
        p.journaling = false;
        for h in &handlers {
            if let Some(i) = p.in_flight.iter().position(|f| f == h) {
                p.in_flight.remove(i);
            }
        }
        p.owed.splice(0..0, handlers);
        let delay = backoff(p.attempts);
        p.attempts = p.attempts.saturating_add(1);
        p.retry_at = Some(now + delay);
        delay
    }

    /// What the state file must keep: everything owed.
    pub fn records(&self) -> Vec<PendingRecord> {
        self.events
            .values()
            .filter(|p| !p.owed.is_empty() || !p.in_flight.is_empty())
            .map(|p| PendingRecord {
                event: p.event.clone(),
                owed: (p.owed.iter().chain(&p.in_flight))
                    .map(|h| h.command.clone())
                    .collect(),
            })
            .collect()
    }

    /// Events with handlers owed that may be tried at `now`, first come first.
    pub fn ready(&self, now: Instant) -> Vec<EventId> {
        let mut ready: Vec<(u64, EventId)> = self
            .events
            .iter()
            .filter(|(_, p)| !p.owed.is_empty() && p.retry_at.is_none_or(|t| t <= now))
            .map(|(id, p)| (p.seq, *id))
            .collect();
        ready.sort_unstable();
        ready.into_iter().map(|(_, id)| id).collect()
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
                    // Its handlers are starting, but for the `Owed` lines that follow
                    // (also when the state file listed them all as owed).
                    if let Some((_, cmds)) = owed.get_mut(&ev.id) {
                        cmds.clear();
                    }
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
                JournalLine::Owed(failed) => {
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
        for (event, cmds) in owed.into_values() {
            let t = trigger(&event);
            let handlers: Vec<HandlerConfig> = cmds
                .iter()
                .filter_map(|c| {
                    let h = configured
                        .iter()
                        .find(|h| h.command == *c && matches(&h.filter, &t));
                    if h.is_none() {
                        tracing::warn!(event = %event.name, command = ?c, "an owed handler is no longer configured; dropped");
                    }
                    h.cloned()
                })
                .collect();
            if !handlers.is_empty() {
                out.insert(event, handlers, true);
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
        let now = Instant::now();
        let (a, b) = (h("/a"), h("/b"));
        assert!(p.owe_new(&ev(1), &[a.clone(), b.clone()]));
        assert!(p.owe_new(&ev(9), std::slice::from_ref(&a)));
        assert_eq!(p.ready(now), vec![EventId(1), EventId(9)], "arrival order");
        // One free slot: /a starts, /b is journaled as owed.
        let batch = p.take::<()>(EventId(1), 1).unwrap();
        let owed_b = JournalLine::Owed(Mark {
            id: EventId(1),
            command: vec!["/b".into()],
        });
        assert_eq!(batch.lines, vec![JournalLine::Delivered(ev(1)), owed_b]);
        assert_eq!(batch.handlers, vec![a.clone()]);
        assert!(
            p.take::<()>(EventId(1), 1).is_none(),
            "nothing more while journaling"
        );
        // Journaling failed: everything is owed again, after a backoff.
        assert_eq!(p.failed(&ev(1), batch.handlers, now), backoff(0));
        assert_eq!(p.records()[0].owed.len(), 2);
        assert_eq!(p.ready(now), vec![EventId(9)]);
        let later = now + backoff(0);
        assert_eq!(p.ready(later), vec![EventId(1), EventId(9)]);
        let batch = p.take::<()>(EventId(1), 5).unwrap();
        assert!(matches!(batch.lines[..], [JournalLine::Delivered(_)]));
        p.journaled(EventId(1));
        assert_eq!(p.records().len(), 1, "only event 9 is owed");
        // /b could not be spawned: owed again, retried with a Retry line.
        assert_eq!(p.failed(&ev(1), vec![b.clone()], later), backoff(0));
        let batch = p.take::<()>(EventId(1), 5).unwrap();
        assert_eq!(
            batch.lines,
            vec![JournalLine::Retry(Mark {
                id: EventId(1),
                command: vec!["/b".into()]
            })]
        );
        p.journaled(EventId(1));
        assert_eq!(p.ready(later + backoff(9)), vec![EventId(9)]);
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
            JournalLine::Owed(mark(2, "/b")),
            JournalLine::Retry(mark(1, "/a")),
        ];
        // Lines round-trip through JSON, old plain-event lines included.
        for l in &journal {
            assert_eq!(&JournalLine::from_json(&l.to_json().unwrap()).unwrap(), l);
        }
        let (p, delivered) =
            PendingHandlers::restore(records.clone(), journal, &[a.clone(), b.clone()]);
        assert_eq!(delivered, vec![ev(2)]);
        let recs = p.records();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].event, ev(2));
        assert_eq!(recs[0].owed, vec![vec!["/b".to_owned()]]);

        // Owed in the state file (no free slot then), journaled later with one slot:
        // only what the journal says is still owed is owed.
        let records = vec![PendingRecord {
            event: ev(3),
            owed: vec![vec!["/a".into()], vec!["/b".into()]],
        }];
        let journal = vec![
            JournalLine::Delivered(ev(3)),
            JournalLine::Owed(mark(3, "/b")),
        ];
        let (p, _) = PendingHandlers::restore(records, journal, &[a, b]);
        assert_eq!(
            p.records()[0].owed,
            vec![vec!["/b".to_owned()]],
            "/a would run twice"
        );
    }

    /// Issue 10, item 10: a consumer is owed from before delivery until its ack, in
    /// memory, in the state file and in the journal.
    #[test]
    fn consumer_owed_until_acknowledged() {
        let mut cs = crate::agent::consumers::Consumers::default();
        let _rx = cs.register("ctl", "deploy");
        let c = cs.handler_configs().remove(0);
        let a = h("/a");
        let configured = [a.clone(), c.clone()];
        let mut p = PendingHandlers::default();
        assert!(p.owe_new(&ev(1), &configured));
        let batch = p.take::<()>(EventId(1), 2).unwrap();
        let owed_c = JournalLine::Owed(Mark {
            id: EventId(1),
            command: c.command.clone(),
        });
        assert_eq!(
            batch.lines,
            vec![JournalLine::Delivered(ev(1)), owed_c.clone()],
            "journaled as owed before delivery"
        );
        p.journaled(EventId(1));
        // Delivered, not acknowledged: the state file still owes it.
        assert_eq!(p.records()[0].owed, vec![c.command.clone()]);
        // A crash now: the restart owes it again (from the journal or the state file).
        let (again, _) = PendingHandlers::restore(vec![], batch.lines.clone(), &configured);
        assert_eq!(again.records()[0].owed, vec![c.command.clone()]);
        let (again, _) = PendingHandlers::restore(p.records(), vec![], &configured);
        assert_eq!(again.records()[0].owed, vec![c.command.clone()]);
        // Dropped without an ack: owed again, nothing new journaled on the retry.
        p.failed(&ev(1), vec![c.clone()], Instant::now());
        let retry = p.take::<()>(EventId(1), 1).unwrap();
        assert!(retry.lines.is_empty(), "{:?}", retry.lines);
        p.journaled(EventId(1));
        // Acknowledged: the line that ends the debt, then forgotten.
        let ack = p.acked(EventId(1), &c).unwrap();
        assert!(p.records().is_empty());
        assert!(p.acked(EventId(1), &c).is_none());
        let mut journal = batch.lines;
        journal.push(ack);
        let (after, delivered) = PendingHandlers::restore(vec![], journal, &configured);
        assert!(after.records().is_empty(), "acknowledged: never again");
        assert_eq!(delivered, vec![ev(1)]);
    }
}
