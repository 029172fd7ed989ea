//! Agent startup from its data dir: the keyring (a configured file, a fresh `--dev` key,
//! or the explicit insecure one), the state file, and the journal written after it.
//!
//! Guarantee: events the journal recorded as delivered are never delivered again, and
//! handlers it recorded as owed are started once more ([`PendingHandlers::restore`]).
//!
//! The restored state becomes the state machine's [`Init`]; the I/O loops are spawned
//! here too. The machine's `start` then announces, snapshots, starts owed handlers and
//! joins.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::rngs::StdRng;
use tokio::net::{TcpListener, UdpSocket};

use super::AgentHandle;
use super::config::Settings;
use super::io_err;
use super::members::LeftBook;
use super::net::{self, Counters, SharedKeyring};
use super::pending::PendingHandlers;
use super::queries::QueryRegistry;
use super::sansio::Init;
use super::snapshot;
use super::{AgentError, keys};
use crate::gossip::{CoreConfig, GossipCore, NodeId};

/// The keyring to start with: the configured file, a fresh `--dev` key (then
/// `settings.keyring` names its file, so key rotations persist there), or the insecure
/// all-zero key when `insecure` was asked for explicitly.
fn startup_keyring(settings: &mut Settings) -> Result<crate::gossip::Keyring, AgentError> {
    if let Some(p) = &settings.keyring {
        return Ok(keys::load(p)?);
    }
    if settings.dev {
        let (ring, path) = keys::dev_keyring(&settings.data_dir)?;
        let bind = settings.bind;
        let second = SocketAddr::new(bind.ip(), bind.port().wrapping_add(1));
        tracing::warn!(
            keyring = %path.display(),
            "dev agent: a fresh cluster key for this run is in {}; start a second dev agent \
             with: droot-fleet agent --dev --keyring {} --node dev-2 --bind {second} \
             --data-dir {}-2 --join {bind}",
            path.display(),
            path.display(),
            settings.data_dir.display(),
        );
        settings.keyring = Some(path);
        return Ok(ring);
    }
    tracing::warn!(
        "INSECURE: no keyring and insecure = true: gossip uses a well-known key, so anyone who \
         can reach {} can join this cluster, send events and run its handlers",
        settings.bind
    );
    Ok(keys::insecure_keyring())
}

/// The identities to start with: the configured ones, or (a `--dev` agent without
/// enrollment keys) a self-issued dev identity beside the dev keyring.
fn startup_identity(
    settings: &mut Settings,
) -> Result<super::identity::IdentitySettings, AgentError> {
    let configured = !settings.identity.issuers.is_empty();
    let Some(ring) = settings
        .keyring
        .clone()
        .filter(|_| settings.dev && !configured)
    else {
        if !configured {
            tracing::warn!(
                "no enrollment_keys: node identities are off, so any holder of the gossip key can speak for any node (enroll the fleet: `droot-fleet enroll init`)"
            );
        }
        return Ok(settings.identity.clone());
    };
    let now = crate::wall::now().as_secs();
    let dev = super::identity::dev(&ring, &settings.node, now)
        .map_err(|e| AgentError::Startup(e.to_string()))?;
    settings.identity = dev.clone();
    Ok(dev)
}

/// What a starting agent takes over from its data dir.
pub(super) struct Restored {
    pub(super) ring: crate::gossip::Keyring,
    pub(super) core: GossipCore,
    pub(super) rng: StdRng,
    pub(super) identity: NodeId,
    pub(super) bump: u16,
    pub(super) rejoin: Vec<NodeId>,
    pub(super) left: LeftBook,
    pub(super) pending: PendingHandlers,
    /// Cluster key operations applied before the restart.
    pub(super) key_operations: crate::deploy::signed::SeenSnapshot,
}

/// Prepares the data dir and the keyring, then restores the state file and replays the
/// journal written after it.
pub(super) fn restore(settings: &mut Settings) -> Result<Restored, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &settings.data_dir.clone();
    crate::dirs::create_dir_all_mode(dir, 0o755, 0o700)
        .map_err(io_err(format!("creating data dir {}", dir.display())))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if settings.dev {
        // A dev agent always starts from a clean slate.
        let _ = std::fs::remove_file(snapshot::path(dir));
        let _ = std::fs::remove_file(dir.join(snapshot::JOURNAL_FILE));
    }
    let ring = startup_keyring(settings)?;
    let persisted = snapshot::load(dir)?;
    let mut rng: StdRng = rand::make_rng();
    let bump = match &persisted {
        Some(p) => p.core.identity.bump.wrapping_add(1),
        None => rand::RngExt::random(&mut rng),
    };
    let identity = NodeId::new(&settings.node, settings.advertise, bump)
        .map_err(|e| AgentError::Startup(format!("node name: {e}")))?;
    let core_config = CoreConfig {
        event_log: settings.event_log,
        ..CoreConfig::default()
    };
    let owed = persisted
        .as_ref()
        .map(|p| p.pending.clone())
        .unwrap_or_default();
    let key_operations = persisted
        .as_ref()
        .map(|p| p.key_operations.clone())
        .unwrap_or_default();
    let (mut core, rejoin, left) = match persisted {
        Some(p) => (
            GossipCore::restore(
                identity.clone(),
                settings.tags.clone(),
                core_config,
                p.core,
                crate::wall::now(),
            ),
            p.members,
            p.left,
        ),
        None => (
            GossipCore::new(
                identity.clone(),
                settings.tags.clone(),
                core_config,
                crate::wall::now(),
            ),
            Vec::new(),
            LeftBook::default(),
        ),
    };
    core.set_identity_policy(startup_identity(settings)?.policy());
    // Events journaled after the last snapshot had their handlers started: never again
    // (except those journaled as owed, started once more below).
    let (pending, delivered) =
        PendingHandlers::restore(owed, snapshot::journal_read(dir)?, &settings.handlers);
    for ev in &delivered {
        core.record_delivered(ev);
    }
    Ok(Restored {
        ring,
        core,
        rng,
        identity,
        bump,
        rejoin,
        left,
        pending,
        key_operations,
    })
}

/// The UDP receive and gossip TCP accept loops, feeding the task.
pub(super) fn spawn_io(
    socket: Arc<UdpSocket>,
    listener: TcpListener,
    (keyring, held): (&SharedKeyring, Option<Arc<crate::fanout::held::Held>>),
    counters: &Arc<Counters>,
    handle: &AgentHandle,
) -> tokio::task::JoinSet<()> {
    let mut io = tokio::task::JoinSet::new();
    io.spawn(net::udp_recv_loop(
        socket,
        keyring.clone(),
        counters.clone(),
        handle.tx.clone(),
        handle.stop.clone(),
    ));
    io.spawn(net::tcp_accept_loop(
        listener,
        keyring.clone(),
        counters.clone(),
        handle.tx.clone(),
        held,
        handle.stop.clone(),
    ));
    io
}

impl Restored {
    /// What the state machine starts from.
    pub(super) fn into_init(
        self,
        settings: Settings,
        kinds: crate::gossip::kinds::Kinds,
        registry: QueryRegistry,
        mut key_authority: crate::agent::key_auth::KeyAuthority,
    ) -> Init {
        key_authority.restore_seen(&self.key_operations);
        Init {
            key_authority,
            settings,
            core: self.core,
            kinds,
            registry,
            keyring: self.ring,
            left: self.left,
            pending: self.pending,
            rng: self.rng,
            foca_rng: rand::make_rng(),
        }
    }
}
