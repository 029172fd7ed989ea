//! The validated description of one jail run, built from what `run` was told (a
//! [`Launch`], strings from the command line) by a pure function (no file system access):
//! [`JailSpec::build`].
//!
//! Validation here is syntactic: `SRC[:DST]` split, absolute paths, no `..` in a target, no NUL
//! bytes anywhere (they could not reach `execve`). Whether paths exist is checked by [`super::run`].

use std::path::{Component, Path, PathBuf};

use super::JailError;
use super::launch::Launch;
use crate::id_range::IdRange;

/// One `-b`/`--robind` mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Path inside the jail, relative to its root, normalized (no `.`, no `..`, not empty).
    pub target: PathBuf,
    pub read_only: bool,
}

/// A validated jail run. Build it with [`JailSpec::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// Absolute path of the root (symlinks in it are the caller's, e.g. `DIR/current`).
    pub root: PathBuf,
    /// User name or uid; `None` runs as root (uid 0).
    pub user: Option<String>,
    /// Group name or gid; `None` uses the user's primary group.
    pub group: Option<String>,
    pub binds: Vec<BindMount>,
    /// `--cp`: copy the host's hosts, resolv.conf, passwd and group into the root first.
    pub copy_host_files: bool,
    /// `-e` overrides, applied over `/.drootenv`, in order.
    pub env: Vec<(String, String)>,
    /// Cut the bounding set, clear inheritable/ambient, set NO_NEW_PRIVS.
    pub drop_caps: bool,
    /// Run under our init in a new PID namespace (the default); `false` with `--host-pid`.
    pub pid_ns: bool,
    /// Install the default seccomp filter (the default); `false` with `--seccomp unconfined`.
    pub seccomp: bool,
    /// `--userns`: run in a user namespace mapping the jail's ids 0-65535 to this range.
    pub userns: Option<IdRange>,
    /// The command and its arguments; never empty.
    pub command: Vec<String>,
    /// Names of the listening sockets at descriptors 3.. that the command gets, with
    /// `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`.
    pub listen_fds: Vec<String>,
    /// Stdout and stderr through a pipe into this capped log ([`super::output`]); `None`:
    /// the caller's own.
    pub log: Option<super::LogSpec>,
}

fn invalid(arg: &str, reason: impl Into<String>) -> JailError {
    JailError::InvalidArg {
        arg: arg.to_string(),
        reason: reason.into(),
    }
}

fn no_nul(arg: &str) -> Result<(), JailError> {
    if arg.contains('\0') {
        return Err(invalid(arg, "contains a NUL byte"));
    }
    Ok(())
}

impl JailSpec {
    /// Validates what `run` was told into a spec, with its user namespace resolved to
    /// `userns` (the launch's own choice says only where to find it). Pure: touches no file.
    pub fn build(input: Launch, userns: Option<IdRange>) -> Result<JailSpec, JailError> {
        let root_s = input.root.to_string_lossy().to_string();
        if !input.root.is_absolute() {
            return Err(invalid(&root_s, "--root must be an absolute path"));
        }
        no_nul(&root_s)?;
        for id in [&input.user, &input.group].into_iter().flatten() {
            no_nul(id)?;
            if id.is_empty() || id.contains(':') {
                return Err(invalid(id, "a user or group is a name or a number"));
            }
        }
        let mut binds = Vec::new();
        for b in &input.bind {
            binds.push(parse_bind(b, false)?);
        }
        for b in &input.robind {
            binds.push(parse_bind(b, true)?);
        }
        let mut env = Vec::new();
        for e in &input.env {
            let (k, v) = parse_env(e)?;
            crate::drootenv::set(&mut env, k, v);
        }
        if input.command.is_empty() || input.command[0].is_empty() {
            return Err(invalid("", "a command to run is required after --"));
        }
        for a in &input.command {
            no_nul(a)?;
        }
        if let Some(log) = &input.log {
            let p = log.path.to_string_lossy();
            no_nul(&p)?;
            if !log.path.is_absolute() {
                return Err(invalid(&p, "--log-file must be an absolute path"));
            }
            if log.cap == 0 {
                return Err(invalid("0", "--log-cap must be at least 1 byte"));
            }
        }
        check_fd_names(&input.listen_fds)?;
        Ok(JailSpec {
            root: input.root,
            user: input.user,
            group: input.group,
            binds,
            copy_host_files: input.copy_host_files,
            env,
            drop_caps: !input.no_dropcaps,
            pid_ns: !input.host_pid,
            seccomp: !input.seccomp_unconfined,
            userns,
            command: input.command,
            log: input.log,
            listen_fds: input.listen_fds,
        })
    }
}

