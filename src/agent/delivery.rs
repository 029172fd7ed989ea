//! What a node does with what the protocol delivers: member notifications (monitor
//! lines, member handlers, learning a newcomer's tags) and user events.
//!
//! A new user event is first published and pushed on to a few random peers ("eager
//! push": delivery costs hops x RTT, not hops x gossip interval), then journaled if any
//! handler takes it, and only then are handlers started — so forwarding never waits for
//! the disk, and a crash can never run a handler twice.

use std::net::SocketAddr;

use foca::OwnedNotification;
use rand::seq::IteratorRandom;

use super::handlers::{self, Trigger};
use super::monitor;
use super::net::Counters;
use super::snapshot;
use super::sync::Dial;
use super::task::AgentTask;
use crate::gossip::message::{self, Direct};
use crate::gossip::{Incoming, NodeId, UserEvent, eager_fanout};

fn user_trigger(ev: &UserEvent) -> Trigger {
    Trigger::User {
        name: ev.name.clone(),
        ltime: ev.ltime,
    }
}

impl AgentTask {
    /// Journals the new events some handler will take, before any handler starts.
    pub(super) fn journal_handled(&mut self, incoming: &[Incoming]) {
        // Journaled before any handler runs: never run twice after a crash. Events no handler
        // takes have no effect to repeat; the periodic snapshot records them.
        let handled: Vec<&UserEvent> = incoming
            .iter()
            .filter_map(|i| match i {
                Incoming::Event(ev) => Some(ev),
                Incoming::Query(_) => None,
            })
            .filter(|ev| {
                let trigger = user_trigger(ev);
                self.settings
                    .handlers
                    .iter()
                    .any(|h| handlers::matches(&h.filter, &trigger))
            })
            .collect();
        if !handled.is_empty()
            && let Err(e) = snapshot::journal_append(&self.settings.data_dir, &handled)
        {
            // Without the record a crash could run these handlers twice: take a snapshot.
            tracing::warn!(cause = %e, "journal append failed; writing a full snapshot");
            self.save_snapshot();
        }
    }

    pub(super) fn on_notification(&mut self, n: OwnedNotification<NodeId>) {
        let tags = self.core.lock().tags().clone();
        let member = |kind: &str, id: &NodeId| {
            monitor::publish(
                &self.monitor,
                serde_json::json!({"type": "member", "event": kind, "node": id.name, "addr": id.addr.to_string()}),
            );
            handlers::spawn_matching(
                &self.limiter,
                &self.settings.handlers,
                &Trigger::Member {
                    kind: kind.to_owned(),
                    node: id.name.clone(),
                },
                &self.settings.node,
                &self.settings.rpc,
                &tags,
                id.name.as_bytes(),
            );
        };
        match n {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(node = %id.name, addr = %id.addr, "member up");
                member("member-join", &id);
                if self.core.lock().tag_book().tags_of(&id.name).is_none() {
                    // Learn its tags (and anything else it knows) right away.
                    self.spawn_push_pull(id.addr.to_string(), Dial::Sync);
                }
            }
            OwnedNotification::MemberDown(id) => {
                let kind = if self.left.has_left(&id) {
                    "member-leave"
                } else {
                    "member-failed"
                };
                tracing::info!(node = %id.name, event = kind, "member down");
                member(kind, &id);
            }
            OwnedNotification::Rename(old, new) => {
                tracing::debug!(node = %new.name, old_bump = old.bump, new_bump = new.bump, "member restarted");
            }
            OwnedNotification::Active => tracing::info!("joined the cluster"),
            OwnedNotification::Idle => {
                if !self.stop {
                    tracing::warn!("no live members left; re-announcing to the join addresses");
                    self.start_join_round();
                }
            }
            OwnedNotification::Rejoin(id) => {
                tracing::warn!(
                    bump = id.bump,
                    "the cluster declared us down; rejoined with a new identity"
                );
                self.core.lock().set_identity(id);
            }
            OwnedNotification::Defunct => {
                if !self.stop {
                    tracing::warn!("this node was declared down");
                }
            }
        }
    }

    /// Logs and publishes a new event, and pushes it straight to a few random peers.
    pub(super) async fn announce_event(&mut self, ev: &UserEvent) {
        tracing::info!(event = %ev.name, ltime = ev.ltime, origin = %ev.origin, "user event");
        monitor::publish(
            &self.monitor,
            serde_json::json!({
                "type": "event", "event": "user", "name": ev.name, "ltime": ev.ltime,
                "origin": ev.origin, "payload": String::from_utf8_lossy(&ev.payload),
            }),
        );
        if !self.settings.eager_push {
            return;
        }
        let fanout = self
            .settings
            .eager_push_fanout
            .unwrap_or_else(|| eager_fanout(self.foca.num_members() + 1));
        let targets: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .filter(|m| m.id().name != ev.origin)
            .map(|m| m.id().addr)
            .sample(&mut self.rng, fanout);
        if let Ok(plain) = message::encode_direct(&Direct::Event(ev.clone())) {
            for dst in targets {
                Counters::add(&self.counters.events_pushed);
                self.send_datagram(dst, &plain).await;
            }
        }
    }

    /// Starts the handlers configured for a delivered event.
    pub(super) fn run_event_handlers(&mut self, ev: &UserEvent) {
        let tags = self.core.lock().tags().clone();
        handlers::spawn_matching(
            &self.limiter,
            &self.settings.handlers,
            &user_trigger(ev),
            &self.settings.node,
            &self.settings.rpc,
            &tags,
            &ev.payload,
        );
    }
}
