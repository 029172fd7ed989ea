use super::*;
use crate::gossip::event::{EventId, EventLogConfig};

const NOW: Duration = Duration::from_secs(1_700_000_000);

fn node(name: &str, bump: u16) -> NodeId {
    NodeId::new(name, "127.0.0.1:1".parse().unwrap(), bump).unwrap()
}

fn ev(ltime: u64, id: u128) -> UserEvent {
    UserEvent::new(EventId(id), "a", ltime, "deploy", vec![]).unwrap()
}

fn state(events: Vec<UserEvent>, event_ltime: u64) -> PushPullState {
    PushPullState {
        from: node("a", 0),
        tags: Tags::new(),
        members: vec![foca::Member::alive(node("a", 0))],
        event_ltime,
        query_ltime: 4,
        events,
        version: 1,
        extensions: Vec::new(),
    }
}

#[test]
fn missed_event_delivered_exactly_once() {
    let mut log = EventLog::new(EventLogConfig::default());
    let (mut ec, mut qc) = (LamportClock::new(), LamportClock::new());
    // We saw event 1 via gossip, missed event 2.
    log.observe(&ev(1, 1), NOW).unwrap();
    let remote = state(vec![ev(2, 2), ev(1, 1)], 3);

    let out = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
    assert_eq!(out.new_events, vec![ev(2, 2)]);
    assert_eq!(out.duplicates, 1);
    assert!(out.event_clock_advanced && out.query_clock_advanced);
    assert_eq!(ec.time(), 4);
    assert_eq!(qc.time(), 5);

    let again = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
    assert!(again.new_events.is_empty());
    assert_eq!(again.duplicates, 2);
    assert!(!again.event_clock_advanced);

    // The merged event is now part of our own recent log for further push/pull.
    assert_eq!(log.recent().count(), 2);
}

#[test]
fn merge_orders_and_counts_too_old() {
    let mut log = EventLog::new(EventLogConfig::default());
    log.ignore_before(5);
    let (mut ec, mut qc) = (LamportClock::new(), LamportClock::new());
    let remote = state(vec![ev(9, 3), ev(2, 1), ev(6, 2)], 0);
    let out = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
    let times: Vec<_> = out.new_events.iter().map(|e| e.ltime).collect();
    assert_eq!(times, vec![6, 9]);
    assert_eq!(out.too_old, 1);
    assert_eq!(ec.time(), 10, "event times are witnessed too");
}

/// Regression (issue 10, item 4): one far-future time in a push/pull state pushed
/// the clocks to `u64::MAX` for good.
#[test]
fn far_future_times_are_refused_and_clock_steps_bounded() {
    use crate::gossip::lamport::MAX_AHEAD;
    let mut log = EventLog::new(EventLogConfig::default());
    let (mut ec, mut qc) = (LamportClock::at(7), LamportClock::new());
    let mut remote = state(vec![ev(u64::MAX, 1), ev(8, 2)], u64::MAX);
    remote.query_ltime = u64::MAX;
    let out = merge(&mut log, &mut ec, &mut qc, &remote, NOW);
    assert_eq!(out.new_events, vec![ev(8, 2)]);
    assert_eq!(out.too_far_ahead, 1);
    assert_eq!(ec.time(), 7 + MAX_AHEAD + 1);
    assert_eq!(qc.time(), MAX_AHEAD + 1);
    assert!(!log.contains(&ev(u64::MAX, 1)));
}

#[test]
fn state_roundtrips_through_stream_message() {
    use crate::gossip::message::{StreamMessage, decode_stream, encode_stream};
    let mut s = state(vec![ev(1, 1)], 2);
    s.tags.insert("role".into(), "web".into());
    let bytes = encode_stream(&StreamMessage::PushPullRequest(s.clone())).unwrap();
    assert_eq!(
        decode_stream(&bytes).unwrap(),
        StreamMessage::PushPullRequest(s)
    );
}

fn down(name: &str, bump: u16, incarnation: u16) -> Member<NodeId> {
    Member::new(node(name, bump), incarnation, State::Down)
}

fn screen(local: Option<Member<NodeId>>, remote: Member<NodeId>, left: bool) -> Screened {
    screen_member(&node("me", 7), local.as_ref(), remote, left)
}

