//! Query lifecycle on the origin side, without I/O.
//!
//! The book holds the queries this node started, each a [`QueryTracker`] plus whoever
//! waits for it (`W`: a reply channel in the agent, anything in tests). Inputs are a
//! start, an answer, a deadline, or a settle check after this node's own answer; the
//! outputs are [`QueryEffect`]s the executor carries out (arm or cancel the deadline
//! timer, hand the result to the waiter). A query finishes when every expected member
//! answered and every member whose tags are unknown did too (it may match), or at its
//! deadline with the missing ones listed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::gossip::query::QueryError;
use crate::gossip::query::Recorded;
use crate::gossip::{NodeId, Query, QueryId, QueryResponse, QueryResult, QueryTracker, Tags};

/// What the executor does for the book.
#[derive(Debug)]
pub enum QueryEffect<W> {
    /// Arm the query's deadline timer.
    ArmDeadline { id: QueryId, after: Duration },
    /// Drop its deadline timer: the query finished early.
    CancelDeadline(QueryId),
    /// The query is over: give `result` to `waiter`.
    Finished { waiter: W, result: QueryResult },
}

/// Queries this node started and waits for.
#[derive(Debug)]
pub struct QueryBook<W> {
    pending: HashMap<QueryId, (QueryTracker, W)>,
}

impl<W> Default for QueryBook<W> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

impl<W> QueryBook<W> {
    /// Starts waiting for `query` over the `alive` members (this node included; tags
    /// `None` when not known yet). Call [`Self::settle`] once this node's own answer
    /// was delivered. A query whose filters do not compile gives the waiter back.
    pub fn start(
        &mut self,
        query: &Query,
        now: Instant,
        alive: impl IntoIterator<Item = (NodeId, Option<Tags>)>,
        waiter: W,
    ) -> Result<Vec<QueryEffect<W>>, (W, QueryError)> {
        let tracker = match QueryTracker::new(query, now, alive) {
            Ok(t) => t,
            Err(e) => return Err((waiter, e)),
        };
        self.pending.insert(query.id, (tracker, waiter));
        Ok(vec![QueryEffect::ArmDeadline {
            id: query.id,
            after: query.timeout(),
        }])
    }

    /// An answer arrived at `now` (over UDP, TCP, or from this node itself).
    pub fn record(&mut self, response: QueryResponse, now: Instant) -> Vec<QueryEffect<W>> {
        let id = response.id;
        let Some((tracker, _)) = self.pending.get_mut(&id) else {
            return Vec::new();
        };
        let from = response.from.name.clone();
        let outcome = tracker.record(response, now);
        if outcome != Recorded::Accepted {
            tracing::debug!(node = %from, outcome = ?outcome, "query answer ignored");
        }
        self.settle(id)
    }

    /// Finishes `id` if every member that may match answered.
    pub fn settle(&mut self, id: QueryId) -> Vec<QueryEffect<W>> {
        if self.pending.get(&id).is_some_and(|(t, _)| t.is_complete()) {
            let mut effects = vec![QueryEffect::CancelDeadline(id)];
            effects.extend(self.finish(id));
            return effects;
        }
        Vec::new()
    }

    /// The deadline of `id` fired: finish with what arrived.
    pub fn deadline(&mut self, id: QueryId) -> Vec<QueryEffect<W>> {
        self.finish(id).into_iter().collect()
    }

