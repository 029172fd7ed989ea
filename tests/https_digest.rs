//! `event deploy` of an artifact served over https:// as `publish` wrote it to a directory:
//! the CLI pins the digest from the `.sha256` beside it, refuses a digest left beside an
//! artifact that is gone, and says when there is none. A private CA signs the server's
//! certificate; the CLI trusts it through `SSL_CERT_FILE` (read by the system root store),
//! and a Python `http.server` wrapped in TLS serves the directory.

#[path = "common/agent.rs"]
mod agent_support;
mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use agent_support::wait_for;

/// Runs `cmd`, failing the test with its output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`server.pem`, `server.key`).
fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
}

/// Python's `http.server` over TLS, serving `www` on `port`; killed on drop.
struct HttpsServer(Child);

impl HttpsServer {
    fn start(www: &Path, certs: &Path, port: u16) -> HttpsServer {
        let script = format!(
            "import http.server, ssl, functools\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={www:?})\n\
             s = http.server.HTTPServer(('127.0.0.1', {port}), h)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             c.load_cert_chain({cert:?}, {key:?})\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\n\
             s.serve_forever()\n",
            www = www.display().to_string(),
            cert = certs.join("server.pem").display().to_string(),
            key = certs.join("server.key").display().to_string(),
        );
        let child = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (the README's test command installs it)");
        wait_for(
            std::time::Duration::from_secs(30),
            "the https server to listen",
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        HttpsServer(child)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn event_deploy_reads_the_digest_beside_an_https_artifact() {
    let tmp = common::tempdir();
    let (www, certs) = (tmp.path().join("www"), tmp.path().join("certs"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let src = tmp.path().join("src");
    common::busybox_rootfs(&src);
    let dest = format!("file://{}/v1.tar.gz", www.display());
    let out = run(Command::new(common::bin()).args([
        "publish",
        src.to_str().unwrap(),
        &dest,
        "--format",
        "json",
    ]));
    let published: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sha256 = published["sha256"].as_str().expect("the artifact's digest");
    let key = tmp.path().join("deploy.key");
    run(Command::new(common::bin()).args(["keygen", "--signing", "-o", key.to_str().unwrap()]));
    let port = common::unused_port();
    let _server = HttpsServer::start(&www, &certs, port);
    // No agent listens there: the CLI gets as far as sending the event.
    let no_agent = tmp.path().join("no-agent.sock");
    let deploy = |name: &str| {
        let url = format!("https://127.0.0.1:{port}/{name}");
        Command::new(common::bin())
            .env_remove("RUST_LOG")
            .env("SSL_CERT_FILE", certs.join("ca.pem"))
            .env("DROOT_FLEET_RPC", format!("unix:{}", no_agent.display()))
            .args([
                "event",
                "deploy",
                "web",
                "v1",
                "--url",
                &url,
                "--signing-key",
            ])
            .arg(&key)
            .output()
            .unwrap()
    };

    let out = deploy("v1.tar.gz");
    let pinned = format!("pinned to sha256 {sha256}, published with https://127.0.0.1:{port}/");
    assert!(text(&out).contains(&pinned), "{}", text(&out));
    assert!(!out.status.success(), "no agent to send to: {}", text(&out));

    // A refused deploy says why, and pins nothing.
    let refused = |name: &str, why: &str| {
        let out = deploy(name);
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains(why) && !said.contains("pinned to sha256"),
            "{said}"
        );
    };
    // A digest left beside an artifact that is gone pins nothing a node could fetch.
    std::fs::rename(www.join("v1.tar.gz"), www.join("v1-moved.tar.gz")).unwrap();
    refused("v1.tar.gz", "v1.tar.gz: not found (HTTP 404)");
    // An artifact with no digest beside it: the CLI says how to go on.
    refused("v1-moved.tar.gz", "carries no published digest");
}
