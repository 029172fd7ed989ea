//! Node certificates and revocations: the fleet's enrollment key binds a node name to the
//! node's own Ed25519 key, for a limited time, and can take the binding back.
//!
//! Why: the gossip key is on every host, so one leaked host could speak for any name. A
//! [`NodeCert`] says "the key K speaks for the node named N from T1 to T2", signed by an
//! enrollment key the agents trust (`enrollment_keys`). A node then signs what it says
//! about itself with K (see [`super::vouch`]), and others accept it only under a valid
//! certificate for that name. A [`Revocation`], also signed by an enrollment key, withdraws
//! every certificate of one node key until the revoked certificate would have expired.
//!
//! Both are encoded like the signed deploy event: the signed body's bytes are kept as they
//! came, and the signature covers a domain-separation context plus those bytes, so a
//! signature over one kind of statement is never valid for another.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::identity::validate_node_name;

const CERT_CONTEXT: &[u8] = b"droot-fleet node certificate v1\0";
const REVOCATION_CONTEXT: &[u8] = b"droot-fleet revocation v1\0";

/// How far ahead of a certificate's start a clock may be and still accept it (the clocks of
/// the enrolling machine and the hosts differ).
pub const CLOCK_SKEW_SECS: u64 = 300;

/// Largest encoded certificate or revocation accepted.
pub const MAX_ENCODED_LEN: usize = 512;

/// What a certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBody {
    /// The node name the key speaks for.
    pub name: String,
    /// The node's public key.
    pub node_key: [u8; 32],
    /// The enrollment public key that signed it.
    pub issuer: [u8; 32],
    /// Valid from (Unix seconds).
    pub not_before: u64,
    /// Valid until (Unix seconds).
    pub not_after: u64,
    /// Random, to tell certificates apart in logs.
    pub serial: u64,
}

/// A node certificate (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    body: CertBody,
    signed: Signed,
}

/// What a revocation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    /// Every certificate of this node key is withdrawn.
    pub node_key: [u8; 32],
    /// The name of the revoked certificate (for logs).
    pub name: String,
    /// The enrollment public key that signed it.
    pub issuer: [u8; 32],
    /// Until when it holds: the revoked certificate's end (Unix seconds).
    pub until: u64,
    /// When it was issued (Unix milliseconds): its slot version.
    pub issued_at_ms: u64,
}

/// A revocation (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    body: RevocationBody,
    signed: Signed,
}

/// Signed bytes and their signature, as they travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    body: Vec<u8>,
    sig: Vec<u8>,
}

/// Why a certificate or revocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error(
        "{what} is malformed ({reason}); it was not made by droot-fleet's enrollment or is corrupt"
    )]
    Malformed { what: &'static str, reason: String },
    #[error(
        "the {what} for {name:?} was signed by an enrollment key this node does not trust \
         (add its public key to enrollment_keys)"
    )]
    UnknownIssuer { what: &'static str, name: String },
    #[error("the {what} for {name:?} has a signature that does not verify")]
    BadSignature { what: &'static str, name: String },
    #[error(
        "the certificate for {name:?} is valid only from {starts_in}s from now (check this host's \
         clock, or wait)"
    )]
    NotYetValid { name: String, starts_in: u64 },
    #[error(
        "the certificate for {name:?} expired {ago}s ago; enroll the node again and install \
         its new identity"
    )]
    Expired { name: String, ago: u64 },
}

fn sign(key: &SigningKey, context: &[u8], body: Vec<u8>) -> Signed {
    let sig = key.sign(&[context, &body].concat()).to_bytes().to_vec();
    Signed { body, sig }
}

fn check(signed: &Signed, context: &[u8], key: &VerifyingKey) -> bool {
    let Ok(sig) = Signature::from_slice(&signed.sig) else {
        return false;
    };
    key.verify(&[context, &signed.body].concat(), &sig).is_ok()
}

fn decode_signed<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<(T, Signed), CertError> {
    let malformed = |reason: String| CertError::Malformed { what, reason };
    if bytes.len() > MAX_ENCODED_LEN {
        return Err(malformed(format!(
            "{} bytes, over {MAX_ENCODED_LEN}",
            bytes.len()
        )));
    }
    let signed: Signed = postcard::from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
    let body = postcard::from_bytes(&signed.body).map_err(|e| malformed(e.to_string()))?;
    Ok((body, signed))
}

fn trusted<'a>(issuer: &[u8; 32], issuers: &'a [VerifyingKey]) -> Option<&'a VerifyingKey> {
    issuers.iter().find(|k| k.as_bytes() == issuer)
}

