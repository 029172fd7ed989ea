//! The `/.drootenv` file: the image's environment, carried inside the rootfs tar.
//!
//! One `KEY=VALUE` per line, split at the first `=` so values may contain `=`. Written by
//! [`crate::export`] from the image config, read by [`crate::jail`] before `-e` overrides.
//! A value cannot hold a newline; [`render`] refuses one rather than write a file that
//! would parse back differently.

/// Path of the env file inside a rootfs, relative to its top.
pub const FILE_NAME: &str = ".drootenv";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrootenvError {
    #[error("environment entry {0:?} has no '=': expected KEY=VALUE")]
    MissingEquals(String),
    #[error("environment entry {0:?} has an empty name")]
    EmptyKey(String),
    #[error("environment variable {0} holds a newline, which /.drootenv cannot carry")]
    Newline(String),
}

/// Splits one `KEY=VALUE` entry at the first `=`.
pub fn split_entry(entry: &str) -> Result<(String, String), DrootenvError> {
    let (k, v) = entry
        .split_once('=')
        .ok_or_else(|| DrootenvError::MissingEquals(entry.to_string()))?;
    if k.is_empty() {
        return Err(DrootenvError::EmptyKey(entry.to_string()));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses the file. Blank lines and lines without `=` are skipped, as droot did; a later
/// duplicate key wins.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Ok((k, v)) = split_entry(line) {
            set(&mut out, k, v);
        }
    }
    out
}

/// Sets `key` in an ordered env list, replacing an earlier value in place.
pub fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

/// Renders `KEY=VALUE` entries (as in a Docker image config's `Env`) into the file's text.
pub fn render<S: AsRef<str>>(entries: &[S]) -> Result<String, DrootenvError> {
    let mut out = String::new();
    for e in entries {
        let (k, v) = split_entry(e.as_ref())?;
        if v.contains('\n') || k.contains('\n') {
            return Err(DrootenvError::Newline(k));
        }
        out.push_str(&k);
        out.push('=');
        out.push_str(&v);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_equals_signs() {
        let env = parse("PATH=/bin\nOPTS=a=b=c\n\nnoequals\n");
        assert_eq!(
            env,
            vec![
                ("PATH".into(), "/bin".into()),
                ("OPTS".into(), "a=b=c".into())
            ]
        );
    }

    #[test]
    fn later_duplicate_wins_in_place() {
        let env = parse("A=1\nB=2\nA=3\n");
        assert_eq!(
            env,
            vec![("A".into(), "3".into()), ("B".into(), "2".into())]
        );
    }

    #[test]
    fn render_round_trips_and_rejects_newlines() {
        let text = render(&["A=1", "B=x=y", "C="]).unwrap();
        assert_eq!(text, "A=1\nB=x=y\nC=\n");
        assert_eq!(parse(&text).len(), 3);
        assert_eq!(render(&["A=1\n2"]), Err(DrootenvError::Newline("A".into())));
        assert!(matches!(render(&["=x"]), Err(DrootenvError::EmptyKey(_))));
        assert!(matches!(
            render(&["x"]),
            Err(DrootenvError::MissingEquals(_))
        ));
    }
}
