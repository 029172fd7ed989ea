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
        issued_at,
        id: [id; 16],
    }
}

fn verifier(keys: &[&SigningKey]) -> Verifier {
    Verifier::new(
        Policy {
            trusted: keys.iter().map(|k| k.verifying_key()).collect(),
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
