use super::*;
use crate::gossip::kinds::fleet_version;

const NOW: u64 = 1_700_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn own(name: &str, seed: u8) -> OwnIdentity {
    let k = key(seed);
    let cert = NodeCert::issue(&key(1), name, &k.verifying_key(), NOW - 60, NOW + 3600).unwrap();
    OwnIdentity::new(k, cert).unwrap()
}

fn id(name: &str, bump: u16) -> NodeId {
    NodeId::new(name, "10.0.0.1:7946".parse().unwrap(), bump).unwrap()
}

fn policy(required: bool, own: Option<OwnIdentity>) -> IdentityPolicy {
    IdentityPolicy {
        issuers: vec![key(1).verifying_key()],
        required,
        own,
    }
}

/// The card `who` would publish, signed by `who`'s key.
fn card_item(who: &OwnIdentity, bump: u16) -> Superseding {
    let body = MemberCard {
        cert: who.cert().encode(),
        addr: "10.0.0.1:7946".parse().unwrap(),
        bump,
    };
    let mut item = Superseding {
        kind: MEMBER_KIND.into(),
        key: who.name().into(),
        version: 1,
        origin: who.name().into(),
        body: postcard::to_stdvec(&body).unwrap(),
        sig: None,
    };
    Identities::new(policy(true, Some(who.clone()))).sign_item(&mut item);
    item
}

fn item(origin: &str) -> Superseding {
    Superseding {
        kind: "deploy.outcome".into(),
        key: format!("web@{origin}"),
        version: 1,
        origin: origin.into(),
        body: b"ok".to_vec(),
        sig: None,
    }
}

fn with_card(required: bool, who: &OwnIdentity, bump: u16) -> Identities {
    let mut ids = Identities::new(policy(required, None));
    let card = ids.check_card(&card_item(who, bump), NOW).unwrap();
    ids.learn_card(who.name(), card);
    ids
}

#[test]
fn a_card_vouches_for_exactly_its_identity() {
    let web1 = own("web-1", 2);
    let ids = with_card(true, &web1, 4);
    assert!(ids.admits(&id("web-1", 4)));
    assert!(!ids.admits(&id("web-1", 5)), "another bump");
    let mut moved = id("web-1", 4);
    moved.addr = "10.0.0.9:7946".parse().unwrap();
    assert!(!ids.admits(&moved), "another address");
    assert!(!ids.admits(&id("ghost", 0)), "required: no card, no voice");
    let transition = with_card(false, &web1, 4);
    assert!(
        transition.admits(&id("ghost", 0)),
        "transition: a name without a card"
    );
    assert!(
        !transition.admits(&id("web-1", 9)),
        "but a carded name is held to it"
    );
    assert!(Identities::new(IdentityPolicy::default()).admits(&id("any", 1)));
}

/// Issue 15 (name takeover, forged slots): a key holder with its own certificate cannot
/// make a card for another name, nor sign for it.
#[test]
fn a_card_or_item_in_another_name_is_refused() {
    let web1 = own("web-1", 2);
    let evil = own("evil", 3);
    let ids = with_card(true, &web1, 4);
    // evil's certificate in web-1's card.
    let mut stolen_name = card_item(&evil, 1);
    stolen_name.key = "web-1".into();
    stolen_name.origin = "web-1".into();
    assert!(ids.check_card(&stolen_name, NOW).is_err());
    // web-1's certificate, re-signed by evil (to move it to evil's address).
    let mut copied = card_item(&web1, 9);
    Identities::new(policy(true, Some(evil.clone()))).sign_item(&mut copied);
    assert!(matches!(
        ids.check_card(&copied, NOW),
        Err(Refusal::BadSignature(_))
    ));
    // An item in web-1's name: unsigned, or signed by evil.
    assert!(matches!(
        ids.check_node_item(&item("web-1")),
        Err(Refusal::Unsigned(_))
    ));
    let mut forged = item("web-1");
    Identities::new(policy(true, Some(evil))).sign_item(&mut forged);
    assert!(matches!(
        ids.check_node_item(&forged),
        Err(Refusal::BadSignature(_))
    ));
    let mut real = item("web-1");
    Identities::new(policy(true, Some(web1))).sign_item(&mut real);
    ids.check_node_item(&real).unwrap();
    let mut edited = real.clone();
    edited.version = 2;
    assert!(
        ids.check_node_item(&edited).is_err(),
        "the version is signed too"
    );
}

