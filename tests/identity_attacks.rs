//! Issue 15's attacks by a holder of the gossip key (one leaked host has it) on real
//! agents with node identities required, each on its own 127.77.9x.N addresses. The
//! attacker is a test client that speaks the agent's own push/pull and datagrams with
//! the cluster's keyring, plus, where the attack needs one, a stolen node key.

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/ops.rs"]
mod ops;

use agent_support::{Agent, Cluster, wait_for};
use attacker::{Attacker, now_ms, slot};
use droot_fleet::gossip::message::{Direct, LeaveNotice, encode_direct};
use droot_fleet::gossip::{NodeId, Tags};
use ops::{LONG, counter, member_json, ok, start_n};

fn evil_tags() -> Vec<u8> {
    let tags: Tags = [("role".to_owned(), "evil".to_owned())].into();
    postcard::to_stdvec(&tags).unwrap()
}

fn tags_of(a: &Agent, node: &str) -> Option<serde_json::Value> {
    member_json(a)
        .into_iter()
        .find(|m| m["name"] == node)
        .map(|m| m["tags"].clone())
}

fn rss_kib(a: &Agent) -> u64 {
    let pid = a.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An agent's exact foca identity (name, address, bump), from its own `/v1/info`.
fn node_id_of(a: &Agent) -> NodeId {
    let info = a.info();
    NodeId::new(
        info["name"].as_str().unwrap(),
        info["addr"].as_str().unwrap().parse().unwrap(),
        info["bump"].as_u64().unwrap() as u16,
    )
    .unwrap()
}

fn required_cluster(net: &str) -> (Cluster, Vec<Agent>) {
    let mut c = Cluster::new(net);
    c.require_identity = true;
    let agents = start_n(&c, 3, |n| format!("[tags]\nrole = \"web{n}\"\n"));
    (c, agents)
}

/// Ghost members, forged tags, forged outcomes, a slot flood and oversized slots, all by
/// push/pull with only the gossip key: nothing of it is kept, and the agents go on
/// exchanging state with each other.
#[test]
fn gossip_key_alone_cannot_join_forge_flood_or_bloat() {
    let (c, a) = required_cluster("77.91");
    wait_for(LONG, "n2 to hold n1's signed tags", || {
        (tags_of(&a[1], "n1")? == serde_json::json!({"role": "web1"})).then_some(())
    });
    let info = a[0].info();
    assert_eq!(info["identity_mode"], "required", "{info}");
    assert!(
        info["identity"]["expires"].as_u64().unwrap() > now_ms() / 1000,
        "{info}"
    );
    let rss_before = rss_kib(&a[0]);
    let ghost = Attacker::new(&c.keyring, "ghost", "127.77.91.66:17946");
    let far = now_ms() + 60_000;
    let mut forged = vec![
        slot("droot.tags", "n1", "n1", far, evil_tags()),
        slot(
            "deploy.apps",
            "n2",
            "n2",
            far,
            postcard::to_stdvec(&vec!["web"]).unwrap(),
        ),
        slot("droot.tags", "ghost", "ghost", far, evil_tags()),
    ];
    // 16,400 junk slots of a kind nobody registered, under many origins.
    for i in 0..16_400 {
        forged.push(slot(
            "junk",
            &format!("k{i}"),
            &format!("o{}", i % 600),
            1,
            vec![0; 8],
        ));
    }
    let members = vec![foca::Member::alive(ghost.id.clone())];
    ghost
        .push(&c.addr(1), ghost.state(&forged, members))
        .expect("push/pull answered");
    // Two slots of 3.5 MiB each, in their own exchanges.
    for key in ["big1", "big2"] {
        let big = vec![slot("junk", key, "ghost", 2, vec![7; 3_500_000])];
        ghost
            .push(&c.addr(1), ghost.state(&big, vec![]))
            .expect("push/pull answered");
    }
    // The agents still exchange state with n1 (its state fits a frame), and keep nothing.
    a[1].wait_push_pulls(3);
    a[0].wait_push_pulls(3);
    for agent in &a {
        let names: Vec<_> = agent.members().into_iter().map(|(n, _)| n).collect();
        assert!(
            !names.contains(&"ghost".to_owned()),
            "{}: {names:?}",
            agent.name
        );
        assert_eq!(
            tags_of(agent, "n1").unwrap(),
            serde_json::json!({"role": "web1"})
        );
    }
    // n2's app list and the ghost's tags: no card to sign them; n1's own tags: refused as a
    // remote word about itself.
    assert!(counter(&a[0], "identity_refused") >= 2, "{}", a[0].info());
    assert!(
        counter(&a[0], "superseding_refused_about_self") >= 1,
        "{}",
        a[0].info()
    );
    // The flood was cut short, and nothing of it is held: n1's own state says so.
    assert!(
        counter(&a[0], "identity_exchanges_cut") >= 1,
        "{}",
        a[0].info()
    );
    let reply = ghost.push(&c.addr(1), ghost.state(&[], vec![])).unwrap();
    let held =
        droot_fleet::gossip::supersede::decode_items(&reply.extensions[0].bytes, true).unwrap();
    assert!(
        held.iter().all(|i| i.kind != "junk" && i.origin != "ghost"),
        "n1 holds forged slots"
    );
    let rss_after = rss_kib(&a[0]);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent memory grew from {rss_before} to {rss_after} KiB"
    );
}

