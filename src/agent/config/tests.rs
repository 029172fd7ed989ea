//! Unit tests of [`super`]: parsing, precedence of flags over the file, and validation.

use super::*;

#[test]
fn flags_override_file_and_errors_name_fields() {
    let file: FileConfig = toml::from_str(
        r#"
        node = "a1"
        bind = "127.0.0.2:7000"
        tags = { role = "web" }
        push_pull_interval = "2s"
        [[handler]]
        event = "user:deploy"
        command = ["true"]
        "#,
    )
    .unwrap();
    let flags = Overrides {
        node: Some("b2".into()),
        tags: vec!["dc=x".into()],
        data_dir: Some("/tmp/x".into()),
        keyring: Some("/tmp/x/k.json".into()),
        ..Default::default()
    };
    let s = Settings::merge(file.clone(), &flags).unwrap();
    assert_eq!(s.node, "b2");
    assert_eq!(s.advertise, "127.0.0.2:7000".parse().unwrap());
    // The two configured, and the deploy format the agent announces.
    assert_eq!(s.tags.len(), 3);
    assert_eq!(s.tags["dc"], "x");
    assert_eq!(
        s.tags[crate::agent::sansio::deploy_format::TAG],
        crate::deploy::signed::DEPLOY_FORMAT.to_string()
    );
    assert_eq!(s.push_pull_interval, Duration::from_secs(2));
    assert_eq!(s.rpc, RpcAddr::Unix("/tmp/x/agent.sock".into()));
    assert_eq!(
        s.handlers[0].filter,
        EventFilter::User(Some("deploy".into()))
    );

    let bad = Overrides {
        bind: Some("10.1.2.3:7946".into()),
        ..Default::default()
    };
    let err = Settings::merge(file.clone(), &bad).unwrap_err().to_string();
    assert!(err.contains("`keyring`"), "{err}");
    let err = toml::from_str::<FileConfig>("bnid = 1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bnid"), "{err}");
    let mut f2 = file;
    f2.push_pull_interval = Some("fast".into());
    let err = Settings::merge(f2, &flags).unwrap_err().to_string();
    assert!(err.contains("push_pull_interval"), "{err}");
    assert_eq!(s.reconnect_interval, Duration::from_secs(10));
}

/// Regression: a bad `log_level` passed validation, so SIGHUP applied the new tags
/// and handlers and only then failed on the log filter (a half-applied reload).
#[test]
fn bad_log_level_is_refused_by_validation() {
    let file: FileConfig = toml::from_str("log_level = \"=[not a filter\"").unwrap();
    let flags = Overrides {
        data_dir: Some("/tmp/x".into()),
        bind: Some("127.0.0.2:7000".into()),
        keyring: Some("/tmp/x/k.json".into()),
        ..Default::default()
    };
    let err = Settings::merge(file, &flags).unwrap_err().to_string();
    assert!(err.contains("`log_level`"), "{err}");
    let ok: FileConfig = toml::from_str("log_level = \"droot_fleet=debug,info\"").unwrap();
    assert!(Settings::merge(ok, &flags).is_ok());
}

#[test]
fn reconnect_interval_is_positive_and_below_reap_after() {
    let flags = Overrides {
        data_dir: Some("/tmp/x".into()),
        bind: Some("127.0.0.2:7000".into()),
        keyring: Some("/tmp/x/k.json".into()),
        ..Default::default()
    };
    for (text, bad) in [
        ("reconnect_interval = \"0s\"", true),
        ("reconnect_interval = \"2m\"\nreap_after = \"1m\"", true),
        ("reconnect_interval = \"2s\"", false),
    ] {
        let file: FileConfig = toml::from_str(text).unwrap();
        match Settings::merge(file, &flags) {
            Err(e) => assert!(bad && e.to_string().contains("`reconnect_interval`"), "{e}"),
            Ok(s) => assert!(
                !bad && s.reconnect_interval == Duration::from_secs(2),
                "{text}"
            ),
        }
    }
}

