//! API commands and queries, on the agent task (see [`super::task`]).
//!
//! Queries, origin side: build the query, start a [`QueryTracker`] over the alive
//! members (with the tags learned via push/pull), schedule its deadline, then
//! `add_broadcast` — in that order, so this node's own answer (delivered through the
//! handler during the flush) lands in the tracker. The reply goes out as soon as every
//! expected member answered, or at the deadline with the missing ones listed.
//!
//! Answering side: internal key queries, then Rust-registered handlers, then the
//! first configured `query:NAME` command. Answers go to the origin over UDP when the
//! sealed answer fits a datagram, otherwise over a sealed TCP stream.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::config::EventFilter;
use super::handlers::{self, Trigger};
use super::keys::{self, KEYS_QUERY, KeyCommand};
use super::members;
use super::net::{self, Counters};
use super::scheduler::Scheduled;
use super::task::{AgentTask, Input};
use super::{AgentError, Command, KeyOp};
use crate::api;
use crate::gossip::message::{self, Direct, EncodeError, StreamMessage};
use crate::gossip::query::Recorded;
use crate::gossip::{Key, NodeId, Query, QueryId, QueryResponse, QueryTracker};

/// Who waits for a query's result.
#[derive(Debug)]
pub enum Waiter {
    User(oneshot::Sender<Result<api::QueryResponse, AgentError>>),
    Keys(oneshot::Sender<Result<api::KeysResponse, AgentError>>),
}

/// A query this node started.
#[derive(Debug)]
pub struct PendingQuery {
    tracker: QueryTracker,
    waiter: Waiter,
}

/// How long cluster-wide key operations wait for answers.
const KEYS_TIMEOUT: Duration = Duration::from_secs(5);

