//! Which peers to ask for a piece. Every node ranks the fleet's names the same way for
//! each piece (rendezvous hashing: highest sha256 of artifact, piece and name first), so
//! for each piece one node, its owner, takes it from the store and every other node asks
//! that owner. The pieces spread evenly: each node fetches about 1/N of the artifact from
//! the store and serves it to the rest.
//!
//! A rollout in waves adds holders: the targets of earlier waves, which finished with the
//! artifact. They are asked first (the top [`MAX_ASKS`] by the same rank), so later waves
//! take nothing from the store; the owner rule runs among the wave fetching now.
//!
//! A node asks the names ranked above itself, at most [`MAX_ASKS`] of them, skipping peers
//! that served a bad piece, then takes the piece from the store: a node that does not hold
//! the artifact says so at once, so a missing owner costs one round trip, and one that
//! does not answer one timeout.

use sha2::{Digest, Sha256};

/// Peers asked for one piece before the store.
pub const MAX_ASKS: usize = 2;

/// Who else has an artifact when a node starts to fetch it: the targets of earlier waves
/// (done) and of its own wave (fetching now), by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swarm {
    pub holders: Vec<String>,
    pub fetching: Vec<String>,
}

/// Where to try to get a piece, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From<'a> {
    Peer(&'a str),
    Store,
}

fn rank(artifact: &[u8; 32], piece: usize, name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(artifact);
    h.update((piece as u64).to_be_bytes());
    h.update(name.as_bytes());
    h.finalize().into()
}

/// Where node `me` gets piece `piece`: the top [`MAX_ASKS`] of `holders`, then the peers
/// among `fetching` ranked above it, at most [`MAX_ASKS`], then the store; none in `skip`.
pub fn sources_with_holders<'a>(
    artifact: &[u8; 32],
    piece: usize,
    me: &str,
    holders: impl IntoIterator<Item = &'a str>,
    fetching: impl IntoIterator<Item = &'a str>,
    skip: impl Fn(&str) -> bool,
) -> Vec<From<'a>> {
    let mut done: Vec<([u8; 32], &'a str)> = holders
        .into_iter()
        .filter(|n| *n != me && !skip(n))
        .map(|n| (rank(artifact, piece, n), n))
        .collect();
    done.sort_unstable_by(|a, b| b.cmp(a));
    let first = done.into_iter().take(MAX_ASKS).map(|(_, n)| From::Peer(n));
    first
        .chain(sources(artifact, piece, me, fetching, skip))
        .collect()
}

/// Where node `me` gets piece `piece`: the peers among `names` ranked above it (not in
/// `skip`), at most [`MAX_ASKS`], then the store.
pub fn sources<'a>(
    artifact: &[u8; 32],
    piece: usize,
    me: &str,
    names: impl IntoIterator<Item = &'a str>,
    skip: impl Fn(&str) -> bool,
) -> Vec<From<'a>> {
    let mine = rank(artifact, piece, me);
    let mut above: Vec<([u8; 32], &'a str)> = names
        .into_iter()
        .filter(|n| *n != me && !skip(n))
        .map(|n| (rank(artifact, piece, n), n))
        .filter(|(r, n)| (r, *n) > (&mine, me))
        .collect();
    above.sort_unstable_by(|a, b| b.cmp(a));
    above
        .into_iter()
        .take(MAX_ASKS)
        .map(|(_, n)| From::Peer(n))
        .chain(std::iter::once(From::Store))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn each_piece_has_one_owner_that_goes_to_the_store_first() {
        let all = names(20);
        let art = [5u8; 32];
        let mut owned = vec![0usize; all.len()];
        for piece in 0..200 {
            let mut owners = 0;
            for (i, me) in all.iter().enumerate() {
                let s = sources(&art, piece, me, all.iter().map(String::as_str), |_| false);
                assert_eq!(s.last(), Some(&From::Store));
                if s == [From::Store] {
                    owners += 1;
                    owned[i] += 1;
                } else {
                    // Everyone else asks the owner first.
                    let From::Peer(first) = s[0] else { panic!() };
                    let again = sources(&art, piece, first, all.iter().map(String::as_str), |_| {
                        false
                    });
                    assert_eq!(again, [From::Store], "piece {piece}: {me} asks {first}");
                }
                assert!(s.len() <= MAX_ASKS + 1);
            }
            assert_eq!(owners, 1, "piece {piece}");
        }
        // Spread: 200 pieces over 20 nodes, none owning more than three times its share.
        assert!(owned.iter().all(|&n| n <= 30), "{owned:?}");
    }

    #[test]
    fn a_skipped_peer_is_not_asked_and_a_lone_node_goes_to_the_store() {
        let all = names(5);
        let art = [1u8; 32];
        let list = || all.iter().map(String::as_str);
        let me = list()
            .find(|me| sources(&art, 0, me, list(), |_| false).len() == 3)
            .expect("some node has two peers above it");
        let s = sources(&art, 0, me, list(), |_| false);
        let From::Peer(first) = s[0] else { panic!() };
        let without = sources(&art, 0, me, list(), |n| n == first);
        assert!(!without.contains(&From::Peer(first)));
        assert_eq!(without.last(), Some(&From::Store));
        assert_eq!(sources(&art, 0, "solo", ["solo"], |_| false), [From::Store]);
    }

    #[test]
    fn holders_come_first_and_the_owner_rule_runs_in_the_wave() {
        let art = [2u8; 32];
        let wave = ["w-1", "w-2", "w-3"];
        let done = ["d-1", "d-2", "d-3"];
        for piece in 0..20 {
            for me in wave {
                let s = sources_with_holders(&art, piece, me, done, wave, |_| false);
                assert!(
                    matches!(s[..2], [From::Peer(a), From::Peer(b)] if done.contains(&a) && done.contains(&b))
                );
                let rest = sources(&art, piece, me, wave, |_| false);
                assert_eq!(s[2..], rest[..]);
            }
            let refused = sources_with_holders(&art, piece, "w-1", done, wave, |n| n != "d-3");
            assert_eq!(refused[0], From::Peer("d-3"), "only the unrefused holder");
        }
    }
}
