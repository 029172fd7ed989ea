//! Queries, on both sides.
//!
//! Origin side: build the query, start it in the [`QueryBook`](crate::agent::sansio::QueryBook)
//! over the alive members (with the tags known for them), arm its deadline, then
//! `add_broadcast` — in that order, so this node's own answer (delivered through the
//! handler during the drain) lands in it. The waiter gets [`Effect::QueryDone`] as soon
//! as every member that may match answered, or at the deadline with the missing ones
//! listed. Key requests are checked and their payload built by
//! [`crate::agent::sansio::keys`].
//!
//! Answering side ([`crate::agent::sansio::answer`]): internal key queries (applied to
//! the machine's keyring), then Rust-registered handlers, then the first configured
//! `query:NAME` command. Answers go to the origin in one datagram when they fit,
//! otherwise over a sealed TCP stream.

use std::time::Duration;

use super::{AgentMachine, Effect, Effects, Now, Timer};
use crate::agent::key_auth::KeyAuth;
use crate::agent::sansio::QueryEffect;
use crate::agent::sansio::answer::{AnswerRoute, Responder, answer_route, responder};
use crate::agent::sansio::key_command::{self, KEYS_QUERY};
use crate::agent::sansio::keys::key_request;
use crate::agent::sansio::trigger::{self, Trigger};
use crate::agent::{AgentError, KeyOp};
use crate::gossip::{Filter, NodeId, Query, QueryId, QueryResponse, Tags};

/// How long cluster-wide key operations wait for answers.
pub const KEYS_TIMEOUT: Duration = Duration::from_secs(5);

/// A query to start from this node.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub name: String,
    pub payload: Vec<u8>,
    pub filters: Vec<Filter>,
    pub timeout: Duration,
}

/// What answers a query here, owned (so the machine can act on it).
enum Answerer {
    Keys,
    Now(Vec<u8>),
    Command(crate::agent::config::HandlerConfig),
}

impl<W, S> AgentMachine<W, S> {
    /// A user query from the API (names starting with `_` are the agent's own).
    pub fn user_query(&mut self, now: Now, request: QueryRequest, waiter: W) -> Effects<W, S> {
        if request.name.starts_with('_') {
            let error = AgentError::BadRequest(format!(
                "query names starting with `_` are reserved for the agent: {:?}",
                request.name
            ));
            return vec![Effect::QueryFailed { waiter, error }];
        }
        self.start_query(now, request, waiter)
    }

    /// A cluster-wide key operation: the internal key query to every node.
    pub fn key_query(
        &mut self,
        now: Now,
        op: KeyOp,
        key: Option<String>,
        auth: Option<KeyAuth>,
        waiter: W,
    ) -> Effects<W, S> {
        match key_request(op, key, auth) {
            Ok(payload) => {
                let request = QueryRequest {
                    name: KEYS_QUERY.to_owned(),
                    payload,
                    filters: Vec::new(),
                    timeout: KEYS_TIMEOUT,
                };
                self.start_query(now, request, waiter)
            }
            Err(error) => vec![Effect::QueryFailed { waiter, error }],
        }
    }

    /// An answer to one of our queries arrived over TCP.
    pub fn query_response(&mut self, now: Now, response: QueryResponse) -> Effects<W, S> {
        let mut out = Vec::new();
        self.record_response(now, response, &mut out);
        out
    }

    /// A query handler process answered `id` (asked by `origin`) with `payload`.
    pub fn handler_answer(
        &mut self,
        now: Now,
        id: QueryId,
        origin: NodeId,
        payload: Vec<u8>,
    ) -> Effects<W, S> {
        let mut out = Vec::new();
        self.send_answer(now, id, origin, payload, &mut out);
        out
    }

    /// Starts a query from this node: tracked (its deadline armed) before it is
    /// broadcast, so this node's own answer, delivered during the drain, lands in it.
    fn start_query(&mut self, now: Now, request: QueryRequest, waiter: W) -> Effects<W, S> {
        let QueryRequest {
            name,
            payload,
            filters,
            timeout,
        } = request;
        let created =
            self.core
                .lock()
                .create_query(&mut self.rng, &name, payload, filters, timeout);
        let (query, bytes) = match created {
            Ok(x) => x,
            Err(e) => {
                let error = AgentError::Create(e);
                return vec![Effect::QueryFailed { waiter, error }];
            }
        };
        let mut out = Vec::new();
        let alive = self.alive_with_tags();
        match self.queries.start(&query, now.at, alive, waiter) {
            Ok(effects) => self.query_effects(effects, &mut out),
            Err((waiter, e)) => {
                let error = AgentError::BadRequest(e.to_string());
                return vec![Effect::QueryFailed { waiter, error }];
            }
        }
        if let Err(e) = self.foca.add_broadcast(&bytes) {
            tracing::warn!(cause = %e, "add_broadcast refused a local query");
        }
        self.drain(now, &mut out);
        let effects = self.queries.settle(query.id);
        self.query_effects(effects, &mut out);
        out
    }

