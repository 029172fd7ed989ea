//! Turning `event deploy` / `rollback` arguments into a [`DeployEvent`], checked before
//! anything is signed or sent.
//!
//! Why here and pure: every mistake an operator can make on the command line (a regex that
//! does not compile, a bad digest, an app the config does not know, an event too large for
//! gossip) must be a clear error on the operator's machine, not a refusal logged on each
//! node. Target regexes are checked with the same compiler and limits the agents use for
//! query filters (anchored to the whole value).

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;

use crate::deploy::app::{AppConfig, AppConfigError};
use crate::deploy::fetch::{self, Source};
use crate::deploy::signed::{
    DeployEvent, EncodeError, MaxParallel, MinHealthy, Options, Rollout, SignedEvent, Targets,
};
use crate::gossip::query::{Filter, FilterSet, QueryError};
use crate::release::InvalidVersion;

/// A deploy request as the command line gives it (strings, unchecked).
#[derive(Debug, Clone, Default)]
pub struct EventSpec {
    pub app: String,
    pub version: String,
    /// `--sha256` (64 hex digits).
    pub sha256: Option<String>,
    /// `--node REGEX` (a node matches if any matches).
    pub nodes: Vec<String>,
    /// `--tag KEY=REGEX` (a node must match all).
    pub tags: Vec<String>,
    /// `--max-parallel N|P%`.
    pub max_parallel: Option<String>,
    /// `--canary N`.
    pub canary: u32,
    /// `--min-healthy N|P%`.
    pub min_healthy: Option<String>,
    /// `--progress-deadline DUR`.
    pub progress_deadline: Option<String>,
    /// `--ignore-stop-hook-failures`.
    pub ignore_stop_hook_failures: bool,
    /// The sha256 of the artifact's chunk index, when `publish` wrote one beside it.
    pub chunks: Option<[u8; 32]>,
}

/// Why no deploy event was built. Nothing was signed or sent.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("app name {0:?}: use letters, digits, '-', '_' and '.', not starting with '.'")]
    BadApp(String),
    #[error("version: {0}")]
    BadVersion(#[from] InvalidVersion),
    #[error("--url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--sha256: {0}")]
    BadSha256(String),
    #[error("--node {pattern:?} is not a valid regex: {reason}")]
    BadNodeRegex { pattern: String, reason: String },
    #[error("--tag {text:?}: {reason}")]
    BadTag { text: String, reason: String },
    #[error("--max-parallel: {0}")]
    BadMaxParallel(String),
    #[error("--min-healthy: {0}")]
    BadMinHealthy(String),
    #[error("--progress-deadline: {0}")]
    BadProgressDeadline(String),
    #[error("--config {path}: {source}")]
    Config {
        path: String,
        source: AppConfigError,
    },
    #[error(
        "--config {path} has no [apps.{app}]; pass --url, or drop --config to let each node \
         use its own artifact template"
    )]
    NoSuchApp { path: String, app: String },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Checks an app name with the rules of `[apps.NAME]`.
pub fn check_app(app: &str) -> Result<(), BuildError> {
    let ok = !app.is_empty()
        && app.len() <= 128
        && !app.starts_with('.')
        && app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BuildError::BadApp(app.to_string()))
    }
}

