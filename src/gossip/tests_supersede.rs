//! In-memory cluster tests of superseding broadcasts, relaying unknown broadcast
//! types, and tags travelling at gossip speed (issue 10, items 7, 8 and 9).

use super::*;
use crate::gossip::handler::BroadcastKey;
use crate::gossip::supersede::{Superseding, TAGS_KIND};
use foca::BroadcastHandler as _;

fn cluster(n: usize) -> Sim {
    let mut sim = Sim::new((0..n).map(node_id).collect(), vec![shared_key_ring(); n]);
    sim.join_all();
    sim
}

fn superseding_at(sim: &Sim, i: usize) -> Vec<&Superseding> {
    sim.nodes[i]
        .delivered
        .iter()
        .filter_map(|d| match d {
            Incoming::Superseding(s) if s.kind == "deploy-desired" => Some(s),
            _ => None,
        })
        .collect()
}

/// Item 9: a queued "web v42" is replaced by "web v43" before it was sent, so the
/// cluster only ever hears v43; a late v42 is refused everywhere.
#[test]
fn newer_version_replaces_the_queued_older_one() {
    let n = 5;
    let mut sim = cluster(n);
    let v42 = sim.nodes[1]
        .core
        .lock()
        .create_superseding("deploy-desired", "web", 42, b"web@v42".to_vec())
        .unwrap();
    let v43 = sim.nodes[1]
        .core
        .lock()
        .create_superseding("deploy-desired", "web", 43, b"web@v43".to_vec())
        .unwrap();
    let db = sim.nodes[1]
        .core
        .lock()
        .create_superseding("deploy-desired", "db", 7, b"db@v7".to_vec())
        .unwrap();
    let backlog = sim.nodes[1].foca.custom_broadcast_backlog();
    assert!(sim.nodes[1].foca.add_broadcast(&v42).unwrap());
    assert!(sim.nodes[1].foca.add_broadcast(&db).unwrap());
    assert!(sim.nodes[1].foca.add_broadcast(&v43).unwrap());
    assert_eq!(
        sim.nodes[1].foca.custom_broadcast_backlog(),
        backlog + 2,
        "v43 replaced the queued v42; db is another slot"
    );
    sim.flush(1);
    sim.run_for(Duration::from_secs(10));
    for i in (0..n).filter(|&i| i != 1) {
        let got: Vec<(&str, u64)> = superseding_at(&sim, i)
            .iter()
            .map(|s| (s.key.as_str(), s.version))
            .collect();
        assert_eq!(got.len(), 2, "node{i}: {got:?}");
        assert!(
            got.contains(&("web", 43)) && got.contains(&("db", 7)),
            "node{i}: {got:?}"
        );
        // A late v42 is stale: not delivered, not relayed.
        let mut h = sim.nodes[i].core.handler();
        assert_eq!(h.receive_item(&v42, None).unwrap(), None);
        let core = sim.nodes[i].core.lock();
        assert_eq!(
            core.superseding_item("deploy-desired", "web")
                .unwrap()
                .version,
            43
        );
    }
    sim.run_for(Duration::from_secs(30));
    for i in 0..n {
        assert_eq!(sim.nodes[i].foca.custom_broadcast_backlog(), 0);
    }
}

#[test]
fn superseding_keys_invalidate_older_versions_of_their_slot_only() {
    use foca::Invalidates;
    let k = |slot, version| BroadcastKey::Superseding { slot, version };
    assert!(k(1, 43).invalidates(&k(1, 42)));
    assert!(k(1, 43).invalidates(&k(1, 43)));
    assert!(!k(1, 42).invalidates(&k(1, 43)));
    assert!(!k(2, 43).invalidates(&k(1, 42)));
    assert!(!k(1, 43).invalidates(&BroadcastKey::Opaque(1)));
}

