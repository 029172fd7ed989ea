//! Running under systemd: the agent's `sd_notify` messages on a real datagram socket the
//! test binds (127.77.140.N), and `examples/droot-fleet.service` checked by
//! `systemd-analyze verify` against this build's binary and man page.

#[path = "common/agent.rs"]
mod agent_support;
mod common;

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{Agent, Cluster, bin, wait_for, write_private};
use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/droot-fleet.service");
const DEADLINE: Duration = Duration::from_secs(30);

/// The service manager's end: a datagram socket that reports each sender's pid.
struct Manager(UnixDatagram);

impl Manager {
    fn bind(addr: &SocketAddr) -> Manager {
        let sock = UnixDatagram::bind_addr(addr).expect("bind the notify socket");
        setsockopt(&sock, sockopt::PassCred, &true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Manager(sock)
    }

    /// The next message and its sender's pid, or a failure naming `what` at the deadline.
    fn next(&self, what: &str) -> (i32, String) {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!(libc::ucred);
        loop {
            assert!(Instant::now() < deadline, "no {what} within {DEADLINE:?}");
            let mut iov = [IoSliceMut::new(&mut buf)];
            let fd = self.0.as_raw_fd();
            let Ok(msg) = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty()) else {
                continue;
            };
            let pid = msg.cmsgs().unwrap().find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                _ => None,
            });
            let len = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            return (pid.expect("credentials"), text);
        }
    }
}

/// Agent `n` of `c`, not yet started, with a handler that writes its environment to
/// `env_file` on the user event `envdump`, and `extra` config.
fn agent(c: &Cluster, n: u8, env_file: &Path, extra: &str) -> Agent {
    let name = format!("n{n}");
    let handler = format!(
        "[[handler]]\nevent = \"user:envdump\"\ncommand = [\"sh\", \"-c\", \"env > {}\"]\n{extra}",
        env_file.display()
    );
    let config = c.dir.path().join(format!("{name}.toml"));
    write_private(&config, &c.config(&handler));
    Agent {
        data_dir: c.dir.path().join(&name),
        identity: Some(c.enrollment.identity(&name)),
        addr: c.addr(n),
        config,
        join: Vec::new(),
        keyring: Some(c.keyring.clone()),
        program: None,
        log: c.dir.path().join(format!("{name}.log")),
        args: Vec::new(),
        child: None,
        name,
    }
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// READY=1 comes from the agent's own pid once its API answers; SIGHUP is framed by
/// RELOADING=1 (with a MONOTONIC_USEC taken during the reload) and READY=1; SIGTERM brings
/// STOPPING=1 and a clean exit. A handler inherits the agent's environment, but not
/// NOTIFY_SOCKET.
#[test]
fn the_agent_notifies_ready_reloading_and_stopping() {
    let c = Cluster::new("77.140");
    let socket = c.dir.path().join("notify");
    let manager = Manager::bind(&SocketAddr::from_pathname(&socket).unwrap());
    let env_file = c.dir.path().join("handler.env");
    let mut a = agent(&c, 1, &env_file, "");
    let socket_env = socket.to_str().unwrap();
    a.spawn_env(&[
        ("NOTIFY_SOCKET", socket_env),
        ("DROOT_FLEET_TEST_MARK", "kept"),
    ]);
    let pid = a.child.as_ref().unwrap().id() as i32;

    let (from, ready) = manager.next("READY=1");
    assert_eq!((from, ready.as_str()), (pid, "READY=1"));
    assert_eq!(a.status_of("n1").as_deref(), Some("alive"));

    let before = monotonic_usec();
    a.signal(Signal::SIGHUP);
    let (from, reloading) = manager.next("RELOADING=1");
    assert_eq!(from, pid);
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        before <= usec && usec <= monotonic_usec(),
        "{usec} vs {before}"
    );
    assert_eq!(
        manager.next("READY=1 after the reload"),
        (pid, "READY=1".into())
    );

    assert!(a.cli(&["event", "envdump", "x"]).status.success());
    let env = wait_for(DEADLINE, "the handler's environment", || {
        let text = std::fs::read_to_string(&env_file).ok()?;
        text.contains("DROOT_FLEET_USER_EVENT=envdump")
            .then_some(text)
    });
    assert!(env.contains("DROOT_FLEET_TEST_MARK=kept"), "{env}");
    assert!(
        !env.contains("NOTIFY_SOCKET"),
        "a handler got the socket:\n{env}"
    );

    a.signal(Signal::SIGTERM);
    assert_eq!(manager.next("STOPPING=1"), (pid, "STOPPING=1".into()));
    assert!(a.wait_exit(DEADLINE).success(), "{}", a.log_text());
}

/// An abstract `@NAME` address (what systemd hands to services in containers) works too.
#[test]
fn an_abstract_notify_socket_gets_ready() {
    let c = Cluster::new("77.140");
    let name = format!("droot-fleet-test/{}/notify", std::process::id());
    let manager = Manager::bind(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap());
    let mut a = agent(&c, 2, &c.dir.path().join("unused.env"), "");
    a.spawn_env(&[("NOTIFY_SOCKET", &format!("@{name}"))]);
    let pid = a.child.as_ref().unwrap().id() as i32;
    assert_eq!(manager.next("READY=1"), (pid, "READY=1".into()));
}

