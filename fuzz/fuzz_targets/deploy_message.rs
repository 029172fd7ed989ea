//! The deploy messages gossip carries, decoded and acted on by a deploy controller that
//! checks no signature (`--dev`, so mutated bodies reach the logic behind the check): the
//! input as a `_deploy` event, as a `_rollout` order, and as a list of superseding slots
//! (desired states, outcomes, orders, app lists); plus the outcome, state-file and chunk
//! index decoders.
#![no_main]

use droot_fleet::deploy::control::SignedControl;
use droot_fleet::deploy::controller::core::Persisted;
use droot_fleet::deploy::controller::targets::MemberView;
use droot_fleet::deploy::signed::{SignedEvent, Trust};
use droot_fleet::deploy::status::NodeOutcome;
use droot_fleet::fanout::index::ChunkIndex;
use droot_fleet::gossip::supersede;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SignedEvent::decode_unverified(data) {
        // What decodes is within the bounds `encode` keeps.
        let bytes = s.encode().expect("a decoded event encodes");
        assert_eq!(
            SignedEvent::decode_unverified(&bytes).map(|d| d.event),
            Ok(s.event)
        );
    }
    let _ = SignedControl::decode_signed(data, &Trust::DevUnverified);
    let _ = postcard::from_bytes::<NodeOutcome>(data);
    let _ = Persisted::decode(data);
    // The chunk index an artifact store serves beside the artifact.
    if let Ok(index) = ChunkIndex::decode(data) {
        assert_eq!(ChunkIndex::decode(&index.encode()), Ok(index));
    }

    let now = droot_fleet_fuzz::WALL.as_secs();
    let mut core = droot_fleet_fuzz::controller(Trust::DevUnverified);
    let tags: droot_fleet::gossip::Tags = [("role".to_owned(), "web".to_owned())].into();
    let members = ["fuzz-node", "a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            MemberView::from_member(droot_fleet::wire::Member {
                name: (*n).to_owned(),
                addr: "127.0.0.1:7946".into(),
                status: ["alive", "suspect", "failed", "alive"][i].into(),
                tags: tags.clone(),
                // One agent too old for an event that pins a chunk index.
                deploy_format: [2, 2, 2, 1][i],
                apps: None,
                identity: None,
            })
        })
        .collect();
    core.on_members(members);
    core.on_synced();
    core.on_event(data, now);
    core.on_control(data, now);
    if let Ok(items) = supersede::decode_items(data, false) {
        for item in items.iter().filter(|i| i.validate().is_ok()) {
            core.on_slot(item);
        }
    }
    core.on_tick(now * 1000 + 3_600_000);
    if let Some(ev) = core.desired("web").cloned() {
        let _ = core.progress(&ev.id_hex());
    }
    let _ = core.phase("web");
    let _ = Persisted::decode(&core.persisted().encode()).expect("its own state reads back");
});
