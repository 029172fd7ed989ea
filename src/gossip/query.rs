//! Queries: ask (a filtered subset of) the cluster and collect the answers.
//!
//! A [`Query`] is broadcast like a user event (foca custom broadcast, exactly-once via
//! a [`super::event::DedupeWindow`] on receivers). Each receiver whose name and tags
//! match every [`Filter`] answers with a [`QueryResponse`] sent *directly* to the
//! origin's address: over UDP when it fits a datagram, otherwise over a TCP stream
//! (see [`super::message`]).
//!
//! The origin keeps a [`QueryTracker`]: built from the alive members that match the
//! filters, it records answers (ignoring duplicates and non-members), reports
//! [`QueryTracker::is_complete`] as soon as every expected member answered, and at the
//! deadline turns into a [`QueryResult`] listing answers and missing nodes. The origin
//! answers its own query locally (feed its response straight into the tracker).
//!
//! Filters are regexes anchored to the whole value (`web[0-9]+` does not match
//! `web10-old`), combined with AND. They are compiled with a size limit because they
//! arrive from the network; invalid ones are rejected when the query is created and
//! make received queries undeliverable. Tags are the `key=value` labels nodes advertise
//! in push/pull (see [`super::pushpull`]); the origin only knows the tags it learned,
//! so responses from members it did not expect are still accepted.
//!
//! Deadlines are monotonic `Instant`s passed in by the caller; the wire carries a
//! relative timeout so clock skew between hosts does not matter.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::event::{EventError, validate_event_name};
use super::identity::NodeId;
use super::lamport::{LamportClock, LamportTime};
use super::limits::MAX_BROADCAST_ITEM;

/// Node tags, `key -> value`.
pub type Tags = BTreeMap<String, String>;

/// Longest filter pattern, in bytes.
pub const MAX_FILTER_PATTERN_LEN: usize = 256;

/// Compiled-size limit of one filter regex.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Why a query could not be created or evaluated. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A filter regex does not compile (or is too long/complex).
    #[error("query filter {pattern:?} is not a valid regex: {reason}; query not sent")]
    InvalidFilter { pattern: String, reason: String },
    /// The encoded query does not fit one gossip packet.
    #[error(
        "query is too large: {size} bytes encoded, the maximum is {max}; query not sent \
         (shorten the payload or filters)"
    )]
    QueryTooLarge { size: usize, max: usize },
    /// Bad query name.
    #[error("query: {0}")]
    BadName(#[from] EventError),
}

/// Random 128-bit query id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueryId(pub u128);

impl QueryId {
    /// A random id.
    pub fn random<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        let hi = u128::from(rng.next_u64());
        let lo = u128::from(rng.next_u64());
        Self((hi << 64) | lo)
    }
}

/// Which nodes should answer. All filters of a query must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    /// The node name matches this regex.
    NodeName(String),
    /// The node has tag `key` and its value matches the regex.
    Tag { key: String, value: String },
}

/// Compiled filters.
#[derive(Debug, Clone)]
pub struct FilterSet {
    names: Vec<Regex>,
    tags: Vec<(String, Regex)>,
}

fn compile(pattern: &str) -> Result<Regex, QueryError> {
    let invalid = |reason: String| QueryError::InvalidFilter {
        pattern: pattern.to_owned(),
        reason,
    };
    if pattern.len() > MAX_FILTER_PATTERN_LEN {
        return Err(invalid(format!(
            "longer than {MAX_FILTER_PATTERN_LEN} bytes"
        )));
    }
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| invalid(e.to_string()))
}

impl FilterSet {
    /// Compiles filters; the first invalid one is reported.
    pub fn new(filters: &[Filter]) -> Result<Self, QueryError> {
        let mut set = Self {
            names: Vec::new(),
            tags: Vec::new(),
        };
        for f in filters {
            match f {
                Filter::NodeName(p) => set.names.push(compile(p)?),
                Filter::Tag { key, value } => set.tags.push((key.clone(), compile(value)?)),
            }
        }
        Ok(set)
    }

    /// Whether the name matches any name filter (as Serf's repeated `-node`), or there is
    /// none.
    fn name_matches(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|re| re.is_match(name))
    }

    /// Whether a node with this name passes the name filters, and tags decide the rest.
    pub fn depends_on_tags(&self, name: &str) -> bool {
        !self.tags.is_empty() && self.name_matches(name)
    }

    /// Whether a node passes: its name matches any name filter (or there is none) and its
    /// tags match every tag filter.
    pub fn matches(&self, name: &str, tags: &Tags) -> bool {
        self.name_matches(name)
            && self
                .tags
                .iter()
                .all(|(k, re)| tags.get(k).is_some_and(|v| re.is_match(v)))
    }
}

