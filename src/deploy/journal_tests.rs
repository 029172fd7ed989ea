use std::time::Duration;

use super::*;
use crate::deploy::phases::Phase;

fn entry(n: u64) -> Entry {
    let mut phases_ms = PhaseTimes::default();
    phases_ms.add(Phase::Fetch, Duration::from_millis(n));
    Entry {
        kind: Kind::Deploy,
        event_id: format!("{n:032x}"),
        signer: Some("AbCdEf0123".into()),
        from: (n > 0).then(|| format!("v{}", n - 1)),
        to: format!("v{n}"),
        outcome: Outcome::Ok,
        error: None,
        phases_ms,
        at: 1_700_000_000 + n,
    }
}

fn versions(j: &Journal) -> Vec<String> {
    j.entries().map(|e| e.to.clone()).collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read(path)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

#[test]
fn entries_come_back_in_order_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let (mut j, skipped) = Journal::open(&path, 10).unwrap();
    assert_eq!((j.entries().len(), skipped), (0, 0));
    for n in 0..3 {
        j.append(entry(n)).unwrap();
    }
    let (again, skipped) = Journal::open(&path, 10).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(versions(&again), ["v0", "v1", "v2"]);
    assert_eq!(again.entries().last(), Some(&entry(2)));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_file_is_compacted_to_the_newest_entries_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let (mut j, _) = Journal::open(&path, 5).unwrap();
    for n in 0..200 {
        j.append(entry(n)).unwrap();
        assert!(lines(&path) <= 2 * 5, "after {n}: {} lines", lines(&path));
        assert!(j.entries().len() <= 5);
    }
    assert_eq!(versions(&j), ["v195", "v196", "v197", "v198", "v199"]);
    let (again, _) = Journal::open(&path, 5).unwrap();
    assert_eq!(versions(&again), versions(&j));
    // A smaller bound on reopening keeps the newest.
    let (small, _) = Journal::open(&path, 2).unwrap();
    assert_eq!(versions(&small), ["v198", "v199"]);
}

#[test]
fn a_torn_last_line_loses_no_other_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let (mut j, _) = Journal::open(&path, 10).unwrap();
    j.append(entry(1)).unwrap();
    j.append(entry(2)).unwrap();
    // A crash mid-append: half a line, no newline.
    let full = serde_json::to_string(&entry(3)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
    drop(f);
    let (mut j, skipped) = Journal::open(&path, 10).unwrap();
    assert_eq!((versions(&j), skipped), (vec!["v1".into(), "v2".into()], 1));
    // The next append starts on a line of its own.
    j.append(entry(4)).unwrap();
    let (again, skipped) = Journal::open(&path, 10).unwrap();
    assert_eq!(versions(&again), ["v1", "v2", "v4"]);
    assert_eq!(skipped, 1);
}

#[test]
fn hostile_lines_are_skipped_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let good = serde_json::to_string(&entry(7)).unwrap();
    let mut bad_version = entry(8);
    bad_version.to = "../../etc".into();
    let mut long_error = entry(9);
    long_error.error = Some("é".repeat(5000));
    let long_error = serde_json::to_string(&long_error).unwrap();
    let text = [
        "not json".to_string(),
        "\u{0}\u{1}{{{".to_string(),
        serde_json::to_string(&bad_version).unwrap(),
        format!(
            r#"{{"kind":"deploy","pad":"{}"}}"#,
            "x".repeat(2 * MAX_LINE)
        ),
        r#"{"kind":"sideways","event_id":"1","to":"v1","outcome":"ok","at":1}"#.into(),
        good,
        long_error.clone(),
    ]
    .join("\n");
    std::fs::write(&path, text).unwrap();
    let (j, skipped) = Journal::open(&path, 10).unwrap();
    assert_eq!(versions(&j), ["v7"]);
    // The overlong error makes its line overlong: skipped too.
    assert_eq!(skipped, 6);
    // An error within the line bound but over MAX_ERROR is cut, on a char boundary.
    let mut e = entry(10);
    e.error = Some("é".repeat(1000));
    let e = e.checked(MAX_ERROR).unwrap();
    assert!(e.error.as_ref().unwrap().len() <= MAX_ERROR);
    assert!(long_error.len() > MAX_LINE);
}

#[test]
fn a_file_far_over_its_bound_is_read_from_its_tail_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let mut text = "x".repeat(10 * 1024 * 1024);
    for n in 0..3 {
        text.push('\n');
        text.push_str(&serde_json::to_string(&entry(n)).unwrap());
    }
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    let (mut j, _) = Journal::open(&path, 4).unwrap();
    assert_eq!(versions(&j), ["v0", "v1", "v2"]);
    // The next append compacts it.
    j.append(entry(3)).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 4 * (MAX_LINE as u64));
    assert_eq!(lines(&path), 4);
}

#[test]
fn what_is_not_a_regular_file_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = Journal::open(&fifo, 3).unwrap_err();
    assert!(matches!(err, JournalError::NotAFile(_)), "{err}");
    let sub = dir.path().join("dir");
    std::fs::create_dir(&sub).unwrap();
    assert!(Journal::open(&sub, 3).is_err());
    // A symlink is not followed.
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "").unwrap();
    let link = dir.path().join(FILE);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (mut j, _) = Journal::open(&dir.path().join("new"), 3).unwrap();
    j.path = link.clone();
    let err = j.append(entry(1)).unwrap_err();
    assert!(err.to_string().contains(FILE), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"");
}

#[test]
fn a_rollback_is_a_release_deployed_before_current() {
    let rel: Vec<String> = ["v1", "v2", "v3"].map(String::from).to_vec();
    assert_eq!(Kind::of("v4", Some("v3"), Some("v2"), &rel), Kind::Deploy);
    assert_eq!(Kind::of("v2", Some("v3"), Some("v2"), &rel), Kind::Rollback);
    assert_eq!(Kind::of("v1", Some("v3"), Some("v2"), &rel), Kind::Rollback);
    // Forward to a release already on disk (rolled back from it before).
    assert_eq!(Kind::of("v3", Some("v2"), Some("v1"), &rel), Kind::Deploy);
    assert_eq!(Kind::of("v1", None, None, &rel), Kind::Deploy);
}