/// `LISTEN_FDNAMES` is colon-separated: a name is 1 to 255 printable ASCII characters
/// other than ':' (systemd's rule).
fn check_fd_names(names: &[String]) -> Result<(), JailError> {
    if names.len() > super::launch::MAX_LISTEN_FDS {
        let n = names.len().to_string();
        return Err(invalid(&n, "too many listening sockets (at most 16)"));
    }
    for n in names {
        let printable = n.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if n.is_empty() || n.len() > 255 || !printable {
            return Err(invalid(
                n,
                "a socket name is 1-255 printable characters, no ':'",
            ));
        }
    }
    Ok(())
}

/// Parses `SRC[:DST]`. SRC must be absolute; DST defaults to SRC and names a path inside the jail.
pub fn parse_bind(arg: &str, read_only: bool) -> Result<BindMount, JailError> {
    no_nul(arg)?;
    let (src, dst) = match arg.split_once(':') {
        Some((s, d)) => (s, d),
        None => (arg, arg),
    };
    if src.is_empty() {
        return Err(invalid(arg, "bind source is empty; expected SRC[:DST]"));
    }
    if dst.is_empty() {
        return Err(invalid(
            arg,
            "bind destination is empty; expected SRC[:DST]",
        ));
    }
    let source = PathBuf::from(src);
    if !source.is_absolute() {
        return Err(invalid(arg, "bind source must be an absolute path"));
    }
    let target = jail_relative(dst).map_err(|reason| invalid(arg, reason))?;
    Ok(BindMount {
        source,
        target,
        read_only,
    })
}

/// Parses `-e KEY=VALUE` (split at the first `=`, so the value may hold `=`).
pub fn parse_env(arg: &str) -> Result<(String, String), JailError> {
    no_nul(arg)?;
    crate::drootenv::split_entry(arg).map_err(|e| invalid(arg, e.to_string()))
}

/// Turns an absolute in-jail path into a normalized relative one, refusing `..` and `/` itself.
pub fn jail_relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("path inside the jail must be absolute".into());
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err("path inside the jail must not contain '..'".into()),
            Component::Prefix(_) => return Err("unsupported path prefix".into()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("cannot mount over the jail's root itself".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(cmd: &[&str]) -> Launch {
        Launch {
            root: "/srv/app".into(),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn bind_with_and_without_destination() {
        let b = parse_bind("/data", false).unwrap();
        assert_eq!(b.source, PathBuf::from("/data"));
        assert_eq!(b.target, PathBuf::from("data"));
        assert!(!b.read_only);
        let b = parse_bind("/host/logs:/var/log/app/", true).unwrap();
        assert_eq!(b.source, PathBuf::from("/host/logs"));
        assert_eq!(b.target, PathBuf::from("var/log/app"));
        assert!(b.read_only);
        let b = parse_bind("/x://a/./b", false).unwrap();
        assert_eq!(b.target, PathBuf::from("a/b"));
    }

    #[test]
    fn bind_rejects_bad_paths() {
        for bad in [
            "",
            ":/a",
            "/a:",
            "rel:/a",
            "/a:rel",
            "/a:/../etc",
            "/a:/b/../../c",
            "/a:/",
            "/a:/.",
        ] {
            let e = parse_bind(bad, false).unwrap_err();
            assert!(matches!(e, JailError::InvalidArg { .. }), "{bad}: {e}");
        }
        assert!(parse_bind("/a\0b", false).is_err());
    }

    #[test]
    fn env_keeps_equals_in_values_and_rejects_missing_equals() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=x").is_err());
        assert!(parse_env("A=x\0").is_err());
    }

    #[test]
    fn build_validates_everything() {
        let mut i = input(&["sh", "-c", "true"]);
        i.bind = vec!["/a:/b".into()];
        i.robind = vec!["/c".into()];
        i.env = vec!["X=1".into(), "Y=2".into(), "X=3".into()];
        i.user = Some("app".into());
        let s = JailSpec::build(i, None).unwrap();
        assert_eq!(s.binds.len(), 2);
        assert!(s.binds[1].read_only);
        assert_eq!(
            s.env,
            vec![("X".into(), "3".into()), ("Y".into(), "2".into())]
        );
        assert!(s.drop_caps);
        assert!(s.pid_ns, "a PID namespace is the default");
        assert!(s.seccomp, "the seccomp filter is the default");
        assert_eq!(s.command[0], "sh");

        assert!(JailSpec::build(input(&[]), None).is_err());
        assert!(JailSpec::build(input(&[""]), None).is_err());
        let mut rel = input(&["true"]);
        rel.root = "srv".into();
        assert!(JailSpec::build(rel, None).is_err());
        let mut bad_user = input(&["true"]);
        bad_user.user = Some("".into());
        assert!(JailSpec::build(bad_user, None).is_err());
        let mut nodrop = input(&["true"]);
        nodrop.no_dropcaps = true;
        assert!(!JailSpec::build(nodrop, None).unwrap().drop_caps);
        let mut host = input(&["true"]);
        host.host_pid = true;
        host.seccomp_unconfined = true;
        let s = JailSpec::build(host, None).unwrap();
        assert!(!s.pid_ns && !s.seccomp);
    }
}
