//! Node identities at their edges (issue 15, review): names held to their cards once they
//! showed one (revoked, restarted, in transition mode), older certificates, senders at
//! another address, kinds this build does not know, and identities off.

use super::identity::{
    ca, card_of, enrolled, item, lone_core, policy, restarted_lone_core, revocation_of,
};
use super::*;
use crate::gossip::message::{Broadcast, encode_broadcast};
use crate::gossip::supersede::TAGS_KIND;
use crate::gossip::vouch::{IdentityPolicy, MEMBER_KIND, REVOKED_KIND};
use ed25519_dalek::SigningKey;
use foca::BroadcastHandler as _;

fn transition_core() -> SharedCore {
    let core = SharedCore::new(GossipCore::new(
        node_id(0),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    core.lock().set_identity_policy(IdentityPolicy {
        required: false,
        ..policy(Some(enrolled("node0", 100)))
    });
    core
}

fn tags_from(origin: &str, version: u64) -> Vec<u8> {
    let tags: Tags = [("role".to_owned(), "evil".to_owned())].into();
    let slot = item(
        origin,
        TAGS_KIND,
        origin,
        version,
        postcard::to_stdvec(&tags).unwrap(),
    );
    encode_broadcast(&Broadcast::Superseding(slot)).unwrap()
}

fn bytes(i: crate::gossip::supersede::Superseding) -> Vec<u8> {
    encode_broadcast(&Broadcast::Superseding(i)).unwrap()
}

/// In transition, a name without a card speaks on the gossip key's word; once it showed a
/// card it never does again: not after its revocation, and not after a restart that
/// forgot its card.
#[test]
fn a_name_that_showed_a_card_stays_held_to_one() {
    let core = transition_core();
    let mut h = core.handler();
    let peer = node_id(1);
    assert!(
        h.receive_item(&tags_from("node7", 1), Some(&peer))
            .unwrap()
            .is_some(),
        "never enrolled"
    );
    let n3 = enrolled("node3", 103);
    assert!(
        h.receive_item(&bytes(card_of(&n3, &node_id(3))), Some(&peer))
            .unwrap()
            .is_some()
    );
    assert_eq!(
        h.receive_item(&tags_from("node3", 2), Some(&peer)).unwrap(),
        None,
        "unsigned"
    );
    assert!(
        h.receive_item(&bytes(revocation_of(&n3, 1000)), Some(&peer))
            .unwrap()
            .is_some()
    );
    assert_eq!(
        h.receive_item(&tags_from("node3", 3), Some(&peer)).unwrap(),
        None,
        "revoked"
    );
    assert!(!core.lock().admits(&node_id(3)));

    let snap = core.lock().snapshot();
    assert!(snap.enrolled.iter().any(|(n, _)| n == "node3"));
    let transition = IdentityPolicy {
        required: false,
        ..policy(Some(enrolled("node0", 100)))
    };
    let restarted = restarted_lone_core(snap, transition);
    let mut h = restarted.handler();
    assert_eq!(
        h.receive_item(&tags_from("node3", 4), Some(&peer)).unwrap(),
        None,
        "after a restart"
    );
    assert!(!restarted.lock().admits(&node_id(3)));
}

/// Items said before a card arrived are checked against it once it does: an unsigned one
/// a forger slipped in meanwhile goes.
#[test]
fn what_was_said_before_the_card_arrived_is_checked_against_it() {
    let core = transition_core();
    let mut h = core.handler();
    let peer = node_id(1);
    assert!(
        h.receive_item(&tags_from("node3", 1), Some(&peer))
            .unwrap()
            .is_some()
    );
    let n3 = enrolled("node3", 103);
    h.receive_item(&bytes(card_of(&n3, &node_id(3))), Some(&peer))
        .unwrap();
    assert!(core.lock().superseding_item(TAGS_KIND, "node3").is_none());
}

/// A stolen, older identity file cannot take a name back from its renewed certificate.
#[test]
fn an_older_certificate_cannot_take_a_name_back() {
    let core = lone_core();
    let mut h = core.handler();
    let peer = node_id(1);
    let now = EPOCH.as_secs();
    let renewed_key = SigningKey::from_bytes(&[77; 32]);
    let cert = crate::gossip::cert::NodeCert::issue(
        &ca(),
        "node3",
        &renewed_key.verifying_key(),
        now,
        now + 3600,
    )
    .unwrap();
    let renewed = crate::gossip::vouch::OwnIdentity::new(renewed_key, cert).unwrap();
    let mut card = card_of(&renewed, &node_id(3));
    card.version = 10;
    crate::gossip::vouch::Identities::new(policy(Some(renewed))).sign_item(&mut card);
    assert!(h.receive_item(&bytes(card), Some(&peer)).unwrap().is_some());
    let old = enrolled("node3", 103); // valid from an hour ago
    let mut back = card_of(&old, &node_id(3));
    back.version = 20;
    crate::gossip::vouch::Identities::new(policy(Some(old))).sign_item(&mut back);
    assert_eq!(h.receive_item(&bytes(back), Some(&peer)).unwrap(), None);
}

/// A packet in an admitted node's name from another address is not that node's; from its
/// address, it is only with its MAC.
#[test]
fn a_packet_from_another_address_is_refused() {
    use crate::gossip::screen::Screened;
    let core = lone_core();
    let header = foca::Header {
        src: node_id(3),
        src_incarnation: 9,
        dst: node_id(0),
        message: foca::Message::<NodeId>::Ping(1),
    };
    let mut pkt = postcard::to_stdvec(&header).unwrap();
    pkt.extend_from_slice(&[0, 0]);
    let n3 = enrolled("node3", 103);
    core.handler()
        .receive_item(&bytes(card_of(&n3, &node_id(3))), Some(&node_id(1)))
        .unwrap();
    let elsewhere: std::net::SocketAddr = "10.9.9.9:7946".parse().unwrap();
    let (got, _) = core
        .lock()
        .screen_packet(&pkt, None, elsewhere, crate::gossip::screen::Stranger(0))
        .unwrap();
    assert!(matches!(got, Screened::Refused { .. }), "{got:?}");
    assert_eq!(core.lock().stats().packets_spoofed, 1);
    // From its address: only with node3's MAC for node0 (a root elsewhere can forge the
    // address, not the MAC).
    let mut at_n3 = crate::gossip::vouch::Identities::new(policy(Some(n3)));
    let n0_card = card_of(&enrolled("node0", 100), &node_id(0));
    let learned = at_n3.check_card(&n0_card, crate::gossip::tests::EPOCH.as_secs());
    at_n3.learn_card("node0", learned.unwrap());
    let now_ms = u64::try_from(crate::gossip::tests::EPOCH.as_millis()).unwrap();
    let auth = at_n3.packet_auth("node0", &pkt, now_ms).unwrap();
    let screen = |auth: Option<&crate::gossip::pairwise::Auth>| {
        let (got, _) = core
            .lock()
            .screen_packet(
                &pkt,
                auth,
                node_id(3).addr,
                crate::gossip::screen::Stranger(0),
            )
            .unwrap();
        matches!(got, Screened::Pass { .. })
    };
    let forged = crate::gossip::pairwise::Auth {
        tag: [0; 16],
        ..auth
    };
    let old = at_n3.packet_auth("node0", &pkt, now_ms - 10_000).unwrap();
    assert!(!screen(None), "no MAC");
    assert!(!screen(Some(&forged)), "a forged MAC");
    assert!(screen(Some(&auth)), "node3's MAC");
    assert!(
        !screen(Some(&old)),
        "node3's, recorded earlier and played back"
    );
    let stats = core.lock().stats();
    let counts = (stats.packets_unauthenticated, stats.packets_forged);
    assert_eq!((counts, stats.packets_replayed), ((1, 1), 1));
}

/// Kinds this build does not know are said by their origin too, once identities hold.
#[test]
fn an_unknown_kind_needs_its_origins_signature() {
    let core = lone_core();
    let mut h = core.handler();
    let peer = node_id(1);
    let n3 = enrolled("node3", 103);
    h.receive_item(&bytes(card_of(&n3, &node_id(3))), Some(&peer))
        .unwrap();
    let unsigned = item("node3", "future.kind", "k", 1, vec![]);
    assert_eq!(
        h.receive_item(&bytes(unsigned.clone()), Some(&peer))
            .unwrap(),
        None
    );
    let mut signed = unsigned;
    crate::gossip::vouch::Identities::new(policy(Some(n3))).sign_item(&mut signed);
    assert!(
        h.receive_item(&bytes(signed), Some(&peer))
            .unwrap()
            .is_some()
    );
}

/// With identities off a node keeps no card and no revocation (it could check neither),
/// so none fills its tables before it is enrolled.
#[test]
fn identities_off_keep_no_cards_or_revocations() {
    let core = SharedCore::new(GossipCore::new(
        node_id(0),
        Tags::new(),
        CoreConfig::default(),
        EPOCH,
    ));
    let mut h = core.handler();
    let peer = node_id(1);
    let n3 = enrolled("node3", 103);
    assert_eq!(
        h.receive_item(&bytes(card_of(&n3, &node_id(3))), Some(&peer))
            .unwrap(),
        None
    );
    assert_eq!(
        h.receive_item(&bytes(revocation_of(&n3, 5)), Some(&peer))
            .unwrap(),
        None
    );
    let c = core.lock();
    assert!(c.superseding_item(MEMBER_KIND, "node3").is_none());
    assert!(c.superseding_items(REVOKED_KIND).is_empty());
}