#[test]
fn remote_down_for_a_member_we_see_alive_is_only_a_suspicion() {
    let alive_at_2 = Member::new(node("d", 3), 2, State::Alive);
    let got = screen(Some(alive_at_2), down("d", 3, 2), false);
    assert_eq!(
        got,
        Screened::Suspect(Member::new(node("d", 3), 2, State::Suspect))
    );
    let suspect = Member::new(node("d", 3), 1, State::Suspect);
    let got = screen(Some(suspect), down("d", 3, 1), false);
    assert_eq!(
        got,
        Screened::Suspect(Member::new(node("d", 3), 1, State::Suspect))
    );
}

/// A verdict raised above the incarnation held (a forger's `u16::MAX`) could never be
/// refuted by the member: it is a suspicion at the held incarnation.
#[test]
fn a_raised_down_or_suspicion_is_a_suspicion_at_the_held_incarnation() {
    let held = || Some(Member::new(node("d", 3), 4, State::Alive));
    let at_held = Member::new(node("d", 3), 4, State::Suspect);
    let got = screen(held(), down("d", 3, u16::MAX), false);
    assert_eq!(got, Screened::Suspect(at_held.clone()));
    let raised = Member::new(node("d", 3), u16::MAX, State::Suspect);
    assert_eq!(screen(held(), raised, false), Screened::Apply(at_held));
    let lower = Member::new(node("d", 3), 3, State::Suspect);
    assert_eq!(screen(held(), lower.clone(), false), Screened::Apply(lower));
}

/// A down verdict below the incarnation held comes from a node that missed the member's
/// last refutation: foca would drop it, and a dead member stayed active here until this
/// node's own probe found it. It is a suspicion at the held incarnation.
#[test]
fn a_stale_down_is_a_suspicion_at_the_held_incarnation() {
    let held = Some(Member::new(node("d", 3), 4, State::Alive));
    let got = screen(held, down("d", 3, 1), false);
    let at_held = Member::new(node("d", 3), 4, State::Suspect);
    assert_eq!(got, Screened::Suspect(at_held));
}

#[test]
fn remote_down_with_a_newer_bump_suspects_the_newer_identity() {
    let got = screen(Some(Member::alive(node("d", 3))), down("d", 4, 0), false);
    assert_eq!(
        got,
        Screened::Suspect(Member::new(node("d", 4), 0, State::Suspect))
    );
    // Serial arithmetic: 0 is newer than u16::MAX.
    let got = screen(
        Some(Member::alive(node("d", u16::MAX))),
        down("d", 0, 0),
        false,
    );
    assert!(matches!(got, Screened::Suspect(_)), "{got:?}");
}

#[test]
fn remote_down_with_an_older_bump_is_stale() {
    let got = screen(Some(Member::alive(node("d", 3))), down("d", 2, 9), false);
    assert_eq!(got, Screened::Ignore(IgnoreReason::StaleDown));
}

#[test]
fn remote_down_for_an_unknown_member_is_ignored_unless_it_left() {
    assert_eq!(
        screen(None, down("x", 1, 0), false),
        Screened::Ignore(IgnoreReason::UnknownDown)
    );
    assert_eq!(
        screen(None, down("x", 1, 0), true),
        Screened::Apply(down("x", 1, 0))
    );
    // A known leave is final even for a member we see alive.
    let got = screen(Some(Member::alive(node("x", 1))), down("x", 1, 0), true);
    assert_eq!(got, Screened::Apply(down("x", 1, 0)));
}

#[test]
fn remote_down_for_a_member_we_see_down_is_applied() {
    let got = screen(Some(down("d", 3, 0)), down("d", 5, 0), false);
    assert_eq!(got, Screened::Apply(down("d", 5, 0)));
}

#[test]
fn remote_alive_is_applied_whatever_the_bump() {
    for local in [
        None,
        Some(Member::alive(node("d", 3))),
        Some(down("d", 3, 0)),
    ] {
        let got = screen(local, Member::alive(node("d", 4)), false);
        assert_eq!(got, Screened::Apply(Member::alive(node("d", 4))));
    }
    let s = Member::new(node("d", 3), 4, State::Suspect);
    assert_eq!(screen(None, s.clone(), false), Screened::Apply(s));
}

#[test]
fn entries_about_ourselves() {
    // Our own identity: foca refutes or rejoins, so it must see it.
    assert_eq!(
        screen(None, down("me", 7, 0), false),
        Screened::Apply(down("me", 7, 0))
    );
    assert_eq!(
        screen(None, Member::alive(node("me", 6)), false),
        Screened::Ignore(IgnoreReason::OtherSelf)
    );
}

