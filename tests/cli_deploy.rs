//! `event deploy` and `rollback` on the operator's side, with the built binary: every bad
//! argument is a clear error naming it, exits 1, and nothing reaches the agent socket; a good
//! one reaches it as a `POST /v1/deploy` whose event verifies under the operator's public key.
//! (Deploys against real agents are in the agent suites.)

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use droot_fleet::api::DeployRequest;
use droot_fleet::deploy::signed::{MaxParallel, SignedEvent, public_key_from_text};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_droot-fleet"));
    for v in ["RUST_LOG", "DROOT_FLEET_RPC", "DROOT_FLEET_SIGNING_KEY"] {
        c.env_remove(v);
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A temp dir with a signing key (`deploy.key`) and a listening agent socket path.
struct Setup {
    dir: tempfile::TempDir,
    public: String,
    listener: UnixListener,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("deploy.key");
        let out = bin()
            .args(["keygen", "--signing", "-o"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        listener.set_nonblocking(true).unwrap();
        Setup {
            dir,
            public,
            listener,
        }
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("deploy.key")
    }

    fn rpc(&self) -> String {
        format!("unix:{}", self.dir.path().join("agent.sock").display())
    }

    /// Runs the CLI with `--rpc` at our socket and `--signing-key` (unless `no_key`).
    fn run(&self, args: &[&str], no_key: bool) -> Output {
        let mut c = bin();
        c.args(args).args(["--rpc", &self.rpc()]);
        if !no_key {
            c.arg("--signing-key").arg(self.key());
        }
        let out = c.output().unwrap();
        // The process has exited: any connection it made is queued by now.
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the CLI contacted the agent: {other:?}\n{}", text(&out)),
        }
        out
    }
}

fn assert_refused(out: &Output, wants: &[&str]) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("droot-fleet: error: "), "{t}");
    for w in wants {
        assert!(err.contains(w), "stderr should contain {w:?}\n{t}");
    }
}

