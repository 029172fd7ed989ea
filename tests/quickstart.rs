//! `examples/quickstart.sh`, as a new user runs it, with the suite's own binary
//! (`DROOT_FLEET_BIN`): the file:// store, then `--s3` with a private Garage. Each run
//! publishes three releases with `droot-fleet publish`, deploys them pinned to the
//! published digests across three agents, sees the broken one roll back by itself, and
//! cleans up. The two runs share addresses and a release root, so they run in turn.

mod common;

use std::process::Command;

/// Runs the quickstart with `args`: its transcript, after checking it succeeded and
/// showed every step.
fn quickstart(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.sh");
    let out = common::output(
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("DROOT_FLEET_BIN", common::bin())
            .env_remove("RUST_LOG"),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "quickstart {args:?} failed:\n{said}");
    for v in ["v1", "v2", "v3"] {
        assert!(
            said.contains("+ droot-fleet publish ")
                && said.contains(&format!("/demo/{v}.tar.gz (")),
            "{v} not published:\n{said}"
        );
    }
    assert_eq!(said.matches("pinned to sha256 ").count(), 3, "{said}");
    assert!(
        said.contains("deploy demo v1: all 3 target(s) ok"),
        "{said}"
    );
    assert!(
        said.contains("deploy demo v2: all 3 target(s) ok"),
        "{said}"
    );
    assert!(
        said.contains("every node rolled back to v2 by itself"),
        "{said}"
    );
    assert!(said.contains("done; removing"), "{said}");
    said
}

#[test]
fn the_quickstart_runs_on_a_file_store_and_on_s3() {
    common::require_root("the_quickstart_runs_on_a_file_store_and_on_s3");
    let local = quickstart(&[]);
    assert!(local.contains("file:///"), "{local}");
    let s3 = quickstart(&["--s3"]);
    assert!(
        s3.contains("published with s3://quickstart/demo/v1.tar.gz"),
        "{s3}"
    );
    assert!(s3.contains("stopping Garage"), "{s3}");
}