impl AgentTask {
    pub(super) async fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Members(reply) => {
                let core = self.core.lock();
                let list = members::list(
                    core.identity(),
                    core.tags(),
                    self.foca.iter_membership_state(),
                    core.tag_book(),
                    &self.left,
                );
                drop(core);
                let _ = reply.send(list);
            }
            Command::Info(reply) => {
                let core = self.core.lock();
                let mut counters = self.counters.to_map();
                let s = core.stats();
                for (k, v) in [
                    ("events_delivered", s.events_delivered),
                    ("events_duplicate", s.events_duplicate),
                    ("events_too_old", s.events_too_old),
                    ("ltime_too_far_ahead", s.too_far_ahead),
                    ("queries_seen", s.queries_seen),
                    ("queries_matched", s.queries_matched),
                    ("messages_malformed", s.malformed),
                    ("messages_unknown_type", s.unknown_types),
                    ("superseded", s.superseded),
                    ("superseding_slots_full", s.slots_full),
                ] {
                    counters.insert(k.to_owned(), v);
                }
                let info = api::Info {
                    name: core.identity().name.clone(),
                    addr: core.identity().addr.to_string(),
                    tags: core.tags().clone(),
                    bump: core.identity().bump,
                    members_alive: self.foca.num_members() + 1,
                    counters,
                };
                drop(core);
                let _ = reply.send(info);
            }
            Command::Event {
                name,
                payload,
                reply,
            } => {
                let created = self.core.lock().create_event(&mut self.rng, &name, payload);
                let result = match created {
                    Ok((ev, bytes)) => {
                        if let Err(e) = self.foca.add_broadcast(&bytes) {
                            tracing::warn!(cause = %e, "add_broadcast refused a local event");
                        }
                        self.flush().await;
                        Ok(api::EventResponse {
                            id: format!("{:032x}", ev.id.0),
                            ltime: ev.ltime,
                        })
                    }
                    Err(e) => Err(AgentError::Create(e)),
                };
                let _ = reply.send(result);
            }
            Command::Query {
                name,
                payload,
                filters,
                timeout,
                reply,
            } => {
                if name.starts_with('_') {
                    let _ = reply.send(Err(AgentError::BadRequest(format!(
                        "query names starting with `_` are reserved for the agent: {name:?}"
                    ))));
                    return;
                }
                self.start_query(&name, payload, filters, timeout, Waiter::User(reply))
                    .await;
            }
            Command::Keys { op, key, reply } => {
                if op != KeyOp::List {
                    match key.as_deref().map(Key::from_base64) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            let _ = reply.send(Err(AgentError::BadRequest(e.to_string())));
                            return;
                        }
                        None => {
                            let _ =
                                reply.send(Err(AgentError::BadRequest("a key is required".into())));
                            return;
                        }
                    }
                }
                let cmd = KeyCommand {
                    op: op.as_str().to_owned(),
                    key,
                };
                let payload = serde_json::to_vec(&cmd).unwrap_or_default();
                self.start_query(
                    KEYS_QUERY,
                    payload,
                    Vec::new(),
                    KEYS_TIMEOUT,
                    Waiter::Keys(reply),
                )
                .await;
            }
            Command::Leave(reply) => {
                self.leave().await;
                let _ = reply.send(());
            }
            Command::ForceLeave { node, reply } => {
                let _ = reply.send(self.force_leave(&node).await);
            }
        }
    }

    async fn force_leave(&mut self, node: &str) -> Result<(), AgentError> {
        let member = self
            .foca
            .iter_membership_state()
            .find(|m| m.id().name == node)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("no member named {node:?}")))?;
        if member.state() != foca::State::Down {
            return Err(AgentError::Conflict(format!(
                "{node} is {}; force-leave only applies to failed members",
                members::status(&member, &self.left)
            )));
        }
        self.left.record(member.id());
        tracing::info!(node = %node, "force-leave");
        if let Ok(plain) = message::encode_direct(&Direct::Leave(member.id().clone())) {
            let peers: Vec<_> = self.foca.iter_members().map(|m| m.id().addr).collect();
            for p in peers {
                self.send_datagram(p, &plain).await;
            }
        }
        Ok(())
    }

    async fn start_query(
        &mut self,
        name: &str,
        payload: Vec<u8>,
        filters: Vec<crate::gossip::Filter>,
        timeout: Duration,
        waiter: Waiter,
    ) {
        let created = self
            .core
            .lock()
            .create_query(&mut self.rng, name, payload, filters, timeout);
        let (query, bytes) = match created {
            Ok(x) => x,
            Err(e) => return fail(waiter, AgentError::Create(e)),
        };
        // Members whose tags are not known yet are `None`: the query waits for them.
        let alive: Vec<(NodeId, Option<crate::gossip::Tags>)> = {
            let core = self.core.lock();
            let book = core.tag_book();
            self.foca
                .iter_members()
                .map(|m| (m.id().clone(), book.tags_of(&m.id().name).cloned()))
                .chain(std::iter::once((
                    core.identity().clone(),
                    Some(core.tags().clone()),
                )))
                .collect()
        };
        let tracker = match QueryTracker::new(&query, Instant::now().into_std(), alive) {
            Ok(t) => t,
            Err(e) => return fail(waiter, AgentError::BadRequest(e.to_string())),
        };
        self.sched
            .submit(Instant::now(), timeout, Scheduled::QueryDeadline(query.id));
        self.queries
            .insert(query.id, PendingQuery { tracker, waiter });
        if let Err(e) = self.foca.add_broadcast(&bytes) {
            tracing::warn!(cause = %e, "add_broadcast refused a local query");
        }
        self.flush().await;
        self.check_complete(query.id);
    }

    pub(super) fn record_response(&mut self, r: QueryResponse) {
        let id = r.id;
        let Some(p) = self.queries.get_mut(&id) else {
            return;
        };
        let from = r.from.name.clone();
        let outcome = p.tracker.record(r, Instant::now().into_std());
        if outcome != Recorded::Accepted {
            tracing::debug!(node = %from, outcome = ?outcome, "query answer ignored");
        }
        self.check_complete(id);
    }

    fn check_complete(&mut self, id: QueryId) {
        if self
            .queries
            .get(&id)
            .is_some_and(|p| p.tracker.is_complete())
        {
            self.finish_query(id);
        }
    }

    pub(super) fn finish_query(&mut self, id: QueryId) {
        let Some(p) = self.queries.remove(&id) else {
            return;
        };
        self.sched.cancel_query(id);
        let result = p.tracker.finish();
        let missing: Vec<String> = result.missing.into_iter().map(|n| n.name).collect();
        match p.waiter {
            Waiter::User(reply) => {
                let answers = result
                    .answers
                    .into_iter()
                    .map(|(n, payload)| api::QueryAnswer {
                        node: n.name,
                        payload: String::from_utf8_lossy(&payload).into_owned(),
                    })
                    .collect();
                let _ = reply.send(Ok(api::QueryResponse { answers, missing }));
            }
            Waiter::Keys(reply) => {
                let mut out = api::KeysResponse {
                    missing,
                    ..Default::default()
                };
                for (n, payload) in result.answers {
                    let r =
                        serde_json::from_slice(&payload).unwrap_or_else(|e| api::NodeKeyResult {
                            node: n.name.clone(),
                            ok: false,
                            error: Some(format!("unreadable answer: {e}")),
                            keys: Vec::new(),
                        });
                    for k in &r.keys {
                        *out.keys.entry(k.clone()).or_default() += 1;
                    }
                    if let Some(p) = r.keys.first() {
                        *out.primary.entry(p.clone()).or_default() += 1;
                    }
                    out.results.push(r);
                }
                out.results.sort_by(|a, b| a.node.cmp(&b.node));
                let _ = reply.send(Ok(out));
            }
        }
    }

    /// Answers a query this node matches.
    pub(super) async fn answer_query(&mut self, q: Query) {
        let me = self.settings.node.clone();
        if q.name == KEYS_QUERY {
            // Only this task writes the keyring: change a copy, hold the lock to swap.
            let mut ring = self
                .keyring
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let (result, changed) = keys::apply(&me, &mut ring, &q.payload);
            if changed {
                if let Some(path) = &self.settings.keyring {
                    self.disk.keyring(path.clone(), ring.clone());
                }
                *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = ring;
                tracing::info!(origin = %q.origin.name, "keyring changed by a cluster key operation");
            }
            let payload = serde_json::to_vec(&result).unwrap_or_default();
            return self.send_answer(q.id, q.origin, payload).await;
        }
        if let Some(f) = self.registry.get(&q.name) {
            let payload = f(&q.payload);
            return self.send_answer(q.id, q.origin, payload).await;
        }
        let trigger = Trigger::Query {
            name: q.name.clone(),
            ltime: q.ltime,
        };
        let Some(h) = self
            .settings
            .handlers
            .iter()
            .find(|h| {
                matches!(h.filter, EventFilter::Query(_)) && handlers::matches(&h.filter, &trigger)
            })
            .cloned()
        else {
            return;
        };
        let env = handlers::env(&trigger, &me, &self.settings.rpc, self.core.lock().tags());
        let (tx, limiter) = (self.tx.clone(), self.limiter.clone());
        tokio::spawn(async move {
            match handlers::run(&limiter, &h, &env, q.payload, true).await {
                Ok(payload) => {
                    let _ = tx
                        .send(Input::HandlerAnswer {
                            id: q.id,
                            origin: q.origin,
                            payload,
                        })
                        .await;
                }
                Err(e) => tracing::warn!(query = %q.name, cause = %e, "query handler failed"),
            }
        });
    }

    pub(super) async fn send_answer(&mut self, id: QueryId, origin: NodeId, payload: Vec<u8>) {
        let from = self.core.lock().identity().clone();
        let resp = QueryResponse { id, from, payload };
        if origin.name == resp.from.name {
            return self.record_response(resp);
        }
        match message::encode_direct(&Direct::QueryResponse(resp.clone())) {
            Ok(plain) => self.send_datagram(origin.addr, &plain).await,
            Err(EncodeError::TooLarge { .. }) => {
                let keyring = self.keyring.clone();
                let counters = self.counters.clone();
                tokio::spawn(async move {
                    let msg = StreamMessage::QueryResponse(resp);
                    if let Err(e) = net::send_stream(origin.addr, msg, keyring).await {
                        Counters::add(&counters.streams_failed);
                        tracing::warn!(origin = %origin.name, cause = %e, "query answer over TCP failed");
                    }
                });
            }
            Err(e) => tracing::warn!(cause = %e, "query answer not sent"),
        }
    }
}

fn fail(waiter: Waiter, err: AgentError) {
    match waiter {
        Waiter::User(r) => {
            let _ = r.send(Err(err));
        }
        Waiter::Keys(r) => {
            let _ = r.send(Err(err));
        }
    }
}