#[test]
fn bad_arguments_are_named_and_nothing_is_sent() {
    let s = Setup::new();
    let d = |extra: &[&str]| {
        let mut a = vec!["event", "deploy", "web", "v2"];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            d(&["--node", "web["]),
            vec![
                "--node \"web[\" is not a valid regex",
                "unclosed character class",
            ],
        ),
        (
            d(&["--tag", "role=(a"]),
            vec!["--tag \"role=(a\"", "not a valid regex"],
        ),
        (d(&["--tag", "role"]), vec!["--tag \"role\"", "KEY=VALUE"]),
        (d(&["--sha256", "abc"]), vec!["--sha256", "64 hex digits"]),
        (d(&["--max-parallel", "0%"]), vec!["--max-parallel", "25%"]),
        (d(&["--url", "ftp://h/x"]), vec!["--url \"ftp://h/x\""]),
        (
            d(&["--timeout", "soon"]),
            vec!["--timeout", "not a duration"],
        ),
        (
            vec!["event", "deploy", "web", "../v2"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec!["invalid release name \"../v2\""],
        ),
        (
            vec!["rollback", "web", "--node", "a("]
                .into_iter()
                .map(String::from)
                .collect(),
            vec!["--node \"a(\" is not a valid regex"],
        ),
        (
            vec!["rollback", "web", "--max-parallel", "lots"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec!["--max-parallel"],
        ),
        (
            vec!["rollback", "web/x", "--to", "v1"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec!["app name \"web/x\""],
        ),
    ];
    for (args, wants) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.run(&args, false);
        assert_refused(&out, &wants);
    }
}

#[test]
fn a_missing_or_bad_signing_key_is_a_clear_error() {
    let s = Setup::new();
    let out = s.run(&["event", "deploy", "web", "v2"], true);
    assert_refused(
        &out,
        &["no signing key", "--signing-key", "keygen --signing"],
    );
    // rollback without --to checks the key before it asks the fleet anything.
    let out = s.run(&["rollback", "web"], true);
    assert_refused(&out, &["no signing key"]);
    let bad = s.dir.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    // Private, as a signing key must be: what is refused is its content.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bad = bad.display().to_string();
    let out = s.run(
        &["rollback", "web", "--to", "v1", "--signing-key", &bad],
        true,
    );
    assert_refused(&out, &[&format!("signing key {bad}"), "not valid base64"]);
}

#[test]
fn an_event_too_big_for_gossip_names_its_size_and_the_limit() {
    let s = Setup::new();
    let url = format!("https://artifacts.example/{}.tar.gz", "x".repeat(1500));
    let out = s.run(&["event", "deploy", "web", "v2", "--url", &url], false);
    assert_refused(
        &out,
        &["the signed deploy event is", "bytes, more than the"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let size: usize = err
        .split("is ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {err}"));
    assert!(size > 1500, "{err}");
}

#[test]
fn the_url_comes_from_the_config_and_an_unknown_app_is_refused() {
    let s = Setup::new();
    let cfg = s.dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[apps.web]\nartifact = \"s3://bkt/{app}/{version}.tar.gz\"\n\
         root = \"/var/containers/web\"\ncommand = [\"/bin/httpd\", \"-f\"]\n",
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let out = s.run(&["event", "deploy", "api", "v2", "--config", &cfg], false);
    assert_refused(&out, &[&format!("{cfg} has no [apps.api]")]);

    let (out, body) = capture(
        &s,
        &[
            "event",
            "deploy",
            "web",
            "v7",
            "--config",
            &cfg,
            "--unpinned",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let ev = verify(&s, &body);
    assert_eq!(ev.url, "s3://bkt/web/v7.tar.gz");
}

#[test]
fn the_signing_key_can_come_from_the_config() {
    let s = Setup::new();
    let cfg = s.dir.path().join("operator.toml");
    std::fs::write(
        &cfg,
        format!("signing_key = {:?}\n", s.key().display().to_string()),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let (out, body) = capture_with(
        &s,
        &[
            "event",
            "deploy",
            "web",
            "v8",
            "--url",
            "file:///a/v8.tar",
            "--config",
            &cfg,
            "--unpinned",
        ],
        false,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(verify(&s, &body).version, "v8");
    // A config without one: the error names all three ways.
    std::fs::write(&cfg, "").unwrap();
    let url_and_config = ["--url", "file:///a/v8.tar", "--config", &cfg];
    let out = s.run(
        &[&["event", "deploy", "web", "v8"][..], &url_and_config].concat(),
        true,
    );
    assert_refused(
        &out,
        &["no signing key", "signing_key in the --config file"],
    );
}

#[test]
fn a_plain_user_event_is_still_a_user_event() {
    let s = Setup::new();
    let (out, body) = capture(&s, &["event", "restart-web", "now"]);
    assert!(out.status.success(), "{}", text(&out));
    let (path, body) = body;
    assert_eq!(path, "/v1/event");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["name"], "restart-web");
    assert_eq!(v["payload"], "now");
}

#[test]
fn the_agent_gets_an_event_signed_by_the_operator() {
    let s = Setup::new();
    let sha = "ab".repeat(32);
    let (out, body) = capture(
        &s,
        &[
            "event",
            "deploy",
            "web",
            "v42",
            "--url",
            "file:///srv/web-v42.tar.gz",
            "--sha256",
            &sha,
            "--node",
            "web[0-9]+",
            "--node",
            "edge-.*",
            "--tag",
            "dc=eu-.*",
            "--max-parallel",
            "25%",
            "--canary",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let ev = verify(&s, &body);
    assert_eq!((ev.app.as_str(), ev.version.as_str()), ("web", "v42"));
    assert_eq!(ev.url, "file:///srv/web-v42.tar.gz");
    assert_eq!(ev.sha256, Some([0xab; 32]));
    assert_eq!(ev.targets.nodes, ["web[0-9]+", "edge-.*"]);
    assert_eq!(ev.targets.tags, [("dc".to_string(), "eu-.*".to_string())]);
    assert_eq!(ev.rollout.max_parallel, Some(MaxParallel::Percent(25)));
    assert_eq!(ev.rollout.canary, 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now.abs_diff(ev.issued_at_ms) < 60_000,
        "issued_at_ms {}",
        ev.issued_at_ms
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("WARN"),
        "the agent's answer is read as is: {err}"
    );
    // Without --wait, stdout is the event id alone (for scripts).
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ev.id_hex());

    // A second event gets a new id (replay protection depends on it).
    let (_, body2) = capture(&s, &["event", "deploy", "web", "v42", "--unpinned"]);
    let ev2 = verify(&s, &body2);
    assert_ne!(ev2.id, ev.id);
    assert_eq!(
        ev2.url, "",
        "no --url and no --config: each node's template"
    );
}

#[test]
fn rollback_to_a_named_version_is_a_signed_deploy_event() {
    let s = Setup::new();
    let (out, body) = capture(&s, &["rollback", "web", "--to", "v41", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let ev = verify(&s, &body);
    assert_eq!((ev.app.as_str(), ev.version.as_str()), ("web", "v41"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["event_id"], ev.id_hex());
    assert_eq!(v["version"], "v41");
}

/// Decodes the captured `POST /v1/deploy` body and verifies it under the operator's key.
fn verify(s: &Setup, (path, body): &(String, Vec<u8>)) -> droot_fleet::deploy::signed::DeployEvent {
    assert_eq!(path, "/v1/deploy");
    let req: DeployRequest = serde_json::from_slice(body).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&req.event)
        .unwrap();
    let key = public_key_from_text(&s.public).unwrap();
    SignedEvent::decode_verified(&bytes, &[key]).unwrap().event
}

/// Runs the CLI and answers its one request on the agent socket as an agent that took it
/// answers; returns the CLI's output and the request's path and body.
fn capture(s: &Setup, args: &[&str]) -> (Output, (String, Vec<u8>)) {
    capture_with(s, args, args[..2] != ["event", "restart-web"])
}

/// [`capture`], passing `--signing-key` only when `with_key`.
fn capture_with(s: &Setup, args: &[&str], with_key: bool) -> (Output, (String, Vec<u8>)) {
    let mut c = bin();
    c.args(args)
        .args(["--rpc", &s.rpc()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if with_key {
        c.arg("--signing-key").arg(s.key());
    }
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let conn = loop {
        match s.listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if child.try_wait().unwrap().is_some() {
                    let out = child.wait_with_output().unwrap();
                    panic!("the CLI exited without connecting\n{}", text(&out));
                }
                assert!(Instant::now() < deadline, "the CLI never connected");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let request = answer(conn);
    let out = child.wait_with_output().unwrap();
    (out, request)
}

fn answer(conn: UnixStream) -> (String, Vec<u8>) {
    conn.set_nonblocking(false).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let path = line.split(' ').nth(1).unwrap_or_default().to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    // What an agent answers to both: the id and Lamport time of the carrying user event.
    let reply = "{\"id\":\"5f0e\",\"ltime\":7}";
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{reply}",
        reply.len()
    )
    .unwrap();
    (path, body)
}
