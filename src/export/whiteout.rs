//! Which layer's entry wins for each path: the pure part of flattening an image.
//!
//! Image layers are overlay diffs. Applying them in order means: an entry replaces the same
//! path from lower layers (a non-directory replacing a directory also drops what was below
//! it); `.wh.NAME` deletes NAME (and everything under it) from *lower* layers; and
//! `.wh..wh..opq` in a directory hides every lower-layer entry below that directory while
//! keeping the directory itself. Per the OCI spec, whiteouts never affect entries of their
//! own layer, whatever their order in the tar.
//!
//! [`plan`] runs over the entry headers only (pass 1 of the flattener) and answers, per entry,
//! whether pass 2 should emit it. It knows nothing of tar or I/O so it can be tested
//! exhaustively. Hardlinks get special care: a link whose target is shadowed or deleted by
//! an upper layer would dangle in the output tar, so it becomes a copy of the target's data
//! ([`Action::CopyOf`]) instead of a broken link.

use std::collections::{BTreeMap, HashMap};

/// One tar entry of a layer, as pass 1 saw it. Paths are normalized (relative, no `.`/`..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u8>,
    pub kind: Kind,
}

/// What a [`Record`] is, as far as flattening cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory: upper layers add to it rather than replace its contents.
    Dir,
    /// Anything else that occupies a path: file, symlink, device, fifo.
    Other,
    /// A hardlink to an earlier entry of the same layer (normalized target path).
    HardLink(Vec<u8>),
    /// Not part of the image content (root entry, metadata, reserved path): never emitted.
    Ignore,
}

/// What pass 2 does with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Shadowed, deleted, a whiteout marker, or ignored.
    Skip,
    /// Write the entry as it is.
    Emit,
    /// Write this hardlink pointing at `target` (the regular file entry it resolves to).
    Link { target: Vec<u8> },
    /// Write a regular file at this entry's path with the data and metadata of entry
    /// `index` of the same layer: the hardlink's target does not survive in the output.
    CopyOf { index: usize },
}

/// A hardlink that cannot be resolved within its layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DanglingLink {
    pub layer: usize,
    pub path: Vec<u8>,
    pub target: Vec<u8>,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Other aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): never content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// What a path means to the overlay rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// A plain entry.
    Content,
    /// `.wh.NAME`: delete this path (and below) from lower layers.
    Whiteout(Vec<u8>),
    /// `.wh..wh..opq`: hide lower-layer contents of this directory.
    Opaque(Vec<u8>),
    /// Other `.wh..wh.*` aufs metadata: drop.
    AufsMeta,
}

/// Classifies a normalized path.
pub fn marker(path: &[u8]) -> Marker {
    let (dir, base) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    if base == OPAQUE {
        Marker::Opaque(dir.to_vec())
    } else if base.starts_with(AUFS_META_PREFIX) {
        Marker::AufsMeta
    } else if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
        Marker::Whiteout(join(dir, name))
    } else {
        Marker::Content
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    layer: usize,
    index: usize,
    is_dir: bool,
}

/// Which entry holds each path so far: its layer, its index, whether it is a directory.
type State = BTreeMap<Vec<u8>, Slot>;

/// Decides, for every entry of every layer (bottom layer first), what pass 2 does with it.
pub fn plan(layers: &[Vec<Record>]) -> Result<Vec<Vec<Action>>, DanglingLink> {
    let mut state = State::new();
    // Per layer: for each hardlink entry, the index of the non-link entry it resolves to.
    let mut link_sources: Vec<HashMap<usize, usize>> = Vec::with_capacity(layers.len());
    for (layer, records) in layers.iter().enumerate() {
        // Whiteouts first: they only ever apply to lower layers.
        apply_whiteouts(&mut state, records);
        link_sources.push(apply_content(&mut state, layer, records)?);
    }
    Ok(actions(layers, &state, &link_sources))
}

/// The layer's whiteouts and opaque markers remove what lower layers put in `state`.
fn apply_whiteouts(state: &mut State, records: &[Record]) {
    for rec in records {
        if rec.kind == Kind::Ignore {
            continue;
        }
        match marker(&rec.path) {
            Marker::Whiteout(target) => remove_tree(state, &target, true),
            Marker::Opaque(dir) => remove_tree(state, &dir, false),
            Marker::Content | Marker::AufsMeta => {}
        }
    }
}

