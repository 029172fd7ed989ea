//! Control API and handler contract on real agents (127.77.66-69.N): the loopback TCP
//! API with a bearer token, the handler environment and concurrency, query filters and
//! member filters through the CLI.

#[path = "common/agent.rs"]
mod agent_support;
#[path = "common/ops.rs"]
mod ops;

use std::time::{Duration, Instant};

use agent_support::{Cluster, wait_for};
use ops::{LONG, all_text, cli_cmd, http, json, ok, spawn_agent};
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-token";

/// The TCP control API answers 401 + a JSON error without/with a wrong token; the CLI
/// passes the token with `--token` or `DROOT_FLEET_RPC_TOKEN`; a non-loopback TCP
/// address (or one without a token) is refused at startup.
#[test]
fn tcp_api_requires_the_bearer_token_and_loopback() {
    let c = Cluster::new("77.66");
    let api = "127.77.66.1:18766";
    let rpc = format!("tcp:{api}");
    let config = c.config("").replace(
        "log_level = \"info\"",
        &format!("log_level = \"info\"\nrpc = \"{rpc}\"\nrpc_token = \"{TOKEN}\""),
    );
    let _agent = spawn_agent(&c, 1, &config, &[], Some(api));
    assert!(
        !c.dir.path().join("n1/agent.sock").exists(),
        "no unix socket when rpc is tcp"
    );

    let get = |auth: &str| {
        http(
            api,
            &format!("GET /v1/members HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
        )
    };
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: s3cret-token\r\n",
    ] {
        let (status, body) = get(auth);
        assert_eq!(status, 401, "{auth:?}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(
            v["error"].as_str().unwrap().contains("bearer token"),
            "{body}"
        );
    }
    let (status, body) = get(&format!("Authorization: Bearer {TOKEN}\r\n"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()[0]["name"],
        "n1"
    );

    // CLI: no token → a clear 401 message; --token and the env var work.
    let out = cli_cmd(&["members", "--rpc", &rpc]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        all_text(&out).contains("missing or wrong bearer token"),
        "{}",
        all_text(&out)
    );
    let out = cli_cmd(&["members", "--rpc", &rpc, "--token", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let list = json(
        &cli_cmd(&[
            "members", "--format", "json", "--rpc", &rpc, "--token", TOKEN,
        ])
        .output()
        .unwrap(),
    );
    assert_eq!(list[0]["name"], "n1");
    let out = cli_cmd(&["event", "over-tcp"])
        .env("DROOT_FLEET_RPC", &rpc)
        .env("DROOT_FLEET_RPC_TOKEN", TOKEN)
        .output()
        .unwrap();
    ok(&out);
    wait_for(LONG, "the event sent over TCP to be handled", || {
        (c.deliveries("n1", "over-tcp").len() == 1).then_some(())
    });

    // Refusals: non-loopback TCP, and TCP without a token.
    for (rpc_line, want) in [
        (
            format!("rpc = \"tcp:0.0.0.0:18767\"\nrpc_token = \"{TOKEN}\""),
            "not a loopback address",
        ),
        ("rpc = \"tcp:127.0.0.1:18767\"".to_owned(), "rpc_token"),
    ] {
        let path = c.dir.path().join("bad.toml");
        agent_support::write_private(&path, &format!("{rpc_line}\n"));
        let out = cli_cmd(&["agent", "--node", "bad", "--bind", "127.77.66.9:17946"])
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(c.dir.path().join("bad"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = all_text(&out);
        assert!(err.contains(want) && err.contains("`rpc"), "{err}");
    }
    let out = cli_cmd(&["agent", "--node", "bad", "--bind", "127.77.66.9:17946"])
        .args(["--rpc", "tcp:10.1.2.3:18768"])
        .arg("--data-dir")
        .arg(c.dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        all_text(&out).contains("not a loopback address"),
        "{}",
        all_text(&out)
    );
}

/// A user-event handler gets the payload on stdin and the documented variables, the
/// agent's environment otherwise (minus stale event variables), and two slow handlers
/// for one event run concurrently.
#[test]
fn handler_gets_payload_env_and_runs_concurrently() {
    let c = Cluster::new("77.67");
    let out = c.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let o = out.display();
    let extra = format!(
        r#"
[[handler]]
event = "user:contract"
command = ["sh", "-c", "env > {o}/env.txt; cat > {o}/stdin.txt"]

[[handler]]
event = "user:slow"
command = ["sh", "-c", "date +%s%N > {o}/start.a; sleep 1.5; date +%s%N > {o}/end.a"]

[[handler]]
event = "user:slow"
command = ["sh", "-c", "date +%s%N > {o}/start.b; sleep 1.5; date +%s%N > {o}/end.b"]
{}"#,
        ops::tags_table(&[("role", "web"), ("dc-1", "eu")])
    );
    let _agent = spawn_agent(
        &c,
        1,
        &c.config(&extra),
        &[
            ("MY_HOST_VAR", "kept"),
            ("DROOT_FLEET_USER_EVENT", "stale"),
            ("DROOT_FLEET_TAG_STALE", "x"),
        ],
        None,
    );
    let rpc = format!("unix:{}", c.dir.path().join("n1/agent.sock").display());
    let cli = |args: &[&str]| cli_cmd(args).env("DROOT_FLEET_RPC", &rpc).output().unwrap();

    let payload = "line one\nline two with spaces\n";
    let sent = ok(&cli(&["event", "contract", payload]));
    let ltime = sent
        .split("ltime ")
        .nth(1)
        .and_then(|s| s.trim().trim_end_matches(')').parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no ltime in {sent:?}"));
    let stdin = wait_for(LONG, "the contract handler's output", || {
        let env = std::fs::read_to_string(out.join("env.txt")).ok()?;
        let stdin = std::fs::read_to_string(out.join("stdin.txt")).ok()?;
        (env.contains("DROOT_FLEET_NODE") && stdin.len() == payload.len()).then_some(stdin)
    });
    assert_eq!(stdin, payload);
    let env_text = std::fs::read_to_string(out.join("env.txt")).unwrap();
    let env: std::collections::BTreeMap<&str, &str> =
        env_text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env.get("DROOT_FLEET_EVENT"), Some(&"user"), "{env_text}");
    assert_eq!(
        env.get("DROOT_FLEET_USER_EVENT"),
        Some(&"contract"),
        "{env_text}"
    );
    assert_eq!(
        env.get("DROOT_FLEET_LTIME"),
        Some(&ltime.to_string().as_str())
    );
    assert_eq!(env.get("DROOT_FLEET_NODE"), Some(&"n1"));
    assert_eq!(env.get("DROOT_FLEET_TAG_ROLE"), Some(&"web"));
    assert_eq!(env.get("DROOT_FLEET_TAG_DC_1"), Some(&"eu"));
    assert_eq!(env.get("DROOT_FLEET_RPC"), Some(&rpc.as_str()));
    assert!(!env.contains_key("DROOT_FLEET_QUERY_NAME"), "{env_text}");
    assert!(
        !env.contains_key("DROOT_FLEET_TAG_STALE"),
        "stale tag leaked: {env_text}"
    );
    // Inherited from the agent: its environment (PATH, HOME, custom variables).
    assert_eq!(env.get("MY_HOST_VAR"), Some(&"kept"));
    assert_eq!(
        env.get("PATH").copied(),
        std::env::var("PATH").ok().as_deref()
    );

    // Two slow handlers for one event: both start before either ends.
    ok(&cli(&["event", "slow"]));
    let read = |f: &str| -> Option<u128> {
        std::fs::read_to_string(out.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (sa, sb, ea, eb) = wait_for(LONG, "both slow handlers to finish", || {
        Some((
            read("start.a")?,
            read("start.b")?,
            read("end.a")?,
            read("end.b")?,
        ))
    });
    assert!(
        sa.max(sb) < ea.min(eb),
        "handlers ran one after the other: starts {sa} {sb}, ends {ea} {eb}"
    );
}

/// Runs `query` through `a`'s CLI; returns (JSON answer, elapsed).
fn query(a: &agent_support::Agent, args: &[&str]) -> (Value, Duration) {
    let mut full = vec!["query"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--format", "json"]);
    let t0 = Instant::now();
    let v = json(&a.cli(&full));
    (v, t0.elapsed())
}

fn answers(v: &Value) -> Vec<(String, String)> {
    let mut a: Vec<_> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["node"].as_str().unwrap().to_owned(),
                x["payload"].as_str().unwrap().trim().to_owned(),
            )
        })
        .collect();
    a.sort();
    a
}

fn missing(v: &Value) -> Vec<String> {
    let mut m: Vec<String> = v["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    m.sort();
    m
}

/// `--tag`/`--node` select the right nodes; answers and missing are right; `--timeout`
/// is honoured; a query nobody handles lists every matching node as missing.
#[test]
fn query_filters_answers_missing_and_timeout() {
    let c = Cluster::new("77.68");
    let handler = "\n[[handler]]\nevent = \"query:who\"\ncommand = [\"sh\", \"-c\", \"echo $DROOT_FLEET_NODE-$DROOT_FLEET_TAG_ROLE\"]\n";
    let a = ops::start_n(&c, 4, |n| {
        let role = if n == 3 { "db" } else { "web" };
        // n4 is a web node without the handler: it never answers `who`.
        let h = if n == 4 { "" } else { handler };
        format!("{h}{}", ops::tags_table(&[("role", role)]))
    });
    wait_for(LONG, "n3 to know every node's tags", || {
        let list = json(&a[2].cli(&["members", "--format", "json"]));
        list.as_array()?
            .iter()
            .all(|m| m["tags"]["role"].is_string())
            .then_some(())
    });

    let (v, took) = query(&a[2], &["who", "--tag", "role=web", "--timeout", "3s"]);
    let web = |n: &str| (n.to_owned(), format!("{n}-web"));
    assert_eq!(answers(&v), vec![web("n1"), web("n2")], "{v}");
    assert_eq!(missing(&v), vec!["n4"], "{v}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "waited {took:?} for a 3s timeout"
    );
    let text = ok(&a[2].cli(&["query", "who", "--tag", "role=web", "--timeout", "1s"]));
    assert!(text.contains("n1: n1-web"), "{text}");
    assert!(text.contains("2 answer(s), 1 missing: n4"), "{text}");

    // All matching nodes answered: no need to wait for the timeout.
    let (v, took) = query(&a[0], &["who", "--tag", "role=db", "--timeout", "20s"]);
    assert_eq!(answers(&v), vec![("n3".to_owned(), "n3-db".to_owned())]);
    assert_eq!(missing(&v), Vec::<String>::new());
    assert!(took < Duration::from_secs(10), "{took:?}");

    let (v, _) = query(&a[0], &["who", "--node", "n[12]", "--timeout", "20s"]);
    assert_eq!(answers(&v), vec![web("n1"), web("n2")], "{v}");
    // Tag regexes are anchored: `we` matches no `web` node.
    let (v, took) = query(&a[0], &["who", "--tag", "role=we", "--timeout", "20s"]);
    assert_eq!(v, json!({"answers": [], "missing": []}));
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A query no node handles: every matching node missing after the timeout.
    let (v, took) = query(
        &a[1],
        &["nobody-handles", "--tag", "role=web", "--timeout", "1500ms"],
    );
    assert_eq!(answers(&v), Vec::<(String, String)>::new());
    assert_eq!(missing(&v), vec!["n1", "n2", "n4"], "{v}");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

/// `members --status`, `--tag KEY=REGEX` and the JSON shape.
#[test]
fn members_filters_and_json_shape() {
    let c = Cluster::new("77.69");
    let mut a = ops::start_n(&c, 3, |n| {
        ops::tags_table(&[("role", ["web", "web", "db"][n as usize - 1])])
    });
    wait_for(
        LONG,
        "n1 to know every node's tags, apps and identity",
        || {
            let list = json(&a[0].cli(&["members", "--format", "json"]));
            list.as_array()?
                .iter()
                .all(|m| {
                    m["tags"]["role"].is_string()
                        && m["apps"].is_array()
                        && m["identity"].is_object()
                })
                .then_some(())
        },
    );
    let list = json(&a[0].cli(&["members", "--format", "json"]));
    for m in list.as_array().unwrap() {
        let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "addr",
                "apps",
                "deploy_format",
                "identity",
                "name",
                "status",
                "tags"
            ],
            "{m}"
        );
        let id = m["identity"].as_object().unwrap();
        assert!(
            id["node_key"].as_str().is_some_and(|k| k.len() == 44),
            "{m}"
        );
        assert!(id["expires"].as_u64().is_some(), "{m}");
    }
    let mut first = list[0].clone();
    first.as_object_mut().unwrap().remove("identity");
    assert_eq!(
        first,
        json!({"name": "n1", "addr": c.addr(1), "status": "alive", "tags": {"role": "web"},
            "deploy_format": 2, "apps": []})
    );
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let web = json(&a[0].cli(&["members", "--tag", "role=web", "--format", "json"]));
    assert_eq!(names(&web), ["n1", "n2"]);
    let any = json(&a[0].cli(&["members", "--tag", "role=w.b|db", "--format", "json"]));
    assert_eq!(names(&any), ["n1", "n2", "n3"]);
    let none = json(&a[0].cli(&["members", "--tag", "role=we", "--format", "json"]));
    assert_eq!(none, json!([]));
    let out = a[0].cli(&["members", "--tag", "role=(", "--format", "json"]);
    assert!(!out.status.success());
    assert!(all_text(&out).contains("--tag regex"), "{}", all_text(&out));

    a[2].kill9();
    // n2's text listing is read below: both must have seen it (each probes on its own).
    wait_for(LONG, "n1 and n2 to see n3 failed", || {
        a[..2]
            .iter()
            .all(|x| x.status_of("n3").as_deref() == Some("failed"))
            .then_some(())
    });
    let failed = json(&a[0].cli(&["members", "--status", "failed", "--format", "json"]));
    assert_eq!(names(&failed), ["n3"]);
    assert_eq!(failed[0]["tags"], json!({"role": "db"}));
    let alive_web = json(&a[0].cli(&[
        "members", "--status", "alive", "--tag", "role=web", "--format", "json",
    ]));
    assert_eq!(names(&alive_web), ["n1", "n2"]);
    let text = ok(&a[1].cli(&["members", "--status", "failed"]));
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("n3") && text.contains("failed") && text.contains("role=db"),
        "{text}"
    );
    assert!(!text.contains("n1 "), "{text}");
}
