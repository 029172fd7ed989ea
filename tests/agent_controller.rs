//! What the deploy controller needs from the agent (issue 10, items 7, 8 and 10), on real
//! agent processes on 127.77.9x.N: an in-process consumer gets each matching event
//! once, across restarts, until it acknowledged it; a tag changed by SIGHUP reaches
//! every member at gossip speed; a version-1 peer still push/pulls with a new agent.
//! Every wait is on a state, bounded.

#[path = "common/agent.rs"]
mod agent_support;

use std::time::{Duration, Instant};

use agent_support::{Cluster, wait_for};

const LONG: Duration = Duration::from_secs(20);

/// `ID NAME PAYLOAD` lines the debug consumer recorded.
fn recorded(file: &std::path::Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let mut next = || it.next().unwrap_or_default().to_owned();
            (next(), next(), next())
        })
        .collect()
}

fn named<'a>(
    lines: &'a [(String, String, String)],
    name: &str,
) -> Vec<&'a (String, String, String)> {
    lines.iter().filter(|l| l.1 == name).collect()
}

/// Item 10: journaled before delivery, acknowledged after. An acknowledged event is
/// not delivered again after a crash; one delivered but not acknowledged when the
/// agent was killed is delivered again after the restart (same id), then no more.
#[test]
fn consumer_gets_each_event_once_until_acknowledged() {
    let mut c = Cluster::new("77.90");
    c.snapshot_interval = "1h".into();
    let file = c.dir.path().join("consumed");
    let spec = format!("deploy-={}", file.display());
    let a1 = c.start(1, &[], "");
    let mut a2 = c.start_args(
        2,
        &[1],
        "",
        Some(&c.keyring.clone()),
        &["--debug-consumer", &spec],
    );
    wait_for(LONG, "two members", || {
        (a1.alive_count() == 2).then_some(())
    });

    for (name, payload) in [("deploy-web", "v42"), ("other", "x"), ("deploy-db", "hold")] {
        assert!(a1.cli(&["event", name, payload]).status.success());
    }
    wait_for(LONG, "both deploy events consumed", || {
        let l = recorded(&file);
        (named(&l, "deploy-web").len() == 1 && named(&l, "deploy-db").len() == 1).then_some(())
    });
    // The shell handler got all three: the consumer only its prefix.
    wait_for(LONG, "other handled by the shell handler", || {
        (c.deliveries("n2", "other").len() == 1).then_some(())
    });
    assert!(named(&recorded(&file), "other").is_empty());

    a2.kill9();
    a2.spawn();
    wait_for(LONG, "the unacknowledged event delivered again", || {
        (named(&recorded(&file), "deploy-db").len() == 2).then_some(())
    });
    a2.wait_push_pulls(3); // push/pull rounds re-offer every event
    let l = recorded(&file);
    assert_eq!(
        named(&l, "deploy-web").len(),
        1,
        "acknowledged, yet delivered again: {l:?}"
    );
    let db = named(&l, "deploy-db");
    assert_eq!(db[0].0, db[1].0, "the same event id");

    // Now acknowledged: a second crash delivers nothing again.
    a2.kill9();
    a2.spawn();
    wait_for(LONG, "restarted n2 alive again", || {
        (a1.status_of("n2").as_deref() == Some("alive") && a2.alive_count() == 2).then_some(())
    });
    a2.wait_push_pulls(3);
    let l = recorded(&file);
    assert_eq!(named(&l, "deploy-db").len(), 2, "{l:?}");
    assert_eq!(named(&l, "deploy-web").len(), 1, "{l:?}");
}

fn tags_table(role: &str) -> String {
    format!("\n[tags]\nrole = \"{role}\"\n")
}

