//! A peer's push/pull state (any stream message) merged by a node: into a fresh gossip
//! core directly, then through the agent's state machine as a request a peer pushed to it
//! and as the reply to its own join dial (screening, foca's `apply_many`, announcing).
#![no_main]

use droot_fleet::agent::sansio::Dial;
use droot_fleet::gossip::message::{self, StreamMessage};
use droot_fleet::gossip::pushpull::screen_members;
use droot_fleet::gossip::{CoreConfig, GossipCore, NodeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let state = match message::decode_stream(data) {
        Ok(StreamMessage::PushPullRequest(s) | StreamMessage::PushPullReply(s)) => s,
        _ => return,
    };
    let now = droot_fleet_fuzz::now();
    let me = NodeId::new("fuzz-node", "10.0.0.1:7946".parse().unwrap(), 0).unwrap();
    let mut core = GossipCore::new(
        me.clone(),
        Default::default(),
        CoreConfig::default(),
        now.wall,
    );
    for sender_checked in [true, false] {
        core.merge_push_pull(&state, sender_checked);
    }
    let screened = screen_members(&me, [], state.members.clone(), |_| false);
    assert_eq!(
        screened.apply.len() + screened.suspect.len() + screened.ignored,
        state.members.len()
    );

    let mut machine = droot_fleet_fuzz::machine();
    machine.start(now, Vec::new());
    let peer = "10.0.0.2".parse().unwrap();
    machine.push_pull_request(now, state.clone(), state.version, peer);
    machine.push_pull_done(now, "10.0.0.2:7946".into(), Dial::Join, Ok(state.clone()));
    machine.snapshot_tick(now);
    // Whatever it merged, the node can still answer the next exchange.
    let (ours, _) = machine.push_pull_request(now, state, 3, peer);
    let reply = message::encode_stream(&StreamMessage::PushPullReply(ours));
    assert!(reply.is_ok(), "{reply:?}");
});
