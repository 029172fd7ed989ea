use super::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn event(id: u8, issued_at: u64) -> DeployEvent {
    DeployEvent {
        app: "web".into(),
        version: "v42".into(),
        url: "s3://bucket/web/v42.tar.gz".into(),
        sha256: Some([7; 32]),
        targets: Targets {
            nodes: vec!["^web-".into()],
            tags: vec![("role".into(), "^front$".into())],
        },
        rollout: Rollout {
            max_parallel: Some(MaxParallel::Percent(25)),
            canary: 1,
        },
        issued_at_ms: issued_at * 1000,
        id: [id; 16],
        options: Default::default(),
        chunks: None,
    }
}

fn verifier(keys: &[&SigningKey]) -> Verifier {
    Verifier::new(
        Policy {
            trusted: Trust::Keys(keys.iter().map(|k| k.verifying_key()).collect()),
            max_age: 600,
            max_skew: 30,
        },
        4,
    )
}

const NOW: u64 = 1_800_000_000;

#[test]
fn round_trip_and_compact() {
    let k = key(1);
    let s = SignedEvent::sign(event(1, NOW), &k).unwrap();
    let bytes = s.encode().unwrap();
    // Raw digest, id and signature: well under a kilobyte.
    assert!(bytes.len() < 250, "{} bytes", bytes.len());
    let back = verifier(&[&k]).accept(&bytes, NOW).unwrap();
    assert_eq!(back.event, event(1, NOW));
    assert_eq!(back.encode().unwrap(), bytes);
}

#[test]
fn too_large_is_refused_at_encode() {
    let mut ev = event(1, NOW);
    ev.url = format!("https://example.com/{}", "a".repeat(MAX_SIGNED_EVENT_LEN));
    match SignedEvent::sign(ev, &key(1)) {
        Err(EncodeError::TooLarge { size, max }) => {
            assert_eq!(max, MAX_SIGNED_EVENT_LEN);
            assert!(size > max);
        }
        other => panic!("{other:?}"),
    }
    let mut ev = event(1, NOW);
    ev.url = "u".repeat(800);
    SignedEvent::sign(ev, &key(1)).expect("800-byte URL fits");
}

