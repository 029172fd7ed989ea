//! In-memory cluster tests of node identities (issue 15): real foca instances whose
//! packets are screened against member cards, as the agent screens them.

use super::*;
use crate::gossip::cert::{NodeCert, Revocation};
use crate::gossip::kinds::fleet_version;
use crate::gossip::message::{Broadcast, encode_broadcast};
use crate::gossip::supersede::{Superseding, TAGS_KIND};
use crate::gossip::vouch::{IdentityPolicy, MEMBER_KIND, OwnIdentity, REVOKED_KIND};
use ed25519_dalek::SigningKey;
use foca::BroadcastHandler as _;

pub(super) fn ca() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

pub(super) fn enrolled(name: &str, seed: u8) -> OwnIdentity {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let now = EPOCH.as_secs();
    let cert = NodeCert::issue(&ca(), name, &key.verifying_key(), now - 60, now + 86_400).unwrap();
    OwnIdentity::new(key, cert).unwrap()
}

pub(super) fn policy(own: Option<OwnIdentity>) -> IdentityPolicy {
    IdentityPolicy {
        issuers: vec![ca().verifying_key()],
        required: true,
        own,
    }
}

/// `n` enrolled nodes (identity `i` for node `i`), plus the extra `outsiders` given with
/// their own policy, all with the gossip key; node 0 is the seed.
fn cluster(n: usize, outsiders: Vec<(NodeId, IdentityPolicy)>) -> Sim {
    let mut ids: Vec<NodeId> = (0..n).map(node_id).collect();
    let mut policies: Vec<IdentityPolicy> = (0..n)
        .map(|i| policy(Some(enrolled(&format!("node{i}"), 100 + i as u8))))
        .collect();
    for (id, p) in outsiders {
        ids.push(id);
        policies.push(p);
    }
    let count = ids.len();
    let mut sim = Sim::new(ids, vec![shared_key_ring(); count]);
    for (node, p) in sim.nodes.iter_mut().zip(policies) {
        node.core.lock().set_identity_policy(p);
        // The guard must be gone before foca calls back into the core.
        let card = node.core.lock().take_card();
        if let Some(Ok(card)) = card {
            node.foca.add_broadcast(&card).unwrap();
        }
    }
    sim
}

/// The agent's join: a push/pull with the seed, then an announce to it.
fn join(sim: &mut Sim, i: usize) {
    let states: Vec<_> = [0, i]
        .iter()
        .map(|&j| {
            let n = &sim.nodes[j];
            let members: Vec<_> = n.foca.iter_membership_state().cloned().collect();
            n.core
                .lock()
                .push_pull_state(members, crate::gossip::PROTOCOL_VERSION)
        })
        .collect();
    sim.nodes[0].core.lock().merge_push_pull(&states[1], true);
    sim.nodes[i].core.lock().merge_push_pull(&states[0], true);
    let seed = sim.nodes[0].id.clone();
    let node = &mut sim.nodes[i];
    node.foca.announce(seed, &mut node.rt).unwrap();
    sim.flush(i);
}