/// Item 8: a broadcast type this build does not know (a newer agent's) is still
/// relayed to the whole cluster, once per node.
#[test]
fn unknown_broadcast_types_are_relayed() {
    let n = 5;
    let mut sim = cluster(n);
    let unknown = [250u8, 1, 2, 3, 4, 5];
    assert!(sim.nodes[3].foca.add_broadcast(&unknown).unwrap());
    sim.flush(3);
    sim.run_for(Duration::from_secs(10));
    for i in 0..n {
        let stats = sim.nodes[i].core.lock().stats();
        assert!(stats.unknown_types >= 1, "node{i} never saw it");
        assert!(
            sim.nodes[i].delivered.is_empty(),
            "nothing is delivered from an unknown type"
        );
    }
    sim.run_for(Duration::from_secs(30));
    for i in 0..n {
        assert_eq!(
            sim.nodes[i].foca.custom_broadcast_backlog(),
            0,
            "relayed once, not forever"
        );
    }
}

fn web() -> Tags {
    [("role".to_owned(), "web".to_owned())].into()
}

/// Item 7: a node's tag change reaches every member by gossip, newer versions win.
#[test]
fn tag_changes_travel_by_gossip() {
    let n = 6;
    let mut sim = cluster(n);
    let bytes = sim.nodes[4].core.lock().set_tags(web(), 1000).unwrap();
    assert!(sim.nodes[4].foca.add_broadcast(&bytes).unwrap());
    sim.flush(4);
    sim.run_for(Duration::from_secs(5));
    for i in (0..n).filter(|&i| i != 4) {
        let core = sim.nodes[i].core.lock();
        assert_eq!(core.tag_book().tags_of("node4"), Some(&web()), "node{i}");
    }
    // An older announcement arriving late changes nothing.
    let old = Superseding {
        kind: TAGS_KIND.into(),
        key: "node4".into(),
        version: 999,
        origin: "node4".into(),
        body: postcard::to_stdvec(&Tags::new()).unwrap(),
        sig: None,
    };
    let old = crate::gossip::message::encode_broadcast(
        &crate::gossip::message::Broadcast::Superseding(old),
    )
    .unwrap();
    sim.nodes[0]
        .core
        .handler()
        .receive_item(&old, None)
        .unwrap();
    assert_eq!(
        sim.nodes[0].core.lock().tag_book().tags_of("node4"),
        Some(&web())
    );
}