/// A stock agent started under an existing node's name from another address (with the
/// gossip key, without that node's key) is never a member, and the real node does not
/// flap: nobody declares it down.
#[test]
fn an_impostor_under_an_existing_name_gets_nowhere() {
    let (c, mut a) = required_cluster("77.92");
    let dir = c.dir.path().join("impostor");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    // Its own config: node identities in transition mode (it has no identity to show).
    let text = c.config("").replace(
        "require_node_identity = true",
        "require_node_identity = false",
    );
    std::fs::write(&config, text).unwrap();
    let mut impostor = Agent {
        name: "n2".into(),
        addr: c.addr(9),
        data_dir: dir.join("data"),
        config,
        join: vec![c.addr(1), c.addr(3)],
        keyring: Some(c.keyring.clone()),
        identity: None,
        program: None,
        log: dir.join("agent.log"),
        args: Vec::new(),
        child: None,
    };
    impostor.spawn();
    for _ in 0..4 {
        a[0].wait_push_pulls(2);
        for agent in [&a[0], &a[2]] {
            let n2 = member_json(agent)
                .into_iter()
                .find(|m| m["name"] == "n2")
                .expect("n2 listed");
            assert_eq!(n2["addr"], c.addr(2), "{}: {n2}", agent.name);
            assert_eq!(n2["status"], "alive", "{}: {n2}", agent.name);
        }
    }
    let log = a[1].log_text();
    assert!(
        !log.contains("declared us down"),
        "the real n2 flapped:\n{log}"
    );
    assert!(
        counter(&a[0], "identity_packets_refused") > 0,
        "{}",
        a[0].info()
    );
    a[1].kill9();
}

/// A forged leave notice for a live node is not recorded: the node stays alive, and
/// when it really dies it is `failed`, not `left`.
#[test]
fn a_forged_leave_notice_changes_nothing() {
    let (c, mut a) = required_cluster("77.93");
    let ghost = Attacker::new(&c.keyring, "ghost", "127.77.93.66:17946");
    // n2's exact identity, as anyone in the cluster can learn it.
    let id = node_id_of(&a[1]);
    let refused = counter(&a[0], "identity_refused");
    let plain = encode_direct(&Direct::Leave(LeaveNotice { id, sig: None })).unwrap();
    ghost.datagram(&c.addr(1), &plain);
    wait_for(LONG, "n1 to refuse the forged leave", || {
        (counter(&a[0], "identity_refused") > refused).then_some(())
    });
    assert_eq!(a[0].status_of("n2").as_deref(), Some("alive"));
    a[1].kill9();
    wait_for(LONG, "n1 to see n2 failed", || {
        (a[0].status_of("n2").as_deref() == Some("failed")).then_some(())
    });
}

