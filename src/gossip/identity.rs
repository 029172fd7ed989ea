//! Who a cluster member is: [`NodeId`], foca's `Identity`.
//!
//! A member is known by its *name* (unique in the cluster, like a Serf node name),
//! reached at its *addr* (the UDP/TCP socket address the agent binds), and carries a
//! *bump*: a restart counter. foca treats two identities with the same
//! [`foca::Identity::addr`] as the same member and keeps the one that wins
//! [`foca::Identity::win_addr_conflict`]. Our "addr" is a hash of the **name**, and the
//! higher bump wins, so:
//!
//! - a restarted agent (same name, bump + 1) *replaces* its old incarnation at once
//!   instead of waiting for the old one to be declared Down and removed;
//! - an agent whose IP changed (same name, new addr, higher bump) also replaces it;
//! - when foca declares *us* Down, `renew()` returns bump + 1 and foca rejoins.
//!
//! The shell should start with `bump = snapshot.bump + 1` (or a random bump when there
//! is no snapshot) so a restart always wins. Bumps compare with serial-number
//! arithmetic, so wrapping past `u16::MAX` is fine. Two *different* hosts configured with
//! the same name will keep evicting each other: names must be unique.
//!
//! Encoded size matters: foca puts up to three identities in a packet header, so the
//! name is capped at [`MAX_NODE_NAME_LEN`] bytes and [`MAX_NODE_ID_ENCODED_LEN`] bounds
//! the postcard encoding (see [`super::limits`]). Decoding does not re-validate names
//! (the bytes come from authenticated key holders); an oversized name only costs its
//! sender broadcast room.

use std::cmp::Ordering;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Longest node name, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 64;

/// Upper bound of a postcard-encoded [`NodeId`] with a valid name: name (1-byte length
/// + 64) + socket addr (variant + 16-byte IPv6 + 3-byte varint port) + bump (3-byte varint).
pub const MAX_NODE_ID_ENCODED_LEN: usize = 1 + MAX_NODE_NAME_LEN + (1 + 16 + 3) + 3;

/// Why a node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    /// Empty name.
    #[error("node name is empty; pick a unique name such as the host name")]
    Empty,
    /// Longer than [`MAX_NODE_NAME_LEN`].
    #[error(
        "node name is {len} bytes long, the maximum is {MAX_NODE_NAME_LEN}; pick a shorter name"
    )]
    TooLong { len: usize },
    /// Contains a character outside `[A-Za-z0-9._-]` or does not start alphanumeric.
    #[error(
        "node name {name:?} has an invalid character at byte {at}; use letters, digits, \
         '.', '_' and '-', starting with a letter or digit"
    )]
    BadChar { name: String, at: usize },
}

/// Checks a node name: 1..=64 bytes of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn validate_node_name(name: &str) -> Result<(), NodeNameError> {
    if name.is_empty() {
        return Err(NodeNameError::Empty);
    }
    if name.len() > MAX_NODE_NAME_LEN {
        return Err(NodeNameError::TooLong { len: name.len() });
    }
    for (i, b) in name.bytes().enumerate() {
        let ok = b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(NodeNameError::BadChar {
                name: name.to_owned(),
                at: i,
            });
        }
    }
    Ok(())
}

/// The identity-stable key foca uses to detect "same member": a 64-bit FNV-1a hash of
/// the node name (no allocation on foca's hot path; collisions are negligible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey(pub u64);

impl NameKey {
    /// Hashes a node name.
    pub fn of(name: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self(h)
    }
}

/// A cluster member: name, address, and restart bump.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// Unique node name.
    pub name: String,
    /// Where the agent listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Restart counter; higher (serially) replaces lower.
    pub bump: u16,
}

impl NodeId {
    /// A validated identity.
    pub fn new(
        name: impl Into<String>,
        addr: SocketAddr,
        bump: u16,
    ) -> Result<Self, NodeNameError> {
        let name = name.into();
        validate_node_name(&name)?;
        Ok(Self { name, addr, bump })
    }

    /// Whether `self.bump` is newer than `other`'s in serial-number arithmetic
    /// (RFC 1982 style, so `0` is newer than `u16::MAX`).
    pub fn bump_newer_than(&self, other: &Self) -> bool {
        let diff = self.bump.wrapping_sub(other.bump);
        diff != 0 && diff < 0x8000
    }
}

