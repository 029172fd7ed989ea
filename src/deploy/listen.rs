//! Socket activation, the agent's side: `[apps.NAME] listen` names the sockets an app
//! accepts on. The supervisor binds each one once and hands the same sockets to every
//! instance of the app as descriptors 3.. (systemd's protocol: `LISTEN_FDS`,
//! `LISTEN_FDNAMES`, `LISTEN_PID`; the jail's side is [`crate::jail::launch`]).
//!
//! Why: the port then never closes. The kernel queues connections in the socket's backlog
//! while an instance restarts, and two instances accept on the same socket while a deploy
//! overlaps them, so a deploy or a crash drops no connection and no proxy is needed.
//!
//! A restarted agent gets the sockets back from the jail it adopts (`pidfd_getfd(2)` on
//! the `run` process, which holds them at 3..), and checks that each is a listening socket
//! on the configured address before it uses it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage,
    UnixAddr, sockopt,
};

/// One `listen` entry: `[NAME=]ADDRESS`. The name is the socket's in `LISTEN_FDNAMES`
/// (systemd's `FileDescriptorName=`); without one, the app's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSocket {
    pub name: String,
    pub addr: ListenAddr,
}

impl ListenSocket {
    /// Parses `[NAME=]tcp:IP:PORT` or `[NAME=]unix:/path`; `app` is the default name.
    pub fn parse(s: &str, app: &str) -> Result<Self, String> {
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) if !name.contains(':') => (name, addr),
            _ => (app, s),
        };
        let printable = name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if name.is_empty() || name.len() > 255 || !printable {
            return Err(format!(
                "{s:?}: a socket's name is 1-255 printable characters without ':'"
            ));
        }
        Ok(ListenSocket {
            name: name.to_string(),
            addr: ListenAddr::parse(addr)?,
        })
    }
}

/// Where a `listen` socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `tcp:IP:PORT` (`tcp:[::]:PORT` for IPv6, which also accepts IPv4 unless the host set
    /// `bindv6only`).
    Tcp(SocketAddr),
    /// `unix:/absolute/path`, a stream socket; the file is created 0666 (systemd's default
    /// `SocketMode`), replacing a stale socket file but never any other file.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenAddr {
    /// Parses `tcp:IP:PORT` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            let a: SocketAddr = addr
                .parse()
                .map_err(|e| format!("{s:?}: {addr:?} is not IP:PORT or [IPv6]:PORT ({e})"))?;
            if a.port() == 0 {
                return Err(format!("{s:?}: port 0 would be a new port on every bind"));
            }
            return Ok(ListenAddr::Tcp(a));
        }
        if let Some(path) = s.strip_prefix("unix:") {
            let p = Path::new(path);
            if !p.is_absolute() || path.contains('\0') {
                return Err(format!(
                    "{s:?}: needs an absolute path, e.g. unix:/run/web.sock"
                ));
            }
            // sun_path holds 108 bytes, its NUL included.
            if path.len() > 107 {
                return Err(format!("{s:?}: a socket path has at most 107 bytes"));
            }
            return Ok(ListenAddr::Unix(p.to_path_buf()));
        }
        Err(format!(
            "{s:?}: use tcp:IP:PORT, tcp:[IPv6]:PORT or unix:/path"
        ))
    }

    /// Binds and listens (close-on-exec, `SO_REUSEADDR` for TCP, the largest backlog).
    pub fn bind(&self) -> io::Result<OwnedFd> {
        let flags = SockFlag::SOCK_CLOEXEC;
        let fd = match self {
            ListenAddr::Tcp(SocketAddr::V4(a)) => {
                let fd = socket::socket(AddressFamily::Inet, SockType::Stream, flags, None)?;
                socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*a))?;
                fd
            }
            ListenAddr::Tcp(SocketAddr::V6(a)) => {
                let fd = socket::socket(AddressFamily::Inet6, SockType::Stream, flags, None)?;
                socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*a))?;
                fd
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
                socket::bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path())?)?;
                open_to_all(path)?;
                fd
            }
        };
        socket::listen(&fd, Backlog::MAXCONN)?;
        Ok(fd)
    }

    /// Whether `fd` is a listening stream socket bound to this address.
    pub fn is_bound_by(&self, fd: &OwnedFd) -> bool {
        let listening = socket::getsockopt(fd, sockopt::AcceptConn).unwrap_or(false);
        let stream = socket::getsockopt(fd, sockopt::SockType).ok() == Some(SockType::Stream);
        if !(listening && stream) {
            return false;
        }
        let Ok(local) = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()) else {
            return false;
        };
        match self {
            ListenAddr::Tcp(SocketAddr::V4(a)) => {
                local.as_sockaddr_in().map(|l| SocketAddr::V4((*l).into()))
                    == Some(SocketAddr::V4(*a))
            }
            ListenAddr::Tcp(SocketAddr::V6(a)) => local
                .as_sockaddr_in6()
                .is_some_and(|l| l.ip() == *a.ip() && l.port() == a.port()),
            ListenAddr::Unix(p) => local
                .as_unix_addr()
                .and_then(|u| u.path())
                .is_some_and(|l| l == p),
        }
    }
}