fn names(sim: &Sim, i: usize) -> Vec<String> {
    let mut v: Vec<String> = sim.nodes[i]
        .foca
        .iter_members()
        .map(|m| m.id().name.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn enrolled_nodes_form_a_cluster() {
    let n = 5;
    let mut sim = cluster(n, vec![]);
    for i in 1..n {
        join(&mut sim, i);
    }
    sim.run_for(Duration::from_secs(20));
    for i in 0..n {
        assert_eq!(
            sim.nodes[i].foca.num_members(),
            n - 1,
            "node{i}: {:?}",
            names(&sim, i)
        );
        let core = sim.nodes[i].core.lock();
        for j in 0..n {
            assert!(
                core.identities().enrolled(&format!("node{j}")),
                "node{i} lacks node{j}'s card"
            );
        }
        assert_eq!(core.stats().packets_refused_identity, 0, "node{i}");
    }
}

/// Issue 15 (ghost members, name takeover): a holder of the gossip key without a
/// certificate, and one that takes an existing node's name from another address, are
/// never members anywhere.
#[test]
fn a_gossip_key_alone_cannot_join_or_take_a_name() {
    let ghost = NodeId::new("ghost", "10.0.0.66:7946".parse().unwrap(), 0).unwrap();
    let mut impostor = node_id(1);
    impostor.addr = "10.0.0.77:7946".parse().unwrap();
    impostor.bump = 9;
    let mut sim = cluster(3, vec![(ghost, policy(None)), (impostor, policy(None))]);
    for i in 1..3 {
        join(&mut sim, i);
    }
    for i in [3, 4] {
        join(&mut sim, i);
    }
    sim.run_for(Duration::from_secs(30));
    assert!(sim.nodes[0].core.lock().stats().packets_refused_identity > 0);
    for i in 0..3 {
        let got = names(&sim, i);
        assert_eq!(got.len(), 2, "node{i}: {got:?}");
        assert!(!got.contains(&"ghost".to_owned()), "node{i}: {got:?}");
        assert!(
            sim.nodes[i]
                .foca
                .iter_members()
                .all(|m| m.id().addr != "10.0.0.77:7946".parse().unwrap()),
            "node{i} took the impostor's address for node1"
        );
    }
}

pub(super) fn item(
    origin: &str,
    kind: &str,
    key: &str,
    version: u64,
    body: Vec<u8>,
) -> Superseding {
    Superseding {
        kind: kind.into(),
        key: key.into(),
        version,
        origin: origin.into(),
        body,
        sig: None,
    }
}

/// Issue 15 (forged tags, forged outcomes): an enrolled node cannot sign for another
/// name, and an unsigned item in an enrolled name is refused.
#[test]
fn an_enrolled_node_speaks_only_for_itself() {
    let mut sim = cluster(3, vec![]);
    for i in 1..3 {
        join(&mut sim, i);
    }
    sim.run_for(Duration::from_secs(10));
    let tags: Tags = [("role".to_owned(), "evil".to_owned())].into();
    let body = postcard::to_stdvec(&tags).unwrap();
    let far = u64::try_from((EPOCH + sim.now).as_millis()).unwrap() + 1000;
    // node2 signs tags in node1's name.
    let mut forged = item("node1", TAGS_KIND, "node1", far, body.clone());
    let signer = crate::gossip::vouch::Identities::new(policy(Some(enrolled("node2", 102))));
    signer.sign_item(&mut forged);
    let unsigned = item("node1", TAGS_KIND, "node1", far, body);
    for bad in [forged, unsigned] {
        let bytes = encode_broadcast(&Broadcast::Superseding(bad)).unwrap();
        sim.nodes[2].foca.add_broadcast(&bytes).unwrap();
        let mut h = sim.nodes[0].core.handler();
        assert_eq!(
            h.receive_item(&bytes, Some(&sim.nodes[2].id.clone()))
                .unwrap(),
            None
        );
    }
    sim.flush(2);
    sim.run_for(Duration::from_secs(10));
    let core = sim.nodes[0].core.lock();
    assert_ne!(core.tag_book().tags_of("node1"), Some(&tags));
    assert!(core.stats().refused_identity >= 2);
}

/// Issue 15: a revocation signed by the enrollment key, gossiped from any node, takes a
/// leaked node's voice everywhere; its packets are then refused.
#[test]
fn a_revoked_node_is_cut_off_everywhere() {
    let mut sim = cluster(4, vec![]);
    for i in 1..4 {
        join(&mut sim, i);
    }
    sim.run_for(Duration::from_secs(10));
    let leaked = enrolled("node3", 103);
    let at_ms = u64::try_from((EPOCH + sim.now).as_millis()).unwrap();
    let r = Revocation::issue(&ca(), leaked.cert().body(), at_ms);
    let slot = item(
        "node0",
        REVOKED_KIND,
        &hex::encode(leaked.cert().body().node_key),
        fleet_version(at_ms, 0),
        r.encode(),
    );
    let bytes = encode_broadcast(&Broadcast::Superseding(slot)).unwrap();
    sim.nodes[0].foca.add_broadcast(&bytes).unwrap();
    sim.flush(0);
    sim.run_for(Duration::from_secs(60));
    for i in 0..3 {
        let core = sim.nodes[i].core.lock();
        assert!(!core.identities().enrolled("node3"), "node{i}");
        assert!(
            core.superseding_item(MEMBER_KIND, "node3").is_none(),
            "node{i}"
        );
        assert!(
            core.superseding_item(TAGS_KIND, "node3").is_none(),
            "node{i}"
        );
        drop(core);
        // It can no longer answer a probe nor refute a suspicion.
        let alive = sim.nodes[i]
            .foca
            .iter_membership_state()
            .any(|m| m.id().name == "node3" && m.state() == foca::State::Alive);
        assert!(!alive, "node{i} still sees node3 alive");
    }
}

pub(super) fn revocation_of(who: &OwnIdentity, at_ms: u64) -> Superseding {
    let r = Revocation::issue(&ca(), who.cert().body(), at_ms);
    item(
        "node0",
        REVOKED_KIND,
        &hex::encode(who.cert().body().node_key),
        fleet_version(at_ms, 0),
        r.encode(),
    )
}

pub(super) fn card_of(who: &OwnIdentity, id: &NodeId) -> Superseding {
    let body = crate::gossip::vouch::MemberCard {
        cert: who.cert().encode(),
        addr: id.addr,
        bump: id.bump,
    };
    let mut card = item(
        who.name(),
        MEMBER_KIND,
        who.name(),
        5,
        postcard::to_stdvec(&body).unwrap(),
    );
    crate::gossip::vouch::Identities::new(policy(Some(who.clone()))).sign_item(&mut card);
    card
}

/// node0 started again from `snap` (the next bump), under `policy`.
pub(super) fn restarted_lone_core(
    snap: crate::gossip::CoreSnapshot,
    policy: IdentityPolicy,
) -> SharedCore {
    let mut id = node_id(0);
    id.bump += 1;
    let core = SharedCore::new(GossipCore::restore(
        id,
        Tags::new(),
        CoreConfig::default(),
        snap,
        EPOCH,
    ));
    core.lock().set_identity_policy(policy);
    core
}

pub(super) fn lone_core() -> SharedCore {
    let core = SharedCore::new(GossipCore::new(
        node_id(0),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    core.lock()
        .set_identity_policy(policy(Some(enrolled("node0", 100))));
    core
}

/// A revocation survives a restart (the snapshot) and a SIGHUP (a new policy): the
/// revoked card is refused again in both.
#[test]
fn revocations_survive_a_restart_and_a_reload() {
    let leaked = enrolled("node3", 103);
    let core = lone_core();
    let mut h = core.handler();
    let peer = node_id(1);
    let revoke = encode_broadcast(&Broadcast::Superseding(revocation_of(&leaked, 1000))).unwrap();
    assert!(h.receive_item(&revoke, Some(&peer)).unwrap().is_some());
    let card = encode_broadcast(&Broadcast::Superseding(card_of(&leaked, &node_id(3)))).unwrap();
    assert_eq!(h.receive_item(&card, Some(&peer)).unwrap(), None);

    core.lock()
        .reload_identity_policy(policy(Some(enrolled("node0", 100))));
    assert_eq!(
        h.receive_item(&card, Some(&peer)).unwrap(),
        None,
        "after a reload"
    );

    let snap = core.lock().snapshot();
    assert_eq!(snap.revocations.len(), 1);
    let restarted = restarted_lone_core(snap, policy(Some(enrolled("node0", 100))));
    let mut h = restarted.handler();
    assert_eq!(
        h.receive_item(&card, Some(&peer)).unwrap(),
        None,
        "after a restart"
    );
    let fresh = enrolled("node4", 104);
    let other = encode_broadcast(&Broadcast::Superseding(card_of(&fresh, &node_id(4)))).unwrap();
    assert!(
        h.receive_item(&other, Some(&peer)).unwrap().is_some(),
        "others still join"
    );
}

/// A reload under other enrollment keys drops the cards the new keys do not vouch for.
#[test]
fn a_reload_checks_the_cards_held_again() {
    let core = lone_core();
    let mut h = core.handler();
    let n4 = enrolled("node4", 104);
    let card = encode_broadcast(&Broadcast::Superseding(card_of(&n4, &node_id(4)))).unwrap();
    assert!(h.receive_item(&card, Some(&node_id(1))).unwrap().is_some());
    assert!(core.lock().identities().enrolled("node4"));
    let other_ca = SigningKey::from_bytes(&[43; 32]);
    core.lock().reload_identity_policy(IdentityPolicy {
        issuers: vec![other_ca.verifying_key()],
        required: true,
        own: None,
    });
    let c = core.lock();
    assert!(!c.identities().enrolled("node4"));
    assert!(c.superseding_item(MEMBER_KIND, "node4").is_none());
}

/// Issue 15: an unsigned (forged) newer item about an enrolled node is refused and is not
/// outranked: outranking it pushed the node's versions ahead, so its next real outcome was
/// older than its own republished one and refused everywhere.
#[test]
fn a_forged_item_about_an_enrolled_node_is_not_outranked() {
    let core = lone_core();
    let mut kinds = crate::gossip::kinds::Kinds::default();
    kinds.register("outcome", crate::gossip::kinds::KindPolicy::node(4));
    core.lock().set_kinds(kinds);
    let card = core.lock().take_card().unwrap().unwrap();
    let mut h = core.handler();
    assert!(h.receive_item(&card, None).unwrap().is_some());
    let mine = core
        .lock()
        .create_superseding("outcome", "web@node0", 10, b"ok".to_vec())
        .unwrap();
    assert!(h.receive_item(&mine, None).unwrap().is_some());
    let forged = item("node0", "outcome", "web@node0", 99_999, b"forged".to_vec());
    let forged = encode_broadcast(&Broadcast::Superseding(forged)).unwrap();
    assert_eq!(h.receive_item(&forged, Some(&node_id(1))).unwrap(), None);
    let mut c = core.lock();
    assert!(c.take_republish().is_empty());
    assert_eq!(
        c.superseding_item("outcome", "web@node0").unwrap().version,
        10
    );
}

/// Gossiped items cost at most `CHECKS_PER_SECOND` signature checks a second: 1,500
/// forged cards in one second are 1,000 checks and 500 left unchecked; a real card sent
/// then waits for the next second (or a push/pull).
#[test]
fn forged_signatures_cost_a_bounded_number_of_checks_a_second() {
    use crate::gossip::vouch::CHECKS_PER_SECOND;
    let core = lone_core();
    let mut h = core.handler();
    let peer = node_id(1);
    let node3 = enrolled("node3", 103);
    let real = card_of(&node3, &node_id(3));
    for v in 0..1500u64 {
        let mut forged = real.clone();
        forged.version = 6 + v;
        forged.sig = Some([7; 64]);
        let bytes = encode_broadcast(&Broadcast::Superseding(forged)).unwrap();
        assert_eq!(h.receive_item(&bytes, Some(&peer)).unwrap(), None);
    }
    let stats = core.lock().stats();
    assert_eq!(stats.refused_identity, u64::from(CHECKS_PER_SECOND));
    assert_eq!(stats.checks_deferred, 1500 - u64::from(CHECKS_PER_SECOND));
    let card = encode_broadcast(&Broadcast::Superseding(real)).unwrap();
    assert_eq!(
        h.receive_item(&card, Some(&peer)).unwrap(),
        None,
        "deferred"
    );
    core.lock().tick(EPOCH + Duration::from_secs(1));
    assert!(
        h.receive_item(&card, Some(&peer)).unwrap().is_some(),
        "next second"
    );
}