impl foca::Identity for NodeId {
    type Addr = NameKey;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            name: self.name.clone(),
            addr: self.addr,
            bump: self.bump.wrapping_add(1),
        })
    }

    fn addr(&self) -> NameKey {
        NameKey::of(&self.name)
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        if self.bump_newer_than(adversary) {
            return true;
        }
        if adversary.bump_newer_than(self) {
            return false;
        }
        // Same bump but different identity: any total order both sides agree on.
        (&self.addr, &self.name).cmp(&(&adversary.addr, &adversary.name)) == Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity as _;

    fn id(name: &str, port: u16, bump: u16) -> NodeId {
        NodeId::new(name, format!("10.0.0.1:{port}").parse().unwrap(), bump).unwrap()
    }

    #[test]
    fn names() {
        validate_node_name("web-1.prod_eu").unwrap();
        assert_eq!(validate_node_name(""), Err(NodeNameError::Empty));
        assert!(matches!(
            validate_node_name("-x"),
            Err(NodeNameError::BadChar { at: 0, .. })
        ));
        assert!(matches!(
            validate_node_name("a b"),
            Err(NodeNameError::BadChar { at: 1, .. })
        ));
        assert_eq!(
            validate_node_name(&"a".repeat(65)),
            Err(NodeNameError::TooLong { len: 65 })
        );
        validate_node_name(&"a".repeat(64)).unwrap();
    }

    #[test]
    fn renew_and_conflicts() {
        let a = id("web1", 7946, 3);
        let r = a.renew().unwrap();
        assert_eq!(r.bump, 4);
        assert_eq!(a.addr(), r.addr());
        assert!(r.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&r));

        // New IP, higher bump still wins; same bump: exactly one side wins.
        let moved = id("web1", 9000, 4);
        assert_eq!(moved.addr(), a.addr());
        assert!(moved.win_addr_conflict(&a));
        let tie = id("web1", 9000, 3);
        assert_ne!(tie.win_addr_conflict(&a), a.win_addr_conflict(&tie));

        // Wrapping.
        let old = id("x", 1, u16::MAX);
        let new = old.renew().unwrap();
        assert_eq!(new.bump, 0);
        assert!(new.win_addr_conflict(&old));

        assert_ne!(id("web1", 1, 0).addr(), id("web2", 1, 0).addr());
    }

    #[test]
    fn max_encoded_len_is_an_upper_bound() {
        let worst = NodeId::new(
            "a".repeat(MAX_NODE_NAME_LEN),
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap(),
            u16::MAX,
        )
        .unwrap();
        let bytes = postcard::to_stdvec(&worst).unwrap();
        assert_eq!(bytes.len(), MAX_NODE_ID_ENCODED_LEN);
        let back: NodeId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, worst);
    }

    /// A restarted node (same name, higher bump) replaces its old self in a peer's
    /// membership right away instead of coexisting with / waiting on the old one.
    #[test]
    fn restart_replaces_old_member_in_foca() {
        use foca::{AccumulatingRuntime, Config, Foca, Member, PostcardCodec};
        use rand::SeedableRng;
        use rand::rngs::StdRng;

        let me = id("observer", 1, 0);
        let mut foca = Foca::new(
            me,
            Config::simple(),
            StdRng::seed_from_u64(1),
            PostcardCodec,
        );
        let mut rt = AccumulatingRuntime::new();
        let old = id("web1", 2, 5);
        foca.apply_many(std::iter::once(Member::alive(old.clone())), true, &mut rt)
            .unwrap();
        let new = old.renew().unwrap();
        foca.apply_many(std::iter::once(Member::alive(new.clone())), true, &mut rt)
            .unwrap();
        let members: Vec<_> = foca.iter_members().map(|m| m.id().clone()).collect();
        assert_eq!(members, vec![new]);
        // The stale identity cannot come back.
        foca.apply_many(std::iter::once(Member::alive(old)), true, &mut rt)
            .unwrap();
        assert_eq!(foca.num_members(), 1);
        assert_eq!(foca.iter_members().next().unwrap().id().bump, 6);
    }
}