/// Tags of `node` as `a`'s `members --format json` shows them.
fn tags_seen(a: &agent_support::Agent, node: &str) -> Option<serde_json::Value> {
    let out = a.cli(&["members", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    list.as_array()?
        .iter()
        .find(|m| m["name"] == node)
        .map(|m| m["tags"].clone())
}

/// Item 7: tags travel with gossip, not only with push/pull (here once an hour), so
/// a SIGHUP'd change reaches every member within seconds.
#[test]
fn sighup_tag_change_reaches_every_member_in_seconds() {
    let n = 6u8;
    let mut c = Cluster::new("77.91");
    c.push_pull_interval = "1h".into();
    let agents: Vec<_> = (1..=n)
        .map(|i| {
            let join: &[u8] = if i == 1 { &[] } else { &[1] };
            c.start(i, join, &tags_table("old"))
        })
        .collect();
    wait_for(LONG, "every agent sees every member", || {
        agents
            .iter()
            .all(|a| a.alive_count() == usize::from(n))
            .then_some(())
    });
    wait_for(LONG, "every agent knows n3's first tags", || {
        agents
            .iter()
            .all(|a| tags_seen(a, "n3") == Some(serde_json::json!({"role": "old"})))
            .then_some(())
    });

    std::fs::write(&agents[2].config, c.config(&tags_table("web"))).unwrap();
    agents[2].signal(nix::sys::signal::Signal::SIGHUP);
    let t0 = Instant::now();
    wait_for(LONG, "every agent sees n3's new tags", || {
        agents
            .iter()
            .all(|a| tags_seen(a, "n3") == Some(serde_json::json!({"role": "web"})))
            .then_some(())
    });
    let took = t0.elapsed();
    eprintln!("tag change reached {n} agents in {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

mod old_peer {
    //! A version-1 peer, spoken by hand: the first hello and the unversioned state.
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    use droot_fleet::gossip::keyring::KeyringFile;
    use droot_fleet::gossip::message::{StreamMessage, decode_stream, tag};
    use droot_fleet::gossip::{EventId, FrameDecoder, Keyring, NodeId, Tags, UserEvent, envelope};
    use serde::{Deserialize, Serialize};

    /// Frozen copy of the push/pull state before versioning.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct OldState {
        pub from: NodeId,
        pub tags: Tags,
        pub members: Vec<foca::Member<NodeId>>,
        pub event_ltime: u64,
        pub query_ltime: u64,
        pub events: Vec<UserEvent>,
    }

    pub fn keyring(path: &std::path::Path) -> Keyring {
        let file: KeyringFile = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        file.try_into().unwrap()
    }

    pub fn state(addr: &str) -> OldState {
        let me = NodeId::new("old1", addr.parse().unwrap(), 1).unwrap();
        OldState {
            from: me.clone(),
            tags: Tags::new(),
            members: vec![foca::Member::alive(me)],
            event_ltime: 5,
            query_ltime: 0,
            events: vec![UserEvent::new(EventId(4242), "old1", 4, "from-old", vec![]).unwrap()],
        }
    }

    /// Dials `addr` with `hello`, sends `state` as a version-1 request, returns the
    /// reply's plaintext.
    pub fn exchange(addr: &str, ring: &Keyring, hello: &[u8], state: &OldState) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut rng = rand::rng();
        s.write_all(&envelope::encode_frame(ring, hello, &mut rng).unwrap())
            .unwrap();
        let mut req = vec![tag::PUSH_PULL_REQUEST];
        req.extend(postcard::to_stdvec(state).unwrap());
        s.write_all(&envelope::encode_frame(ring, &req, &mut rng).unwrap())
            .unwrap();
        let mut dec = FrameDecoder::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = dec.next_frame(ring).unwrap() {
                return frame;
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed without a reply");
            dec.feed(&buf[..n]);
        }
    }

    /// The old strict reader: the reply tag, then exactly one old state.
    pub fn old_read(reply: &[u8]) -> Result<OldState, String> {
        assert_eq!(reply[0], tag::PUSH_PULL_REPLY);
        let (s, rest) = postcard::take_from_bytes(&reply[1..]).map_err(|e| e.to_string())?;
        if rest.is_empty() {
            Ok(s)
        } else {
            Err(format!("{} trailing bytes", rest.len()))
        }
    }

    pub fn new_read(reply: &[u8]) -> droot_fleet::gossip::PushPullState {
        match decode_stream(reply).unwrap() {
            StreamMessage::PushPullReply(s) => s,
            other => panic!("not a reply: {other:?}"),
        }
    }
}

/// Item 8 end to end: a version-1 peer (first hello, unversioned state) push/pulls
/// with a running agent: the agent merges its state (its event is handled) and
/// answers in the format the old reader accepts; a version-2 hello gets the versioned
/// state with the tag announcements as an extension.
#[test]
fn an_old_peer_exchanges_state_with_a_new_agent() {
    let c = Cluster::new("77.92");
    let a1 = c.start(1, &[], &tags_table("web"));
    let ring = old_peer::keyring(&c.keyring);
    let me = c.addr(9);

    let reply = old_peer::exchange(
        &a1.addr,
        &ring,
        b"droot-fleet stream 1",
        &old_peer::state(&me),
    );
    let old = old_peer::old_read(&reply).expect("the old reader accepts the reply");
    assert_eq!(old.from.name, "n1");
    assert_eq!(old.tags.get("role").map(String::as_str), Some("web"));
    wait_for(LONG, "the old peer's event handled on n1", || {
        (c.deliveries("n1", "from-old").len() == 1).then_some(())
    });

    let reply = old_peer::exchange(
        &a1.addr,
        &ring,
        b"droot-fleet stream 2",
        &old_peer::state(&me),
    );
    assert!(
        old_peer::old_read(&reply).is_err(),
        "version 2 went to a version-2 dialer"
    );
    let new = old_peer::new_read(&reply);
    assert_eq!(new.version, 2);
    assert!(
        !new.extensions.is_empty(),
        "the tag announcements travel as an extension"
    );
    wait_for(LONG, "n1 to merge both states", || {
        (a1.info()["counters"]["push_pulls_merged"].as_u64()? >= 2).then_some(())
    });
    assert_eq!(
        c.deliveries("n1", "from-old").len(),
        1,
        "merged twice, handled once"
    );
}

/// CPU time (user + system, clock ticks) a process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// An agent with no `[apps]` (an operator's workstation, a node of another role) runs the
/// deploy controller too; it must idle, not spin on its executor's closed channel.
#[test]
fn an_agent_without_apps_idles() {
    let c = Cluster::new("77.93");
    let a = c.start(1, &[], "");
    let _peer = c.start(2, &[1], "");
    let pid = a.child.as_ref().expect("running").id();
    // Up and serving: the controller is past its start.
    wait_for(Duration::from_secs(20), "the agent to answer", || {
        a.cli(&["query", "status", "--format", "json"])
            .status
            .success()
            .then_some(())
    });
    let (t0, w0) = (cpu_ticks(pid), Instant::now());
    // Measured over two push/pull rounds (a counter, not a bare sleep).
    a.wait_push_pulls(2);
    let wall = w0.elapsed().as_secs_f64().max(1.0);
    let used = (cpu_ticks(pid) - t0) as f64 / 100.0;
    assert!(
        used / wall < 0.3,
        "an idle agent used {used:.2}s of CPU in {wall:.2}s (a busy loop?)"
    );
}
