//! `keygen`: a cluster key (default) or, with `--signing`, an Ed25519 deploy signing key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    /// Where to write the private signing key; refused if the file exists.
    #[arg(short, long, value_name = "FILE", requires = "signing")]
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
        if let Some(path) = &self.signing_key {
            return read_key(path);
        }
        let from_config = match config {
            Some(c) => crate::agent::config::load_file(c)?.signing_key,
            None => None,
        };
        let path = from_config.context(
            "no signing key: pass --signing-key FILE, set DROOT_FLEET_SIGNING_KEY, or set \
             signing_key in the --config file (make one with `droot-fleet keygen --signing -o \
             deploy.key`)",
        )?;
        read_key(&path)
    }
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read signing key {}", path.display()))?;
    Ok(signed::signing_key_from_text(
        &text,
        &format!("signing key {}", path.display()),
    )?)
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let Some(out) = args.output.filter(|_| args.signing) else {
        return super::fleet::keygen();
    };
    let key = signed::generate_signing_key();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .with_context(|| {
            format!(
                "cannot create {} (it must not exist yet; a key is never overwritten)",
                out.display()
            )
        })?;
    f.write_all(signed::signing_key_to_text(&key).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("{}", signed::public_key_text(&key.verifying_key()));
    eprintln!(
        "wrote the private key to {} (0600); add the public key above to trusted_signing_keys",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