/// A stolen node key (n3's identity file) speaks for n3 only: what it signs in n1's name
/// is refused. Once the operator revokes n3, every node drops n3's card and n3 is cut
/// off, and a restarted agent still knows the revocation.
#[test]
fn a_stolen_node_key_speaks_only_for_its_node_until_revoked() {
    let (c, mut a) = required_cluster("77.94");
    wait_for(LONG, "n1's identity everywhere", || {
        a.iter()
            .all(|x| member_json(x).iter().all(|m| m["identity"].is_object()))
            .then_some(())
    });
    let stolen = droot_fleet::agent::identity::load(&c.enrollment.identity("n3")).unwrap();
    let signer =
        droot_fleet::gossip::vouch::Identities::new(droot_fleet::gossip::vouch::IdentityPolicy {
            issuers: Vec::new(),
            required: true,
            own: Some(stolen),
        });
    let thief = Attacker::new(&c.keyring, "n3", "127.77.94.66:17946");
    let mut as_n1 = slot("droot.tags", "n1", "n1", now_ms() + 1000, evil_tags());
    signer.sign_item(&mut as_n1);
    thief
        .push(&c.addr(2), thief.state(&[as_n1], vec![]))
        .unwrap();
    a[1].wait_push_pulls(2);
    assert_eq!(
        tags_of(&a[1], "n1").unwrap(),
        serde_json::json!({"role": "web1"})
    );
    assert!(counter(&a[1], "identity_refused") >= 1);

    let out = ops::cli_cmd(&["enroll", "revoke", "--node", "n3", "--enrollment-key"])
        .arg(&c.enrollment.key)
        .env("DROOT_FLEET_RPC", a[0].rpc())
        .output()
        .unwrap();
    ok(&out);
    for agent in &a[..2] {
        wait_for(LONG, &format!("{} to drop n3's card", agent.name), || {
            let n3 = member_json(agent).into_iter().find(|m| m["name"] == "n3")?;
            n3.get("identity").is_none().then_some(())
        });
    }
    // n1 restarts: the revocation was persisted, n3 gets no voice back.
    a[0].kill9();
    a[0].spawn();
    a[0].wait_push_pulls(2);
    let n3 = member_json(&a[0]).into_iter().find(|m| m["name"] == "n3");
    assert!(
        n3.as_ref()
            .is_none_or(|m| m.get("identity").is_none() && m["status"] != "alive"),
        "{n3:?}"
    );
    a[2].kill9();
}

/// A holder of the gossip key sends a foca packet in n1's exact name (from its own
/// address) declaring n2 down: not n1's word, so it changes nothing, and n2 never has to
/// refute it (before, one such packet a second made n2 flap).
#[test]
fn a_packet_in_another_nodes_name_cannot_declare_a_member_down() {
    let (c, a) = required_cluster("77.96");
    let ghost = Attacker::new(&c.keyring, "ghost", "127.77.96.66:17946");
    let (n1, n2, n3) = (node_id_of(&a[0]), node_id_of(&a[1]), node_id_of(&a[2]));
    let header = foca::Header {
        src: n1,
        src_incarnation: u16::MAX,
        dst: n3,
        message: foca::Message::<NodeId>::Ping(7),
    };
    let mut pkt = postcard::to_stdvec(&header).unwrap();
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend(postcard::to_stdvec(&foca::Member::new(n2, u16::MAX, foca::State::Down)).unwrap());
    let plain = droot_fleet::gossip::message::encode_foca_datagram(&pkt, None);
    for _ in 0..20 {
        ghost.datagram(&c.addr(3), &plain);
    }
    wait_for(LONG, "n3 to refuse the packets", || {
        (counter(&a[2], "identity_packets_spoofed") >= 20).then_some(())
    });
    a[2].wait_push_pulls(2);
    assert_eq!(a[2].status_of("n2").as_deref(), Some("alive"));
    let log = a[1].log_text();
    assert!(
        !log.contains("declared us down"),
        "n2 had to rejoin:\n{log}"
    );
}