#[test]
fn a_card_needs_a_trusted_unexpired_certificate() {
    let stranger_ca = key(7);
    let k = key(2);
    let cert = NodeCert::issue(&stranger_ca, "web-1", &k.verifying_key(), NOW, NOW + 60).unwrap();
    let rogue = OwnIdentity::new(k, cert).unwrap();
    let ids = Identities::new(policy(true, None));
    assert!(matches!(
        ids.check_card(&card_item(&rogue, 1), NOW),
        Err(Refusal::Cert(CertError::UnknownIssuer { .. }))
    ));
    let web1 = own("web-1", 2);
    assert!(matches!(
        ids.check_card(&card_item(&web1, 1), NOW + 3601),
        Err(Refusal::Cert(CertError::Expired { .. }))
    ));
    assert!(
        OwnIdentity::new(key(5), web1.cert().clone()).is_err(),
        "key mismatch"
    );
}

#[test]
fn a_revocation_withdraws_the_card_and_refuses_it_again() {
    let web1 = own("web-1", 2);
    let mut ids = with_card(true, &web1, 4);
    let r = Revocation::issue(&key(1), web1.cert().body(), 1234);
    let slot = Superseding {
        kind: REVOKED_KIND.into(),
        key: hex::encode(web1.cert().body().node_key),
        version: fleet_version(1234, 0),
        origin: "anyone".into(),
        body: r.encode(),
        sig: None,
    };
    let body = ids.check_revocation(&slot).unwrap();
    assert_eq!(ids.revoke(&body), vec!["web-1".to_owned()]);
    assert!(!ids.admits(&id("web-1", 4)));
    assert!(matches!(
        ids.check_card(&card_item(&web1, 5), NOW),
        Err(Refusal::Revoked(_))
    ));
    // Its end passed: the key is forgotten with the certificate it revoked.
    ids.expire(NOW + 3601);
    assert!(ids.revoked.is_empty());
    // A revocation by a key nobody trusts, or re-versioned, is refused.
    let mut bad = slot.clone();
    bad.body = Revocation::issue(&key(7), web1.cert().body(), 1234).encode();
    assert!(ids.check_revocation(&bad).is_err());
    let mut moved = slot;
    moved.version += 1;
    assert!(ids.check_revocation(&moved).is_err());
}

#[test]
fn answers_and_leave_notices_are_their_senders() {
    let web1 = own("web-1", 2);
    let ids = with_card(true, &web1, 4);
    let signer = Identities::new(policy(true, Some(web1)));
    let mut r = QueryResponse {
        id: crate::gossip::query::QueryId(7),
        from: id("web-1", 4),
        payload: b"v42".to_vec(),
        sig: None,
    };
    assert!(ids.check_response(&r).is_err(), "unsigned");
    signer.sign_response(&mut r);
    ids.check_response(&r).unwrap();
    r.payload = b"v41".to_vec();
    assert!(ids.check_response(&r).is_err(), "edited");
    let me = id("web-1", 4);
    let sig = signer.sign_leave(&me);
    ids.check_leave(&me, sig.as_ref()).unwrap();
    assert!(ids.check_leave(&me, None).is_err());
    assert!(ids.check_leave(&id("web-1", 5), sig.as_ref()).is_err());
}

/// While a fleet is enrolled, a signed word from a name whose card has not arrived yet
/// counts as the gossip key's word, as an unsigned one would (a leave was lost this way).
#[test]
fn transition_takes_a_signed_word_from_a_name_without_a_card() {
    let web1 = own("web-1", 2);
    let ids = Identities::new(policy(false, None));
    let signer = Identities::new(policy(false, Some(web1)));
    let me = id("web-1", 4);
    let sig = signer.sign_leave(&me);
    ids.check_leave(&me, sig.as_ref()).unwrap();
    let mut i = item("web-1");
    signer.sign_item(&mut i);
    ids.check_node_item(&i).unwrap();
    let required = Identities::new(policy(true, None));
    assert!(required.check_leave(&me, sig.as_ref()).is_err());
}
