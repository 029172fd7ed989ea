//! Suspicions heard from other nodes: foca times out only those its own probes raise.

use foca::{Header, Member, Message, State};

use super::*;

/// A foca packet from node `from` to node `to` that carries `updates`, as a datagram.
fn foca_datagram(sim: &Sim, from: usize, to: usize, updates: &[Member<NodeId>]) -> Vec<u8> {
    let header = Header {
        src: sim.nodes[from].id.clone(),
        src_incarnation: 0,
        dst: sim.nodes[to].id.clone(),
        message: Message::Gossip,
    };
    let mut pkt = postcard::to_stdvec(&header).unwrap();
    pkt.extend_from_slice(&(updates.len() as u16).to_be_bytes());
    for m in updates {
        pkt.extend(postcard::to_stdvec(m).unwrap());
    }
    message::encode_foca_datagram(&pkt, None)
}

fn suspicion_timers(node: &Node, about: &NodeId) -> Vec<foca::Incarnation> {
    (node.log.iter())
        .filter_map(|e| match e {
            Effect::Schedule {
                timer:
                    Timer::SuspicionExpired {
                        member,
                        incarnation,
                    },
                ..
            } if member == about => Some(*incarnation),
            _ => None,
        })
        .collect()
}

/// A node that hears of a dead member's suspicion, and misses every down verdict after
/// it, times the suspicion out itself: before, the member stayed listed until this
/// node's own probe round reached it (63 s at 100 nodes in the simulator).
#[test]
fn a_heard_suspicion_of_a_dead_member_times_out() {
    let mut sim = Sim::cluster((0..3).map(|_| Setup::default()).collect());
    let c = sim.nodes[2].id.clone();
    sim.nodes[2].up = false;
    let from = sim.nodes[1].id.addr;
    let plain = foca_datagram(&sim, 1, 0, &[Member::new(c.clone(), 0, State::Suspect)]);
    sim.input(0, |m, now| m.datagram(now, &plain, from));
    assert_eq!(sim.member(0, "c").status, "suspect");
    assert_eq!(suspicion_timers(&sim.nodes[0], &c), vec![0]);
    sim.run_for(30 * SEC);
    assert_eq!(sim.member(0, "c").status, "failed");
}

/// A live member hears the suspicion gossiped and refutes it before the timer runs out:
/// no one fails it.
#[test]
fn a_heard_suspicion_of_a_live_member_is_refuted_in_time() {
    let mut sim = Sim::cluster((0..3).map(|_| Setup::default()).collect());
    let c = sim.nodes[2].id.clone();
    let from = sim.nodes[1].id.addr;
    let plain = foca_datagram(&sim, 1, 0, &[Member::new(c.clone(), 0, State::Suspect)]);
    sim.input(0, |m, now| m.datagram(now, &plain, from));
    assert_eq!(suspicion_timers(&sim.nodes[0], &c), vec![0]);
    sim.run_for(30 * SEC);
    for i in 0..2 {
        assert_eq!(sim.member(i, "c").status, "alive", "on node {i}");
    }
}

/// A down verdict below the incarnation held (its sender missed the member's
/// refutation) is a suspicion at the held incarnation, timed out: foca would drop it.
#[test]
fn a_stale_down_verdict_is_a_suspicion_at_the_held_incarnation() {
    let mut sim = Sim::cluster((0..3).map(|_| Setup::default()).collect());
    let c = sim.nodes[2].id.clone();
    let from = sim.nodes[1].id.addr;
    // c refutes a suspicion: everyone holds it at incarnation 1.
    let plain = foca_datagram(&sim, 1, 2, &[Member::new(c.clone(), 0, State::Suspect)]);
    sim.input(2, |m, now| m.datagram(now, &plain, from));
    sim.run_for(2 * SEC);
    sim.nodes[2].up = false;
    let plain = foca_datagram(&sim, 1, 0, &[Member::new(c.clone(), 0, State::Down)]);
    sim.input(0, |m, now| m.datagram(now, &plain, from));
    assert_eq!(sim.member(0, "c").status, "suspect");
    assert_eq!(suspicion_timers(&sim.nodes[0], &c), vec![1]);
    sim.run_for(30 * SEC);
    assert_eq!(sim.member(0, "c").status, "failed");
}
