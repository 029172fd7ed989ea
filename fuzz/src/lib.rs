//! What the fuzz targets share: the fixed keys the seed corpora are made with, and a node's
//! real parts (its agent state machine, its deploy controller) built without sockets or disk.
//!
//! The seeds come from `cargo test --test hostile_bytes -- --ignored write_fuzz_seeds` in the
//! main crate, which signs and seals with the same fixed keys as here.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use droot_fleet::agent::config::{FileConfig, Overrides, Settings};
use droot_fleet::agent::key_auth::KeyAuthority;
use droot_fleet::agent::members::LeftBook;
use droot_fleet::agent::pending::PendingHandlers;
use droot_fleet::agent::queries::QueryRegistry;
use droot_fleet::agent::sansio::{AgentMachine, Init, Now};
use droot_fleet::deploy::controller::core::Core;
use droot_fleet::deploy::signed::{Policy, Trust, Verifier};
use droot_fleet::gossip::{CoreConfig, GossipCore, Key, Keyring, NodeId};
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The operator's signing key (the seeds' deploy events and orders are signed with it).
pub fn operator() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The gossip keyring (the seeds' envelopes and frames are sealed with it).
pub fn keyring() -> Keyring {
    Keyring::new(Key::from_bytes([9; 32]))
}

/// The wall clock the targets run at: 2023-11-14, after every seed was issued.
pub const WALL: Duration = Duration::from_secs(1_700_000_000);

/// Trusts [`operator`], with a day of age and skew.
pub fn policy() -> Policy {
    Policy {
        trusted: Trust::Keys(vec![operator().verifying_key()]),
        max_age: 86_400,
        max_skew: 86_400,
    }
}

/// Valid settings of node `name` (insecure: the keyring is handed in directly).
pub fn settings(name: &str) -> Settings {
    let flags = Overrides {
        node: Some(name.to_owned()),
        bind: Some("10.0.0.1:7946".to_owned()),
        data_dir: Some("/nonexistent/droot-fleet-fuzz".into()),
        insecure: true,
        ..Overrides::default()
    };
    Settings::merge(FileConfig::default(), &flags).expect("fixed settings are valid")
}

/// A node's agent state machine, as `agent` builds it, fresh (deterministic seeds).
pub fn machine() -> AgentMachine<(), ()> {
    let settings = settings("fuzz-node");
    let id = NodeId::new("fuzz-node", settings.advertise, 0).expect("valid node id");
    let core = GossipCore::new(id, settings.tags.clone(), CoreConfig::default(), WALL);
    AgentMachine::new(Init {
        registry: QueryRegistry::with_builtins("fuzz-node", false),
        settings,
        core,
        kinds: Default::default(),
        keyring: keyring(),
        key_authority: KeyAuthority::new(policy()),
        left: LeftBook::default(),
        pending: PendingHandlers::default(),
        rng: StdRng::seed_from_u64(1),
        foca_rng: StdRng::seed_from_u64(2),
    })
}

/// The time inputs arrive at.
pub fn now() -> Now {
    Now {
        at: Instant::now(),
        wall: WALL,
    }
}

/// A deploy controller core of node `fuzz-node` running app `web`, trusting [`operator`].
pub fn controller(trust: Trust) -> Core {
    let policy = Policy {
        trusted: trust,
        ..policy()
    };
    Core::new(
        "fuzz-node",
        BTreeSet::from(["web".to_owned()]),
        Verifier::new(policy, 1024),
    )
}
