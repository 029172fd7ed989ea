use super::*;
use crate::artifact::guard::DEFAULT_MAX_RATIO;

const WEB: &str = r#"
node = "ignored"
[apps.web]
artifact = "s3://bucket/{app}/{version}.tar.gz"
root = "/var/containers/web"
command = ["httpd", "-f", "-p", "8080"]
user = "app"
bind = ["/srv/data:/data"]
env = { MODE = "prod" }
stop_signal = "INT"
stop_timeout = "5s"
restart = "on-failure"
backoff = { initial = "200ms", max = "10s" }
leave_running = true
[apps.web.health]
http = "http://127.0.0.1:8080/health"
deadline = "20s"
interval = "500ms"
"#;

#[test]
fn parses_a_full_app() {
    let apps = parse_apps(WEB).unwrap();
    let web = &apps["web"];
    assert_eq!(
        web.artifact_url("v42"),
        "s3://bucket/web/v42.tar.gz".to_string()
    );
    assert_eq!(web.keep, 5);
    assert_eq!(web.stop_signal, Signal::SIGINT);
    assert_eq!(web.stop_timeout, Duration::from_secs(5));
    assert_eq!(web.restart, RestartPolicy::OnFailure);
    assert_eq!(web.backoff.initial, Duration::from_millis(200));
    assert_eq!(web.backoff.reset_after, Duration::from_secs(60));
    assert!(web.leave_running);
    let h = web.health.as_ref().unwrap();
    assert_eq!(h.interval, Duration::from_millis(500));
    match &h.probe {
        Probe::Http(t) => {
            assert_eq!(t.authority, "127.0.0.1:8080");
            assert_eq!(t.path, "/health");
        }
        p => panic!("{p:?}"),
    }
    let args = web
        .jail
        .launch(Path::new("/r"), &web.jail.command, true)
        .to_args();
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
    assert_eq!(
        args.join(" "),
        "run --root /r --user app --bind /srv/data:/data --env MODE=prod -- httpd -f -p 8080"
    );
}

fn with(extra: &str) -> String {
    format!(
        "[apps.a]\nartifact = \"file:///x/{{version}}.tar\"\nroot = \"/r\"\ncommand = [\"true\"]\n{extra}"
    )
}

fn field_error(extra: &str) -> (String, String) {
    match parse_apps(&with(extra)).unwrap_err() {
        AppConfigError::Field { app, field, .. } => (app, field.to_string()),
        e => panic!("{extra}: {e}"),
    }
}

#[test]
fn errors_name_the_app_and_the_field() {
    for (extra, field) in [
        ("stop_timeout = \"soon\"", "stop_timeout"),
        ("stop_signal = \"WINCH\"", "stop_signal"),
        ("stop_signal = \"NOPE\"", "stop_signal"),
        ("bind = [\"rel\"]", "command"),
        ("keep = 1", "keep"),
        ("backoff = { initial = \"0s\" }", "backoff"),
        ("[apps.a.health]\ntcp = \"localhost\"", "health.tcp"),
        ("[apps.a.health]\nhttp = \"https://x:1/\"", "health.http"),
        (
            "[apps.a.health]\ntcp = \"127.0.0.1:1\"\nhttp = \"http://a:1/\"",
            "health",
        ),
        ("[apps.a.health]\nexec = []", "health.exec"),
        ("deploy_timeout = \"never\"", "deploy_timeout"),
        ("deploy_timeout = \"1s\"", "deploy_timeout"),
        (
            "deploy_timeout = \"20s\"\n[apps.a.health]\ntcp = \"127.0.0.1:1\"",
            "deploy_timeout",
        ),
        ("max_bytes = \"8GB\"", "max_bytes"),
        ("max_bytes = 0", "max_bytes"),
        ("userns_base = 131072", "userns_base"),
        ("userns = true\nuserns_base = 1000", "userns_base"),
        (
            "[apps.a.health]\ntcp = \"127.0.0.1:1\"\ninterval = \"x\"",
            "health.interval",
        ),
    ] {
        assert_eq!(field_error(extra), ("a".into(), field.into()), "{extra}");
    }
    let e = parse_apps(&with("")).unwrap();
    assert_eq!(e["a"].restart, RestartPolicy::Always);
    assert_eq!(e["a"].stop_signal, Signal::SIGTERM);
    assert_eq!(e["a"].deploy_timeout, DEFAULT_DEPLOY_TIMEOUT);
    assert_eq!(e["a"].max_bytes, 8 << 30);
    assert_eq!(e["a"].max_ratio, DEFAULT_MAX_RATIO);
    let e = parse_apps(&with(
        "deploy_timeout = \"2m\"\nmax_bytes = \"512MiB\"\nmax_ratio = 0",
    ))
    .unwrap();
    assert_eq!(e["a"].deploy_timeout, Duration::from_secs(120));
    assert_eq!((e["a"].max_bytes, e["a"].max_ratio), (512 << 20, 0));
    let e = parse_apps(&with("max_bytes = 1000")).unwrap();
    assert_eq!(e["a"].max_bytes, 1000);
    assert_eq!(
        e["a"].userns,
        Userns::Off,
        "an absent key keeps today's behaviour"
    );
}

#[test]
fn userns_passes_its_range_to_run() {
    let apps = parse_apps(&with("userns = true\nuserns_base = 131072")).unwrap();
    let r = IdRange::new(131072).unwrap();
    assert_eq!(apps["a"].userns, Userns::On(Some(r)));
    let auto = parse_apps(&with("userns = true")).unwrap();
    assert_eq!(auto["a"].userns, Userns::On(None));
    let mut jail = apps["a"].jail.clone();
    jail.userns = Some(r);
    let args = jail.launch(Path::new("/r"), &["x".into()], false).to_args();
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
    assert_eq!(
        args.join(" "),
        "run --root /r --userns --userns-base 131072 -- x"
    );
}