impl NodeCert {
    /// Issues a certificate for `name` and `node_key`, valid from `not_before` to
    /// `not_after` (Unix seconds), signed by `enrollment`.
    pub fn issue(
        enrollment: &SigningKey,
        name: &str,
        node_key: &VerifyingKey,
        not_before: u64,
        not_after: u64,
    ) -> Result<Self, CertError> {
        let serial = rand::random();
        Self::issue_with_serial(enrollment, name, node_key, not_before, not_after, serial)
    }

    /// [`Self::issue`] with a chosen serial (the simulator's certificates, reproducible
    /// from its seed; a serial's length changes the packets that carry a card).
    pub fn issue_with_serial(
        enrollment: &SigningKey,
        name: &str,
        node_key: &VerifyingKey,
        not_before: u64,
        not_after: u64,
        serial: u64,
    ) -> Result<Self, CertError> {
        validate_node_name(name).map_err(|e| CertError::Malformed {
            what: "node certificate",
            reason: e.to_string(),
        })?;
        let body = CertBody {
            name: name.to_owned(),
            node_key: node_key.to_bytes(),
            issuer: enrollment.verifying_key().to_bytes(),
            not_before,
            not_after,
            serial,
        };
        let bytes = postcard::to_stdvec(&body).unwrap_or_default();
        let signed = sign(enrollment, CERT_CONTEXT, bytes);
        Ok(Self { body, signed })
    }

    /// Its wire form (at most [`MAX_ENCODED_LEN`] bytes).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.signed).unwrap_or_default()
    }

    /// Reads [`Self::encode`]'s form. Nothing is trusted yet: see [`Self::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CertError> {
        let (body, signed): (CertBody, Signed) = decode_signed(bytes, "node certificate")?;
        validate_node_name(&body.name).map_err(|e| CertError::Malformed {
            what: "node certificate",
            reason: e.to_string(),
        })?;
        VerifyingKey::from_bytes(&body.node_key).map_err(|e| CertError::Malformed {
            what: "node certificate",
            reason: e.to_string(),
        })?;
        Ok(Self { body, signed })
    }

    /// What it says.
    pub fn body(&self) -> &CertBody {
        &self.body
    }

    /// The node name it is for.
    pub fn name(&self) -> &str {
        &self.body.name
    }

    /// The node key it binds (checked to be a valid point at decode).
    pub fn node_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.body.node_key).unwrap_or_default()
    }

    /// Checks that one of `issuers` signed it and that it is valid at `now` (Unix seconds,
    /// with [`CLOCK_SKEW_SECS`] of slack at its start).
    pub fn verify(&self, issuers: &[VerifyingKey], now: u64) -> Result<(), CertError> {
        let (what, name) = ("certificate", self.body.name.clone());
        let Some(issuer) = trusted(&self.body.issuer, issuers) else {
            return Err(CertError::UnknownIssuer { what, name });
        };
        if !check(&self.signed, CERT_CONTEXT, issuer) {
            return Err(CertError::BadSignature { what, name });
        }
        self.check_validity(now)
    }

    /// Checks only that it is valid at `now` (for one whose signature was checked before).
    pub fn check_validity(&self, now: u64) -> Result<(), CertError> {
        let name = self.body.name.clone();
        if now.saturating_add(CLOCK_SKEW_SECS) < self.body.not_before {
            let starts_in = self.body.not_before - now;
            return Err(CertError::NotYetValid { name, starts_in });
        }
        if now > self.body.not_after {
            let ago = now - self.body.not_after;
            return Err(CertError::Expired { name, ago });
        }
        Ok(())
    }
}

impl Revocation {
    /// Withdraws every certificate of `cert`'s node key, signed by `enrollment`.
    pub fn issue(enrollment: &SigningKey, cert: &CertBody, issued_at_ms: u64) -> Self {
        Self::issue_for_key(
            enrollment,
            cert.node_key,
            &cert.name,
            cert.not_after,
            issued_at_ms,
        )
    }

    /// Withdraws every certificate of `node_key` (of the node `name`) until `until` (Unix
    /// seconds: the end of the latest certificate of that key), signed by `enrollment`.
    pub fn issue_for_key(
        enrollment: &SigningKey,
        node_key: [u8; 32],
        name: &str,
        until: u64,
        issued_at_ms: u64,
    ) -> Self {
        let body = RevocationBody {
            node_key,
            name: name.to_owned(),
            issuer: enrollment.verifying_key().to_bytes(),
            until,
            issued_at_ms,
        };
        let bytes = postcard::to_stdvec(&body).unwrap_or_default();
        let signed = sign(enrollment, REVOCATION_CONTEXT, bytes);
        Self { body, signed }
    }

