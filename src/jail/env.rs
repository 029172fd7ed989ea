//! The jail's environment and `PATH` lookup.
//!
//! The environment is exactly `/.drootenv` (parsed by [`crate::drootenv::parse`]) with the
//! `-e` overrides applied in order; nothing of the host's environment is inherited. When it has
//! no `PATH`, a default one is added so the command can be found.

use std::path::PathBuf;

/// `PATH` used when neither `/.drootenv` nor `-e` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `/.drootenv` text plus overrides; adds [`DEFAULT_PATH`] when `PATH` is absent.
pub fn merge(drootenv: &str, overrides: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = crate::drootenv::parse(drootenv);
    for (k, v) in overrides {
        crate::drootenv::set(&mut env, k.clone(), v.clone());
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

/// With listening sockets, `LISTEN_FDS` and `LISTEN_FDNAMES` (`LISTEN_PID` is known only
/// in the process that execs), over whatever the image or `-e` set.
pub fn add_listen_fds(env: &mut Vec<(String, String)>, names: &[String]) {
    if names.is_empty() {
        return;
    }
    crate::drootenv::set(env, "LISTEN_FDS".into(), names.len().to_string());
    crate::drootenv::set(env, "LISTEN_FDNAMES".into(), names.join(":"));
    env.retain(|(k, _)| k != "LISTEN_PID");
}

/// The value of `PATH` in `env`, or [`DEFAULT_PATH`].
pub fn path_of(env: &[(String, String)]) -> &str {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str())
}

/// The files to try, in order, for `cmd`: itself when it contains a '/', otherwise
/// `DIR/cmd` for each non-empty `DIR` of `path` (empty entries are skipped, not ".").
pub fn candidates(cmd: &str, path: &str) -> Vec<PathBuf> {
    if cmd.contains('/') {
        return vec![PathBuf::from(cmd)];
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(cmd))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_equals_survive() {
        let env = merge(
            "PATH=/bin\nGREETING=hello=world\nA=1\n",
            &[("A".into(), "2".into()), ("NEW".into(), "x=y".into())],
        );
        assert_eq!(
            env,
            vec![
                ("PATH".into(), "/bin".into()),
                ("GREETING".into(), "hello=world".into()),
                ("A".into(), "2".into()),
                ("NEW".into(), "x=y".into()),
            ]
        );
    }

    #[test]
    fn default_path_when_none() {
        let env = merge("", &[]);
        assert_eq!(env, vec![("PATH".into(), DEFAULT_PATH.into())]);
        assert_eq!(path_of(&[]), DEFAULT_PATH);
        let env = merge("", &[("PATH".into(), "/opt".into())]);
        assert_eq!(path_of(&env), "/opt");
    }

    #[test]
    fn lookup_candidates() {
        assert_eq!(
            candidates("sh", "/usr/bin::/bin"),
            vec![PathBuf::from("/usr/bin/sh"), PathBuf::from("/bin/sh")]
        );
        assert_eq!(candidates("./x", "/bin"), vec![PathBuf::from("./x")]);
        assert_eq!(
            candidates("/bin/sh", "/nope"),
            vec![PathBuf::from("/bin/sh")]
        );
        assert!(candidates("sh", "").is_empty());
    }
}
