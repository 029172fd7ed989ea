//! Unit tests of [`super`] (the broadcast handler).

use super::*;
use crate::gossip::query::QueryId;
use foca::BroadcastHandler as _;
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: Duration = Duration::from_secs(1_700_000_000);

fn core(name: &str, tags: Tags) -> SharedCore {
    let id = NodeId::new(name, "127.0.0.1:7946".parse().unwrap(), 0).unwrap();
    SharedCore::new(GossipCore::new(id, tags, CoreConfig::default(), NOW))
}

#[test]
fn receive_item_paths() {
    let shared = core("web1", [("role".to_owned(), "web".to_owned())].into());
    let mut h = shared.handler();
    let mut rng = StdRng::seed_from_u64(3);

    // Garbage is a typed error, unknown types are skipped.
    assert!(h.receive_item(&[1, 0xff], None).is_err());
    // Unknown types are relayed once (a newer peer's), never delivered.
    assert!(matches!(
        h.receive_item(&[200, 1, 2, 3], None).unwrap(),
        Some(BroadcastKey::Opaque(_))
    ));
    assert_eq!(h.receive_item(&[200, 1, 2, 3], None).unwrap(), None);

    // Local event: delivered once, key returned once.
    let (ev, bytes) = shared
        .lock()
        .create_event(&mut rng, "deploy", b"x".to_vec())
        .unwrap();
    assert_eq!(
        h.receive_item(&bytes, None).unwrap(),
        Some(BroadcastKey::Event(ev.id))
    );
    assert_eq!(h.receive_item(&bytes, None).unwrap(), None);

    // A remote event with a higher Lamport time moves our clock.
    let remote = UserEvent::new(EventId(77), "db1", 50, "deploy", vec![]).unwrap();
    let rb = encode_broadcast(&Broadcast::Event(remote.clone())).unwrap();
    h.receive_item(&rb, None).unwrap();
    let (next, _) = shared
        .lock()
        .create_event(&mut rng, "deploy", vec![])
        .unwrap();
    assert_eq!(next.ltime, 52);

    // Queries: matching ones are queued, non-matching only relayed.
    let origin = NodeId::new("o", "127.0.0.1:1".parse().unwrap(), 0).unwrap();
    let mut q = Query {
        id: QueryId(1),
        ltime: 1,
        origin,
        name: "q".into(),
        payload: vec![],
        filters: vec![Filter::Tag {
            key: "role".into(),
            value: "web".into(),
        }],
        timeout_ms: 100,
    };
    let qb = encode_broadcast(&Broadcast::Query(q.clone())).unwrap();
    assert_eq!(
        h.receive_item(&qb, None).unwrap(),
        Some(BroadcastKey::Query(QueryId(1)))
    );
    assert_eq!(h.receive_item(&qb, None).unwrap(), None);
    q.id = QueryId(2);
    q.filters = vec![Filter::NodeName("db.*".into())];
    let qb2 = encode_broadcast(&Broadcast::Query(q.clone())).unwrap();
    assert!(h.receive_item(&qb2, None).unwrap().is_some());
    q.id = QueryId(3);
    q.filters = vec![Filter::NodeName("(".into())];
    let qb3 = encode_broadcast(&Broadcast::Query(q)).unwrap();
    assert_eq!(h.receive_item(&qb3, None).unwrap(), None);

    let incoming = shared.drain_incoming();
    assert_eq!(incoming.len(), 3, "{incoming:?}");
    assert!(matches!(&incoming[0], Incoming::Event(e) if e.id == ev.id));
    assert!(matches!(&incoming[1], Incoming::Event(e) if e.id == EventId(77)));
    assert!(matches!(&incoming[2], Incoming::Query(q) if q.id == QueryId(1)));

    let stats = shared.lock().stats();
    assert_eq!(stats.malformed, 1);
    assert_eq!(stats.unknown_types, 2);
    assert_eq!(stats.events_delivered, 2);
    assert_eq!(stats.events_duplicate, 1);
    assert_eq!(stats.queries_seen, 3);
    assert_eq!(stats.queries_matched, 1);
    assert_eq!(stats.queries_duplicate, 1);
    assert_eq!(stats.queries_bad_filter, 1);
}

/// Regression (issue 10, item 4): one authenticated event near `u64::MAX` moved
/// every node's clock to the limit (and it was persisted).
#[test]
fn far_future_ltimes_are_refused() {
    let shared = core("n1", Tags::new());
    let mut h = shared.handler();
    let far = UserEvent::new(EventId(5), "evil", u64::MAX - 1, "deploy", vec![]).unwrap();
    let bytes = encode_broadcast(&Broadcast::Event(far)).unwrap();
    assert_eq!(h.receive_item(&bytes, None).unwrap(), None);
    let origin = NodeId::new("o", "127.0.0.1:1".parse().unwrap(), 0).unwrap();
    let q = Query {
        id: QueryId(9),
        ltime: u64::MAX,
        origin,
        name: "q".into(),
        payload: vec![],
        filters: vec![],
        timeout_ms: 100,
    };
    let qb = encode_broadcast(&Broadcast::Query(q)).unwrap();
    assert_eq!(h.receive_item(&qb, None).unwrap(), None);
    assert!(shared.drain_incoming().is_empty());
    let snap = shared.lock().snapshot();
    assert_eq!(snap.event_clock.time(), 0);
    assert_eq!(snap.query_clock.time(), 0);
    assert_eq!(shared.lock().stats().too_far_ahead, 2);
}