/// The artifact URL to put in the event: `--url`, else the app's template from a config
/// file (`config` = its path for messages and its text), else empty (each node uses its
/// own `[apps.APP].artifact`).
pub fn resolve_url(
    app: &str,
    version: &str,
    url: Option<&str>,
    config: Option<(&str, &str)>,
) -> Result<String, BuildError> {
    if let Some(url) = url {
        Source::parse(url).map_err(|e| BuildError::BadUrl {
            url: url.to_string(),
            reason: match e {
                fetch::FetchError::BadUrl { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        return Ok(url.to_string());
    }
    let Some((path, text)) = config else {
        return Ok(String::new());
    };
    let apps: BTreeMap<String, AppConfig> =
        crate::deploy::app::parse_apps(text).map_err(|source| BuildError::Config {
            path: path.to_string(),
            source,
        })?;
    let cfg = apps.get(app).ok_or_else(|| BuildError::NoSuchApp {
        path: path.to_string(),
        app: app.to_string(),
    })?;
    Ok(cfg.artifact_url(version))
}

fn check_regex(pattern: &str) -> Result<(), String> {
    match FilterSet::new(&[Filter::NodeName(pattern.to_string())]) {
        Ok(_) => Ok(()),
        // The regex crate's message spans lines and shows the anchored form: keep its gist.
        Err(QueryError::InvalidFilter { reason, .. }) => Err(reason
            .lines()
            .last()
            .map(|l| l.trim().trim_start_matches("error: ").to_string())
            .unwrap_or(reason)),
        Err(other) => Err(other.to_string()),
    }
}

/// Parses and checks `--node` / `--tag` into event targets.
pub fn targets(nodes: &[String], tags: &[String]) -> Result<Targets, BuildError> {
    for p in nodes {
        check_regex(p).map_err(|reason| BuildError::BadNodeRegex {
            pattern: p.clone(),
            reason,
        })?;
    }
    let mut parsed = Vec::with_capacity(tags.len());
    for t in tags {
        let bad = |reason: String| BuildError::BadTag {
            text: t.clone(),
            reason,
        };
        let (k, v) = crate::agent::config::parse_tag(t).map_err(bad)?;
        check_regex(&v).map_err(|r| bad(format!("{v:?} is not a valid regex: {r}")))?;
        parsed.push((k, v));
    }
    Ok(Targets {
        nodes: nodes.to_vec(),
        tags: parsed,
    })
}

/// Parses `--max-parallel` and `--canary`.
pub fn rollout(max_parallel: Option<&str>, canary: u32) -> Result<Rollout, BuildError> {
    let max_parallel = max_parallel
        .map(str::parse::<MaxParallel>)
        .transpose()
        .map_err(BuildError::BadMaxParallel)?;
    Ok(Rollout {
        max_parallel,
        canary,
    })
}

/// Parses `--min-healthy`, `--progress-deadline` and `--ignore-stop-hook-failures`.
pub fn options(spec: &EventSpec) -> Result<Options, BuildError> {
    let min_healthy = (spec.min_healthy.as_deref())
        .map(str::parse::<MinHealthy>)
        .transpose()
        .map_err(BuildError::BadMinHealthy)?;
    let progress_deadline_secs = match spec.progress_deadline.as_deref() {
        None => None,
        Some(d) => {
            let d = crate::durations::parse_duration(d).map_err(BuildError::BadProgressDeadline)?;
            let secs = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
            if secs == 0 {
                return Err(BuildError::BadProgressDeadline(
                    "must be at least 1s".into(),
                ));
            }
            Some(secs)
        }
    };
    Ok(Options {
        ignore_stop_hook_failures: spec.ignore_stop_hook_failures,
        min_healthy,
        progress_deadline_secs,
    })
}

/// Builds the unsigned event: `url` already resolved, `id` random, `issued_at_ms` now.
pub fn build(
    spec: &EventSpec,
    url: String,
    id: [u8; 16],
    issued_at_ms: u64,
) -> Result<DeployEvent, BuildError> {
    check_app(&spec.app)?;
    crate::release::layout::validate_version(&spec.version)?;
    let sha256 = spec
        .sha256
        .as_deref()
        .map(fetch::parse_sha256)
        .transpose()
        .map_err(BuildError::BadSha256)?;
    Ok(DeployEvent {
        app: spec.app.clone(),
        version: spec.version.clone(),
        url,
        sha256,
        targets: targets(&spec.nodes, &spec.tags)?,
        rollout: rollout(spec.max_parallel.as_deref(), spec.canary)?,
        issued_at_ms,
        id,
        options: options(spec)?,
        chunks: spec.chunks,
    })
}

/// Signs the event and returns its wire bytes (refused when too large for gossip).
pub fn sign(event: DeployEvent, key: &SigningKey) -> Result<(SignedEvent, Vec<u8>), BuildError> {
    let signed = SignedEvent::sign(event, key)?;
    let bytes = signed.encode()?;
    Ok((signed, bytes))
}

/// The members an event of `app` for `targets` may reach that may refuse an event of
/// `format` (members that left aside), by name: those that announce an older format, and
/// those listed with no tags at all (their tags, the format among them, may not have
/// arrived yet; only their name is matched). A member whose app list has not arrived may
/// run `app`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BelowFormat {
    pub older: Vec<String>,
    pub not_known: Vec<String>,
}

impl BelowFormat {
    pub fn is_empty(&self) -> bool {
        self.older.is_empty() && self.not_known.is_empty()
    }
}

/// See [`BelowFormat`].
pub fn below_format(
    app: &str,
    targets: &Targets,
    members: &[crate::wire::Member],
    format: u16,
) -> BelowFormat {
    use crate::deploy::controller::targets::Matcher;
    let matcher = Matcher::new(targets);
    let by_name = Matcher::new(&Targets {
        nodes: targets.nodes.clone(),
        tags: Vec::new(),
    });
    let may_reach = |m: &crate::wire::Member| {
        let runs_app = (m.apps.as_ref()).is_none_or(|apps| apps.iter().any(|a| a == app));
        runs_app
            && (matcher.matches(&m.name, &m.tags)
                || (m.known_format().is_none() && by_name.matches(&m.name, &m.tags)))
    };
    let mut below = BelowFormat::default();
    let listed = members.iter();
    for m in listed.filter(|m| m.status != "left" && m.deploy_format < format && may_reach(m)) {
        match m.known_format() {
            None => below.not_known.push(m.name.clone()),
            Some(_) => below.older.push(m.name.clone()),
        }
    }
    below
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::signed::MAX_SIGNED_EVENT_LEN;

    fn spec() -> EventSpec {
        EventSpec {
            app: "web".into(),
            version: "v42".into(),
            ..Default::default()
        }
    }

    fn s(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn targets_below_a_format_are_named() {
        let member = |name: &str, status: &str, role: &str, deploy_format| crate::wire::Member {
            name: name.into(),
            addr: "127.0.0.1:7946".into(),
            status: status.into(),
            tags: [("role".to_owned(), role.to_owned())].into(),
            deploy_format,
            apps: None,
            identity: None,
        };
        let mut untagged = member("oldfresh", "alive", "", 1);
        untagged.tags.clear();
        let members = [
            untagged,
            member("new1", "alive", "web", 2),
            member("old1", "alive", "web", 1),
            member("old2", "failed", "web", 1),
            member("gone", "left", "web", 1),
            member("olddb", "suspect", "db", 1),
        ];
        let all = targets(&[], &[]).unwrap();
        let below = |app, targets: &Targets, members: &[crate::wire::Member]| {
            let b = below_format(app, targets, members, 2);
            (b.older, b.not_known)
        };
        assert_eq!(
            below("web", &all, &members),
            (s(&["old1", "old2", "olddb"]), s(&["oldfresh"]))
        );
        assert!(below_format("web", &all, &members, 1).is_empty());
        // Tags not known yet: it may match `--tag` once they arrive.
        let web = targets(&[], &["role=web".into()]).unwrap();
        assert_eq!(
            below("web", &web, &members),
            (s(&["old1", "old2"]), s(&["oldfresh"]))
        );
        let named = targets(&["new.*".into()], &[]).unwrap();
        assert!(below_format("web", &named, &members, 2).is_empty());
        // A member that announced its apps is in the way only of an event for one of them.
        let mut members = members;
        members[2].apps = Some(vec!["api".into()]);
        members[3].apps = Some(vec!["api".into(), "web".into()]);
        assert_eq!(below("web", &all, &members).0, ["old2", "olddb"]);
        assert_eq!(below("api", &all, &members).0, ["old1", "old2", "olddb"]);
    }

    #[test]
    fn builds_a_full_event() {
        let s = EventSpec {
            sha256: Some("ab".repeat(32)),
            nodes: vec!["web[0-9]+".into()],
            tags: vec!["role=front|edge".into()],
            max_parallel: Some("25%".into()),
            canary: 1,
            ..spec()
        };
        let ev = build(&s, "s3://b/web/v42.tar.gz".into(), [7; 16], 1000).unwrap();
        assert_eq!(ev.app, "web");
        assert_eq!(ev.version, "v42");
        assert_eq!(ev.sha256, Some([0xab; 32]));
        assert_eq!(ev.targets.nodes, vec!["web[0-9]+".to_string()]);
        assert_eq!(
            ev.targets.tags,
            vec![("role".to_string(), "front|edge".to_string())]
        );
        assert_eq!(ev.rollout.max_parallel, Some(MaxParallel::Percent(25)));
        assert_eq!(ev.rollout.canary, 1);
        assert_eq!((ev.issued_at_ms, ev.id), (1000, [7; 16]));
    }

    #[test]
    fn bad_inputs_are_named() {
        let cases: Vec<(EventSpec, &str)> = vec![
            (
                EventSpec {
                    nodes: vec!["web[".into()],
                    ..spec()
                },
                "--node \"web[\" is not a valid regex",
            ),
            (
                EventSpec {
                    tags: vec!["role".into()],
                    ..spec()
                },
                "--tag \"role\"",
            ),
            (
                EventSpec {
                    tags: vec!["role=(a".into()],
                    ..spec()
                },
                "is not a valid regex",
            ),
            (
                EventSpec {
                    sha256: Some("xyz".into()),
                    ..spec()
                },
                "--sha256",
            ),
            (
                EventSpec {
                    max_parallel: Some("0".into()),
                    ..spec()
                },
                "--max-parallel",
            ),
            (
                EventSpec {
                    version: "../x".into(),
                    ..spec()
                },
                "invalid release name",
            ),
            (
                EventSpec {
                    app: "../etc".into(),
                    ..spec()
                },
                "app name",
            ),
        ];
        for (s, want) in cases {
            let err = build(&s, String::new(), [0; 16], 0)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn overlong_regex_is_refused() {
        let s = EventSpec {
            nodes: vec!["a".repeat(300)],
            ..spec()
        };
        let err = build(&s, String::new(), [0; 16], 0).unwrap_err();
        assert!(matches!(err, BuildError::BadNodeRegex { .. }), "{err}");
    }

    const CONFIG: &str = "[apps.web]\nartifact = \"s3://bkt/{app}/{version}.tar.gz\"\n\
                          root = \"/var/containers/web\"\ncommand = [\"/bin/httpd\"]\n";

    #[test]
    fn url_resolution_order() {
        let cfg = Some(("agent.toml", CONFIG));
        assert_eq!(
            resolve_url("web", "v1", Some("https://h/x.tar"), cfg).unwrap(),
            "https://h/x.tar"
        );
        assert_eq!(
            resolve_url("web", "v1", None, cfg).unwrap(),
            "s3://bkt/web/v1.tar.gz"
        );
        assert_eq!(resolve_url("web", "v1", None, None).unwrap(), "");
    }

    #[test]
    fn url_errors() {
        let err = resolve_url("web", "v1", Some("ftp://x"), None).unwrap_err();
        assert!(err.to_string().starts_with("--url \"ftp://x\""), "{err}");
        let err = resolve_url("api", "v1", None, Some(("agent.toml", CONFIG))).unwrap_err();
        assert!(
            err.to_string().contains("agent.toml has no [apps.api]"),
            "{err}"
        );
        let err = resolve_url("web", "v1", None, Some(("bad.toml", "apps = 3"))).unwrap_err();
        assert!(err.to_string().starts_with("--config bad.toml:"), "{err}");
    }

    #[test]
    fn signing_checks_the_size() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let ev = build(&spec(), "https://h/x.tar".into(), [1; 16], 5).unwrap();
        let (signed, bytes) = sign(ev.clone(), &key).unwrap();
        assert_eq!(signed.event, ev);
        assert!(bytes.len() <= MAX_SIGNED_EVENT_LEN);
        let huge = format!("https://h/{}", "x".repeat(MAX_SIGNED_EVENT_LEN));
        let ev = build(&spec(), huge, [1; 16], 5).unwrap();
        let err = sign(ev, &key).unwrap_err().to_string();
        assert!(
            err.contains(&format!("the {MAX_SIGNED_EVENT_LEN} that fit")),
            "{err}"
        );
    }
}