#[test]
fn untrusted_key_and_forgery_are_refused() {
    let bytes = SignedEvent::sign(event(1, NOW), &key(2))
        .unwrap()
        .encode()
        .unwrap();
    assert!(matches!(
        verifier(&[&key(1)]).accept(&bytes, NOW),
        Err(VerifyError::BadSignature { .. })
    ));
    assert!(matches!(
        verifier(&[]).accept(&bytes, NOW),
        Err(VerifyError::NoTrustedKeys)
    ));
    // Flip every byte in turn: never accepted.
    let k = key(1);
    let good = SignedEvent::sign(event(1, NOW), &k)
        .unwrap()
        .encode()
        .unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(verifier(&[&k]).accept(&bad, NOW).is_err(), "byte {i}");
    }
    assert!(matches!(
        verifier(&[&k]).accept(&good[..good.len() - 1], NOW),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn replay_stale_and_future() {
    let k = key(1);
    let mut v = verifier(&[&k]);
    let enc = |id, at| {
        SignedEvent::sign(event(id, at), &k)
            .unwrap()
            .encode()
            .unwrap()
    };
    let first = enc(1, NOW);
    v.accept(&first, NOW).unwrap();
    assert!(matches!(
        v.accept(&first, NOW + 1),
        Err(VerifyError::Replayed { .. })
    ));
    assert!(matches!(
        v.accept(&enc(2, NOW - 601), NOW),
        Err(VerifyError::Stale {
            age: 601,
            max_age: 600,
            ..
        })
    ));
    v.accept(&enc(3, NOW - 600), NOW).unwrap();
    assert!(matches!(
        v.accept(&enc(4, NOW + 31), NOW),
        Err(VerifyError::FromFuture {
            ahead: 31,
            skew: 30,
            ..
        })
    ));
    v.accept(&enc(5, NOW + 30), NOW).unwrap();
    // A refused event was not recorded: it is accepted once valid.
    v.accept(&enc(4, NOW + 31), NOW + 1).unwrap();
}

#[test]
fn seen_set_is_bounded_and_forgotten_ids_stay_refused() {
    let mut seen = SeenIds::new(3);
    for i in 0..10u8 {
        assert!(!seen.is_replay(&[i; 16], 100 + u64::from(i)));
        seen.insert([i; 16], 100 + u64::from(i));
        assert!(seen.len() <= 3);
    }
    for i in 0..10u8 {
        assert!(seen.is_replay(&[i; 16], 100 + u64::from(i)), "id {i}");
    }
    assert!(!seen.is_replay(&[99; 16], 110));
}

#[test]
fn keys_round_trip_through_text() {
    let k = generate_signing_key();
    let back = signing_key_from_text(&signing_key_to_text(&k), "key file").unwrap();
    assert_eq!(back.to_bytes(), k.to_bytes());
    let pubk = public_key_from_text(&public_key_text(&k.verifying_key())).unwrap();
    assert_eq!(pubk, k.verifying_key());
    assert!(signing_key_from_text("bm9wZQ==", "key file").is_err());
    assert!(generate_signing_key().to_bytes() != k.to_bytes());
    assert_ne!(DeployEvent::random_id(), DeployEvent::random_id());
}

#[test]
fn max_parallel_parses() {
    assert_eq!("5".parse(), Ok(MaxParallel::Count(5)));
    assert_eq!("25%".parse(), Ok(MaxParallel::Percent(25)));
    for bad in ["0", "0%", "101%", "x", "-1", ""] {
        assert!(bad.parse::<MaxParallel>().is_err(), "{bad}");
    }
}

/// An event of `app` padded (through its URL) to exactly `len` encoded bytes.
fn event_of_len(app: &str, len: usize) -> SignedEvent {
    let mut ev = event(9, NOW);
    ev.app = app.into();
    let base = SignedEvent::sign(ev.clone(), &key(1))
        .unwrap()
        .encode()
        .unwrap()
        .len();
    let mut pad = len.saturating_sub(base);
    loop {
        ev.url = format!("s3://b/{}", "u".repeat(pad));
        let body = postcard::to_allocvec(&ev).unwrap();
        let wire = postcard::to_allocvec(&Wire {
            body,
            signature: vec![0; 64],
        })
        .unwrap();
        match wire.len().cmp(&len) {
            std::cmp::Ordering::Equal => break,
            std::cmp::Ordering::Greater => pad -= 1,
            std::cmp::Ordering::Less => pad += 1,
        }
    }
    let signature = key(1).sign(&message(&postcard::to_allocvec(&ev).unwrap()));
    SignedEvent {
        body: postcard::to_allocvec(&ev).unwrap(),
        event: ev,
        signature: signature.to_bytes(),
        signer: Some(key(1).verifying_key()),
    }
}

/// Regression: an event that fit a user event but not the app's `deploy.desired` slot was
/// accepted and delivered, and then nodes that were away never converged to it (the slot
/// was refused with a warning). The limit is the smaller of the two, for any app name.
#[test]
fn the_largest_event_fits_both_the_user_event_and_the_desired_slot() {
    use crate::gossip::event::{EventId, UserEvent};
    use crate::gossip::message::{Broadcast, encode_broadcast};
    use crate::gossip::supersede::{MAX_NAME_LEN, Superseding};
    for app in [
        "w".to_string(),
        "web-frontend".into(),
        "a".repeat(MAX_NAME_LEN),
    ] {
        let max = max_signed_len(&app);
        assert!(max <= MAX_SIGNED_EVENT_LEN);
        let bytes = event_of_len(&app, max)
            .encode()
            .expect("the largest event encodes");
        assert_eq!(bytes.len(), max);
        let user = UserEvent::new(
            EventId(u128::MAX),
            "n".repeat(MAX_NODE_NAME_LEN),
            u64::MAX,
            EVENT_NAME,
            bytes.clone(),
        )
        .unwrap();
        encode_broadcast(&Broadcast::Event(user)).expect("fits a user event");
        let slot = Superseding {
            kind: super::super::status::DESIRED_KIND.into(),
            key: app.clone(),
            version: u64::MAX,
            origin: "n".repeat(MAX_NODE_NAME_LEN),
            body: bytes,
            sig: None,
        };
        encode_broadcast(&Broadcast::Superseding(slot)).expect("fits the desired slot");
        // A receiver refuses the one byte more, however it was made.
        let over = event_of_len(&app, max + 1);
        let wire = postcard::to_allocvec(&Wire {
            body: over.body.clone(),
            signature: over.signature.to_vec(),
        })
        .unwrap();
        if wire.len() <= MAX_SIGNED_EVENT_LEN {
            let mut v = Verifier::new(
                Policy {
                    trusted: Trust::Keys(vec![key(1).verifying_key()]),
                    max_age: 600,
                    max_skew: 30,
                },
                4,
            );
            match v.accept(&wire, NOW) {
                Err(VerifyError::TooLarge { size, max: m }) => {
                    assert_eq!((size, m), (max + 1, max))
                }
                other => panic!("{app}: a receiver took one byte over: {other:?}"),
            }
        }
        match event_of_len(&app, max + 1).encode() {
            Err(EncodeError::TooLarge { size, max: m }) => assert_eq!((size, m), (max + 1, max)),
            other => panic!("{app}: one byte over was not refused: {other:?}"),
        }
    }
}

#[test]
fn seen_ids_survive_a_snapshot_with_their_floor() {
    let mut seen = SeenIds::new(2);
    for i in 1..=3u8 {
        seen.insert([i; 16], u64::from(i) * 1000);
    }
    let mut back = SeenIds::new(2);
    back.restore(&seen.snapshot());
    assert!(back.is_replay(&[2; 16], 2000) && back.is_replay(&[3; 16], 3000));
    // id 1 was forgotten; its issued-at is the floor, so it stays refused.
    assert!(back.is_replay(&[1; 16], 1000));
    assert!(!back.is_replay(&[4; 16], 4000));
    // A smaller capacity after a restart forgets the oldest, raising the floor.
    let mut small = SeenIds::new(1);
    small.restore(&seen.snapshot());
    assert!(small.is_replay(&[2; 16], 2000) && small.is_replay(&[3; 16], 3000));
}

/// Options travel after the event, signed with it; an event without options encodes as it
/// did before they existed (agents of the previous release still take it).
#[test]
fn options_round_trip_and_are_absent_when_unset() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let plain = event(1, 1000);
    let signed = SignedEvent::sign(plain.clone(), &key).unwrap();
    assert_eq!(signed.body, postcard::to_allocvec(&plain).unwrap());
    let mut ev = event(2, 1000);
    ev.options = Options {
        ignore_stop_hook_failures: true,
        min_healthy: Some(MinHealthy::Percent(75)),
        progress_deadline_secs: Some(90),
    };
    let bytes = SignedEvent::sign(ev.clone(), &key)
        .unwrap()
        .encode()
        .unwrap();
    let back = SignedEvent::decode_verified(&bytes, &[key.verifying_key()]).unwrap();
    assert_eq!(back.event, ev);
    assert_eq!("75%".parse::<MinHealthy>(), Ok(MinHealthy::Percent(75)));
    assert_eq!("0".parse::<MinHealthy>(), Ok(MinHealthy::Count(0)));
    assert!("101%".parse::<MinHealthy>().is_err() && "x".parse::<MinHealthy>().is_err());
}

/// A chunk index digest rides after the options (default ones too) and comes back; an
/// event without one encodes as before it existed, and bytes after it are refused.
#[test]
fn a_chunk_index_digest_round_trips_with_or_without_options() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let trusted = [key.verifying_key()];
    for min_healthy in [None, Some(MinHealthy::Count(2))] {
        let mut ev = event(3, 1000);
        ev.options.min_healthy = min_healthy;
        ev.chunks = Some([9; 32]);
        let signed = SignedEvent::sign(ev.clone(), &key).unwrap();
        let back = SignedEvent::decode_verified(&signed.encode().unwrap(), &trusted).unwrap();
        assert_eq!(back.event, ev);
        let mut longer = signed.clone();
        longer.body.push(0);
        let sig = key.sign(&message(&longer.body)).to_bytes();
        longer.signature = sig;
        let refused = SignedEvent::decode_verified(&longer.encode().unwrap(), &trusted);
        assert!(
            matches!(refused, Err(VerifyError::Malformed(_))),
            "{refused:?}"
        );
    }
    let plain = SignedEvent::sign(event(4, 1000), &key).unwrap();
    assert_eq!(plain.body, postcard::to_allocvec(&event(4, 1000)).unwrap());
}

/// The journal records who signed a deploy: the id of the trusted key its signature
/// verified under, among several; none for an event taken unchecked (`--dev`).
#[test]
fn a_verified_event_names_the_key_that_signed_it() {
    let bytes = SignedEvent::sign(event(1, NOW), &key(2))
        .unwrap()
        .encode()
        .unwrap();
    let trusted = [key(1).verifying_key(), key(2).verifying_key()];
    let back = SignedEvent::decode_verified(&bytes, &trusted).unwrap();
    let id = crate::keytext::key_id(&key(2).verifying_key());
    assert_eq!(back.signer_id(), Some(id));
    assert_ne!(back.signer_id(), Some(crate::keytext::key_id(&trusted[0])));
    assert_eq!(
        SignedEvent::decode_unverified(&bytes).unwrap().signer_id(),
        None
    );
}
