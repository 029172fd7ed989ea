//! Issue 15's attack on rollouts by a holder of the gossip key: forged `ok` outcomes for
//! every node, pushed before and all through a canary rollout of a broken release, on
//! real agents with node identities required (127.79.9.N, artifacts in a private Garage).
//! Before node identities, the broken release started on every node within 40 ms and
//! `--wait` reported success.

mod common;

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/fleet.rs"]
mod fleet;

use std::time::{Duration, Instant};

use attacker::{Attacker, now_ms, slot};
use droot_fleet::deploy::signed::{DeployEvent, MaxParallel, Rollout, SignedEvent};
use droot_fleet::deploy::status::{NodeOutcome, Result as Outcome};
use fleet::{Fleet, Kind, NodeSpec, num};

/// `ok` outcomes for `event` on every node, in each node's name, at a version as far
/// ahead as a receiver's clock allows.
fn forged_outcomes(
    event: &DeployEvent,
    nodes: &[String],
) -> Vec<droot_fleet::gossip::supersede::Superseding> {
    nodes
        .iter()
        .map(|node| {
            let o = NodeOutcome {
                node: node.clone(),
                app: "web".into(),
                event_id: event.id_hex(),
                version: event.version.clone(),
                result: Outcome::Ok,
                error: None,
                at: now_ms() / 1000,
            };
            slot(
                "deploy.outcome",
                &format!("web@{node}"),
                node,
                now_ms() + 9 * 60_000,
                postcard::to_stdvec(&o).unwrap(),
            )
        })
        .collect()
}

#[test]
fn forged_outcomes_do_not_carry_a_broken_release_past_the_canary() {
    let f = Fleet::start("79.9", vec![NodeSpec::default(); 3]);
    f.publish("v1", Kind::Healthy);
    f.publish("v3", Kind::NoHealth);
    f.deploy_all_ok("v1");
    let nodes = f.app_nodes();
    let key = droot_fleet::deploy::signed::signing_key_from_text(
        &std::fs::read_to_string(&f.key).unwrap(),
        "the test key",
    )
    .unwrap();
    let event = DeployEvent {
        app: "web".into(),
        version: "v3".into(),
        url: String::new(),
        sha256: None,
        targets: Default::default(),
        rollout: Rollout {
            max_parallel: Some(MaxParallel::Count(1)),
            canary: 1,
        },
        issued_at_ms: now_ms(),
        id: DeployEvent::random_id(),
        options: Default::default(),
        chunks: None,
    };
    // Unsigned, and signed with n3's stolen node key (its identity file) in the others'
    // names.
    let mut forged = forged_outcomes(&event, &nodes);
    let stolen = droot_fleet::agent::identity::load(&f.enrollment.identity("n3")).unwrap();
    let thief =
        droot_fleet::gossip::vouch::Identities::new(droot_fleet::gossip::vouch::IdentityPolicy {
            issuers: Vec::new(),
            required: true,
            own: Some(stolen),
        });
    let mut signed = forged_outcomes(&event, &nodes);
    signed.retain(|o| o.origin != "n3");
    for o in &mut signed {
        o.version += 1;
        thief.sign_item(o);
    }
    forged.extend(signed);
    let ghost = Attacker::new(&f.keyring, "ghost", "127.79.9.66:17946");
    let push_everywhere = |ghost: &Attacker| {
        for n in 1..=3 {
            let _ = ghost.push(&f.addr(n), ghost.state(&forged, vec![]));
        }
    };
    push_everywhere(&ghost);
    let bytes = SignedEvent::sign(event.clone(), &key)
        .unwrap()
        .encode()
        .unwrap();
    f.post(1, &bytes).expect("the deploy event is accepted");
    // Keep pushing the forgery while the canary is checked (its health deadline is 4 s).
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        push_everywhere(&ghost);
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = event.id_hex();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rolled_back = loop {
        let p = f.progress(1, &id);
        let rb = fleet::names(&p["rolled_back"]);
        if rb.len() == 1 {
            break rb;
        }
        if Instant::now() > deadline {
            for n in 1..=3 {
                let lines: Vec<String> = f
                    .agent(n)
                    .log_text()
                    .lines()
                    .filter(|l| l.contains(&id[..8]) || l.contains("refused") || l.contains("WARN"))
                    .map(str::to_owned)
                    .collect();
                eprintln!("n{n}:\n{}", lines.join("\n"));
            }
            panic!("the canary did not roll back: {p}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let canary = &rolled_back[0];
    for other in nodes.iter().filter(|n| *n != canary) {
        let n = num(other);
        assert!(
            f.log_lines(n, "deploying", &id).is_empty(),
            "{other} started the broken release: the forged outcomes were believed"
        );
        assert_eq!(f.get(n, "/version").as_deref(), Some("v1"), "{other}");
        let halted = format!("halted by {canary} (rolled_back)");
        f.wait_status(1, other, &halted, |v| v["phase"] == halted.as_str());
    }
    let p = f.progress(1, &id);
    assert!(fleet::names(&p["ok"]).is_empty(), "{p}");
    let refused: u64 = (1..=3)
        .map(|n| {
            f.agent(n).info()["counters"]["identity_refused"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(refused >= 3, "the forged outcomes were not refused as such");
}
