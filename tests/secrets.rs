//! Issue 15, item 6: secrets stay secret. A keyring, a deploy signing key or a config file
//! holding `rpc_token` that another local user can read is refused at load, with the
//! `chmod 600 PATH` to run; the agent never starts on one. The agent's own secret files
//! must also be owned by root or by the agent's user. Agents run on 127.77.9x.N.

#[path = "common/agent.rs"]
mod agent_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use agent_support::{PORT, bin, wait_for, write_keyring};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `droot-fleet agent ARGS --data-dir DIR`, expected to refuse to start: its output (it
/// is killed after 20 s if it does start, and the test fails).
fn agent_refuses(args: &[&str], data_dir: &Path) -> Output {
    let mut child = Command::new(bin())
        .env_remove("RUST_LOG")
        .arg("agent")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(
        Duration::from_secs(20),
        "the agent to refuse to start",
        || child.try_wait().unwrap(),
    );
    let out = child.wait_with_output().unwrap();
    assert!(!exited.success(), "the agent started: {}", text(&out));
    assert!(
        !data_dir.join("agent.sock").exists(),
        "a refused start bound the control socket"
    );
    out
}

/// Starts an agent that must come up (its control socket answers), then kills it.
fn agent_starts(args: &[&str], data_dir: &Path) {
    let mut child = Command::new(bin())
        .env_remove("RUST_LOG")
        .arg("agent")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = data_dir.join("agent.sock");
    wait_for(
        Duration::from_secs(20),
        "the agent's control socket",
        || {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("the agent exited: {st}");
            }
            std::os::unix::net::UnixStream::connect(&sock).ok()
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn stderr_has(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "no {n:?} in: {}", text(out));
    }
}

/// The README's old recipe (`echo ... > keyring.json` under umask 022) made a world
/// readable keyring, and the agent loaded it: every local user held the gossip key.
#[test]
fn a_world_readable_keyring_is_refused_and_the_agent_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keyring.json");
    write_keyring(&ring);
    let ring_s = ring.display().to_string();
    let bind = format!("127.77.91.1:{PORT}");
    let args = ["--node", "k1", "--bind", &bind, "--keyring", &ring_s];
    for mode in [0o644, 0o640, 0o604, 0o620] {
        chmod(&ring, mode);
        let out = agent_refuses(&args, &dir.path().join("d"));
        stderr_has(
            &out,
            &[
                &format!("keyring {ring_s}"),
                &format!("(mode {mode:04o})"),
                &format!("chmod 600 {ring_s}"),
            ],
        );
    }
    // Owned by another user, it is theirs to read and replace, even at 0600.
    chmod(&ring, 0o600);
    std::os::unix::fs::chown(&ring, Some(65534), None).unwrap();
    let out = agent_refuses(&args, &dir.path().join("d"));
    stderr_has(&out, &["owned by uid 65534", &format!("chown 0 {ring_s}")]);
    std::os::unix::fs::chown(&ring, Some(0), None).unwrap();
    agent_starts(&args, &dir.path().join("d"));
}

/// A config that holds `rpc_token` and is readable by other users hands them the control
/// API (deploys, events, key rotation).
#[test]
fn a_world_readable_config_with_rpc_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keyring.json");
    write_keyring(&ring);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"c1\"\nbind = \"127.77.92.1:{PORT}\"\nkeyring = {:?}\n\
             rpc = \"tcp:127.77.92.1:18792\"\nrpc_token = \"s3cret\"\n",
            ring.display().to_string()
        ),
    )
    .unwrap();
    chmod(&cfg, 0o644);
    let cfg_s = cfg.display().to_string();
    let out = agent_refuses(&["--config", &cfg_s], &dir.path().join("d"));
    stderr_has(
        &out,
        &[
            &format!("config file {cfg_s}"),
            "rpc_token",
            &format!("chmod 600 {cfg_s}"),
        ],
    );
    assert!(
        std::net::TcpStream::connect("127.77.92.1:18792").is_err(),
        "the API listened"
    );
    // Without the token the same file may stay world-readable.
    let no_token = std::fs::read_to_string(&cfg).unwrap().replace(
        "rpc = \"tcp:127.77.92.1:18792\"\nrpc_token = \"s3cret\"\n",
        "",
    );
    std::fs::write(&cfg, no_token).unwrap();
    agent_starts(&["--config", &cfg_s], &dir.path().join("d"));
}

/// A signing key other users can read is anyone's key to deploy with: `event deploy`
/// refuses it before signing anything.
#[test]
fn a_world_readable_signing_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("deploy.key");
    let out = Command::new(bin())
        .args(["keygen", "--signing", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    chmod(&key, 0o644);
    let key_s = key.display().to_string();
    let sock = format!("unix:{}", dir.path().join("none.sock").display());
    let out = Command::new(bin())
        .env_remove("DROOT_FLEET_SIGNING_KEY")
        .args([
            "event",
            "deploy",
            "web",
            "v1",
            "--url",
            "file:///a/v1.tar",
            "--unpinned",
        ])
        .args(["--rpc", &sock, "--signing-key", &key_s])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    stderr_has(
        &out,
        &[
            &format!("signing key {key_s}"),
            "(mode 0644)",
            &format!("chmod 600 {key_s}"),
        ],
    );
}
