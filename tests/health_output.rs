//! An `exec` health check runs the release's own programs (in a fresh jail), so the
//! archive's author decides what it prints. Its output must cost the agent a bounded
//! amount of memory. Alone in its binary: it measures this process's peak memory.

mod common;

use droot_fleet::deploy::app::parse_apps;
use droot_fleet::deploy::health::{ExecContext, wait_healthy};

/// This process's peak resident memory, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Beyond issue 15's list: the check's stdout and stderr were read whole into the agent's
/// memory (`Command::output`), to quote their last 300 characters. A health program that
/// prints 400 MB and fails took 400 MB (and a copy) of the agent's memory; one printing
/// at pipe speed until its attempt's timeout, gigabytes. Now only the tail is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_check_that_prints_without_end_costs_bounded_memory() {
    common::require_root("exec health check output");
    let tmp = tempfile::tempdir().unwrap();
    let rel = tmp.path().canonicalize().unwrap().join("releases/v1");
    std::fs::create_dir_all(&rel).unwrap();
    common::busybox_rootfs(&rel);
    let text = format!(
        "[apps.web]\nartifact = \"file:///a/{{version}}.tar\"\nroot = \"{}\"\ncommand = [\"true\"]\n\
         [apps.web.health]\nexec = [\"sh\", \"-c\", \"head -c 400000000 /dev/zero; echo sick >&2; exit 7\"]\n\
         deadline = \"1s\"\ninterval = \"1s\"\n",
        tmp.path().display()
    );
    let app = parse_apps(&text).unwrap().remove("web").unwrap();
    let ctx = ExecContext {
        exe: common::bin(),
        root: rel.clone(),
        jail: app.jail.clone(),
    };
    let before = peak_kib();
    let err = wait_healthy(app.health.as_ref().unwrap(), &ctx)
        .await
        .unwrap_err()
        .to_string();
    let grew = peak_kib().saturating_sub(before);
    assert!(err.contains("sick") && err.contains('7'), "{err}");
    assert!(
        grew < 64 * 1024,
        "the check's 400 MB of output took {grew} KiB of memory"
    );
    common::jail::assert_no_mounts(&rel);
}