/// Regression (issue 10, item 1): an agent on loopback with no keyring accepted any local
/// user's agent as a member. Now only `--dev` (fresh key) or `insecure` start without one.
#[test]
fn no_keyring_is_refused_on_loopback_too() {
    let flags = Overrides {
        data_dir: Some("/tmp/x".into()),
        bind: Some("127.0.0.1:7000".into()),
        ..Default::default()
    };
    let err = Settings::merge(FileConfig::default(), &flags)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`keyring`") && err.contains("--dev") && err.contains("--insecure"),
        "{err}"
    );
    let dev = Overrides {
        dev: true,
        ..flags.clone()
    };
    assert!(Settings::merge(FileConfig::default(), &dev).is_ok());
    let file: FileConfig = toml::from_str("insecure = true").unwrap();
    assert!(Settings::merge(file, &flags).unwrap().insecure);
}

/// Tags travel in one gossip packet (issue 10, item 7): more than fits is refused at
/// load, naming the field; a `[[handler]]` may not pose as an in-process consumer.
#[test]
fn oversized_tags_and_consumer_commands_are_refused() {
    let flags = Overrides {
        dev: true,
        data_dir: Some("/tmp/x".into()),
        tags: vec![format!("big={}", "x".repeat(2000))],
        ..Default::default()
    };
    let err = Settings::merge(FileConfig::default(), &flags)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`tags`") && err.contains("bytes"), "{err}");
    // Tags that fit alone but not with the agent's own: the message says what it takes.
    let limit = crate::gossip::supersede::MAX_TAGS_ENCODED;
    let edge = |len: usize| Overrides {
        tags: vec![format!("big={}", "x".repeat(len))],
        ..flags.clone()
    };
    let fits = (1..limit)
        .rev()
        .find(|len| Settings::merge(FileConfig::default(), &edge(*len)).is_ok())
        .expect("some size fits");
    let err = Settings::merge(FileConfig::default(), &edge(fits + 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("of them the agent's own \"@deploy-format\" tag"),
        "{err}"
    );
    // The agent's own tag keys are not the operator's.
    let reserved = Overrides {
        tags: vec!["@deploy-format=9".into()],
        ..flags
    };
    let err = Settings::merge(FileConfig::default(), &reserved)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"@deploy-format\"") && err.contains("rename"),
        "{err}"
    );
    let file: FileConfig =
        toml::from_str("[[handler]]\nevent = \"user\"\ncommand = [\"@consumer:debug\"]\n").unwrap();
    let flags = Overrides {
        dev: true,
        data_dir: Some("/tmp/x".into()),
        ..Default::default()
    };
    let err = Settings::merge(file, &flags).unwrap_err().to_string();
    assert!(
        err.contains("handler[0].command") && err.contains('@'),
        "{err}"
    );
}

/// The agent carries the deploy pipeline's keys as written and never reads them (the
/// CLI parses them): even ones the deploy config would refuse pass here unchanged.
#[test]
fn deploy_tables_are_carried_untouched() {
    let text = "trusted_signing_keys = [\"k\"]\n[deploy]\nmax_age = \"soon\"\n\
                [apps.web]\nroot = \"/x\"\n";
    let file: FileConfig = toml::from_str(text).unwrap();
    let flags = Overrides {
        dev: true,
        data_dir: Some("/tmp/x".into()),
        ..Default::default()
    };
    let s = Settings::merge(file, &flags).unwrap();
    let raw: toml::Table = toml::from_str(text).unwrap();
    assert_eq!(s.deploy.trusted_signing_keys, ["k"]);
    assert_eq!(s.deploy.deploy.as_ref(), raw.get("deploy"));
    assert_eq!(s.deploy.apps.as_ref(), raw.get("apps"));
}

#[test]
fn metrics_addr_is_off_by_default_and_wants_ip_and_port() {
    let flags = Overrides {
        bind: Some("127.0.0.2:7000".into()),
        data_dir: Some("/tmp/x".into()),
        keyring: Some("/tmp/x/k.json".into()),
        ..Default::default()
    };
    let s = Settings::merge(FileConfig::default(), &flags).unwrap();
    assert_eq!(s.metrics_addr, None);
    let file: FileConfig = toml::from_str("metrics_addr = \"127.0.0.1:9946\"").unwrap();
    let s = Settings::merge(file, &flags).unwrap();
    assert_eq!(s.metrics_addr, Some("127.0.0.1:9946".parse().unwrap()));
    for bad in ["127.0.0.1", "localhost:9946", "tcp:127.0.0.1:9946"] {
        let file: FileConfig = toml::from_str(&format!("metrics_addr = \"{bad}\"")).unwrap();
        let err = Settings::merge(file, &flags).unwrap_err().to_string();
        assert!(err.contains("metrics_addr"), "{bad}: {err}");
    }
}