#[test]
fn an_entry_exactly_as_held_is_not_applied_again() {
    let alive = Member::alive(node("b", 2));
    let got = screen(Some(alive.clone()), alive.clone(), false);
    assert_eq!(got, Screened::Ignore(IgnoreReason::Unchanged));
    let newer = Member::new(node("b", 2), 1, State::Alive);
    assert_eq!(
        screen(Some(alive), newer.clone(), false),
        Screened::Apply(newer)
    );
}

#[test]
fn screen_members_matches_by_name() {
    let local = [
        Member::alive(node("c", 1)),
        down("a", 1, 0),
        Member::alive(node("same", 1)),
    ];
    let remote = vec![
        Member::alive(node("b", 1)),
        down("c", 1, 0),
        down("a", 1, 1),
        down("z", 1, 0),
        down("gone", 2, 0),
        Member::alive(node("same", 1)),
    ];
    let out = screen_members(&node("me", 7), &local, remote, |id| id.name == "gone");
    assert_eq!(
        out.apply,
        vec![
            Member::alive(node("b", 1)),
            down("a", 1, 1),
            down("gone", 2, 0)
        ]
    );
    assert_eq!(
        out.suspect,
        vec![Member::new(node("c", 1), 0, State::Suspect)]
    );
    assert_eq!(out.ignored, 2, "z (unknown, down) and same (unchanged)");
}

/// Regression (tests/partition.rs): after a healed partition, a push/pull from the
/// far side carried its "down" verdict about our reachable partner, foca applied
/// it, and the partner was reported failed. Screened, the partner stays active
/// and no member-down notification is raised; unscreened, it is.
#[test]
fn push_pull_down_verdict_does_not_fail_a_live_partner() {
    use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    let me = node("c", 1);
    let partner = node("d", 1);
    let new_foca = || {
        let mut f = Foca::new(
            me.clone(),
            Config::simple(),
            StdRng::seed_from_u64(1),
            PostcardCodec,
        );
        let mut rt = AccumulatingRuntime::new();
        f.apply_many(
            std::iter::once(Member::alive(partner.clone())),
            false,
            &mut rt,
        )
        .unwrap();
        while rt.to_notify().is_some() {}
        while rt.to_send().is_some() {}
        (f, rt)
    };
    let remote = vec![
        Member::alive(node("b", 1)),
        down("d", 1, 0),
        down("q", 1, 0),
    ];
    let downs = |rt: &mut AccumulatingRuntime<NodeId>| {
        std::iter::from_fn(|| rt.to_notify())
            .filter(|n| matches!(n, OwnedNotification::MemberDown(_)))
            .count()
    };

    let (mut f, mut rt) = new_foca();
    let local: Vec<_> = f.iter_membership_state().cloned().collect();
    let screened = screen_members(&me, &local, remote.clone(), |_| false);
    f.apply_many(screened.apply.into_iter(), false, &mut rt)
        .unwrap();
    f.apply_many(screened.suspect.into_iter(), true, &mut rt)
        .unwrap();
    assert_eq!(downs(&mut rt), 0);
    let d = f
        .iter_membership_state()
        .find(|m| m.id() == &partner)
        .unwrap();
    assert_eq!(
        d.state(),
        State::Suspect,
        "the partner can refute a suspicion"
    );
    assert!(f.iter_membership_state().all(|m| m.id().name != "q"));

    let (mut f, mut rt) = new_foca();
    f.apply_many(remote.into_iter(), false, &mut rt).unwrap();
    assert_eq!(
        downs(&mut rt),
        1,
        "unscreened, the live partner is declared down"
    );
}

#[test]
fn tag_book() {
    let mut book = TagBook::new();
    let web: Tags = [("role".to_owned(), "web".to_owned())].into();
    let db: Tags = [("role".to_owned(), "db".to_owned())].into();
    book.learn("a", 2, &web);
    book.learn("a", 1, &db);
    assert_eq!(book.tags_of("a"), Some(&web), "older version ignored");
    book.learn("a", 0, &db);
    assert_eq!(book.tags_of("a"), Some(&web), "unversioned never wins");
    book.learn("a", 3, &db);
    assert_eq!(book.tags_of("a"), Some(&db));
    let paired: Vec<_> = book.with_tags(vec![node("a", 3), node("b", 0)]).collect();
    assert_eq!(paired[0].1, Some(db));
    assert!(paired[1].1.is_none());
    // Nodes foca no longer knows are pruned (issue 10: the book only grew).
    book.learn("b", 0, &web);
    book.learn("c", 0, &web);
    book.retain(|n| n == "c");
    assert_eq!(book.len(), 1);
    assert_eq!(book.tags_of("a"), None);
    assert!(book.tags_of("c").is_some());
}