#[test]
fn snapshot_restore_keeps_clocks_and_dedupe() {
    let shared = core("n1", Tags::new());
    let mut rng = StdRng::seed_from_u64(4);
    let (_, bytes) = shared
        .lock()
        .create_event(&mut rng, "deploy", vec![])
        .unwrap();
    shared.handler().receive_item(&bytes, None).unwrap();
    let snap = shared.lock().snapshot();
    let mut id = snap.identity.clone();
    id.bump += 1;
    let restored = SharedCore::new(GossipCore::restore(
        id,
        Tags::new(),
        CoreConfig::default(),
        snap,
        NOW,
    ));
    assert_eq!(restored.handler().receive_item(&bytes, None).unwrap(), None);
    let (ev, _) = restored
        .lock()
        .create_event(&mut rng, "deploy", vec![])
        .unwrap();
    // 1 = first event, witnessing it moved the clock to 2, so the next is 3.
    assert_eq!(ev.ltime, 3, "clock survives the restart");
    assert_eq!(restored.lock().identity().bump, 1);
}

#[test]
fn a_digest_answer_carries_only_what_differs() {
    use crate::gossip::digest;
    let (a, b) = (core("web1", Tags::new()), core("web2", Tags::new()));
    let members: Vec<foca::Member<NodeId>> = (0..60)
        .map(|i| {
            let addr = format!("10.0.0.{}:7946", i + 1).parse().unwrap();
            let id = NodeId::new(format!("n{i}"), addr, 0).unwrap();
            foca::Member::new(id, 1, foca::State::Alive)
        })
        .collect();
    let give_both = |bytes: &[u8]| {
        a.handler().receive_item(bytes, None).unwrap();
        b.handler().receive_item(bytes, None).unwrap();
    };
    for k in 0..40 {
        let bytes = (a.lock()).create_superseding("app", &format!("k{k}"), 1, vec![1]);
        give_both(&bytes.unwrap());
    }
    let items_of = |s: &PushPullState| {
        let e = s
            .extensions
            .iter()
            .find(|e| e.tag == ext::SIGNED_SUPERSEDING);
        crate::gossip::supersede::decode_items(&e.unwrap().bytes, true).unwrap()
    };
    let request = a.lock().push_pull_digest(&members, true);
    assert!(request.members.is_empty() && request.events.is_empty());
    assert_eq!(request.version, PROTOCOL_VERSION);
    let theirs = digest::requested(&request).unwrap().unwrap();
    assert!(theirs.answer_back);

    // The same view: an answer with no members, slots or events.
    let (answer, diff) = b.lock().push_pull_answer(members.clone(), &theirs, 4);
    assert!(!diff.any());
    assert!(answer.members.is_empty() && answer.events.is_empty());
    assert!(items_of(&answer).is_empty());

    // One slot and one member newer on the answering side: about what differs only.
    let newer = b.lock().create_superseding("app", "k7", 2, vec![2]);
    let newer = newer.unwrap();
    b.handler().receive_item(&newer, None).unwrap();
    let mut theirs_members = members.clone();
    theirs_members[5] = foca::Member::new(members[5].id().clone(), 2, foca::State::Alive);
    let (answer, diff) = b.lock().push_pull_answer(theirs_members, &theirs, 4);
    assert!(diff.any() && !diff.events && diff.buckets() <= 2);
    let items = items_of(&answer);
    assert!(items.iter().any(|i| i.key == "k7" && i.version == 2));
    assert!(items.len() < 10, "{} slots sent", items.len());
    assert!(answer.members.iter().any(|m| m.incarnation() == 2));
    assert!(
        answer.members.len() < 15,
        "{} members sent",
        answer.members.len()
    );

    // An event only the asking side holds: the events differ.
    let mut rng = StdRng::seed_from_u64(5);
    let created = a.lock().create_event(&mut rng, "deploy", vec![]);
    let (ev, bytes) = created.unwrap();
    a.handler().receive_item(&bytes, None).unwrap();
    let request = a.lock().push_pull_digest(&members, true);
    let theirs = digest::requested(&request).unwrap().unwrap();
    let (_, diff) = b.lock().push_pull_answer(members.clone(), &theirs, 4);
    assert!(diff.events, "event {:?} not in the digest", ev.id);
}