/// A query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Unique id (random).
    pub id: QueryId,
    /// Query Lamport time.
    pub ltime: LamportTime,
    /// Who asks; responses go to `origin.addr`.
    pub origin: NodeId,
    /// Query name (same rules as event names).
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Who should answer: any name filter and every tag filter must match (empty =
    /// everyone).
    pub filters: Vec<Filter>,
    /// How long the origin waits, in milliseconds.
    pub timeout_ms: u32,
}

impl Query {
    /// Creates a local query: random id, `clock.increment()` as its time. Checks the
    /// name, the filters and the encoded size; the clock only advances on success.
    pub fn create<R: rand::Rng + ?Sized>(
        rng: &mut R,
        clock: &mut LamportClock,
        origin: NodeId,
        name: &str,
        payload: Vec<u8>,
        filters: Vec<Filter>,
        timeout: Duration,
    ) -> Result<Self, QueryError> {
        validate_event_name(name)?;
        FilterSet::new(&filters)?;
        let mut q = Self {
            id: QueryId::random(rng),
            ltime: clock.time().saturating_add(1),
            origin,
            name: name.to_owned(),
            payload,
            filters,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        };
        // Tag byte + body, as encoded by `message::encode_broadcast`.
        let size = 1 + postcard::to_stdvec(&q)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_BROADCAST_ITEM {
            return Err(QueryError::QueryTooLarge {
                size,
                max: MAX_BROADCAST_ITEM,
            });
        }
        q.ltime = clock.increment();
        Ok(q)
    }

    /// The origin's wait time.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.timeout_ms))
    }

    /// Compiles this query's filters.
    pub fn filter_set(&self) -> Result<FilterSet, QueryError> {
        FilterSet::new(&self.filters)
    }
}

/// A node's answer to a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// The query answered.
    pub id: QueryId,
    /// Who answers.
    pub from: NodeId,
    /// Opaque answer.
    pub payload: Vec<u8>,
    /// The answering node's signature over the fields above ([`super::vouch`]); not
    /// part of the unsigned wire form, which older agents read.
    #[serde(skip)]
    pub sig: Option<[u8; 64]>,
}

/// What [`QueryTracker::record`] did with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new answer.
    Accepted,
    /// This node already answered; ignored.
    Duplicate,
    /// The sender is not an alive member known when the query started; ignored.
    NotMember,
    /// The response is for another query; ignored.
    OtherQuery,
    /// The deadline passed; ignored.
    Late,
}

/// Outcome of a query at its deadline (or when complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// Answers in arrival order.
    pub answers: Vec<(NodeId, Vec<u8>)>,
    /// Expected nodes that did not answer.
    pub missing: Vec<NodeId>,
}

/// The origin's bookkeeping for one outstanding query.
#[derive(Debug, Clone)]
pub struct QueryTracker {
    id: QueryId,
    deadline: Instant,
    /// Alive members (by name) when the query started.
    members: BTreeSet<String>,
    /// Members expected to answer (matched the filters), by name.
    expected: BTreeMap<String, NodeId>,
    /// Members whose tags were unknown, so may match: the query is not complete
    /// before they answered (or the deadline).
    uncertain: BTreeSet<String>,
    answered: BTreeSet<String>,
    answers: Vec<(NodeId, Vec<u8>)>,
}

impl QueryTracker {
    /// Starts tracking `query` at `now`. `alive` lists the alive members (include the
    /// local node) with the tags known for them (`None`: not known yet).
    pub fn new(
        query: &Query,
        now: Instant,
        alive: impl IntoIterator<Item = (NodeId, Option<Tags>)>,
    ) -> Result<Self, QueryError> {
        let filters = query.filter_set()?;
        let mut members = BTreeSet::new();
        let mut expected = BTreeMap::new();
        let mut uncertain = BTreeSet::new();
        for (node, tags) in alive {
            members.insert(node.name.clone());
            match tags {
                Some(tags) if filters.matches(&node.name, &tags) => {
                    expected.insert(node.name.clone(), node);
                }
                Some(_) => {}
                None if filters.depends_on_tags(&node.name) => {
                    uncertain.insert(node.name.clone());
                }
                None if filters.matches(&node.name, &Tags::new()) => {
                    expected.insert(node.name.clone(), node);
                }
                None => {}
            }
        }
        Ok(Self {
            id: query.id,
            deadline: now + query.timeout(),
            members,
            expected,
            uncertain,
            answered: BTreeSet::new(),
            answers: Vec::new(),
        })
    }

