//! `droot-fleet agent`: flags → validated settings → logging → the agent until a signal.
//!
//! The one place that joins the layers: the agent carries its file's deploy tables
//! untouched, and this module parses them ([`DeployConfig::parse`]), checks them again on
//! SIGHUP, and wires the agent, the deploy controller and the control API together.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::agent::Agent;
use crate::agent::config::{Overrides, Settings, TablesCheck};
use crate::agent::monitor::{LogReload, MonitorLayer};
use crate::deploy::config::DeployConfig;
use crate::sd_notify::Notifier;

/// Flags of `droot-fleet agent` (each overrides the config file).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML config file (see config/agent.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Try it out: 127.0.0.1, a temporary data dir, a fresh random key per run (written
    /// to the data dir, 0600, for a second dev agent's --keyring).
    #[arg(long)]
    pub dev: bool,
    /// Node name (unique in the cluster). Default: the hostname.
    #[arg(long)]
    pub node: Option<String>,
    /// Gossip address (UDP and TCP), IP:PORT.
    #[arg(long)]
    pub bind: Option<String>,
    /// Address peers use to reach this node, IP:PORT.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Member to join, HOST:PORT (repeatable; retried with backoff).
    #[arg(long)]
    pub join: Vec<String>,
    /// State directory (snapshot, default control socket).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Control API: unix:PATH or tcp:127.0.0.1:PORT.
    #[arg(long)]
    pub rpc: Option<String>,
    /// Node tag KEY=VALUE (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Keyring JSON file {"primary": "...", "keys": [...]}.
    #[arg(long)]
    pub keyring: Option<PathBuf>,
    /// Run without a keyring: a well-known key, so NO authentication (anyone who can
    /// reach the address joins and runs your handlers).
    #[arg(long)]
    pub insecure: bool,
    /// This node's identity file: its key and certificate (`droot-fleet enroll node`).
    #[arg(long, value_name = "FILE")]
    pub node_identity: Option<PathBuf>,
    /// Debug aid: an in-process consumer of user events named PREFIX* that records
    /// them to FILE (see `agent::consumers::record_to_file`).
    #[arg(long, value_name = "PREFIX=FILE", hide = true)]
    pub debug_consumer: Option<String>,
}

/// Runs the agent (blocks until it left the cluster).
pub fn execute(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let debug_consumer = match &args.debug_consumer {
        Some(spec) => {
            let (prefix, file) = spec
                .split_once('=')
                .context("--debug-consumer wants PREFIX=FILE")?;
            Some((prefix.to_owned(), PathBuf::from(file)))
        }
        None => None,
    };
    let settings = Settings::resolve(&overrides(args))?;
    let deploy = DeployConfig::parse(&settings.deploy)?;
    let monitor = tokio::sync::broadcast::channel(1024).0;
    let reload = init_logging(&settings.log_level, &monitor)?;
    let notifier = service_manager();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async move {
        let mut agent = Agent::new(settings)
            .with_monitor(monitor)
            .with_log_reload(reload)
            .with_tables_check(deploy_tables_check())
            .with_notifier(notifier.clone());
        if let Some((prefix, file)) = debug_consumer {
            let rx = agent.register_consumer("debug", &prefix);
            tokio::spawn(crate::agent::consumers::record_to_file(rx, file));
        }
        serve(agent, deploy, notifier).await
    });
    // Blocking work was cancelled on the way out; whatever still runs (a disk stuck in a
    // write) must not keep a stopped agent alive past its supervisor's stop timeout.
    runtime.shutdown_timeout(BLOCKING_GRACE);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// How long the agent waits at exit for blocking work it could not cancel.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGHUP refuses a file whose deploy tables would not start the agent (nothing of it is
/// applied then); valid ones take effect at the next restart, as before.
fn deploy_tables_check() -> TablesCheck {
    Arc::new(|tables| DeployConfig::parse(tables).map(drop).map_err(Into::into))
}

/// The service manager to notify (`NOTIFY_SOCKET`), if any. A bad address is reported and
/// the agent runs on: a manager that waits for `READY=1` times out by itself.
fn service_manager() -> Notifier {
    Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("{e}");
        Notifier::default()
    })
}

