//! The deploy pipeline's part of the agent config: `[apps.NAME]`, `trusted_signing_keys`
//! and the `[deploy]` table (event age limits, the S3 endpoint, the `file://` roots).
//!
//! The agent's config file refuses unknown keys but does not read these three: it carries
//! them as raw TOML ([`DeployTables`]), and the CLI hands them to [`DeployConfig::parse`]
//! at start (and again on SIGHUP, as a check only), so every error names its field
//! (`deploy.max_age: ...`) and the agent never depends on the deploy pipeline.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use super::app::{AppConfig, AppConfigError, parse_apps};
use super::fetch::{FetchOptions, FileRoots};
use super::signed::public_key_from_text;
use crate::agent::config::DeployTables;

/// Default oldest accepted deploy event (its issued-at), on the event path.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Default clock skew tolerated for an event issued "in the future".
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

/// A bad deploy setting; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum DeployConfigError {
    #[error(transparent)]
    App(#[from] AppConfigError),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> DeployConfigError {
    DeployConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The validated deploy settings.
#[derive(Debug, Clone, Default)]
pub struct DeployConfig {
    pub apps: BTreeMap<String, AppConfig>,
    /// Public keys whose signed deploy events this agent acts on.
    pub trusted: Vec<VerifyingKey>,
    /// Events issued longer ago than this are refused as stale (on the event path).
    pub max_age: Duration,
    /// Events issued further ahead than this are refused.
    pub max_skew: Duration,
    pub fetch: FetchOptions,
}

/// The `[deploy]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    max_age: Option<String>,
    max_skew: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_path_style: Option<bool>,
    #[serde(default)]
    file_roots: Vec<String>,
}

fn duration(
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, DeployConfigError> {
    let Some(t) = text else {
        return Ok(default);
    };
    let d = crate::durations::parse_duration(t).map_err(|e| invalid(field, e))?;
    if d.is_zero() {
        return Err(invalid(field, "must be greater than zero"));
    }
    Ok(d)
}

/// `[deploy] file_roots`: absolute directories, no `.` or `..`, not `/` itself.
fn file_roots(raw: &[String]) -> Result<Vec<PathBuf>, DeployConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("deploy.file_roots[{i}]");
            let p = Path::new(r);
            if !p.is_absolute() {
                return Err(invalid(field, format!("{r:?} is not an absolute path")));
            }
            if p.components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
                || r.split('/').any(|c| c == "." || c == "..")
            {
                return Err(invalid(field, format!("{r:?} has a '.' or '..' component")));
            }
            if p.parent().is_none() {
                return Err(invalid(
                    field,
                    "/ would let a signed URL read any host file; name the directory that holds \
                     the artifacts",
                ));
            }
            Ok(p.components().collect())
        })
        .collect()
}

impl DeployConfig {
    /// Validates the raw `apps`, `trusted_signing_keys` and `deploy` values of the file.
    pub fn parse(tables: &DeployTables) -> Result<Self, DeployConfigError> {
        let apps = match &tables.apps {
            Some(v) => {
                let mut doc = toml::Table::new();
                doc.insert("apps".into(), v.clone());
                parse_apps(&toml::to_string(&doc).map_err(|e| invalid("apps", e.to_string()))?)?
            }
            None => BTreeMap::new(),
        };
        let trusted = tables
            .trusted_signing_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                public_key_from_text(k).map_err(|e| {
                    invalid(
                        format!("trusted_signing_keys[{i}]"),
                        format!("{e} (the public key `droot-fleet keygen --signing` prints)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let raw: RawDeploy = match &tables.deploy {
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| invalid("deploy", e.message().to_owned()))?,
            None => RawDeploy::default(),
        };
        Ok(Self {
            apps,
            trusted,
            max_age: duration("deploy.max_age", raw.max_age.as_deref(), DEFAULT_MAX_AGE)?,
            max_skew: duration("deploy.max_skew", raw.max_skew.as_deref(), DEFAULT_MAX_SKEW)?,
            fetch: FetchOptions {
                s3_endpoint: raw.s3_endpoint,
                s3_region: raw.s3_region,
                s3_path_style: raw.s3_path_style,
                file_roots: FileRoots::Only(file_roots(&raw.file_roots)?),
                peers: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeployConfig, DeployConfigError> {
        let t: toml::Table = toml::from_str(text).unwrap();
        let keys: Vec<String> = t
            .get("trusted_signing_keys")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        DeployConfig::parse(&DeployTables {
            apps: t.get("apps").cloned(),
            trusted_signing_keys: keys,
            deploy: t.get("deploy").cloned(),
        })
    }

    #[test]
    fn parses_apps_keys_and_limits() {
        let key = super::super::signed::generate_signing_key();
        let public = super::super::signed::public_key_text(&key.verifying_key());
        let c = parse(&format!(
            r#"
            trusted_signing_keys = ["{public}"]
            [deploy]
            max_age = "10m"
            s3_endpoint = "http://127.0.0.1:3900"
            [apps.web]
            artifact = "s3://b/{{app}}/{{version}}.tar.gz"
            root = "/var/containers/web"
            command = ["httpd", "-f"]
            "#
        ))
        .unwrap();
        assert_eq!(c.apps["web"].artifact_url("v1"), "s3://b/web/v1.tar.gz");
        assert_eq!(c.trusted, vec![key.verifying_key()]);
        assert_eq!(c.max_age, Duration::from_secs(600));
        assert_eq!(c.max_skew, DEFAULT_MAX_SKEW);
        assert_eq!(
            c.fetch.s3_endpoint.as_deref(),
            Some("http://127.0.0.1:3900")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(r#"trusted_signing_keys = ["nope"]"#).unwrap_err();
        assert!(e.to_string().contains("trusted_signing_keys[0]"), "{e}");
        let e = parse("[deploy]\nmax_age = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("deploy.max_age"), "{e}");
        let e = parse("[deploy]\nmaxage = \"1h\"").unwrap_err();
        assert!(e.to_string().contains("maxage"), "{e}");
        let e = parse("[apps.web]\nroot = \"/x\"").unwrap_err();
        assert!(e.to_string().contains("web"), "{e}");
    }

    #[test]
    fn file_roots_are_none_by_default_and_checked() {
        assert_eq!(parse("").unwrap().fetch.file_roots, FileRoots::Only(vec![]));
        let c = parse("[deploy]\nfile_roots = [\"/srv/artifacts/\", \"/opt/a\"]").unwrap();
        assert_eq!(
            c.fetch.file_roots,
            FileRoots::Only(vec!["/srv/artifacts".into(), "/opt/a".into()])
        );
        for bad in ["rel/dir", "/", "/srv/../etc", "/srv/./a"] {
            let e = parse(&format!("[deploy]\nfile_roots = [\"{bad}\"]")).unwrap_err();
            assert!(e.to_string().contains("deploy.file_roots[0]"), "{bad}: {e}");
        }
    }
}
