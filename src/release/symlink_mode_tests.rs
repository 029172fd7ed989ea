//! Stage and switch as separate steps: a staged release is on disk and in the history but
//! not current until switched to; a refused check stages nothing.

use super::*;
use crate::release::marker_tar;

fn store() -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("app"));
    (dir, layout)
}

/// A store whose `current` is a deployed v1.
fn store_with_v1() -> (tempfile::TempDir, Layout) {
    let (dir, layout) = store();
    deploy(
        &layout,
        marker_tar("v1"),
        Some("v1"),
        5,
        &Default::default(),
    )
    .unwrap();
    (dir, layout)
}

#[test]
fn a_staged_release_is_current_only_once_switched_to() {
    let (_dir, layout) = store_with_v1();
    let staged = stage(
        &layout,
        marker_tar("v2"),
        Some("v2"),
        &Default::default(),
        |_| Ok(()),
    );
    assert_eq!(staged.unwrap().version, "v2");
    assert_eq!(current(&layout).unwrap().as_deref(), Some("v1"));
    let marker = std::fs::read_to_string(layout.release("v2").join("marker")).unwrap();
    assert_eq!(marker, "v2");
    assert_eq!(switch_to(&layout, "v2").unwrap().as_deref(), Some("v1"));
    assert_eq!(current(&layout).unwrap().as_deref(), Some("v2"));
    assert_eq!(
        switch_to(&layout, "v2").unwrap().as_deref(),
        Some("v2"),
        "no-op"
    );
    // The switch went on the rollback stack: a rollback goes back to v1.
    assert_eq!(rollback(&layout, None).unwrap().1, "v1");
}

#[test]
fn a_refused_check_stages_nothing_and_an_unknown_release_is_not_switched_to() {
    let (_dir, layout) = store_with_v1();
    let refused = stage(
        &layout,
        marker_tar("v2"),
        Some("v2"),
        &Default::default(),
        |_| Err("digest mismatch".into()),
    );
    assert!(
        matches!(refused, Err(ReleaseError::Verify(_))),
        "{refused:?}"
    );
    assert!(std::fs::symlink_metadata(layout.release("v2")).is_err());
    let staging: Vec<_> = std::fs::read_dir(layout.staging_dir()).unwrap().collect();
    assert!(staging.is_empty(), "{staging:?}");
    assert!(!load_history(&layout).unwrap().contains("v2"));
    let unknown = switch_to(&layout, "v2");
    assert!(
        matches!(unknown, Err(ReleaseError::NoSuchRelease(_))),
        "{unknown:?}"
    );
    assert_eq!(current(&layout).unwrap().as_deref(), Some("v1"));
}