    /// How many queries are outstanding.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no query is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn finish(&mut self, id: QueryId) -> Option<QueryEffect<W>> {
        let (tracker, waiter) = self.pending.remove(&id)?;
        Some(QueryEffect::Finished {
            waiter,
            result: tracker.finish(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{Filter, LamportClock};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(name: &str, port: u16) -> NodeId {
        NodeId::new(name, format!("127.0.0.1:{port}").parse().unwrap(), 0).unwrap()
    }

    fn role(r: &str) -> Tags {
        [("role".to_owned(), r.to_owned())].into_iter().collect()
    }

    fn query(filters: Vec<Filter>) -> Query {
        let mut rng = StdRng::seed_from_u64(7);
        let mut clock = LamportClock::new();
        Query::create(
            &mut rng,
            &mut clock,
            node("me", 1),
            "uptime",
            vec![],
            filters,
            Duration::from_secs(3),
        )
        .unwrap()
    }

    fn answer(q: &Query, from: NodeId) -> QueryResponse {
        QueryResponse {
            id: q.id,
            from,
            payload: b"ok".to_vec(),
            sig: None,
        }
    }

    fn finished<W: std::fmt::Debug>(effects: Vec<QueryEffect<W>>) -> Option<(W, QueryResult)> {
        effects.into_iter().find_map(|e| match e {
            QueryEffect::Finished { waiter, result } => Some((waiter, result)),
            _ => None,
        })
    }

    #[test]
    fn finishes_when_all_expected_answered_and_cancels_the_deadline() {
        let q = query(vec![]);
        let now = Instant::now();
        let mut book = QueryBook::default();
        let alive = [
            (node("me", 1), Some(role("web"))),
            (node("b", 2), Some(role("db"))),
        ];
        let effects = book.start(&q, now, alive, "w1").unwrap();
        assert!(matches!(
            effects[..],
            [QueryEffect::ArmDeadline { id, after }] if id == q.id && after == Duration::from_secs(3)
        ));
        assert!(book.settle(q.id).is_empty(), "nobody answered yet");
        assert!(book.record(answer(&q, node("me", 1)), now).is_empty());
        let effects = book.record(answer(&q, node("b", 2)), now);
        assert!(matches!(effects[0], QueryEffect::CancelDeadline(id) if id == q.id));
        let (w, result) = finished(effects).unwrap();
        assert_eq!(w, "w1");
        assert_eq!(result.answers.len(), 2);
        assert!(result.missing.is_empty());
        assert!(book.is_empty());
        assert!(
            book.deadline(q.id).is_empty(),
            "a finished query's timer is a no-op"
        );
    }

    #[test]
    fn deadline_lists_the_missing() {
        let q = query(vec![]);
        let now = Instant::now();
        let mut book = QueryBook::default();
        let alive = [
            (node("me", 1), Some(role("web"))),
            (node("b", 2), Some(role("web"))),
        ];
        book.start(&q, now, alive, 1u8).unwrap();
        assert!(book.record(answer(&q, node("me", 1)), now).is_empty());
        let (_, result) = finished(book.deadline(q.id)).unwrap();
        assert_eq!(result.answers.len(), 1);
        assert_eq!(result.missing, vec![node("b", 2)]);
        assert!(
            book.record(answer(&q, node("b", 2)), now).is_empty(),
            "too late"
        );
    }

    #[test]
    fn waits_while_matching_is_unknown() {
        let q = query(vec![Filter::Tag {
            key: "role".into(),
            value: "^web$".into(),
        }]);
        let now = Instant::now();
        let mut book = QueryBook::default();
        // Only "c" may match, and its tags are not known yet: no early empty answer.
        let alive = [(node("me", 1), Some(role("db"))), (node("c", 3), None)];
        book.start(&q, now, alive, ()).unwrap();
        assert!(book.settle(q.id).is_empty(), "must wait for c");
        let (_, result) = finished(book.record(answer(&q, node("c", 3)), now)).unwrap();
        assert_eq!(result.answers.len(), 1);
    }

    #[test]
    fn nothing_can_match_finishes_at_settle() {
        let q = query(vec![Filter::Tag {
            key: "role".into(),
            value: "^web$".into(),
        }]);
        let mut book = QueryBook::default();
        let alive = [
            (node("me", 1), Some(role("db"))),
            (node("b", 2), Some(role("db"))),
        ];
        book.start(&q, Instant::now(), alive, ()).unwrap();
        let (_, result) = finished(book.settle(q.id)).unwrap();
        assert!(result.answers.is_empty() && result.missing.is_empty());
    }

    #[test]
    fn ignores_strangers_duplicates_and_other_queries() {
        let q = query(vec![]);
        let mut other = query(vec![]);
        other.id = QueryId(q.id.0 ^ 1);
        let now = Instant::now();
        let mut book = QueryBook::default();
        let alive = [
            (node("me", 1), Some(Tags::new())),
            (node("b", 2), Some(Tags::new())),
        ];
        book.start(&q, now, alive, ()).unwrap();
        assert!(book.record(answer(&q, node("zz", 9)), now).is_empty());
        assert!(book.record(answer(&q, node("me", 1)), now).is_empty());
        assert!(book.record(answer(&q, node("me", 1)), now).is_empty());
        assert!(book.record(answer(&other, node("b", 2)), now).is_empty());
        assert_eq!(book.len(), 1);
        let (_, result) = finished(book.record(answer(&q, node("b", 2)), now)).unwrap();
        assert_eq!(result.answers.len(), 2, "{result:?}");
    }

    #[test]
    fn bad_filter_gives_the_waiter_back() {
        let mut q = query(vec![]);
        q.filters = vec![Filter::NodeName("(".into())];
        let alive = [(node("me", 1), Some(Tags::new()))];
        let mut book = QueryBook::default();
        let (w, _) = book.start(&q, Instant::now(), alive, "w").unwrap_err();
        assert_eq!(w, "w");
        assert!(book.is_empty());
    }
}