/// The layer's content entries take their paths in `state`, in archive order. Returns,
/// for each hardlink entry, the index of the non-link entry it resolves to.
fn apply_content(
    state: &mut State,
    layer: usize,
    records: &[Record],
) -> Result<HashMap<usize, usize>, DanglingLink> {
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    let mut sources = HashMap::new();
    for (index, rec) in records.iter().enumerate() {
        if rec.kind == Kind::Ignore || marker(&rec.path) != Marker::Content {
            continue;
        }
        if let Kind::HardLink(target) = &rec.kind {
            let target_index =
                seen.get(target.as_slice())
                    .copied()
                    .ok_or_else(|| DanglingLink {
                        layer,
                        path: rec.path.clone(),
                        target: target.clone(),
                    })?;
            // Chains (link to a link) resolve to the file at the end of the chain.
            let source = sources.get(&target_index).copied().unwrap_or(target_index);
            sources.insert(index, source);
        }
        seen.insert(rec.path.as_slice(), index);
        place(state, rec, layer, index);
    }
    Ok(sources)
}

/// Puts one content entry at its path, displacing what is in its way.
fn place(state: &mut State, rec: &Record, layer: usize, index: usize) {
    // A non-directory ancestor (file or symlink in the way) gives way to this entry,
    // so the output never places entries below a symlink.
    for (i, b) in rec.path.iter().enumerate() {
        if *b == b'/'
            && state
                .get(&rec.path[..i])
                .is_some_and(|slot: &Slot| !slot.is_dir)
        {
            state.remove(&rec.path[..i]);
        }
    }
    let is_dir = rec.kind == Kind::Dir;
    if let Some(old) = state.get(&rec.path)
        && old.is_dir
        && !is_dir
    {
        remove_tree(state, &rec.path, false);
    }
    state.insert(
        rec.path.clone(),
        Slot {
            layer,
            index,
            is_dir,
        },
    );
}

/// What pass 2 does with each entry: the ones left in `state` are written (a hardlink
/// whose target did not survive becomes a copy of it); all others are skipped.
fn actions(
    layers: &[Vec<Record>],
    state: &State,
    link_sources: &[HashMap<usize, usize>],
) -> Vec<Vec<Action>> {
    let mut actions: Vec<Vec<Action>> = layers
        .iter()
        .map(|records| vec![Action::Skip; records.len()])
        .collect();
    for slot in state.values() {
        let action = match link_sources[slot.layer].get(&slot.index) {
            None => Action::Emit,
            Some(&source) => {
                let source_path = &layers[slot.layer][source].path;
                let survives = state
                    .get(source_path)
                    .is_some_and(|s| s.layer == slot.layer && s.index == source && !s.is_dir);
                if survives {
                    Action::Link {
                        target: source_path.clone(),
                    }
                } else {
                    Action::CopyOf { index: source }
                }
            }
        };
        actions[slot.layer][slot.index] = action;
    }
    actions
}

