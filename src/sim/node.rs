//! One simulated node: a real [`AgentMachine`] built from the same settings an agent
//! merges from its file and flags, with its own seeded random generators.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::deploy::DeploySetup;
use ed25519_dalek::SigningKey;

use crate::agent::config::{FileConfig, Overrides, Settings};
use crate::agent::identity::IdentitySettings;
use crate::agent::key_auth::KeyAuthority;
use crate::agent::keys::insecure_keyring;
use crate::agent::members::LeftBook;
use crate::agent::pending::PendingHandlers;
use crate::agent::queries::QueryRegistry;
use crate::agent::sansio::{AgentMachine, Init};
use crate::deploy::signed::{Policy, Trust};
use crate::gossip::cert::NodeCert;
use crate::gossip::vouch::OwnIdentity;
use crate::gossip::{CoreConfig, GossipCore, NodeId};

/// The machine as the simulator drives it: no query waiters, no handler slots.
pub type Machine = AgentMachine<(), ()>;

/// The wall clock the simulation starts at (its events are stamped from it).
pub const EPOCH: Duration = Duration::from_secs(1_800_000_000);

/// How every node of a run is set up.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    /// `expected_cluster_size`: what foca's timings are tuned for.
    pub expected: u32,
    pub eager_push: bool,
    /// `push_pull_interval`, in the config file's syntax.
    pub push_pull_interval: String,
    /// Every node enrolled (`require_node_identity`): signed slots, cards, MACed packets.
    pub identities: bool,
}

impl NodeSetup {
    pub fn for_cluster(n: usize) -> Self {
        Self {
            expected: u32::try_from(n).unwrap_or(u32::MAX),
            eager_push: true,
            push_pull_interval: "30s".into(),
            identities: false,
        }
    }
}

/// Node `i`'s gossip address: 10.x.y.z, port 7946.
pub fn address(i: usize) -> SocketAddr {
    let n = u32::try_from(i + 1).expect("fewer than 2^24 nodes");
    let ip = Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
    SocketAddr::new(ip.into(), 7946)
}

/// Node `i`'s name.
pub fn name(i: usize) -> String {
    format!("n{i}")
}

/// The index of the node called `name`.
pub fn index_of_name(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.parse().ok()
}

fn settings(i: usize, join: &[usize], setup: &NodeSetup, deploy: Option<&DeploySetup>) -> Settings {
    let file = FileConfig {
        eager_push: Some(setup.eager_push),
        expected_cluster_size: Some(setup.expected),
        push_pull_interval: Some(setup.push_pull_interval.clone()),
        ..FileConfig::default()
    };
    let flags = Overrides {
        node: Some(name(i)),
        bind: Some(address(i).to_string()),
        join: join.iter().map(|&j| address(j).to_string()).collect(),
        data_dir: Some("/nonexistent/droot-fleet-sim".into()),
        insecure: true,
        ..Overrides::default()
    };
    let mut settings = Settings::merge(file, &flags).expect("the simulator's settings are valid");
    settings.handlers.extend(deploy.map(DeploySetup::handler));
    settings
}

/// A fresh machine for node `i` (restart `bump`), joining `join`, seeded from `seed`;
/// with `deploy`, it carries the deploy controller's consumer and slot kinds.
pub fn machine(
    i: usize,
    bump: u16,
    join: &[usize],
    setup: &NodeSetup,
    deploy: Option<&DeploySetup>,
    seed: u64,
) -> Machine {
    let mut settings = settings(i, join, setup, deploy);
    if setup.identities {
        settings.identity = enrolled(i, seed);
    }
    let id = NodeId::new(name(i), settings.advertise, bump).expect("a valid node name");
    let mut core = GossipCore::new(id, settings.tags.clone(), CoreConfig::default(), EPOCH);
    if setup.identities {
        core.set_identity_policy(settings.identity.policy());
    }
    let mix = seed ^ ((i as u64) << 20) ^ u64::from(bump);
    let init = Init {
        registry: QueryRegistry::with_builtins(&name(i), false),
        settings,
        core,
        kinds: deploy.map(DeploySetup::kinds).unwrap_or_default(),
        keyring: insecure_keyring(),
        key_authority: KeyAuthority::new(Policy {
            trusted: Trust::Keys(Vec::new()),
            max_age: 3600,
            max_skew: 300,
        }),
        left: LeftBook::default(),
        pending: PendingHandlers::default(),
        rng: StdRng::seed_from_u64(mix),
        foca_rng: StdRng::seed_from_u64(!mix),
    };
    AgentMachine::new(init)
}

/// The fleet's enrollment key (one per run, from its seed).
fn enrollment(seed: u64) -> SigningKey {
    let mut bytes = [0x5e; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    SigningKey::from_bytes(&bytes)
}

/// Node `i`'s identity, as `droot-fleet enroll node` makes it: its own key and a
/// certificate from the run's enrollment key, valid for a year from the run's start.
fn enrolled(i: usize, seed: u64) -> IdentitySettings {
    let authority = enrollment(seed);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_le_bytes());
    key[8..16].copy_from_slice(&seed.to_le_bytes());
    let node_key = SigningKey::from_bytes(&key);
    let from = EPOCH.as_secs();
    let until = from + 365 * 86_400;
    let serial = seed.rotate_left(32) ^ i as u64;
    let cert = NodeCert::issue_with_serial(
        &authority,
        &name(i),
        &node_key.verifying_key(),
        from,
        until,
        serial,
    )
    .expect("a valid certificate");
    IdentitySettings {
        issuers: vec![authority.verifying_key()],
        own: Some(OwnIdentity::new(node_key, cert).expect("the key matches its certificate")),
        required: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_private() {
        assert_eq!(address(0).to_string(), "10.0.0.1:7946");
        assert_eq!(address(9_999).to_string(), "10.0.39.16:7946");
        assert_ne!(address(255), address(256));
    }
}