    /// Its wire form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.signed).unwrap_or_default()
    }

    /// Reads [`Self::encode`]'s form. Nothing is trusted yet: see [`Self::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CertError> {
        let (body, signed) = decode_signed(bytes, "revocation")?;
        Ok(Self { body, signed })
    }

    /// What it says.
    pub fn body(&self) -> &RevocationBody {
        &self.body
    }

    /// Checks that one of `issuers` signed it.
    pub fn verify(&self, issuers: &[VerifyingKey]) -> Result<(), CertError> {
        let (what, name) = ("revocation", self.body.name.clone());
        let Some(issuer) = trusted(&self.body.issuer, issuers) else {
            return Err(CertError::UnknownIssuer { what, name });
        };
        if !check(&self.signed, REVOCATION_CONTEXT, issuer) {
            return Err(CertError::BadSignature { what, name });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const NOW: u64 = 1_700_000_000;

    fn cert(issuer: &SigningKey, name: &str) -> NodeCert {
        NodeCert::issue(issuer, name, &key(9).verifying_key(), NOW - 10, NOW + 3600).unwrap()
    }

    #[test]
    fn a_certificate_round_trips_and_verifies_under_its_issuer_only() {
        let ca = key(1);
        let c = NodeCert::decode(&cert(&ca, "web-1").encode()).unwrap();
        assert_eq!((c.name(), c.node_key()), ("web-1", key(9).verifying_key()));
        assert!(c.encode().len() <= MAX_ENCODED_LEN);
        c.verify(&[key(2).verifying_key(), ca.verifying_key()], NOW)
            .unwrap();
        assert!(matches!(
            c.verify(&[key(2).verifying_key()], NOW),
            Err(CertError::UnknownIssuer { .. })
        ));
    }

    #[test]
    fn a_certificate_holds_only_within_its_time() {
        let c = cert(&key(1), "web-1");
        let ca = [key(1).verifying_key()];
        assert!(matches!(
            c.verify(&ca, NOW + 3601),
            Err(CertError::Expired { ago: 1, .. })
        ));
        c.verify(&ca, NOW - 10 - CLOCK_SKEW_SECS).unwrap();
        assert!(matches!(
            c.verify(&ca, NOW - 11 - CLOCK_SKEW_SECS),
            Err(CertError::NotYetValid { .. })
        ));
    }

    /// A key holder who changes the name (or any byte) of a certificate breaks it.
    #[test]
    fn an_edited_certificate_does_not_verify() {
        let c = cert(&key(1), "web-1");
        let mut signed: Signed = postcard::from_bytes(&c.encode()).unwrap();
        let mut body: CertBody = postcard::from_bytes(&signed.body).unwrap();
        body.name = "web-2".into();
        signed.body = postcard::to_stdvec(&body).unwrap();
        let forged = NodeCert::decode(&postcard::to_stdvec(&signed).unwrap()).unwrap();
        assert!(matches!(
            forged.verify(&[key(1).verifying_key()], NOW),
            Err(CertError::BadSignature { .. })
        ));
        // A revocation's signature is not a certificate's, even over the same bytes.
        let r = Revocation::issue(&key(1), c.body(), 5);
        let as_cert = Signed {
            body: c.signed.body.clone(),
            sig: r.signed.sig.clone(),
        };
        let mixed = NodeCert::decode(&postcard::to_stdvec(&as_cert).unwrap()).unwrap();
        assert!(mixed.verify(&[key(1).verifying_key()], NOW).is_err());
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        for bytes in [&b""[..], b"\x01\x02", &[0xff; 600]] {
            assert!(matches!(
                NodeCert::decode(bytes),
                Err(CertError::Malformed { .. })
            ));
            assert!(Revocation::decode(bytes).is_err());
        }
        assert!(NodeCert::issue(&key(1), "bad name", &key(2).verifying_key(), 0, 1).is_err());
    }

    #[test]
    fn a_revocation_round_trips_and_verifies_under_its_issuer_only() {
        let c = cert(&key(1), "web-1");
        let r = Revocation::decode(&Revocation::issue(&key(1), c.body(), 77).encode()).unwrap();
        assert_eq!(r.body().node_key, c.body().node_key);
        assert_eq!((r.body().until, r.body().issued_at_ms), (NOW + 3600, 77));
        r.verify(&[key(1).verifying_key()]).unwrap();
        assert!(r.verify(&[key(3).verifying_key()]).is_err());
    }
}