/// A NOTIFY_SOCKET that is no socket address is named in a warning; the agent serves on.
#[test]
fn a_bad_notify_socket_is_reported_and_the_agent_runs_on() {
    let c = Cluster::new("77.140");
    let mut a = agent(&c, 3, &c.dir.path().join("unused.env"), "");
    a.spawn_env(&[("NOTIFY_SOCKET", "run/notify")]);
    assert_eq!(a.status_of("n3").as_deref(), Some("alive"));
    let log = a.log_text();
    assert!(
        log.contains("NOTIFY_SOCKET=\"run/notify\" is neither an absolute path"),
        "{log}"
    );
}

/// Stops the agent (and so its jails) even when the test failed.
struct Stop<'a>(&'a mut Agent);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        if self.0.child.is_some() {
            self.0.signal(Signal::SIGTERM);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.0.wait_exit(DEADLINE)
            }));
        }
    }
}

/// READY=1 waits for the apps: when it comes, the app's jail is already running (as
/// `query status` says), and the jail's environment holds nothing of the agent's
/// (NOTIFY_SOCKET included).
#[test]
fn ready_comes_once_the_apps_run_and_jails_get_no_notify_socket() {
    common::require_root("an agent running an app's jail");
    let c = Cluster::new("77.140");
    let store = common::tempdir();
    let root = store.path().canonicalize().unwrap().join("web");
    let release = root.join("releases/v1");
    std::fs::create_dir_all(&release).unwrap();
    common::busybox_rootfs(&release);
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let app = format!(
        "[apps.web]\nartifact = \"file:///nonexistent/{{version}}.tar\"\nroot = \"{}\"\n\
         command = [\"sh\", \"-c\", \"env > /jail.env; exec sleep 600\"]\n",
        root.display()
    );
    let socket = c.dir.path().join("notify");
    let manager = Manager::bind(&SocketAddr::from_pathname(&socket).unwrap());
    let mut a = agent(&c, 4, &c.dir.path().join("unused.env"), &app);
    a.spawn_env(&[("NOTIFY_SOCKET", socket.to_str().unwrap())]);
    let a = Stop(&mut a);
    let pid = a.0.child.as_ref().unwrap().id() as i32;

    assert_eq!(manager.next("READY=1"), (pid, "READY=1".into()));
    let out = a.0.cli(&["query", "status", "web", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = &status["responses"][0]["apps"]["web"];
    assert_eq!(web["state"], "running", "at READY=1: {status}");
    assert!(web["pid"].as_i64().is_some_and(|p| p > 0), "{status}");

    let env = wait_for(DEADLINE, "the jail's environment", || {
        let text = std::fs::read_to_string(release.join("jail.env")).ok()?;
        text.contains("PATH=").then_some(text)
    });
    assert!(
        !env.contains("NOTIFY_SOCKET"),
        "the jail got a notify socket:\n{env}"
    );
}

/// The unit as shipped, with this build's binary in ExecStart and its man page on MANPATH
/// (the unit's Documentation=), passes `systemd-analyze verify` without a word.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let found = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: install the Debian package systemd (bash .ci/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let page = Command::new(bin()).arg("man").output().unwrap();
    assert!(page.status.success());
    std::fs::write(man1.join("droot-fleet.1"), page.stdout).unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let shipped = "/usr/local/bin/droot-fleet ";
    assert!(
        unit.contains(&format!("ExecStart={shipped}agent ")),
        "{unit}"
    );
    let ours = unit.replace(shipped, &format!("{} ", bin().display()));
    let file = dir.path().join("droot-fleet.service");
    std::fs::write(&file, ours).unwrap();
    let out = Command::new("systemd-analyze")
        .env("MANPATH", dir.path().join("man"))
        .args(["verify", "--man=yes"])
        .arg(&file)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.is_empty(), "verify: {said}");
}

/// What the unit must say, each for a reason the README gives: the agent alone is
/// signalled (leave_running jails survive a restart), it notifies, SIGHUP reloads, and no
/// setting moves it into a mount namespace of its own (where the store's nosuid mount
/// would be hidden from the host). Its ExecStart is a command line the binary takes.
#[test]
fn the_unit_keeps_jails_and_the_host_mount_namespace() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect();
    for want in [
        "Type=notify",
        "KillMode=process",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "OOMPolicy=continue",
    ] {
        assert!(settings.contains(&want), "the unit lacks {want}");
    }
    let namespacing = [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateMounts",
        "MountFlags",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "BindPaths",
        "TemporaryFileSystem",
        "ProtectKernelModules",
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "PrivateDevices",
        "RootDirectory",
    ];
    for s in &settings {
        let key = s.split('=').next().unwrap();
        assert!(
            !namespacing.contains(&key),
            "{s} would give the agent its own mounts"
        );
    }
    let exec = settings
        .iter()
        .find_map(|s| s.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let missing = PathBuf::from("/nonexistent/agent.toml");
    let out = Command::new(bin())
        .args(&args[..args.len() - 1])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "not a usage error: {err}");
    assert!(err.contains("/nonexistent/agent.toml"), "{err}");
}