#[test]
fn bad_templates_and_names_and_types() {
    let t = |a: &str| {
        parse_apps(&format!(
            "[apps.a]\nartifact = \"{a}\"\nroot = \"/r\"\ncommand = [\"true\"]\n"
        ))
    };
    assert!(t("ftp://x/{version}").is_err());
    assert!(t("s3://b/{app}.tar").is_err());
    assert!(t("s3://b/{ver}/{version}").is_err());
    assert!(t("s3://b/{app}/{version}").is_ok());
    let bad_name = with("").replace("apps.a", "apps.\"../x\"");
    assert!(matches!(
        parse_apps(&bad_name),
        Err(AppConfigError::Field { field: "name", .. })
    ));
    let unknown = parse_apps(&with("restart = \"sometimes\"")).unwrap_err();
    assert!(unknown.to_string().contains("sometimes"), "{unknown}");
    let typo = parse_apps(&with("comand = [\"x\"]")).unwrap_err();
    assert!(typo.to_string().contains("comand"), "{typo}");
}

#[test]
fn the_commented_example_in_config_parses() {
    let example = include_str!("../../../config/agent.toml");
    let start = example.find("# [apps.web]").expect("example block");
    let text: String = example[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let apps = parse_apps(&text).unwrap();
    assert!(apps["web"].ready_by_notify() && apps["web"].overlap);
    assert_eq!(apps["web"].listen.len(), 1);
    assert_eq!(apps["web"].hooks.0.len(), 1);
    assert_eq!(
        apps["web"].jail.env,
        vec![("MODE".into(), "production".into())]
    );
}

/// `listen` turns the overlap on; a check the old instance would answer while the two
/// overlap is refused; notify and exec checks are not.
#[test]
fn listen_overlap_and_the_checks_valid_while_overlapping() {
    let app = |extra: &str| parse_apps(&with(extra)).map(|mut a| a.remove("a").unwrap());
    let a = app("listen = [\"tcp:127.0.0.1:8080\", \"unix:/run/a.sock\"]").unwrap();
    assert!(a.overlap && a.listen.len() == 2);
    assert!(!app("").unwrap().overlap);
    let b = app("listen = [\"tcp:0.0.0.0:80\"]\noverlap = false").unwrap();
    assert!(!b.overlap);
    assert!(
        app("overlap = true\n[apps.a.health]\nnotify = true")
            .unwrap()
            .ready_by_notify()
    );
    for (extra, field) in [
        ("listen = [\"8080\"]", "listen"),
        ("listen = [\"tcp:1.2.3.4:5\", \"tcp:1.2.3.4:5\"]", "listen"),
        (
            "listen = [\"tcp:0.0.0.0:8080\"]\n[apps.a.health]\ntcp = \"127.0.0.1:8080\"",
            "health",
        ),
        (
            "listen = [\"tcp:127.0.0.1:8080\"]\n[apps.a.health]\nhttp = \"http://127.0.0.1:8080/up\"",
            "health",
        ),
        (
            "overlap = true\n[apps.a.health]\ntcp = \"127.0.0.1:9000\"",
            "health",
        ),
        (
            "[apps.a.health]\nnotify = true\ntcp = \"127.0.0.1:1\"",
            "health",
        ),
    ] {
        assert_eq!(field_error(extra), ("a".into(), field.into()), "{extra}");
    }
    // An address only the new instance serves is fine.
    let ok = "listen = [\"tcp:0.0.0.0:8080\"]\n[apps.a.health]\ntcp = \"127.0.0.1:9000\"";
    assert!(app(ok).is_ok());
}

#[test]
fn hooks_parse_with_their_defaults_and_errors_name_the_hook() {
    let text = "[apps.a.hooks.before_start]\ncommand = [\"migrate\"]\n\
                [apps.a.hooks.after_stop]\ncommand = [\"/bin/notify\"]\nwhere = \"host\"\ntimeout = \"3s\"\n";
    let a = parse_apps(&with(text)).unwrap().remove("a").unwrap();
    let before = &a.hooks.0[&crate::deploy::activation::HookPoint::BeforeStart];
    assert_eq!(before.place, crate::deploy::hooks::HookPlace::Jail);
    assert_eq!(before.timeout, crate::deploy::hooks::DEFAULT_TIMEOUT);
    let after = &a.hooks.0[&crate::deploy::activation::HookPoint::AfterStop];
    assert_eq!(
        (after.place, after.timeout),
        (
            crate::deploy::hooks::HookPlace::Host,
            Duration::from_secs(3)
        )
    );
    for (extra, field) in [
        (
            "[apps.a.hooks.before_stop]\ncommand = []",
            "hooks.before_stop",
        ),
        (
            "[apps.a.hooks.on_rollback]\ncommand = [\"x\"]\nwhere = \"cloud\"",
            "hooks.on_rollback",
        ),
        (
            "[apps.a.hooks.after_start]\ncommand = [\"x\"]\ntimeout = \"0s\"",
            "hooks.after_start",
        ),
    ] {
        assert_eq!(field_error(extra), ("a".into(), field.into()), "{extra}");
    }
    assert!(parse_apps(&with("[apps.a.hooks.before_deploy]\ncommand = [\"x\"]")).is_err());
}
