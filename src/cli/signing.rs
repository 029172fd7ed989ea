//! `keygen`: a cluster key (printed, or with `-o` a new 0600 keyring file) or, with `--signing`,
//! an Ed25519 deploy signing key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ed25519_dalek::SigningKey;

use crate::deploy::signed;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Make a deploy signing key (Ed25519) instead of a cluster key: the private key goes
    /// to -o FILE (mode 0600), the public key (for trusted_signing_keys) to stdout.
    #[arg(long, requires = "output")]
    pub signing: bool,
    /// Write to FILE (mode 0600 whatever the umask; refused if it exists) instead of
    /// printing: a keyring with one new cluster key, or with --signing the private key.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The signing key for `event deploy`: `--signing-key FILE`, `DROOT_FLEET_SIGNING_KEY`, or
/// `signing_key` in the `--config` file.
#[derive(Debug, Args)]
pub struct SigningKeyArg {
    /// Private deploy signing key file (from `keygen --signing`).
    #[arg(long, value_name = "FILE", env = "DROOT_FLEET_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
}

impl SigningKeyArg {
    pub fn load(&self, config: Option<&Path>) -> anyhow::Result<SigningKey> {
        self.load_optional(config)?.context(
            "no signing key: pass --signing-key FILE, set DROOT_FLEET_SIGNING_KEY, or set \
             signing_key in the --config file (make one with `droot-fleet keygen --signing -o \
             deploy.key`)",
        )
    }

    /// The key when one is named (a named key that cannot be read is an error).
    pub fn load_optional(&self, config: Option<&Path>) -> anyhow::Result<Option<SigningKey>> {
        if let Some(path) = &self.signing_key {
            return read_key(path).map(Some);
        }
        let from_config = match config {
            Some(c) => crate::agent::config::load_file(c)?.signing_key,
            None => None,
        };
        from_config.map(|p| read_key(&p)).transpose()
    }
}

/// The key file must be private to its owner; who owns it is not checked (the operator
/// often runs the CLI through `sudo`, on a 0600 key of their own).
fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    use crate::secret_file::{Owner, read_secret};
    let text = read_secret(path, "signing key", Owner::Any)?;
    Ok(signed::signing_key_from_text(
        &text,
        &format!("signing key {}", path.display()),
    )?)
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let Some(out) = args.output else {
        return super::fleet::keygen();
    };
    if !args.signing {
        return keygen_keyring(&out);
    }
    let key = signed::generate_signing_key();
    crate::secret_file::create_private(&out, signed::signing_key_to_text(&key).as_bytes())
        .with_context(|| {
            format!(
                "cannot create {} (it must not exist yet; a key is never overwritten)",
                out.display()
            )
        })?;
    println!("{}", signed::public_key_text(&key.verifying_key()));
    eprintln!(
        "wrote the private key to {} (0600); add the public key above to trusted_signing_keys",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `keygen -o FILE`: a new keyring file with one fresh key (the cluster's first), 0600.
/// The key is not printed: the file is the only copy to hand to the other hosts.
fn keygen_keyring(out: &Path) -> anyhow::Result<ExitCode> {
    let ring = crate::gossip::Keyring::new(crate::gossip::Key::generate(&mut rand::rng()));
    crate::agent::keys::create(out, &ring).context(
        "the keyring must not exist yet (a key is never overwritten; rotate keys with `keys`)",
    )?;
    eprintln!(
        "wrote a new keyring to {} (0600); copy it to every host, keeping it 0600",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