/// Item 8 with 7 and 9: a node that missed the gossip learns the newest version of
/// every slot (tags included) from one versioned push/pull; an unversioned peer's
/// state carries none and still merges.
#[test]
fn push_pull_repairs_superseding_slots() {
    let mut sim = cluster(3);
    let bytes = sim.nodes[0].core.lock().set_tags(web(), 5).unwrap();
    sim.nodes[0].foca.add_broadcast(&bytes).unwrap();
    let app = sim.nodes[0]
        .core
        .lock()
        .create_superseding("deploy-desired", "web", 3, vec![])
        .unwrap();
    sim.nodes[0].foca.add_broadcast(&app).unwrap();
    let members: Vec<_> = sim.nodes[0].foca.iter_membership_state().cloned().collect();
    let v1 = sim.nodes[0].core.lock().push_pull_state(members.clone(), 1);
    assert!(v1.extensions.is_empty());
    let v2 = sim.nodes[0].core.lock().push_pull_state(members, 7);
    assert_eq!(
        v2.version,
        crate::gossip::PROTOCOL_VERSION,
        "capped at ours"
    );

    let fresh = SharedCore::new(GossipCore::new(
        node_id(9),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    fresh.lock().merge_push_pull(&v1, true);
    assert!(fresh.drain_incoming().is_empty());
    assert_eq!(fresh.lock().peer_version("node0"), 1);
    fresh.lock().merge_push_pull(&v2, true);
    let got = fresh.drain_incoming();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(fresh.lock().tag_book().tags_of("node0"), Some(&web()));
    assert_eq!(
        fresh.lock().peer_version("node0"),
        crate::gossip::PROTOCOL_VERSION
    );
    // Merging the same state again delivers nothing.
    fresh.lock().merge_push_pull(&v2, true);
    assert!(fresh.drain_incoming().is_empty());
    // A version-2 peer gets the same slots in the unsigned form it reads.
    let members: Vec<_> = sim.nodes[0].foca.iter_membership_state().cloned().collect();
    let old = sim.nodes[0].core.lock().push_pull_state(members, 2);
    assert_eq!(
        old.extensions[0].tag,
        crate::gossip::versioned::ext::SUPERSEDING
    );
    let items: Vec<Superseding> = postcard::from_bytes(&old.extensions[0].bytes).unwrap();
    assert_eq!(items.len(), 2);
}

/// The largest tags the config accepts, on the longest node name, still announce.
#[test]
fn largest_tags_fit_one_announcement() {
    use crate::gossip::identity::MAX_NODE_NAME_LEN;
    use crate::gossip::supersede::MAX_TAGS_ENCODED;
    let mut tags = Tags::new();
    tags.insert("k".into(), String::new());
    let base = postcard::to_stdvec(&tags).unwrap().len();
    // One long value: its length prefix grows by a byte past 127.
    tags.insert("k".into(), "v".repeat(MAX_TAGS_ENCODED - base - 1));
    assert_eq!(postcard::to_stdvec(&tags).unwrap().len(), MAX_TAGS_ENCODED);
    let id = NodeId::new(
        "n".repeat(MAX_NODE_NAME_LEN),
        "[::1]:65535".parse().unwrap(),
        u16::MAX,
    )
    .unwrap();
    let mut core = GossipCore::new(id, Tags::new(), CoreConfig::default(), EPOCH);
    core.set_tags(tags, u64::MAX).unwrap();
}

/// A node whose state file was lost and whose clock went back announces its tags at a
/// version the cluster already holds a newer one of: it hears that one, refuses it,
/// and announces its own tags above it, which then win everywhere.
#[test]
fn own_tags_announced_again_above_a_stale_newer_version() {
    let mut sim = cluster(3);
    let stale = Superseding {
        kind: TAGS_KIND.into(),
        key: "node1".into(),
        version: 5000,
        origin: "node1".into(),
        body: postcard::to_stdvec(&Tags::new()).unwrap(),
        sig: None,
    };
    let stale = crate::gossip::message::encode_broadcast(
        &crate::gossip::message::Broadcast::Superseding(stale),
    )
    .unwrap();
    sim.nodes[0]
        .core
        .handler()
        .receive_item(&stale, None)
        .unwrap();
    let bytes = sim.nodes[1].core.lock().set_tags(web(), 10).unwrap();
    sim.nodes[1].foca.add_broadcast(&bytes).unwrap();
    assert!(sim.nodes[1].core.lock().take_republish().is_empty());
    // node1 hears the stale, newer announcement about itself, from node2.
    let mut h = sim.nodes[1].core.handler();
    assert_eq!(h.receive_item(&stale, Some(&node_id(2))).unwrap(), None);
    let mut again = sim.nodes[1].core.lock().take_republish();
    assert_eq!(again.len(), 1);
    let again = again.pop().unwrap().unwrap();
    assert!(sim.nodes[1].core.lock().take_republish().is_empty(), "once");
    sim.nodes[1].foca.add_broadcast(&again).unwrap();
    sim.flush(1);
    sim.run_for(Duration::from_secs(5));
    for i in [0, 2] {
        let core = sim.nodes[i].core.lock();
        assert_eq!(core.tag_book().tags_of("node1"), Some(&web()), "node{i}");
    }
}

/// Pruning the tags of members foca forgot keeps this node's own announcement, which
/// push/pull hands to newcomers.
#[test]
fn pruning_keeps_the_own_announcement() {
    let core = SharedCore::new(GossipCore::new(
        node_id(0),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    let bytes = core.lock().set_tags(web(), 3).unwrap();
    core.handler().receive_item(&bytes, None).unwrap();
    let gone = Superseding {
        kind: TAGS_KIND.into(),
        key: "gone".into(),
        version: 1,
        origin: "gone".into(),
        body: postcard::to_stdvec(&web()).unwrap(),
        sig: None,
    };
    let gone = crate::gossip::message::encode_broadcast(
        &crate::gossip::message::Broadcast::Superseding(gone),
    )
    .unwrap();
    core.handler().receive_item(&gone, None).unwrap();
    core.lock().prune_tags(|_| false);
    let c = core.lock();
    assert!(c.superseding_item(TAGS_KIND, "node0").is_some());
    assert!(c.superseding_item(TAGS_KIND, "gone").is_none());
    assert!(c.tag_book().tags_of("gone").is_none());
}

/// A validator refuses forged items before they are kept or relayed; node-owned slots go
/// with their node, other kinds stay.
#[test]
fn validators_refuse_and_node_owned_slots_are_pruned_with_their_node() {
    let core = SharedCore::new(GossipCore::new(
        node_id(0),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    use crate::gossip::kinds::{KindPolicy, Kinds};
    let mut kinds = Kinds::default();
    kinds.register(
        "signed",
        KindPolicy::fleet(8, std::sync::Arc::new(|i: &Superseding| i.body == b"good")),
    );
    kinds.register("owned", KindPolicy::node(4));
    core.lock().set_kinds(kinds);
    let item = |kind: &str, key: &str, origin: &str, body: &[u8]| {
        crate::gossip::message::encode_broadcast(&crate::gossip::message::Broadcast::Superseding(
            Superseding {
                kind: kind.into(),
                key: key.into(),
                version: 1,
                origin: origin.into(),
                body: body.to_vec(),
                sig: None,
            },
        ))
        .unwrap()
    };
    let mut h = core.handler();
    // Refused: not kept, and no broadcast key (not relayed).
    assert_eq!(
        h.receive_item(&item("signed", "web", "x", b"evil"), None)
            .unwrap(),
        None
    );
    assert!(
        h.receive_item(&item("signed", "web", "x", b"good"), None)
            .unwrap()
            .is_some()
    );
    h.receive_item(&item("owned", "web@gone", "gone", b""), None)
        .unwrap();
    h.receive_item(&item("owned", "web@alive", "alive", b""), None)
        .unwrap();
    assert_eq!(core.lock().stats().refused_superseding, 1);
    core.lock().prune_tags(|n| n == "alive");
    let c = core.lock();
    assert_eq!(c.superseding_item("signed", "web").unwrap().body, b"good");
    assert!(c.superseding_item("owned", "web@gone").is_none());
    assert!(c.superseding_item("owned", "web@alive").is_some());
}

fn encoded(item: Superseding) -> Vec<u8> {
    crate::gossip::message::encode_broadcast(&crate::gossip::message::Broadcast::Superseding(item))
        .unwrap()
}

/// Issue 15: a remote item of a node-owned kind about this node (a forged outcome, say)
/// is never taken over the node's own, and the node publishes its own again above it.
#[test]
fn a_remote_item_about_this_node_is_refused_and_outranked() {
    use crate::gossip::kinds::{KindPolicy, Kinds};
    let core = SharedCore::new(GossipCore::new(
        node_id(0),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    let mut kinds = Kinds::default();
    kinds.register("outcome", KindPolicy::node(4));
    core.lock().set_kinds(kinds);
    let mine = core
        .lock()
        .create_superseding("outcome", "web@node0", 10, b"ok".to_vec())
        .unwrap();
    let mut h = core.handler();
    assert!(h.receive_item(&mine, None).unwrap().is_some());
    let forged = |version, key: &str| {
        encoded(Superseding {
            kind: "outcome".into(),
            key: key.into(),
            version,
            origin: "node0".into(),
            body: b"forged".to_vec(),
            sig: None,
        })
    };
    let peer = node_id(1);
    assert_eq!(
        h.receive_item(&forged(500, "web@node0"), Some(&peer))
            .unwrap(),
        None
    );
    // A slot this node never published is refused too, and not remembered.
    assert_eq!(
        h.receive_item(&forged(9, "db@node0"), Some(&peer)).unwrap(),
        None
    );
    let mut c = core.lock();
    assert_eq!(
        c.superseding_item("outcome", "web@node0").unwrap().body,
        b"ok"
    );
    assert!(c.superseding_item("outcome", "db@node0").is_none());
    assert_eq!(c.stats().refused_about_self, 2);
    let again = c.take_republish();
    assert_eq!(again.len(), 1, "only the slot this node holds");
    drop(c);
    let again = again.into_iter().next().unwrap().unwrap();
    assert!(h.receive_item(&again, None).unwrap().is_some());
    let c = core.lock();
    let held = c.superseding_item("outcome", "web@node0").unwrap();
    assert_eq!(
        (held.body.as_slice(), held.version > 500),
        (&b"ok"[..], true)
    );
    // What the node says next still wins, whatever version its caller asks for.
    let raised = held.version;
    let next = c
        .create_superseding("outcome", "web@node0", 11, b"rolled_back".to_vec())
        .unwrap();
    drop(c);
    assert!(h.receive_item(&next, None).unwrap().is_some());
    let c = core.lock();
    let held = c.superseding_item("outcome", "web@node0").unwrap();
    assert_eq!(held.body, b"rolled_back");
    assert!(held.version > raised);
}

/// Issue 15: slots that together outgrow a stream frame made every push/pull with the
/// node fail. The state now carries what fits, fleet kinds first, and still encodes.
#[test]
fn push_pull_state_fits_a_frame_whatever_the_slots_hold() {
    use crate::gossip::envelope::MAX_FRAME_PLAINTEXT;
    use crate::gossip::handler::PUSH_PULL_SLOT_BYTES;
    use crate::gossip::kinds::{KindPolicy, Kinds};
    use crate::gossip::message::{StreamMessage, encode_stream};
    let core = SharedCore::new(GossipCore::new(
        node_id(0),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    let mut kinds = Kinds::default();
    kinds.register("bulk", KindPolicy::node(1));
    kinds.register(
        "desired",
        KindPolicy::fleet(4, std::sync::Arc::new(|_| true)),
    );
    core.lock().set_kinds(kinds);
    let mut h = core.handler();
    let peer = node_id(1);
    let big = vec![7u8; 1000];
    for i in 0..7000 {
        let item = Superseding {
            kind: "bulk".into(),
            key: format!("n{i}"),
            version: 1,
            origin: format!("n{i}"),
            body: big.clone(),
            sig: None,
        };
        assert!(
            h.receive_item(&encoded(item), Some(&peer))
                .unwrap()
                .is_some()
        );
    }
    let desired = Superseding {
        kind: "desired".into(),
        key: "web".into(),
        version: 1,
        origin: "n1".into(),
        body: b"v42".to_vec(),
        sig: None,
    };
    h.receive_item(&encoded(desired), Some(&peer)).unwrap();
    let c = core.lock();
    let state = c.push_pull_state(std::iter::empty(), crate::gossip::PROTOCOL_VERSION);
    let frame = encode_stream(&StreamMessage::PushPullRequest(state.clone())).unwrap();
    assert!(frame.len() <= MAX_FRAME_PLAINTEXT);
    let items = crate::gossip::supersede::decode_items(&state.extensions[0].bytes, true).unwrap();
    assert!(
        items.iter().any(|i| i.kind == "desired"),
        "fleet kinds first"
    );
    let bytes: usize = items.iter().map(Superseding::encoded_len).sum();
    assert!(bytes <= PUSH_PULL_SLOT_BYTES && items.len() < 7001);
}
