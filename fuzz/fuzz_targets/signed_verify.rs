//! Signature checks of deploy events and rollout orders under one trusted key (the seeds
//! are signed with it): what verifies must be what the unverified decoder reads, a
//! verifier accepts an event once, and a controller acts only on what verifies.
#![no_main]

use droot_fleet::deploy::control::SignedControl;
use droot_fleet::deploy::signed::{SignedEvent, Verifier, VerifyError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = droot_fleet_fuzz::operator().verifying_key();
    let policy = droot_fleet_fuzz::policy();
    let now = droot_fleet_fuzz::WALL.as_secs();
    if let Ok(s) = SignedEvent::decode_verified(data, &[key]) {
        assert!(s.signer_id().is_some(), "verified without a signer");
        let plain = SignedEvent::decode_unverified(data).expect("verified, so it decodes");
        assert_eq!(plain.event, s.event);
    }
    let _ = SignedEvent::decode_trusted(data, &policy.trusted);
    let mut verifier = Verifier::new(policy.clone(), 16);
    if verifier.accept(data, now).is_ok() {
        assert!(
            matches!(
                verifier.accept(data, now),
                Err(VerifyError::Replayed { .. })
            ),
            "an event was accepted twice"
        );
    }
    if let Ok(c) = SignedControl::decode(data, &policy.trusted, now, policy.max_skew) {
        assert_eq!(c.bytes(), data);
    }
    let mut core = droot_fleet_fuzz::controller(policy.trusted.clone());
    core.on_synced();
    core.on_event(data, now);
    core.on_control(data, now);
    let _ = core.admit(data, now);
    let _ = core.admit_control(data, now);
});
