//! The command line: clap definitions, validation into settings, and dispatch.
//!
//! This is the only module that uses `anyhow`; library errors are typed. `main` prints the
//! error chain once with `{:#}` and picks the exit code.

mod agent;
mod bar;
mod deploy;
mod deploy_event;
mod docs;
mod enroll;
mod export;
mod fleet;
mod fleet_deploy;
mod history;
mod progress;
mod publish;
mod rollout;
mod run;
pub mod signing;
mod status;
mod status_json;
mod teardown;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build with Docker, ship as a tarball, run in a chroot jail — on every host of a fleet.
#[derive(Debug, Parser)]
#[command(name = "droot-fleet", version, about)]
pub struct Cli {
    /// Log filter, e.g. `info`, `debug`, `droot_fleet=trace`. Also read from RUST_LOG.
    #[arg(long, global = true, env = "DROOT_FLEET_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Unpack a tar, tar.gz or tar.zst (file or stdin) into a new release and switch `current`.
    Deploy(deploy::DeployArgs),
    /// Run a command chrooted into a root, in its own mount namespace.
    Run(run::RunArgs),
    /// Unmount every mount at or below a root, deepest first.
    Umount(teardown::RootArg),
    /// Unmount, then remove a root without following symlinks out of it.
    Rm(teardown::RootArg),
    /// Turn a Docker image (engine or `docker save`/OCI archive) into a rootfs tar with `/.drootenv`.
    Export(export::ExportArgs),
    /// Export an image or rootfs directory straight to S3 or a file, with its sha256.
    Publish(publish::PublishArgs),
    /// Run the gossip agent (one per host).
    Agent(agent::AgentArgs),
    /// List cluster members (from the local agent).
    Members(fleet::MembersArgs),
    /// Send a user event to the whole cluster, or `event deploy APP VERSION`.
    Event(Box<fleet::EventArgs>),
    /// Deploy the previous release of an app again (or --to VERSION): a signed deploy event.
    Rollback(fleet_deploy::RollbackArgs),
    /// An app's deploys across the fleet, newest first, and the releases each node holds.
    History(history::HistoryArgs),
    /// A deploy's waves: status, pause, resume, cancel (signed orders).
    Rollout(rollout::RolloutArgs),
    /// Ask (a filtered part of) the cluster and collect the answers.
    Query(fleet::QueryArgs),
    /// Cluster-wide key rotation: list, install, use, remove.
    Keys(fleet::KeysArgs),
    /// Print a new random cluster key (base64), or with --signing make a deploy signing key.
    Keygen(signing::KeygenArgs),
    /// Node identities: the fleet's enrollment key, a host's identity, revocation.
    Enroll(enroll::EnrollArgs),
    /// The local agent: name, address, identity and its packet and protocol counters.
    Info(fleet::InfoArgs),
    /// Make the local agent leave the cluster and exit.
    Leave(fleet::RpcArgs),
    /// Mark a failed member as left.
    ForceLeave(fleet::NodeArgs),
    /// Stream the agent's logs and events (NDJSON).
    Monitor(fleet::RpcArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page of the whole CLI (roff), or with --dir write one page per command.
    Man(docs::ManArgs),
}

/// Entry point used by the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent sets up its own logging (reloadable on SIGHUP, mirrored to /v1/monitor).
    if !matches!(cli.command, Command::Agent(_)) {
        init_tracing(&cli.log);
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("droot-fleet: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Deploy(args) => deploy::execute(args),
        Command::Run(args) => run::execute(args),
        Command::Umount(args) => teardown::umount(args),
        Command::Rm(args) => teardown::rm(args),
        Command::Export(args) => export::execute(args),
        Command::Publish(args) => publish::execute(args),
        Command::Agent(args) => agent::execute(args),
        Command::Members(args) => fleet::members(args),
        Command::Event(args) => fleet::event(*args),
        Command::Query(args) => fleet::query(args),
        Command::Rollback(args) => fleet_deploy::rollback(args),
        Command::History(args) => history::execute(args),
        Command::Rollout(args) => rollout::execute(args),
        Command::Keys(args) => fleet::keys(args),
        Command::Keygen(args) => signing::keygen(args),
        Command::Enroll(args) => enroll::execute(args),
        Command::Info(args) => fleet::info(args),
        Command::Leave(args) => fleet::leave(args),
        Command::ForceLeave(args) => fleet::force_leave(args),
        Command::Monitor(args) => fleet::monitor(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    }
}

/// The log filter for `spec`, with the AWS SDK's warning about part-level checksums held
/// back: the SDK cannot check them against an object uploaded in parts, and the warning
/// read like an error on every such deploy (the artifact's sha256 is what vouches for it).
/// A spec that names `aws_sdk_s3` decides for itself.
pub(crate) fn log_filter(
    spec: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    const QUIET: &str = "aws_sdk_s3::http_response_checksum=error";
    let full = match spec.trim() {
        s if s.contains("aws_sdk_s3") => s.to_string(),
        "" => QUIET.to_string(),
        s => format!("{s},{QUIET}"),
    };
    tracing_subscriber::EnvFilter::try_new(full)
}

fn init_tracing(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let env_filter =
        log_filter(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Absolute form of a user-given path, without resolving symlinks.
pub(crate) fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    Ok(std::path::absolute(path)?)
}

#[cfg(test)]
mod log_filter_tests {
    /// The SDK's checksum warning is held back unless the spec names the SDK itself; a bad
    /// spec is still an error.
    #[test]
    fn the_sdk_checksum_warning_is_held_back_unless_asked_for() {
        let shown = |spec: &str| super::log_filter(spec).unwrap().to_string();
        assert!(shown("warn").contains("aws_sdk_s3::http_response_checksum=error"));
        assert!(shown("").contains("aws_sdk_s3::http_response_checksum=error"));
        assert!(!shown("warn,aws_sdk_s3=debug").contains("http_response_checksum"));
        assert!(super::log_filter("warn,[").is_err());
    }
}
