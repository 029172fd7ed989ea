//! Prometheus metrics end to end (issue 17), as root, on real parts: two `droot-fleet agent`
//! processes on 127.86.1.N with `metrics_addr` set, artifacts by file://, and a real
//! Prometheus (Debian's `prometheus` package, which also brings `promtool`) scraping both
//! every second from its own config and a temporary storage directory.
//!
//! What must hold: after a deploy of `web`, Prometheus's query API shows
//! `droot_fleet_deploys_total{app="web",outcome="ok"}` at 1 or more for both instances;
//! the scraped text passes `promtool check metrics` with no lint problem; the control API's
//! `GET /v1/metrics` serves the same families with the format's content type; and the
//! scrape port answers 404 to everything but `GET /metrics` and `GET /v1/metrics`.

#[path = "common/agent.rs"]
mod agent_support;
mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet::{Fleet, Kind, LONG, NodeSpec};
use serde_json::Value;

const NET: &str = "86.1";
const METRICS_PORT: u16 = 19946;
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn metrics_addr(n: u8) -> String {
    format!("127.{NET}.{n}:{METRICS_PORT}")
}

/// A Prometheus server of this test: its own config, storage and loopback port; killed on
/// drop.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `targets` every second, and waits until it answers.
    fn start(dir: &Path, addr: &str, targets: &[String]) -> Prometheus {
        let bin = tool("prometheus");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: droot-fleet\n    static_configs:\n\
                 \x20     - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr: addr.to_owned(),
            log,
        };
        agent_support::wait_for(LONG, "prometheus to answer /-/ready", || {
            http(&p.addr, "GET", "/-/ready").filter(|(s, _, _)| *s == 200)
        });
        p
    }

    /// The result vector of an instant `query`.
    fn query(&self, query: &str) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let Some((200, _, body)) = http(&self.addr, "GET", &format!("/api/v1/query?query={q}"))
        else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The scrape targets' health, for a failure message.
    fn targets(&self) -> String {
        http(&self.addr, "GET", "/api/v1/targets")
            .map(|(_, _, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `name` (from the `prometheus` package), or a failure naming what to install.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} not found on PATH: install Debian's prometheus package (.ci/test.sh does)")
    })
}

/// One HTTP/1.0 request over `stream`: (status, content type, body).
fn exchange(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
) -> Option<(u16, String, String)> {
    stream
        .write_all(format!("{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    let _ = stream.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Some((status, ctype, body.to_owned()))
}

/// A request to `addr` over TCP.
fn http(addr: &str, method: &str, path: &str) -> Option<(u16, String, String)> {
    let s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    exchange(s, method, path)
}

/// A request to the control API's unix socket.
fn unix_http(sock: &Path, method: &str, path: &str) -> Option<(u16, String, String)> {
    let s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    exchange(s, method, path)
}

/// The family names (`# TYPE` lines) of a metrics text.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// `promtool check metrics` on `text`: its exit status and everything it printed.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Polls Prometheus until both agents' `web` ok-deploy counters are at 1 or more.
fn wait_for_deploys(p: &Prometheus, want: &BTreeSet<String>) {
    let query = "droot_fleet_deploys_total{app=\"web\",outcome=\"ok\"} >= 1";
    let deadline = Instant::now() + LONG;
    loop {
        let seen: BTreeSet<String> = p
            .query(query)
            .iter()
            .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_owned))
            .collect();
        if &seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus shows {query} for {seen:?}, not {want:?}, after {LONG:?}\n\
             targets: {}\nprometheus log: {}",
            p.targets(),
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_scrapes_both_agents_deploys() {
    // Fail early, naming the package, when the tools are missing.
    tool("prometheus");
    tool("promtool");
    let mut f = Fleet::new(NET);
    f.publish("v1", Kind::Healthy);
    let spec = |n: u8| NodeSpec {
        top: format!("metrics_addr = \"{}\"\n", metrics_addr(n)),
        ..NodeSpec::default()
    };
    f.start_nodes(vec![spec(1), spec(2)]);
    let targets = [metrics_addr(1), metrics_addr(2)];
    let prom = Prometheus::start(
        &f.base.join("prometheus"),
        &format!("127.{NET}.9:19090"),
        &targets,
    );
    f.deploy_all_ok("v1");
    wait_for_deploys(&prom, &targets.iter().cloned().collect());

    let (status, ctype, text) = http(&metrics_addr(1), "GET", "/metrics").expect("scrape n1");
    assert_eq!((status, ctype.as_str()), (200, CONTENT_TYPE), "{text}");
    let (ok, said) = promtool_check(&text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
    for line in [
        "droot_fleet_deploys_total{app=\"web\",outcome=\"ok\"} 1\n",
        "droot_fleet_app_up{app=\"web\"} 1\n",
        "droot_fleet_app_info{app=\"web\",version=\"v1\"} 1\n",
        "droot_fleet_members{state=\"alive\"} 2\n",
        "# TYPE droot_fleet_gossip_packets_dropped_total counter\n",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    let fetched = text
        .lines()
        .find_map(|l| l.strip_prefix("droot_fleet_artifact_fetched_bytes_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        fetched.is_some_and(|b| b > 0),
        "no artifact bytes counted:\n{text}"
    );

    // The control API serves the same families, with the same content type.
    let (status, ctype, api) =
        unix_http(&f.agent(1).sock(), "GET", "/v1/metrics").expect("control API");
    assert_eq!((status, ctype.as_str()), (200, CONTENT_TYPE), "{api}");
    assert_eq!(families(&api), families(&text));
    let (status, _, v1) = http(&metrics_addr(2), "GET", "/v1/metrics").expect("scrape n2");
    assert_eq!(status, 200);
    assert_eq!(families(&v1), families(&text));

    // Nothing else answers on the scrape port.
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/v1/info"),
        ("GET", "/v1/members"),
        ("GET", "/metrics/x"),
        ("POST", "/v1/leave"),
        ("POST", "/metrics"),
        ("DELETE", "/v1/metrics"),
    ] {
        let (status, _, body) = http(&metrics_addr(1), method, path).expect("an answer");
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    bounded(&metrics_addr(1));
    assert_eq!(f.agent(1).alive_count(), 2, "n1 still runs after all that");
}

/// The scrape port holds a bounded number of connections and a bounded request head.
fn bounded(addr: &str) {
    // Idle connections take every slot (Prometheus may hold one too): the next
    // connection is closed unanswered. Once they are gone, scrapes answer again.
    let idle: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    assert_eq!(
        http(addr, "GET", "/metrics"),
        None,
        "a ninth connection was served"
    );
    drop(idle);
    agent_support::wait_for(LONG, "a scrape once the idle connections closed", || {
        http(addr, "GET", "/metrics").filter(|(s, _, _)| *s == 200)
    });
    // A request head larger than the connection's buffer is refused, not buffered.
    let long = format!("/metrics?{}", "a".repeat(64 * 1024));
    let answer = http(addr, "GET", &long);
    assert!(
        answer
            .as_ref()
            .is_none_or(|(s, _, _)| *s == 431 || *s == 400),
        "an oversized head got {answer:?}"
    );
}
