//! Users and groups: `/etc/passwd` and `/etc/group` parsing, resolving `-u`/`-g` to numeric
//! credentials, and switching to them.
//!
//! Names are looked up in the jail's files first (read after chroot, so symlinks in the rootfs
//! resolve inside it), then in the host's (read before the fork). Supplementary groups are
//! the chosen gid plus every group of the jail's `/etc/group` (the host's when the jail has
//! none) that lists the user as a member. A numeric user with no passwd entry gets the gid of
//! the same number unless `-g` says otherwise (least privilege; Docker would pick 0).

use nix::unistd::{Gid, Uid};

use super::JailError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses passwd lines `name:pw:uid:gid:gecos:home:shell`; malformed lines and comments are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Parses group lines `name:pw:gid:member,member`; malformed lines and comments are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .unwrap_or(&"")
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The user databases of the jail and of the host. `None`: the file does not exist.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    pub jail_passwd: Vec<PasswdEntry>,
    pub jail_group: Option<Vec<GroupEntry>>,
    pub host_passwd: Vec<PasswdEntry>,
    pub host_group: Vec<GroupEntry>,
}

/// Numeric credentials to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary gid first, no duplicates.
    pub groups: Vec<u32>,
    /// The passwd entry when there is one (its name and home).
    pub entry: Option<PasswdEntry>,
}

fn numeric(s: &str) -> Option<u32> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

impl UserDb {
    fn passwd(&self) -> impl Iterator<Item = &PasswdEntry> {
        self.jail_passwd.iter().chain(self.host_passwd.iter())
    }

    fn groups(&self) -> impl Iterator<Item = &GroupEntry> {
        self.jail_group
            .iter()
            .flatten()
            .chain(self.host_group.iter())
    }

    /// Groups used for membership: the jail's file, or the host's when the jail has none.
    fn membership_groups(&self) -> &[GroupEntry] {
        self.jail_group.as_deref().unwrap_or(&self.host_group)
    }

    /// Resolves `-u` and `-g` (names or numbers) to credentials. No user means root.
    pub fn resolve(&self, user: Option<&str>, group: Option<&str>) -> Result<Identity, JailError> {
        let (uid, entry) = match user {
            None => (0, self.passwd().find(|e| e.uid == 0).cloned()),
            Some(u) => match numeric(u) {
                Some(n) => (n, self.passwd().find(|e| e.uid == n).cloned()),
                None => {
                    let e = self
                        .passwd()
                        .find(|e| e.name == u)
                        .cloned()
                        .ok_or_else(|| JailError::UnknownUser {
                            user: u.to_string(),
                        })?;
                    (e.uid, Some(e))
                }
            },
        };
        let gid = match group {
            Some(g) => match numeric(g) {
                Some(n) => n,
                None => self
                    .groups()
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| JailError::UnknownGroup {
                        group: g.to_string(),
                    })?,
            },
            None => entry.as_ref().map_or(uid, |e| e.gid),
        };
        let mut groups = vec![gid];
        if let Some(e) = &entry {
            for g in self.membership_groups() {
                if g.members.contains(&e.name) && !groups.contains(&g.gid) {
                    groups.push(g.gid);
                }
            }
        }
        Ok(Identity {
            uid,
            gid,
            groups,
            entry,
        })
    }
}

/// Switches to `id`: `setgroups`, `setgid`, then `setuid` (the order that keeps it possible).
pub fn apply(id: &Identity) -> Result<(), JailError> {
    let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups)
        .map_err(|e| cred_err(format!("setgroups {:?}", id.groups), e))?;
    nix::unistd::setgid(Gid::from_raw(id.gid))
        .map_err(|e| cred_err(format!("setgid {}", id.gid), e))?;
    nix::unistd::setuid(Uid::from_raw(id.uid))
        .map_err(|e| cred_err(format!("setuid {}", id.uid), e))?;
    Ok(())
}

fn cred_err(op: String, e: nix::errno::Errno) -> JailError {
    JailError::Credentials { op, err: e.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAIL_PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken\napp:x:1000:1000:app:/home/app:/bin/sh\n";
    const JAIL_GROUP: &str =
        "root:x:0:\napp:x:1000:\nextra:x:2000:app, other\nbad:x:notanumber:app\n";

    fn db() -> UserDb {
        UserDb {
            jail_passwd: parse_passwd(JAIL_PASSWD),
            jail_group: Some(parse_group(JAIL_GROUP)),
            host_passwd: parse_passwd(
                "root:x:0:0::/root:/bin/bash\nhostonly:x:500:501::/h:/bin/sh\napp:x:7:7::/:/bin/sh\n",
            ),
            host_group: parse_group("hostgrp:x:501:hostonly\nhostextra:x:3000:app\n"),
        }
    }

    #[test]
    fn parses_passwd_and_group() {
        let p = parse_passwd(JAIL_PASSWD);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].name, "app");
        assert_eq!((p[1].uid, p[1].gid), (1000, 1000));
        assert_eq!(p[1].home, "/home/app");
        let g = parse_group(JAIL_GROUP);
        assert_eq!(g.len(), 3, "the line with a non-numeric gid is skipped");
        assert_eq!(g[2].members, vec!["app".to_string(), "other".to_string()]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn name_resolves_in_jail_first_with_memberships() {
        let id = db().resolve(Some("app"), None).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(
            id.groups,
            vec![1000, 2000],
            "host's hostextra must not count"
        );
    }

    #[test]
    fn host_is_the_fallback() {
        let id = db().resolve(Some("hostonly"), Some("hostgrp")).unwrap();
        assert_eq!((id.uid, id.gid), (500, 501));
        assert_eq!(
            id.groups,
            vec![501],
            "memberships come from the jail's group file"
        );
        let mut no_jail_group = db();
        no_jail_group.jail_group = None;
        let id = no_jail_group.resolve(Some("hostonly"), None).unwrap();
        assert_eq!(id.groups, vec![501]);
    }

    #[test]
    fn numbers_and_explicit_group() {
        let id = db().resolve(Some("1000"), Some("2000")).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 2000));
        assert_eq!(id.groups, vec![2000]);
        let id = db().resolve(Some("4242"), None).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups.clone()),
            (4242, 4242, vec![4242])
        );
        assert!(id.entry.is_none());
        let id = db().resolve(Some("1000"), Some("extra")).unwrap();
        assert_eq!(id.gid, 2000);
    }

    #[test]
    fn default_is_root_and_unknowns_are_errors() {
        let id = db().resolve(None, None).unwrap();
        assert_eq!((id.uid, id.gid, id.groups.clone()), (0, 0, vec![0]));
        assert_eq!(
            db().resolve(Some("nobody-here"), None),
            Err(JailError::UnknownUser {
                user: "nobody-here".into()
            })
        );
        assert_eq!(
            db().resolve(Some("app"), Some("nogroup")),
            Err(JailError::UnknownGroup {
                group: "nogroup".into()
            })
        );
    }
}