/// Removes everything strictly below `path`, and `path` itself when `itself`.
/// The empty path is the root: everything is below it.
fn remove_tree(state: &mut State, path: &[u8], itself: bool) {
    if itself {
        state.remove(path);
    }
    if path.is_empty() {
        state.clear();
        return;
    }
    let mut prefix = path.to_vec();
    prefix.push(b'/');
    let doomed: Vec<Vec<u8>> = state
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        state.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::normalize_path;

    fn dir(p: &str) -> Record {
        rec(p, Kind::Dir)
    }
    fn file(p: &str) -> Record {
        rec(p, Kind::Other)
    }
    fn link(p: &str, t: &str) -> Record {
        rec(p, Kind::HardLink(normalize_path(t.as_bytes()).unwrap()))
    }
    fn rec(p: &str, kind: Kind) -> Record {
        Record {
            path: normalize_path(p.as_bytes()).unwrap(),
            kind,
        }
    }

    /// The emitted output as sorted `path` strings (links as `path->target`, copies as
    /// `path<=source`).
    fn output(layers: &[Vec<Record>]) -> Vec<String> {
        let actions = plan(layers).unwrap();
        let mut out = Vec::new();
        for (l, acts) in actions.iter().enumerate() {
            for (i, a) in acts.iter().enumerate() {
                let p = String::from_utf8(layers[l][i].path.clone()).unwrap();
                match a {
                    Action::Skip => {}
                    Action::Emit => out.push(p),
                    Action::Link { target } => {
                        out.push(format!("{p}->{}", String::from_utf8_lossy(target)))
                    }
                    Action::CopyOf { index } => out.push(format!(
                        "{p}<={}",
                        String::from_utf8_lossy(&layers[l][*index].path)
                    )),
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn marker_classification() {
        assert_eq!(marker(b"a/.wh.b"), Marker::Whiteout(b"a/b".to_vec()));
        assert_eq!(marker(b".wh.b"), Marker::Whiteout(b"b".to_vec()));
        assert_eq!(marker(b"a/.wh..wh..opq"), Marker::Opaque(b"a".to_vec()));
        assert_eq!(marker(b".wh..wh..opq"), Marker::Opaque(Vec::new()));
        assert_eq!(marker(b".wh..wh.plnk/123"), Marker::Content);
        assert_eq!(marker(b".wh..wh.plnk"), Marker::AufsMeta);
        assert_eq!(marker(b"a/x.wh.b"), Marker::Content);
    }

    #[test]
    fn upper_file_replaces_lower() {
        let layers = vec![
            vec![dir("etc"), file("etc/a"), file("etc/b")],
            vec![file("etc/a")],
        ];
        let actions = plan(&layers).unwrap();
        assert_eq!(actions[0], vec![Action::Emit, Action::Skip, Action::Emit]);
        assert_eq!(actions[1], vec![Action::Emit]);
    }

    #[test]
    fn whiteout_of_a_file() {
        let layers = vec![
            vec![dir("etc"), file("etc/a"), file("etc/b")],
            vec![dir("etc"), file("etc/.wh.a")],
        ];
        assert_eq!(output(&layers), vec!["etc", "etc/b"]);
    }

    #[test]
    fn whiteout_of_a_dir_removes_its_children() {
        let layers = vec![
            vec![
                dir("a"),
                dir("a/b"),
                file("a/b/c"),
                dir("a/b/d"),
                file("a/b/d/e"),
                file("a/bb"),
            ],
            vec![file("a/.wh.b")],
        ];
        assert_eq!(output(&layers), vec!["a", "a/bb"]);
    }

    #[test]
    fn opaque_dir_hides_lower_contents_keeps_dir_and_same_layer() {
        let layers = vec![
            vec![
                dir("a"),
                file("a/old"),
                dir("a/sub"),
                file("a/sub/x"),
                file("b"),
            ],
            vec![dir("a"), file("a/.wh..wh..opq"), file("a/new")],
        ];
        let out = output(&layers);
        assert_eq!(out, vec!["a", "a/new", "b"]);
        // The upper layer's directory entry wins (its metadata).
        let actions = plan(&layers).unwrap();
        assert_eq!(actions[0][0], Action::Skip);
        assert_eq!(actions[1][0], Action::Emit);
    }

    #[test]
    fn opaque_marker_after_its_siblings_still_keeps_them() {
        let layers = vec![
            vec![dir("a"), file("a/old")],
            vec![file("a/new"), file("a/.wh..wh..opq")],
        ];
        assert_eq!(output(&layers), vec!["a", "a/new"]);
    }

    #[test]
    fn recreation_after_whiteout_in_a_later_layer() {
        let layers = vec![
            vec![dir("d"), file("d/f"), file("d/g")],
            vec![file(".wh.d")],
            vec![dir("d"), file("d/f")],
        ];
        assert_eq!(output(&layers), vec!["d", "d/f"]);
        let actions = plan(&layers).unwrap();
        assert_eq!(actions[2], vec![Action::Emit, Action::Emit]);
    }

    #[test]
    fn whiteout_does_not_touch_its_own_layer() {
        // Recreated in the same layer as the whiteout, in either order.
        let layers = vec![
            vec![dir("d"), file("d/f"), file("d/old")],
            vec![dir("d"), file("d/f"), file("d/.wh.f")],
        ];
        assert_eq!(output(&layers), vec!["d", "d/f", "d/old"]);
        let actions = plan(&layers).unwrap();
        assert_eq!(actions[0][1], Action::Skip);
        assert_eq!(actions[1][1], Action::Emit);
        // A whiteout for a name that exists nowhere below is a no-op.
        let layers = vec![vec![file("x")], vec![file(".wh.nothing")]];
        assert_eq!(output(&layers), vec!["x"]);
    }

    #[test]
    fn nested_paths_and_dot_prefixes() {
        let layers = vec![
            vec![
                dir("./usr"),
                dir("./usr/lib"),
                dir("./usr/lib/x"),
                file("./usr/lib/x/y"),
            ],
            vec![dir("usr/lib/"), file("./usr/lib/.wh.x"), file("usr/lib/z")],
        ];
        assert_eq!(output(&layers), vec!["usr", "usr/lib", "usr/lib/z"]);
    }

    #[test]
    fn sibling_with_common_prefix_survives() {
        // Removing "a/b" must not remove "a/b-c" or "a/bc" ('-' sorts before '/').
        let layers = vec![
            vec![dir("a/b"), file("a/b/x"), file("a/b-c"), file("a/bc")],
            vec![file("a/.wh.b")],
        ];
        assert_eq!(output(&layers), vec!["a/b-c", "a/bc"]);
    }

    #[test]
    fn file_replacing_dir_drops_its_children_and_dir_replacing_file() {
        let layers = vec![
            vec![dir("p"), file("p/child"), file("q")],
            vec![file("p"), dir("q"), file("q/inner")],
        ];
        assert_eq!(output(&layers), vec!["p", "q", "q/inner"]);
    }

    #[test]
    fn entry_below_a_lower_symlink_replaces_it() {
        let layers = vec![vec![file("lib")], vec![file("lib/x")]];
        assert_eq!(output(&layers), vec!["lib/x"]);
    }

    #[test]
    fn root_opaque_hides_everything_below() {
        let layers = vec![
            vec![dir("a"), file("a/b"), file("c")],
            vec![file(".wh..wh..opq"), file("d")],
        ];
        assert_eq!(output(&layers), vec!["d"]);
    }

    #[test]
    fn ignored_and_aufs_meta_never_emitted() {
        let layers = vec![vec![
            rec("", Kind::Ignore),
            rec(".drootenv", Kind::Ignore),
            file(".wh..wh.aufs"),
            file("a"),
        ]];
        assert_eq!(output(&layers), vec!["a"]);
    }

    #[test]
    fn hardlink_kept_when_target_survives() {
        let layers = vec![vec![file("bin/a"), link("bin/b", "bin/a")]];
        assert_eq!(output(&layers), vec!["bin/a", "bin/b->bin/a"]);
    }

    #[test]
    fn hardlink_becomes_copy_when_target_is_replaced_or_deleted() {
        let layers = vec![
            vec![
                file("bin/a"),
                link("bin/b", "bin/a"),
                link("bin/c", "bin/b"),
            ],
            vec![file("bin/a")],
        ];
        assert_eq!(
            output(&layers),
            vec!["bin/a", "bin/b<=bin/a", "bin/c<=bin/a"]
        );
        let layers = vec![
            vec![file("bin/a"), link("bin/b", "bin/a")],
            vec![file("bin/.wh.a")],
        ];
        assert_eq!(output(&layers), vec!["bin/b<=bin/a"]);
    }

    #[test]
    fn hardlink_to_later_or_lower_entry_is_an_error() {
        let layers = vec![vec![file("x")], vec![link("y", "x")]];
        let err = plan(&layers).unwrap_err();
        assert_eq!(err.layer, 1);
        assert_eq!(err.path, b"y");
        let layers = vec![vec![link("y", "x"), file("x")]];
        assert!(plan(&layers).is_err());
    }

    #[test]
    fn duplicate_in_same_layer_last_wins() {
        let layers = vec![vec![file("a"), file("a")]];
        let actions = plan(&layers).unwrap();
        assert_eq!(actions[0], vec![Action::Skip, Action::Emit]);
    }
}
