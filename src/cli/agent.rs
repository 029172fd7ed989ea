//! `droot-fleet agent`: flags → validated settings → logging → the agent until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, reload};

use crate::agent::Agent;
use crate::agent::config::{Overrides, Settings};
use crate::agent::monitor::{LogReload, MonitorLayer};

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
    /// Debug aid: an in-process consumer of user events named PREFIX* that records
    /// them to FILE (see `agent::consumers::record_to_file`).
    #[arg(long, value_name = "PREFIX=FILE", hide = true)]
    pub debug_consumer: Option<String>,
}

/// Runs the agent (blocks until it left the cluster).
pub fn execute(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
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
    };
    let settings = Settings::resolve(&overrides)?;
    let debug_consumer = match &args.debug_consumer {
        Some(spec) => {
            let (prefix, file) = spec
                .split_once('=')
                .context("--debug-consumer wants PREFIX=FILE")?;
            Some((prefix.to_owned(), PathBuf::from(file)))
        }
        None => None,
    };

    let monitor = tokio::sync::broadcast::channel(1024).0;
    let filter = EnvFilter::try_new(&settings.log_level)
        .with_context(|| format!("invalid `log_level` {:?}", settings.log_level))?;
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
    let reload: LogReload = Arc::new(move |level: &str| {
        let f =
            EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let mut agent = Agent::new(settings)
            .with_monitor(monitor)
            .with_log_reload(reload);
        if let Some((prefix, file)) = debug_consumer {
            let rx = agent.register_consumer("debug", &prefix);
            tokio::spawn(crate::agent::consumers::record_to_file(rx, file));
        }
        agent.run(crate::agent::termination_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}
