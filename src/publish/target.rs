//! Where `publish` writes: the URL (after its template is filled in) and the sink for it.

use std::path::PathBuf;

use super::{PublishError, PublishOptions, Sink};

/// A publish destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    S3 { bucket: String, key: String },
    File(PathBuf),
}

/// Why a destination URL or template is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("bad publish URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("URL template {template:?} uses {{{name}}}, but no {name} was given")]
    Missing {
        template: String,
        name: &'static str,
    },
    #[error("URL template {template:?}: {reason}")]
    BadTemplate { template: String, reason: String },
    #[error("{name} {value:?} cannot go into a URL: use letters, digits, '-', '_' and '.'")]
    BadValue { name: &'static str, value: String },
}

impl Target {
    /// Parses `s3://BUCKET/KEY` or `file:///ABSOLUTE/PATH`.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let bad = |reason: &str| TargetError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        use crate::deploy::fetch::Source;
        match Source::parse(url) {
            Ok(Source::S3 { bucket, key }) => Ok(Target::S3 { bucket, key }),
            Ok(Source::File(path)) => {
                if path.file_name().is_none() || url.ends_with('/') {
                    return Err(bad("name a file, not a directory"));
                }
                Ok(Target::File(path))
            }
            Ok(Source::Http(_)) => Err(bad(
                "publish writes to s3://BUCKET/KEY or file:///PATH (https:// is read-only)",
            )),
            Err(crate::deploy::fetch::FetchError::BadUrl { reason, .. }) => Err(bad(&reason)),
            Err(other) => Err(bad(&other.to_string())),
        }
    }

    /// Opens the sink; refuses a name that already exists unless `opts.replace`.
    pub fn open(&self, url: &str, opts: &PublishOptions) -> Result<Box<dyn Sink>, PublishError> {
        match self {
            Target::S3 { bucket, key } => super::s3::S3Sink::open(url, bucket, key, opts),
            Target::File(path) => super::file::FileSink::open(path, opts.replace, true),
        }
    }
}

/// Fills `{app}` and `{version}` into a URL template. A template that uses one not given,
/// an unknown `{name}` and a value that could change the URL's shape are errors.
pub fn expand_template(
    template: &str,
    app: Option<&str>,
    version: Option<&str>,
) -> Result<String, TargetError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| TargetError::BadTemplate {
            template: template.to_string(),
            reason: "a '{' without its '}'".into(),
        })?;
        let (name, value) = match &after[..close] {
            "app" => ("app", app),
            "version" => ("version", version),
            other => {
                return Err(TargetError::BadTemplate {
                    template: template.to_string(),
                    reason: format!("unknown placeholder {{{other}}}; use {{app}} and {{version}}"),
                });
            }
        };
        let value = value.ok_or(TargetError::Missing {
            template: template.to_string(),
            name,
        })?;
        check_value(name, value)?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value filled into a URL must stay one path segment.
fn check_value(name: &'static str, value: &str) -> Result<(), TargetError> {
    let ok = !value.is_empty()
        && !value.starts_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TargetError::BadValue {
            name,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_app_and_version_and_refuse_the_rest() {
        let t = "s3://arts/{app}/{version}.tar.zst";
        assert_eq!(
            expand_template(t, Some("web"), Some("v42")).unwrap(),
            "s3://arts/web/v42.tar.zst"
        );
        assert_eq!(
            expand_template("file:///a/b.tar", None, None).unwrap(),
            "file:///a/b.tar"
        );
        assert!(matches!(
            expand_template(t, Some("web"), None),
            Err(TargetError::Missing {
                name: "version",
                ..
            })
        ));
        assert!(matches!(
            expand_template("s3://b/{ap}.tar", Some("web"), None),
            Err(TargetError::BadTemplate { .. })
        ));
        assert!(matches!(
            expand_template("s3://b/{app", Some("web"), None),
            Err(TargetError::BadTemplate { .. })
        ));
        for hostile in ["../x", "a/b", "..", "", "v1?x=1"] {
            assert!(
                matches!(
                    expand_template(t, Some("web"), Some(hostile)),
                    Err(TargetError::BadValue { .. })
                ),
                "{hostile}"
            );
        }
    }

    #[test]
    fn only_s3_and_file_targets_are_writable() {
        assert_eq!(
            Target::parse("s3://b/k/v1.tar").unwrap(),
            Target::S3 {
                bucket: "b".into(),
                key: "k/v1.tar".into()
            }
        );
        assert_eq!(
            Target::parse("file:///srv/v1.tar").unwrap(),
            Target::File("/srv/v1.tar".into())
        );
        for bad in [
            "https://x/y.tar",
            "file:///srv/",
            "file://rel/x",
            "ftp://x",
            "s3://b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