    /// The query being tracked.
    pub fn id(&self) -> QueryId {
        self.id
    }

    /// When the origin stops waiting.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether `now` is at or past the deadline.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Members expected to answer.
    pub fn expected(&self) -> impl Iterator<Item = &NodeId> {
        self.expected.values()
    }

    /// Records a response received at `now`.
    pub fn record(&mut self, response: QueryResponse, now: Instant) -> Recorded {
        if response.id != self.id {
            return Recorded::OtherQuery;
        }
        if self.is_expired(now) {
            return Recorded::Late;
        }
        if !self.members.contains(&response.from.name) {
            return Recorded::NotMember;
        }
        if !self.answered.insert(response.from.name.clone()) {
            return Recorded::Duplicate;
        }
        self.answers.push((response.from, response.payload));
        Recorded::Accepted
    }

    /// Whether every expected member answered, and every member whose tags were
    /// unknown too (it may match: never complete early while that is unknown).
    pub fn is_complete(&self) -> bool {
        (self.expected.keys().chain(&self.uncertain)).all(|n| self.answered.contains(n))
    }

    /// Ends tracking: answers plus expected members that did not answer.
    pub fn finish(self) -> QueryResult {
        let answered = self.answered;
        QueryResult {
            answers: self.answers,
            missing: self
                .expected
                .into_iter()
                .filter(|(n, _)| !answered.contains(n))
                .map(|(_, id)| id)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(name: &str, port: u16) -> NodeId {
        NodeId::new(name, format!("127.0.0.1:{port}").parse().unwrap(), 0).unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn query(filters: Vec<Filter>) -> Query {
        let mut rng = StdRng::seed_from_u64(1);
        let mut clock = LamportClock::new();
        Query::create(
            &mut rng,
            &mut clock,
            node("origin", 1),
            "uptime",
            vec![],
            filters,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn filter_matching() {
        let f = FilterSet::new(&[
            Filter::NodeName("web[0-9]+".into()),
            Filter::Tag {
                key: "role".into(),
                value: "api|web".into(),
            },
        ])
        .unwrap();
        assert!(f.matches("web1", &tags(&[("role", "web")])));
        assert!(
            !f.matches("web1-old", &tags(&[("role", "web")])),
            "anchored"
        );
        assert!(!f.matches("web1", &tags(&[("role", "db")])));
        assert!(!f.matches("web1", &Tags::new()), "missing tag fails");
        assert!(FilterSet::new(&[]).unwrap().matches("x", &Tags::new()));
    }

    /// As Serf's repeated `-node`: `--node n1 --node n2` asks both, not neither.
    #[test]
    fn any_name_filter_and_every_tag_filter() {
        let tag = |k: &str, v: &str| Filter::Tag {
            key: k.into(),
            value: v.into(),
        };
        let f = FilterSet::new(&[
            Filter::NodeName("n1".into()),
            Filter::NodeName("n2".into()),
            tag("role", "web"),
            tag("dc", "eu"),
        ])
        .unwrap();
        let both = tags(&[("role", "web"), ("dc", "eu")]);
        assert!(f.matches("n1", &both) && f.matches("n2", &both));
        assert!(!f.matches("n3", &both));
        assert!(!f.matches("n1", &tags(&[("role", "web")])), "every tag");
        assert!(f.depends_on_tags("n2") && !f.depends_on_tags("n3"));
    }

    #[test]
    fn invalid_filters_rejected() {
        let err = FilterSet::new(&[Filter::NodeName("web[".into())]).unwrap_err();
        assert!(matches!(err, QueryError::InvalidFilter { ref pattern, .. } if pattern == "web["));
        assert!(err.to_string().contains("not a valid regex"), "{err}");
        let long = "a".repeat(MAX_FILTER_PATTERN_LEN + 1);
        assert!(FilterSet::new(&[Filter::NodeName(long)]).is_err());

        let mut rng = StdRng::seed_from_u64(1);
        let mut clock = LamportClock::new();
        let r = Query::create(
            &mut rng,
            &mut clock,
            node("o", 1),
            "q",
            vec![],
            vec![Filter::Tag {
                key: "k".into(),
                value: "(".into(),
            }],
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(QueryError::InvalidFilter { .. })));
        assert_eq!(clock.time(), 0);
    }

    #[test]
    fn size_limit() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut clock = LamportClock::new();
        let r = Query::create(
            &mut rng,
            &mut clock,
            node("o", 1),
            "q",
            vec![0; MAX_BROADCAST_ITEM],
            vec![],
            Duration::from_secs(1),
        );
        assert!(matches!(
            r,
            Err(QueryError::QueryTooLarge {
                max: MAX_BROADCAST_ITEM,
                ..
            })
        ));
        let q = Query::create(
            &mut rng,
            &mut clock,
            node("o", 1),
            "q",
            vec![0; 500],
            vec![],
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(q.ltime, 1);
    }

    #[test]
    fn tracker_completes() {
        let q = query(vec![Filter::Tag {
            key: "role".into(),
            value: "web".into(),
        }]);
        let now = Instant::now();
        let web = tags(&[("role", "web")]);
        let alive = vec![
            (node("a", 2), Some(web.clone())),
            (node("b", 3), Some(web.clone())),
            (node("c", 4), Some(tags(&[("role", "db")]))),
        ];
        let mut t = QueryTracker::new(&q, now, alive).unwrap();
        assert_eq!(t.expected().count(), 2);
        assert!(!t.is_complete());
        let resp = |n: NodeId, p: &[u8]| QueryResponse {
            id: q.id,
            from: n,
            payload: p.to_vec(),
            sig: None,
        };
        assert_eq!(t.record(resp(node("a", 2), b"1"), now), Recorded::Accepted);
        assert_eq!(t.record(resp(node("a", 2), b"1"), now), Recorded::Duplicate);
        assert_eq!(
            t.record(resp(node("zz", 9), b"?"), now),
            Recorded::NotMember
        );
        let mut other = resp(node("b", 3), b"x");
        other.id = QueryId(q.id.0 ^ 1);
        assert_eq!(t.record(other, now), Recorded::OtherQuery);
        // An unexpected but alive member (tags unknown to the origin) is accepted.
        assert_eq!(t.record(resp(node("c", 4), b"3"), now), Recorded::Accepted);
        assert!(!t.is_complete());
        assert_eq!(t.record(resp(node("b", 3), b"2"), now), Recorded::Accepted);
        assert!(t.is_complete());
        let res = t.finish();
        assert_eq!(res.answers.len(), 3);
        assert!(res.missing.is_empty());
    }

    #[test]
    fn tracker_deadline_reports_missing() {
        let q = query(vec![]);
        let now = Instant::now();
        let alive = vec![
            (node("a", 2), Some(Tags::new())),
            (node("b", 3), Some(Tags::new())),
        ];
        let mut t = QueryTracker::new(&q, now, alive).unwrap();
        assert_eq!(t.deadline(), now + Duration::from_secs(5));
        let r = QueryResponse {
            id: q.id,
            from: node("a", 2),
            payload: b"ok".to_vec(),
            sig: None,
        };
        assert_eq!(t.record(r.clone(), now), Recorded::Accepted);
        let late = now + Duration::from_secs(5);
        assert!(t.is_expired(late));
        let mut r2 = r;
        r2.from = node("b", 3);
        assert_eq!(t.record(r2, late), Recorded::Late);
        let res = t.finish();
        assert_eq!(res.answers, vec![(node("a", 2), b"ok".to_vec())]);
        assert_eq!(res.missing, vec![node("b", 3)]);
    }

    /// Regression (issue 10, item 7): with the tags of the web node not known yet, a
    /// `role=web` query completed at once with no answer.
    #[test]
    fn tracker_waits_while_matching_is_unknown() {
        let q = query(vec![
            Filter::Tag {
                key: "role".into(),
                value: "web".into(),
            },
            Filter::NodeName("w.*".into()),
        ]);
        let now = Instant::now();
        let alive = vec![
            (node("w1", 1), None),
            (node("db", 2), None),
            (node("me", 3), Some(tags(&[("role", "db")]))),
        ];
        let mut t = QueryTracker::new(&q, now, alive).unwrap();
        assert_eq!(t.expected().count(), 0);
        assert!(!t.is_complete(), "w1 may be a web node");
        let r = QueryResponse {
            id: q.id,
            from: node("w1", 1),
            payload: vec![],
            sig: None,
        };
        assert_eq!(t.record(r, now), Recorded::Accepted);
        assert!(
            t.is_complete(),
            "db fails the name filter whatever its tags"
        );
        // Without tag filters, unknown tags do not matter.
        let q = query(vec![Filter::NodeName("w.*".into())]);
        let t = QueryTracker::new(&q, now, vec![(node("w1", 1), None)]).unwrap();
        assert_eq!(t.expected().count(), 1);
    }
}
