//! [`Settings::merge`]: the file and the flags into validated settings, one concern
//! per function. A flag always wins over the file; every error names its field.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    ConfigError, DEFAULT_DATA_DIR, DEFAULT_PORT, DEFAULT_RPC_SOCKET, DEV_DATA_DIR, DeployTables,
    FileConfig, Overrides, RpcAddr, Settings, default_node_name, duration, handlers, invalid,
    parse_tag, socket_addr,
};
use crate::agent::identity::{self as identity_file, IdentitySettings};
use crate::gossip::{EventLogConfig, Tags, validate_node_name};

impl Settings {
    /// Merges an already parsed file with the flags, then validates.
    pub fn merge(mut file: FileConfig, flags: &Overrides) -> Result<Self, ConfigError> {
        let dev = flags.dev;
        let identity = identity(&mut file, flags)?;
        let node = node_name(&mut file, flags, &identity)?;
        let (bind, advertise) = addresses(&mut file, flags)?;
        let join = joins(std::mem::take(&mut file.join), flags)?;
        let data_dir = flags
            .data_dir
            .clone()
            .or(file.data_dir.take())
            .unwrap_or_else(|| PathBuf::from(if dev { DEV_DATA_DIR } else { DEFAULT_DATA_DIR }));
        let (rpc, rpc_token) = control_api(&mut file, flags, &data_dir)?;
        let metrics_addr = metrics_addr(file.metrics_addr.take())?;
        let tags = tags(std::mem::take(&mut file.tags), flags)?;
        let keyring = flags.keyring.clone().or(file.keyring.take());
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        if keyring.is_none() && !dev && !insecure {
            return Err(no_keyring(advertise));
        }
        let log_level = log_level(file.log_level.take(), flags)?;
        let event_log = event_log(&file)?;
        let fanout = file.eager_push_fanout;
        if fanout == Some(0) {
            return Err(invalid(
                "eager_push_fanout",
                "0 pushes to nobody: set eager_push = false instead, or leave it unset for ln N + 2"
                    .to_string(),
            ));
        }
        let t = Intervals::from_file(&file)?;
        Ok(Self {
            node,
            bind,
            advertise,
            join,
            retry_join: file.retry_join.unwrap_or(true),
            retry_interval: t.retry,
            retry_max: file.retry_max.unwrap_or(0),
            data_dir,
            rpc,
            rpc_token,
            metrics_addr,
            tags,
            keyring,
            insecure,
            dev,
            log_level,
            push_pull_interval: t.push_pull,
            reconnect_interval: t.reconnect,
            snapshot_interval: t.snapshot,
            reap_after: t.reap_after,
            eager_push: file.eager_push.unwrap_or(true),
            eager_push_fanout: fanout,
            expected_cluster_size: file.expected_cluster_size.unwrap_or(16).max(1),
            event_log,
            handlers: handlers(&file.handlers)?,
            max_concurrent_handlers: file.max_concurrent_handlers.unwrap_or(16).max(1),
            blob_query: file.blob_query.unwrap_or(false),
            deploy: DeployTables {
                apps: file.apps.take(),
                trusted_signing_keys: std::mem::take(&mut file.trusted_signing_keys),
                deploy: file.deploy.take(),
            },
            identity,
            overrides: flags.clone(),
        })
    }
}

/// The node name: the flag, the file, the node identity's certificate, or the host name.
/// A name that differs from the certificate's is refused.
fn node_name(
    file: &mut FileConfig,
    flags: &Overrides,
    identity: &IdentitySettings,
) -> Result<String, ConfigError> {
    let certified = identity.own.as_ref().map(|o| o.name().to_owned());
    let node = flags
        .node
        .clone()
        .or(file.node.take())
        .or(certified.clone())
        .unwrap_or_else(default_node_name);
    validate_node_name(&node).map_err(|e| invalid("node", e.to_string()))?;
    if let Some(c) = certified.filter(|c| *c != node) {
        return Err(invalid(
            "node",
            format!(
                "{node:?}, but the node identity's certificate is for {c:?}: leave the node name unset, or enroll this node under {node:?}"
            ),
        ));
    }
    Ok(node)
}