/// Makes the socket file at `path` 0666 without following a symlink: whoever can write its
/// directory could have put one there since the bind, to have root chmod another file.
fn open_to_all(path: &Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the socket file was replaced after the bind",
        ));
    }
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    std::fs::set_permissions(by_fd, std::fs::Permissions::from_mode(0o666))
}

/// A socket file left by an earlier bind is replaced; one that another process still
/// listens on, or any other file at the path, is an error (a typo must not take another
/// service's socket or delete data).
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way; remove it or choose another path",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Descriptor `target` of the process behind `pidfd`, duplicated into this one
/// (`pidfd_getfd(2)`, close-on-exec).
pub fn take_from(pidfd: &OwnedFd, target: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the kernel returns a new descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The sockets of an adopted jail: descriptors 3.. of its `run` process, if each is a
/// listening socket on the address configured for it; `None` if any is not.
pub fn reclaim(pidfd: &OwnedFd, sockets: &[ListenSocket]) -> Option<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.iter().enumerate() {
        let fd = take_from(pidfd, 3 + i as i32).ok()?;
        if !socket.addr.is_bound_by(&fd) {
            return None;
        }
        fds.push(fd);
    }
    Some(fds)
}

/// Binds every socket, in order; the first failure names its address.
pub fn bind_all(sockets: &[ListenSocket]) -> Result<Vec<OwnedFd>, (String, io::Error)> {
    (sockets.iter())
        .map(|s| s.addr.bind().map_err(|e| (s.addr.to_string(), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_entries_parse_or_name_the_mistake() {
        assert_eq!(
            ListenAddr::parse("tcp:127.0.0.1:8080").unwrap(),
            ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("tcp:[::]:80").unwrap().to_string(),
            "tcp:[::]:80"
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/web.sock").unwrap(),
            ListenAddr::Unix("/run/web.sock".into())
        );
        for bad in [
            "8080",
            "tcp:localhost:80",
            "tcp:0.0.0.0:0",
            "unix:rel.sock",
            "udp:1.2.3.4:5",
        ] {
            let e = ListenAddr::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let long = format!("unix:/{}", "a".repeat(120));
        assert!(ListenAddr::parse(&long).unwrap_err().contains("107"));
        let named = ListenSocket::parse("admin=tcp:127.0.0.1:9000", "web").unwrap();
        assert_eq!(
            (named.name.as_str(), named.addr.to_string().as_str()),
            ("admin", "tcp:127.0.0.1:9000")
        );
        assert_eq!(
            ListenSocket::parse("unix:/run/a=b.sock", "web")
                .unwrap()
                .name,
            "web"
        );
        assert!(ListenSocket::parse("=tcp:1.2.3.4:5", "web").is_err());
        assert!(ListenSocket::parse("a b=tcp:1.2.3.4:5", "web").is_err());
    }

    /// A bound socket is recognised by its address, and by nothing else.
    #[test]
    fn a_bound_socket_matches_its_own_address_only() {
        let dir = tempfile::tempdir().unwrap();
        let unix = ListenAddr::Unix(dir.path().join("s.sock"));
        let fd = unix.bind().unwrap();
        assert!(unix.is_bound_by(&fd));
        assert!(!ListenAddr::Unix(dir.path().join("t.sock")).is_bound_by(&fd));
        // A live socket is not taken; a stale one is replaced; another file is never
        // removed.
        assert_eq!(unix.bind().unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(fd);
        let again = unix.bind().unwrap();
        let ListenAddr::Unix(p) = &unix else {
            unreachable!()
        };
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o666
        );
        drop(again);
        let other = dir.path().join("data");
        std::fs::write(&other, "keep").unwrap();
        assert!(ListenAddr::Unix(other.clone()).bind().is_err());
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep");
    }
}
