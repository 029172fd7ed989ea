//! Cluster-wide key rotation like `serf keys`, on real agents (127.77.60.N): install,
//! use, remove through one node; every node's keyring FILE follows; a restarted node
//! talks with the new key only; a node holding only the old key can no longer join.

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/ops.rs"]
mod ops;

use agent_support::{Cluster, wait_for};
use ops::{LONG, all_text, counter, file_keys, json, keygen, ok, own_keyring, primary_key};

#[test]
fn key_rotation_reaches_every_node_and_its_keyring_file() {
    let mut c = Cluster::new("77.60");
    let (signing_key, public) = ops::signing_key(c.dir.path());
    c.trusted_signing_key = Some(public);
    let signing_key = signing_key.to_str().unwrap().to_owned();
    let k1 = primary_key(&c.keyring);
    let rings: Vec<_> = (1..=3).map(|n| own_keyring(&c, n)).collect();
    let mut agents = vec![c.start_with(1, &[], "", Some(&rings[0]))];
    for n in 2..=3u8 {
        agents.push(c.start_with(n, &[1], "", Some(&rings[n as usize - 1])));
    }
    ops::wait_all_alive(&agents, 3);
    let k2 = keygen();

    // Without a signing key the CLI sends nothing; sent unsigned anyway, a change is refused
    // by every node (the gossip key alone authorises none), with exit 2; nothing changed.
    let out = agents[0].cli(&["keys", "install", &k2]);
    assert_eq!(out.status.code(), Some(1), "{}", all_text(&out));
    assert!(
        all_text(&out).contains("no signing key"),
        "{}",
        all_text(&out)
    );
    let out = agents[0].cli(&["keys", "install", &k2, "--unsigned"]);
    assert_eq!(out.status.code(), Some(2), "{}", all_text(&out));
    let text = all_text(&out);
    assert_eq!(
        text.matches("refused: it is not signed").count(),
        3,
        "{text}"
    );
    for ring in &rings {
        assert_eq!(file_keys(ring), vec![k1.clone()]);
    }
    let signed = |agent: &agent_support::Agent, op: &str, key: &str| {
        agent.cli(&["keys", op, key, "--signing-key", &signing_key])
    };

    // install K2 via n1 → installed on all 3, K1 still primary everywhere.
    let out = ok(&signed(&agents[0], "install", &k2));
    assert!(out.contains("install: ok on 3 node(s)"), "{out}");
    let list = json(&agents[1].cli(&["keys", "list", "--format", "json"]));
    assert_eq!(list["results"].as_array().unwrap().len(), 3, "{list}");
    assert_eq!(list["keys"][&k1], 3, "{list}");
    assert_eq!(list["keys"][&k2], 3, "{list}");
    assert_eq!(list["primary"][&k1], 3, "{list}");
    let text = ok(&agents[2].cli(&["keys", "list"]));
    assert!(
        text.contains(&format!("{k2}  [3/3 installed, primary on 0]")),
        "{text}"
    );

    // use K2 via n2 → primary on all.
    ok(&signed(&agents[1], "use", &k2));
    let list = json(&agents[0].cli(&["keys", "list", "--format", "json"]));
    assert_eq!(list["primary"][&k2], 3, "{list}");
    assert!(list["primary"].get(&k1).is_none(), "{list}");

    // Removing the primary is refused on every node, with a clear error and exit 2.
    let out = signed(&agents[2], "remove", &k2);
    assert_eq!(out.status.code(), Some(2), "{}", all_text(&out));
    let text = all_text(&out);
    assert!(
        text.contains("cannot remove the primary key") && text.contains("keys use"),
        "{text}"
    );
    assert!(
        text.contains("key remove did not succeed on every node"),
        "{text}"
    );

    // remove K1 via n3 → gone everywhere, in memory and in every keyring file.
    ok(&signed(&agents[2], "remove", &k1));
    let list = json(&agents[0].cli(&["keys", "list", "--format", "json"]));
    assert_eq!(
        list["keys"].as_object().unwrap().len(),
        1,
        "only K2 left: {list}"
    );
    assert_eq!(list["keys"][&k2], 3, "{list}");
    for (n, ring) in rings.iter().enumerate() {
        assert_eq!(file_keys(ring), vec![k2.clone()], "n{} keyring file", n + 1);
    }

    // Restart n3 from its files: it talks with K2 only and still gets events.
    agents[2].kill9();
    agents[2].spawn();
    ops::wait_all_alive(&agents, 3);
    ok(&agents[0].cli(&["event", "after-rotation"]));
    wait_for(LONG, "n3 to handle an event after its restart", || {
        (c.deliveries("n3", "after-rotation").len() == 1).then_some(())
    });

    // A fresh node with only K1 cannot join; its packets/streams are dropped as auth
    // failures by n1 and it never shows up.
    let dropped_before =
        counter(&agents[0], "packets_dropped_auth") + counter(&agents[0], "streams_dropped_auth");
    let stale = c.start_with(4, &[1], "", Some(&c.keyring));
    let dropped = || {
        counter(&agents[0], "packets_dropped_auth") + counter(&agents[0], "streams_dropped_auth")
    };
    wait_for(LONG, "n1 to drop the K1 node's traffic", || {
        (dropped() > dropped_before).then_some(())
    });
    // Not a pause: the K1 node keeps trying (three more drops) while n1 merges two more
    // push/pulls with its real peers, so any news of n4 would have reached every member.
    let first = dropped();
    wait_for(LONG, "three more dropped attempts of the K1 node", || {
        (dropped() >= first + 3).then_some(())
    });
    agents[0].wait_push_pulls(2);
    for a in &agents {
        assert!(a.status_of("n4").is_none(), "{:?}", a.members());
    }
    assert_eq!(stale.alive_count(), 1, "the K1 node only knows itself");
}