/// Enrollment keys, this node's identity (read and checked now, so a bad one stops the
/// start or the reload) and whether identities are required.
fn identity(file: &mut FileConfig, flags: &Overrides) -> Result<IdentitySettings, ConfigError> {
    let mut issuers = Vec::new();
    for (i, text) in file.enrollment_keys.iter().enumerate() {
        let what = format!("enrollment_keys[{i}]");
        let key = crate::keytext::public_key_from_text_named(text, &what)
            .map_err(|e| invalid(what.clone(), e.to_string()))?;
        issuers.push(key);
    }
    let path = flags.node_identity.clone().or(file.node_identity.take());
    let required = file.require_node_identity.unwrap_or(!issuers.is_empty());
    if issuers.is_empty() && (path.is_some() || required) {
        return Err(invalid(
            "enrollment_keys",
            "required with node_identity or require_node_identity: add the public key `droot-fleet enroll init` printed",
        ));
    }
    let own = match path {
        Some(p) => {
            let own =
                identity_file::load(&p).map_err(|e| invalid("node_identity", e.to_string()))?;
            identity_file::check(&own, &issuers, crate::wall::now().as_secs(), &p)
                .map_err(|e| invalid("node_identity", e.to_string()))?;
            Some(own)
        }
        None => None,
    };
    if required && own.is_none() && !flags.dev {
        return Err(invalid(
            "node_identity",
            "required by require_node_identity: enroll this node (`droot-fleet enroll node NAME --enrollment-key FILE -o FILE`) and set node_identity, or set require_node_identity = false while the fleet is being enrolled",
        ));
    }
    Ok(IdentitySettings {
        issuers,
        own,
        required,
    })
}

/// The gossip bind and advertise addresses (same port; advertise required when bound
/// to the unspecified address).
fn addresses(
    file: &mut FileConfig,
    flags: &Overrides,
) -> Result<(std::net::SocketAddr, std::net::SocketAddr), ConfigError> {
    let default_bind = if flags.dev {
        format!("127.0.0.1:{DEFAULT_PORT}")
    } else {
        format!("0.0.0.0:{DEFAULT_PORT}")
    };
    let bind_text = flags
        .bind
        .clone()
        .or(file.bind.take())
        .unwrap_or(default_bind);
    let bind = socket_addr("bind", &bind_text)?;
    let advertise = match flags.advertise.clone().or(file.advertise.take()) {
        Some(a) => socket_addr("advertise", &a)?,
        None if bind.ip().is_unspecified() => {
            return Err(invalid(
                "advertise",
                format!(
                    "required when bind is {bind} (which address should peers use?); \
                     set advertise = \"IP:PORT\" or bind to a specific IP"
                ),
            ));
        }
        None => bind,
    };
    if advertise.port() != bind.port() {
        return Err(invalid(
            "advertise",
            format!(
                "port {} differs from the bind port {}; port mapping is not supported",
                advertise.port(),
                bind.port()
            ),
        ));
    }
    Ok((bind, advertise))
}

/// The file's join addresses, then the flags', each `HOST:PORT`.
fn joins(mut join: Vec<String>, flags: &Overrides) -> Result<Vec<String>, ConfigError> {
    join.extend(flags.join.iter().cloned());
    for (i, j) in join.iter().enumerate() {
        if j.rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(invalid(
                format!("join[{i}]"),
                format!("{j:?} is not HOST:PORT"),
            ));
        }
    }
    Ok(join)
}

/// Where the control API listens, and its token: loopback TCP only, and then with a
/// token; by default a unix socket in the data dir (when one was chosen).
fn control_api(
    file: &mut FileConfig,
    flags: &Overrides,
    data_dir: &std::path::Path,
) -> Result<(RpcAddr, Option<String>), ConfigError> {
    let explicit_dir = flags.data_dir.is_some() || flags.dev;
    let rpc = match flags.rpc.clone().or(file.rpc.take()) {
        Some(r) => RpcAddr::parse(&r).map_err(|e| invalid("rpc", e))?,
        None if explicit_dir => RpcAddr::Unix(data_dir.join("agent.sock")),
        None => RpcAddr::Unix(PathBuf::from(DEFAULT_RPC_SOCKET)),
    };
    let rpc_token = file.rpc_token.take().filter(|t| !t.is_empty());
    if let RpcAddr::Tcp(a) = &rpc {
        if !a.ip().is_loopback() {
            return Err(invalid(
                "rpc",
                format!(
                    "{a} is not a loopback address; the control API only listens on loopback TCP"
                ),
            ));
        }
        if rpc_token.is_none() {
            return Err(invalid(
                "rpc_token",
                "required when rpc is tcp: (any local user could otherwise drive the agent)",
            ));
        }
    }
    Ok((rpc, rpc_token))
}

/// `metrics_addr`: IP:PORT (no default port: it is not the gossip port).
fn metrics_addr(text: Option<String>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(text) = text else { return Ok(None) };
    text.parse().map(Some).map_err(|_| {
        invalid(
            "metrics_addr",
            format!("{text:?} is not IP:PORT (e.g. \"10.0.0.5:9946\")"),
        )
    })
}

