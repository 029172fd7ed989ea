//! `droot-fleet enroll`: the fleet's enrollment key, one identity per host, revocation.
//!
//! ```text
//! enroll init -o enrollment.key              # once per fleet; prints the public key
//! enroll node web-1 --enrollment-key K -o web-1.identity   # once per host
//! enroll show web-1.identity
//! enroll revoke (--identity FILE | --node NAME) --enrollment-key K
//! ```
//!
//! The enrollment key is the fleet's certificate authority: keep it where the deploy
//! signing key is kept (off the hosts). An identity file holds a host's private node key;
//! it is written 0600 and never replaced.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;

use super::fleet::{RpcArgs, runtime};
use crate::agent::identity;
use crate::durations::parse_duration;
use crate::gossip::cert::{CertBody, NodeCert, Revocation};
use crate::keytext;

#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(subcommand)]
    pub command: EnrollCommand,
}

#[derive(Debug, Subcommand)]
pub enum EnrollCommand {
    /// Make the fleet's enrollment key (private key to -o FILE, 0600; public key to stdout,
    /// for every agent's enrollment_keys).
    Init {
        /// Where to write the private enrollment key; refused if the file exists.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Make a host's identity: a new node key and its certificate for NAME.
    Node(NodeArgs),
    /// Print what an identity file holds (never the private key).
    Show {
        /// The identity file.
        file: PathBuf,
    },
    /// Revoke a node's certificate; the local agent checks and gossips the revocation.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node name (the agent's --node).
    pub name: String,
    /// The private enrollment key (from `enroll init`).
    #[arg(long, value_name = "FILE", env = "DROOT_FLEET_ENROLLMENT_KEY")]
    pub enrollment_key: PathBuf,
    /// Where to write the identity file (0600); refused if it exists. Default NAME.identity.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// How long the certificate is valid.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub valid_for: Duration,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The private enrollment key that signs the revocation.
    #[arg(long, value_name = "FILE", env = "DROOT_FLEET_ENROLLMENT_KEY")]
    pub enrollment_key: PathBuf,
    /// The revoked node's identity file.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "node",
        required_unless_present = "node"
    )]
    pub identity: Option<PathBuf>,
    /// The revoked node's name, looked up in the local agent's member list.
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

pub fn execute(args: EnrollArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EnrollCommand::Init { output } => init(&output),
        EnrollCommand::Node(a) => node(a),
        EnrollCommand::Show { file } => show(&file),
        EnrollCommand::Revoke(a) => revoke(a),
    }
}

fn init(output: &Path) -> anyhow::Result<ExitCode> {
    let key = keytext::generate_signing_key();
    write_new_0600(output, keytext::signing_key_to_text(&key).as_bytes())?;
    println!("{}", keytext::public_key_text(&key.verifying_key()));
    eprintln!(
        "wrote the private enrollment key to {} (0600); add the public key above to every \
         agent's enrollment_keys, and keep the private key off the hosts",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let enrollment = read_enrollment_key(&args.enrollment_key)?;
    let now = crate::wall::now().as_secs();
    let until = now.saturating_add(args.valid_for.as_secs());
    let key = keytext::generate_signing_key();
    let cert = NodeCert::issue(&enrollment, &args.name, &key.verifying_key(), now, until)?;
    let out = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.identity", args.name)));
    identity::save(&out, &key, &cert)?;
    println!("{}", describe(cert.body()));
    eprintln!(
        "wrote {}'s identity to {} (0600); copy it to the host and set node_identity to it",
        args.name,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(file: &Path) -> anyhow::Result<ExitCode> {
    let own = identity::load(file)?;
    println!("{}", describe(own.cert().body()));
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let enrollment = read_enrollment_key(&args.enrollment_key)?;
    let client = args.rpc.client()?;
    let rt = runtime()?;
    let (name, key, until) = match (&args.identity, &args.node) {
        (Some(file), _) => {
            let own = identity::load(file)?;
            let c = own.cert().body();
            (c.name.clone(), c.node_key, c.not_after)
        }
        (None, Some(name)) => rt.block_on(card_of_member(&client, name))?,
        (None, None) => anyhow::bail!("give --identity FILE or --node NAME"),
    };
    let now_ms = u64::try_from(crate::wall::now().as_millis()).unwrap_or(u64::MAX);
    let revocation = Revocation::issue_for_key(&enrollment, key, &name, until, now_ms);
    rt.block_on(client.revoke(&revocation.encode()))
        .context("the local agent refused the revocation")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)?;
    println!(
        "revoked {name}'s node key {}; the revocation is gossiped to every node",
        keytext::public_key_text(&key)
    );
    Ok(ExitCode::SUCCESS)
}

/// The name, node key and certificate end of member `name`, from the local agent.
async fn card_of_member(
    client: &crate::api::client::Client,
    name: &str,
) -> anyhow::Result<(String, [u8; 32], u64)> {
    let members = client.members(None).await?;
    let m = members
        .iter()
        .find(|m| m.name == name)
        .with_context(|| format!("no member named {name:?} (pass --identity FILE instead)"))?;
    let id = m.identity.as_ref().with_context(|| {
        format!("the local agent holds no verified identity for {name:?} (pass --identity FILE)")
    })?;
    let key = keytext::public_key_from_text_named(&id.node_key, "node key")?;
    Ok((name.to_owned(), key.to_bytes(), id.expires))
}

fn describe(c: &CertBody) -> String {
    let key = ed25519_dalek::VerifyingKey::from_bytes(&c.node_key)
        .map(|k| keytext::public_key_text(&k))
        .unwrap_or_default();
    let issuer = ed25519_dalek::VerifyingKey::from_bytes(&c.issuer)
        .map(|k| keytext::public_key_text(&k))
        .unwrap_or_default();
    format!(
        "node {}\nnode key {key}\nissuer {issuer}\nvalid from {} to {}",
        c.name,
        time_text(c.not_before),
        time_text(c.not_after)
    )
}

fn time_text(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn read_enrollment_key(path: &Path) -> anyhow::Result<SigningKey> {
    use crate::secret_file::{Owner, read_secret};
    let text = read_secret(path, "enrollment key", Owner::Any)?;
    Ok(keytext::signing_key_from_text(
        &text,
        &format!("enrollment key {}", path.display()),
    )?)
}

fn write_new_0600(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::secret_file::create_private(path, bytes).with_context(|| {
        format!(
            "cannot create {} (it must not exist yet; a key is never overwritten)",
            path.display()
        )
    })
}