fn overrides(args: AgentArgs) -> Overrides {
    Overrides {
        config: args.config,
        dev: args.dev,
        node: args.node,
        bind: args.bind,
        advertise: args.advertise,
        join: args.join,
        data_dir: args.data_dir,
        rpc: args.rpc,
        tags: args.tags,
        keyring: args.keyring,
        insecure: args.insecure,
        log_level: std::env::var("RUST_LOG").ok(),
        node_identity: args.node_identity,
    }
}

/// Logs to stderr and to `monitor` streams; the returned hook changes the level (SIGHUP).
fn init_logging(
    level: &str,
    monitor: &tokio::sync::broadcast::Sender<String>,
) -> anyhow::Result<LogReload> {
    let filter =
        super::log_filter(level).with_context(|| format!("invalid `log_level` {level:?}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .with(MonitorLayer::new(monitor.clone()))
        .try_init();
    Ok(Arc::new(move |level: &str| {
        let f =
            super::log_filter(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    }))
}

/// Wires the agent, the control API and the deploy controller together and runs them
/// until the agent left. The service manager hears `READY=1` once gossip is bound, the
/// control API listens and the apps are up.
async fn serve(mut agent: Agent, deploy: DeployConfig, notifier: Notifier) -> anyhow::Result<()> {
    let rpc = agent.settings().rpc.clone();
    let token = agent.settings().rpc_token.clone();
    let metrics_addr = agent.settings().metrics_addr;
    let handle = agent.handle();
    let controller = crate::deploy::controller::Controller::register(&mut agent, deploy);
    // The control socket answers only once the data dir is in place and gossip is bound.
    let agent = agent.start().await?;
    let listener = crate::api::server::Listener::bind(&rpc)
        .await
        .with_context(|| format!("binding the control API {rpc}"))?;
    let services = crate::api::Services {
        agent: handle.clone(),
        deploy: Some(controller.view()),
    };
    if let Some(addr) = metrics_addr {
        use crate::api::metrics_listener;
        let listener = metrics_listener::bind(addr)
            .await
            .with_context(|| format!("binding metrics_addr {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics");
        tokio::spawn(metrics_listener::run(
            listener,
            services.clone(),
            handle.stopping(),
        ));
    }
    let server = tokio::spawn(crate::api::server::run(
        listener,
        services,
        token,
        handle.stopping(),
    ));
    // The deploy controller runs beside the agent; if it cannot start the apps, the
    // agent leaves and exits with its error (a supervisor restarts it; nothing is hidden).
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if up_rx.await.is_ok() {
            notifier.ready();
        }
    });
    let controller = tokio::spawn({
        let handle = handle.clone();
        async move {
            let r = controller.run(handle, up_tx).await;
            if r.is_err() {
                let _ = failed_tx.send(());
            }
            r
        }
    });
    let shutdown = async {
        tokio::select! {
            () = crate::agent::termination_signal() => {}
            Ok(()) = failed_rx => {}
        }
    };
    let result = agent.run(shutdown).await;
    match controller.await {
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context("deploy controller")),
        Err(e) => return Err(anyhow::anyhow!("deploy controller panicked: {e}")),
        Ok(Ok(())) => {}
    }
    // Let in-flight answers (e.g. to `leave`) reach their clients.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), server).await;
    result.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use crate::agent::config::DeployTables;

    /// A SIGHUP'd file with a bad `[deploy]` is refused, naming the field, as at start.
    #[test]
    fn sighup_check_names_the_bad_deploy_field() {
        let check = super::deploy_tables_check();
        let table: toml::Table = toml::from_str("max_age = \"soon\"").unwrap();
        let bad = DeployTables {
            deploy: Some(toml::Value::Table(table)),
            ..Default::default()
        };
        let err = check(&bad).unwrap_err().to_string();
        assert!(err.contains("deploy.max_age"), "{err}");
        assert!(check(&DeployTables::default()).is_ok());
    }
}