    /// The alive members and this node, with their tags (`None`: not known yet, the
    /// query waits for them).
    fn alive_with_tags(&self) -> Vec<(NodeId, Option<Tags>)> {
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
    }

    pub(super) fn record_response(&mut self, now: Now, r: QueryResponse, out: &mut Effects<W, S>) {
        if !self.core.lock().check_response(&r) {
            tracing::debug!(node = %r.from.name, "query answer refused: not signed by the node it claims");
            return;
        }
        let effects = self.queries.record(r, now.at);
        self.query_effects(effects, out);
    }

    /// What the [`QueryBook`](crate::agent::sansio::QueryBook) asks for.
    pub(super) fn query_effects(&mut self, effects: Vec<QueryEffect<W>>, out: &mut Effects<W, S>) {
        out.extend(effects.into_iter().map(|effect| match effect {
            QueryEffect::ArmDeadline { id, after } => Effect::Schedule {
                after,
                timer: Timer::QueryDeadline(id),
            },
            QueryEffect::CancelDeadline(id) => Effect::CancelDeadline(id),
            QueryEffect::Finished { waiter, result } => Effect::QueryDone { waiter, result },
        }));
    }

    /// Answers a query this node matches ([`responder`] says who).
    pub(super) fn answer_query(&mut self, now: Now, q: Query, out: &mut Effects<W, S>) {
        if !self.core.lock().may_answer(&q.origin) {
            tracing::debug!(origin = %q.origin.name, addr = %q.origin.addr, query = %q.name, "query not answered: its origin is not an identity a member card vouches for");
            return;
        }
        let answerer = match responder(&q, &self.registry, &self.settings.handlers) {
            Responder::Keys => Answerer::Keys,
            Responder::Registered(f) => Answerer::Now(f(&q.payload)),
            Responder::Command(h) => Answerer::Command(h.clone()),
            Responder::Nobody => return,
        };
        let handler = match answerer {
            Answerer::Keys => {
                let payload = self.apply_key_command(now, &q, out);
                return self.send_answer(now, q.id, q.origin, payload, out);
            }
            Answerer::Now(payload) => return self.send_answer(now, q.id, q.origin, payload, out),
            Answerer::Command(h) => h,
        };
        let trigger = Trigger::Query {
            name: q.name.clone(),
            ltime: q.ltime,
        };
        let (node, rpc) = (&self.settings.node, &self.settings.rpc);
        let env = trigger::env(&trigger, node, rpc, &self.tags());
        out.push(Effect::RunQueryHandler {
            query: q,
            handler,
            env,
        });
    }

    /// Applies a cluster key operation to this node's keyring; returns the answer.
    fn apply_key_command(&mut self, now: Now, q: &Query, out: &mut Effects<W, S>) -> Vec<u8> {
        let (result, changed) = key_command::apply(
            &self.settings.node,
            &mut self.keyring,
            &q.payload,
            &mut self.key_authority,
            now.wall_millis(),
        );
        if let Some(error) = result.error.as_deref().filter(|_| !result.ok) {
            tracing::warn!(origin = %q.origin.name, %error, "cluster key operation not applied");
        }
        if changed {
            tracing::info!(origin = %q.origin.name, "keyring changed by a cluster key operation");
            out.push(Effect::Keyring {
                ring: self.keyring.clone(),
                save_to: self.settings.keyring.clone(),
            });
        }
        serde_json::to_vec(&result).unwrap_or_default()
    }

    fn send_answer(
        &mut self,
        now: Now,
        id: QueryId,
        origin: NodeId,
        payload: Vec<u8>,
        out: &mut Effects<W, S>,
    ) {
        let from = self.core.lock().identity().clone();
        let mut answer = QueryResponse {
            id,
            from,
            payload,
            sig: None,
        };
        self.core.lock().sign_response(&mut answer);
        match answer_route(&origin.name, &answer) {
            Ok(AnswerRoute::Local) => self.record_response(now, answer, out),
            Ok(AnswerRoute::Datagram(plain)) => out.push(Effect::Send {
                to: origin.addr,
                plain,
            }),
            Ok(AnswerRoute::Stream) => out.push(Effect::StreamAnswer { to: origin, answer }),
            Err(e) => tracing::warn!(cause = %e, "query answer not sent"),
        }
    }
}
