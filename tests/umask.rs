//! issue 6 item 11: directories the tool creates get an explicit mode whatever the umask.
//! The agent runs on its own address (127.0.66.1), outside the agent suites' 127.77.0.0/16.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::jail::{jail, run_cmd};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `cmd` with the given umask.
fn with_umask(cmd: &mut Command, mask: libc::mode_t) -> &mut Command {
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        })
    }
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn issue6_agent_under_umask_000_creates_no_world_writable_dirs() {
    let t = common::tempdir();
    let data = t.path().join("state/lib/data");
    let sock = t.path().join("run/droot/agent.sock");
    let keyring = t.path().join("keyring.json");
    let mut keygen = common::cmd();
    keygen.arg("keygen").arg("-o").arg(&keyring);
    let out = common::output(with_umask(&mut keygen, 0));
    assert!(out.status.success(), "keygen -o failed");
    let mut cmd = common::cmd();
    cmd.args(["agent", "--node", "umask-1", "--bind", "127.0.66.1:7946"])
        .arg("--keyring")
        .arg(&keyring)
        .arg("--data-dir")
        .arg(&data)
        .arg("--rpc")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut agent = Killed(with_umask(&mut cmd, 0).spawn().expect("start agent"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if let Some(st) = agent.0.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("agent exited {st:?}: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the agent's control socket never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (p, want) in [
        ("state", 0o755),
        ("state/lib", 0o755),
        ("state/lib/data", 0o700),
        ("run", 0o755),
        ("run/droot", 0o700),
        ("run/droot/agent.sock", 0o600),
    ] {
        assert_eq!(
            mode(&t.path().join(p)),
            want,
            "{p}: {:o}",
            mode(&t.path().join(p))
        );
    }
    // The socket was bound under a temporary name and renamed into place: none is left.
    let names: Vec<_> = std::fs::read_dir(t.path().join("run/droot"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["agent.sock"]);
}

#[test]
fn issue6_jail_dirs_and_command_umask_ignore_the_callers_umask() {
    let j = jail("jail under umask 077");
    let src = j.root.parent().unwrap().join("data");
    std::fs::create_dir(&src).unwrap();
    let bind = format!("{}:/srv/app/data", src.display());
    let mut cmd = run_cmd(&j.root, &["-b", &bind], &["sh", "-c", "umask"]);
    let out = common::output(with_umask(&mut cmd, 0o077));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0022\n",
        "runc's umask in the jail"
    );
    for p in ["srv", "srv/app", "srv/app/data"] {
        assert_eq!(mode(&j.root.join(p)), 0o755, "{p}");
    }
    // And under umask 000 nothing is world-writable.
    let mut cmd = run_cmd(
        &j.root,
        &["-b", &format!("{}:/opt/x", src.display())],
        &["true"],
    );
    assert!(common::output(with_umask(&mut cmd, 0)).status.success());
    assert_eq!(mode(&j.root.join("opt")), 0o755);
}

/// Issue 15, item 6: `keygen -o` writes the gossip keyring and `keygen --signing -o` the
/// private signing key 0600 whatever the umask (000 would have made them world-writable).
#[test]
fn issue15_keygen_under_umask_000_writes_0600() {
    let t = tempfile::tempdir().unwrap();
    let ring = t.path().join("keyring.json");
    let signing = t.path().join("deploy.key");
    for args in [vec!["keygen", "-o"], vec!["keygen", "--signing", "-o"]] {
        let file = if args.len() == 2 { &ring } else { &signing };
        let mut cmd = common::cmd();
        cmd.args(&args).arg(file);
        let out = common::output(with_umask(&mut cmd, 0));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(mode(file), 0o600, "{args:?}: {:o}", mode(file));
        // Never overwritten.
        let again = common::output(with_umask(&mut cmd, 0));
        assert!(
            !again.status.success(),
            "{args:?} overwrote {}",
            file.display()
        );
    }
    // The keyring is one the agent loads: one fresh key, as primary.
    let text = std::fs::read_to_string(&ring).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let primary = v["primary"].as_str().unwrap();
    assert!(
        droot_fleet::gossip::Key::from_base64(primary).is_ok(),
        "{text}"
    );
    // No gossip key on stdout (terminal scrollback, CI logs): only the file has it.
    let mut cmd = common::cmd();
    cmd.arg("keygen").arg("-o").arg(t.path().join("k2.json"));
    let out = common::output(&mut cmd);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
