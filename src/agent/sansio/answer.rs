//! The answering side of a query, without I/O: who answers a query this node matches,
//! and how the answer travels back to the origin.
//!
//! Order: the internal key query, then a handler registered in Rust, then the first
//! configured `query:NAME` command; nobody else. An answer to this node's own query is
//! recorded locally; others go in one sealed datagram when they fit, otherwise over a
//! sealed TCP stream.

use super::key_command::KEYS_QUERY;
use super::trigger::{self, Trigger};
use crate::agent::config::{EventFilter, HandlerConfig};
use crate::agent::queries::{QueryFn, QueryRegistry};
use crate::gossip::message::{self, Direct, EncodeError};
use crate::gossip::{Query, QueryResponse};

/// Who answers a query.
pub enum Responder<'a> {
    /// The cluster-wide key operation ([`super::key_command::apply`]).
    Keys,
    /// A handler registered in Rust, answering at once.
    Registered(&'a QueryFn),
    /// A configured command; its stdout is the answer.
    Command(&'a HandlerConfig),
    /// Nobody here: no answer.
    Nobody,
}

/// Who answers `q` on this node.
pub fn responder<'a>(
    q: &Query,
    registry: &'a QueryRegistry,
    configured: &'a [HandlerConfig],
) -> Responder<'a> {
    if q.name == KEYS_QUERY {
        return Responder::Keys;
    }
    if let Some(f) = registry.get(&q.name) {
        return Responder::Registered(f);
    }
    let trigger = Trigger::Query {
        name: q.name.clone(),
        ltime: q.ltime,
    };
    configured
        .iter()
        .find(|h| {
            matches!(h.filter, EventFilter::Query(_)) && trigger::matches(&h.filter, &trigger)
        })
        .map_or(Responder::Nobody, Responder::Command)
}

/// How an answer reaches the origin.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerRoute {
    /// This node asked: record it in its own query book.
    Local,
    /// One datagram with this plaintext (sealed by the executor).
    Datagram(Vec<u8>),
    /// Too large for a datagram: a sealed TCP stream.
    Stream,
}

/// The route of `answer` to `origin` (a node name); `Err` when it cannot be encoded at
/// all.
pub fn answer_route(origin: &str, answer: &QueryResponse) -> Result<AnswerRoute, EncodeError> {
    if origin == answer.from.name {
        return Ok(AnswerRoute::Local);
    }
    match message::encode_direct(&Direct::QueryResponse(answer.clone())) {
        Ok(plain) => Ok(AnswerRoute::Datagram(plain)),
        Err(EncodeError::TooLarge { .. }) => Ok(AnswerRoute::Stream),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{LamportClock, MAX_PLAINTEXT, NodeId, QueryId};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::sync::Arc;
    use std::time::Duration;

    fn node(name: &str) -> NodeId {
        NodeId::new(name, "127.0.0.1:1".parse().unwrap(), 0).unwrap()
    }

    fn query(name: &str) -> Query {
        let mut rng = StdRng::seed_from_u64(3);
        Query::create(
            &mut rng,
            &mut LamportClock::new(),
            node("origin"),
            name,
            vec![],
            vec![],
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn command(filter: EventFilter, program: &str) -> HandlerConfig {
        HandlerConfig {
            filter,
            command: vec![program.into()],
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn keys_then_registered_then_the_first_matching_command() {
        let mut registry = QueryRegistry::with_builtins("me", false);
        registry.register(KEYS_QUERY, Arc::new(|_| b"shadow".to_vec()));
        let configured = vec![
            command(EventFilter::All, "all"),
            command(EventFilter::User(Some("uptime".into())), "user"),
            command(EventFilter::Query(Some("other".into())), "other"),
            command(EventFilter::Query(Some("uptime".into())), "named"),
            command(EventFilter::Query(None), "any"),
            command(EventFilter::Query(Some("ping".into())), "ping-cmd"),
        ];
        let k = query(KEYS_QUERY);
        assert!(matches!(
            responder(&k, &registry, &configured),
            Responder::Keys
        ));
        match responder(&query("ping"), &registry, &configured) {
            Responder::Registered(f) => assert_eq!(f(b""), b"me"),
            _ => panic!("ping is registered in Rust"),
        }
        match responder(&query("uptime"), &registry, &configured) {
            Responder::Command(h) => assert_eq!(h.command, ["named"]),
            _ => panic!("uptime has a command"),
        }
        match responder(&query("disk"), &registry, &configured) {
            Responder::Command(h) => assert_eq!(h.command, ["any"]),
            _ => panic!("query:* answers the rest"),
        }
        let only_events = &configured[..2];
        assert!(matches!(
            responder(&query("disk"), &registry, only_events),
            Responder::Nobody
        ));
    }

    #[test]
    fn answers_go_local_by_datagram_or_by_stream() {
        let answer = |payload: Vec<u8>| QueryResponse {
            id: QueryId(5),
            from: node("me"),
            payload,
            sig: None,
        };
        assert_eq!(
            answer_route("me", &answer(vec![1; 10])),
            Ok(AnswerRoute::Local)
        );
        match answer_route("origin", &answer(b"small".to_vec())) {
            Ok(AnswerRoute::Datagram(plain)) => assert!(matches!(
                message::decode_datagram(&plain),
                Ok(message::Datagram::Direct(Direct::QueryResponse(r))) if r.payload == b"small"
            )),
            other => panic!("{other:?}"),
        }
        let big = answer(vec![b'x'; MAX_PLAINTEXT + 1]);
        assert_eq!(answer_route("origin", &big), Ok(AnswerRoute::Stream));
    }
}
