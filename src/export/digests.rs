//! The digests an image archive's manifests declare, checked against its bytes before
//! anything is flattened: a layer, config or manifest altered after the image was built
//! (a corrupt download, a tampered file) is refused with its name, and nothing is written.
//!
//! OCI layouts name every blob by the digest of its stored bytes (`sha256:…`, `sha512:…`).
//! A `docker save` names layers by id and lists their digests in the image config
//! (`rootfs.diff_ids`): those are of the *uncompressed* layer tars. Its config's own name is
//! its digest (`<hex>.json`, or `blobs/sha256/<hex>` since Docker 25).

use std::io::{self, Read};

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm this reader can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

/// What a digest is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Of {
    /// The blob as stored in the archive (OCI descriptors).
    Stored,
    /// The layer tar after decompression (`docker save`'s `diff_ids`).
    Uncompressed,
}

/// A declared digest, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub algorithm: Algorithm,
    /// Lowercase hex.
    pub hex: String,
    pub of: Of,
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alg = match self.algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        write!(f, "{alg}:{}", self.hex)
    }
}

/// Parses `sha256:<64 hex>` or `sha512:<128 hex>`; the problem otherwise.
pub fn parse(digest: &str, of: Of) -> Result<Expected, String> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("digest {digest:?} has no algorithm"))?;
    let (algorithm, len) = match alg {
        "sha256" => (Algorithm::Sha256, 64),
        "sha512" => (Algorithm::Sha512, 128),
        other => {
            return Err(format!(
                "digest {digest:?} uses {other:?}, which this reader cannot check (sha256 and sha512 only)"
            ));
        }
    };
    if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("digest {digest:?} is not {len} hex digits"));
    }
    Ok(Expected {
        algorithm,
        hex: hex.to_ascii_lowercase(),
        of,
    })
}

/// The config digest a `docker save` config's name gives (`<64 hex>.json` or
/// `blobs/sha256/<64 hex>`), if it gives one.
pub fn from_config_name(name: &str) -> Option<Expected> {
    let hex = name
        .strip_suffix(".json")
        .or_else(|| name.strip_prefix("blobs/sha256/"))?;
    parse(&format!("sha256:{hex}"), Of::Stored).ok()
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(a: Algorithm) -> Self {
        match a {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The digest of `bytes` in `expected`'s algorithm, when it differs from `expected`.
pub fn mismatch_of_bytes(expected: &Expected, bytes: &[u8]) -> Option<String> {
    let mut h = Hasher::new(expected.algorithm);
    h.update(bytes);
    let actual = h.hex();
    (actual != expected.hex).then_some(actual)
}

/// Reads `r` to its end; the digest of what it gave, when it differs from `expected`.
pub fn mismatch_of_stream(expected: &Expected, mut r: impl Read) -> io::Result<Option<String>> {
    let mut h = Hasher::new(expected.algorithm);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let actual = h.hex();
    Ok((actual != expected.hex).then_some(actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests_parse_and_check() {
        let e = parse(
            &format!("sha256:{}", EMPTY_SHA256.to_uppercase()),
            Of::Stored,
        )
        .unwrap();
        assert_eq!(e.hex, EMPTY_SHA256);
        assert_eq!(mismatch_of_bytes(&e, b""), None);
        assert!(mismatch_of_bytes(&e, b"x").is_some());
        assert_eq!(mismatch_of_stream(&e, &b""[..]).unwrap(), None);
        let ne = mismatch_of_stream(&e, &b"x"[..]).unwrap().unwrap();
        assert_eq!(ne.len(), 64);
        let e512 = parse(&format!("sha512:{}", "0".repeat(128)), Of::Uncompressed).unwrap();
        assert!(
            mismatch_of_bytes(&e512, b"")
                .unwrap()
                .starts_with("cf83e1357eefb8bd")
        );
    }

    #[test]
    fn bad_digests_name_their_problem() {
        for (d, want) in [
            ("md5:abc", "cannot check"),
            ("sha256:abc", "64 hex digits"),
            (&format!("sha256:{}", "g".repeat(64)), "64 hex digits"),
            ("nocolon", "no algorithm"),
        ] {
            let e = parse(d, Of::Stored).unwrap_err();
            assert!(e.contains(want), "{d}: {e}");
        }
    }

    #[test]
    fn docker_save_config_names_carry_their_digest() {
        let name = format!("{EMPTY_SHA256}.json");
        assert_eq!(from_config_name(&name).unwrap().hex, EMPTY_SHA256);
        let blob = format!("blobs/sha256/{EMPTY_SHA256}");
        assert!(from_config_name(&blob).is_some());
        assert_eq!(from_config_name("config.json"), None);
    }
}
