//! `droot-fleet completions` and `droot-fleet man`: the scripts a shell accepts, the pages
//! roff renders, each naming the commands (nested ones too) and hiding hidden flags.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let out = common::cmd().args(args).output().expect("run droot-fleet");
    assert!(
        out.status.success(),
        "droot-fleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(args: &[&str]) -> String {
    String::from_utf8(run(args).stdout).expect("UTF-8 output")
}

/// Renders a page to plain text with groff, failing on any roff warning.
fn render(page: &Path) -> String {
    common::require_tool("groff", "groff-base");
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P", "-cbou"])
        .arg(page)
        .output()
        .expect("run groff");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.is_empty(),
        "{}: {warnings}",
        page.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bash script parses (`bash -n`), registers itself and completes the commands,
/// nested ones included.
#[test]
fn bash_completion_parses_and_names_the_commands() {
    let script = stdout(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("droot-fleet.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        script.contains("complete -F _droot__fleet"),
        "not registered"
    );
    for word in [
        "deploy",
        "event",
        "rollout",
        "rollback",
        "agent",
        "--signing-key",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    assert!(
        script.contains("droot__fleet__subcmd__event,deploy)"),
        "no `event deploy`"
    );
}

/// zsh and fish get scripts of their own kind naming the commands.
#[test]
fn zsh_and_fish_completions_name_the_commands() {
    let zsh = stdout(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef droot-fleet"), "{}", &zsh[..40]);
    let fish = stdout(&["completions", "fish"]);
    assert!(
        fish.contains("complete -c droot-fleet"),
        "not a fish script"
    );
    for script in [&zsh, &fish] {
        for word in [
            "deploy",
            "event",
            "rollout",
            "pause",
            "members",
            "completions",
        ] {
            assert!(script.contains(word), "lacks {word}");
        }
    }
    let bad = common::cmd()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// One page for the whole CLI: it renders cleanly (groff and man), has every command
/// (nested ones with their own options), the global --log once, and no hidden flag.
#[test]
fn man_page_renders_and_names_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("droot-fleet.1");
    std::fs::write(&page, run(&["man"]).stdout).unwrap();
    let text = render(&page);
    for heading in ["NAME", "SYNOPSIS", "OPTIONS", "COMMANDS"] {
        assert!(
            text.contains(&format!("\n{heading}\n")),
            "no {heading}:\n{text}"
        );
    }
    for name in [
        "droot-fleet deploy",
        "droot-fleet event deploy",
        "droot-fleet rollout pause",
        "droot-fleet keys install",
        "droot-fleet enroll node",
        "droot-fleet completions",
    ] {
        assert!(
            text.contains(&format!("\n   {name}\n")),
            "no entry for {name}"
        );
    }
    // `event deploy`'s own options are under its entry.
    let entry = text
        .split("\n   droot-fleet event deploy\n")
        .nth(1)
        .unwrap();
    let entry = entry.split("\n   droot-fleet ").next().unwrap();
    assert!(entry.contains("--max-parallel"), "{entry}");
    assert_eq!(text.matches("--log <LOG>").count(), 1, "--log is global");
    assert!(!text.contains("debug-consumer"), "a hidden flag is shown");

    common::require_tool("man", "man-db");
    let man = Command::new("man")
        .env("MANWIDTH", "100")
        .arg("-l")
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        man.status.success(),
        "{}",
        String::from_utf8_lossy(&man.stderr)
    );
    let shown = String::from_utf8_lossy(&man.stdout).replace(['\u{8}'], "");
    assert!(shown.contains("rollout"), "man -l shows no commands");
}

/// `--dir` writes git-style pages: the top one listing the commands, and one per command,
/// each rendering cleanly.
#[test]
fn man_dir_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    run(&["man", "--dir", out.to_str().unwrap()]);
    let top = render(&out.join("droot-fleet.1"));
    assert!(top.contains("droot-fleet-rollout(1)"), "{top}");
    let nested = render(&out.join("droot-fleet-event-deploy.1"));
    assert!(nested.contains("--max-parallel"), "{nested}");
    let pages = std::fs::read_dir(&out).unwrap().count();
    assert!(pages >= 30, "only {pages} pages");
    for page in std::fs::read_dir(&out).unwrap() {
        render(&page.unwrap().path());
    }
}