/// The file's tags, then the flags' `KEY=VALUE`; they must fit the announcement.
fn tags(
    file: std::collections::BTreeMap<String, String>,
    flags: &Overrides,
) -> Result<Tags, ConfigError> {
    let mut tags: Tags = file.into_iter().collect();
    for t in &flags.tags {
        let (k, v) = parse_tag(t).map_err(|e| invalid("tag", e))?;
        tags.insert(k, v);
    }
    use crate::agent::sansio::deploy_format;
    if let Some(k) = tags
        .keys()
        .find(|k| k.starts_with(deploy_format::RESERVED_PREFIX))
    {
        return Err(invalid(
            "tags",
            format!(
                "{k:?}: keys starting with '{}' are the agent's own (it announces {:?} there); rename the tag",
                deploy_format::RESERVED_PREFIX,
                deploy_format::TAG
            ),
        ));
    }
    let encoded = |tags: &Tags| postcard::to_stdvec(tags).map_or(usize::MAX, |b| b.len());
    let theirs = encoded(&tags);
    deploy_format::announce(&mut tags);
    let size = encoded(&tags);
    if size > crate::gossip::supersede::MAX_TAGS_ENCODED {
        return Err(invalid(
            "tags",
            format!(
                "take {size} bytes encoded ({} of them the agent's own {:?} tag), at most {} \
                 fit the gossip packet that announces them; use fewer or shorter tags",
                size.saturating_sub(theirs),
                deploy_format::TAG,
                crate::gossip::supersede::MAX_TAGS_ENCODED
            ),
        ));
    }
    Ok(tags)
}

/// No keyring, no `--dev`, no `insecure`: refused, on any address (loopback is no
/// exception: any local user can run an agent and join).
fn no_keyring(advertise: std::net::SocketAddr) -> ConfigError {
    invalid(
        "keyring",
        format!(
            "required (gossip address {advertise}): without a key any local user or \
             anyone on the network can join and send events. Create one with \
             `droot-fleet keygen` (file: {{\"primary\": \"<key>\", \"keys\": []}}), \
             try it out with --dev (a fresh key per run), or pass --insecure \
             (insecure = true) to run with NO authentication"
        ),
    )
}

/// The log filter, checked here and not only when applied: a SIGHUP with a bad filter
/// must change nothing (tags and handlers included).
fn log_level(file: Option<String>, flags: &Overrides) -> Result<String, ConfigError> {
    let log_level = flags
        .log_level
        .clone()
        .or(file)
        .unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        return Err(invalid(
            "log_level",
            format!(
                "{log_level:?} is not a log filter like \"info\" or \"droot_fleet=debug\" (RUST_LOG overrides it): {e}"
            ),
        ));
    }
    Ok(log_level)
}

fn event_log(file: &FileConfig) -> Result<EventLogConfig, ConfigError> {
    let defaults = EventLogConfig::default();
    Ok(EventLogConfig {
        max_recent: file.event_log_max_recent.unwrap_or(defaults.max_recent),
        max_recent_age: duration(
            "event_log_max_age",
            file.event_log_max_age.as_ref(),
            defaults.max_recent_age,
        )?,
        max_ids: file.event_log_max_ids.unwrap_or(defaults.max_ids).max(1),
    })
}

/// The protocol's intervals, with their defaults.
struct Intervals {
    reap_after: Duration,
    reconnect: Duration,
    retry: Duration,
    push_pull: Duration,
    snapshot: Duration,
}

impl Intervals {
    fn from_file(file: &FileConfig) -> Result<Self, ConfigError> {
        let reap_after = duration(
            "reap_after",
            file.reap_after.as_ref(),
            Duration::from_secs(24 * 3600),
        )?;
        let reconnect = duration(
            "reconnect_interval",
            file.reconnect_interval.as_ref(),
            Duration::from_secs(10),
        )?;
        if reconnect >= reap_after {
            return Err(invalid(
                "reconnect_interval",
                format!(
                    "{reconnect:?} is not below reap_after ({reap_after:?}): failed \
                     members would be forgotten before the first reconnect attempt"
                ),
            ));
        }
        Ok(Self {
            reap_after,
            reconnect,
            retry: duration(
                "retry_interval",
                file.retry_interval.as_ref(),
                Duration::from_secs(5),
            )?,
            push_pull: duration(
                "push_pull_interval",
                file.push_pull_interval.as_ref(),
                Duration::from_secs(30),
            )?,
            snapshot: duration(
                "snapshot_interval",
                file.snapshot_interval.as_ref(),
                Duration::from_secs(10),
            )?,
        })
    }
}
