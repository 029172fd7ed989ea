//! Telling the service manager how the agent is doing: systemd's `sd_notify` protocol.
//!
//! A unit with `Type=notify` names a datagram socket in `NOTIFY_SOCKET` (a path, or `@NAME`
//! in the abstract namespace) and waits for `READY=1` there before it counts the service as
//! started; `RELOADING=1` and `STOPPING=1` say that a reload or the shutdown is under way.
//! Each message is one datagram of `KEY=VALUE` lines. No library is needed for that, and the
//! agent's statically linked binary cannot load libsystemd anyway.
//!
//! The socket is the agent's alone: whoever can write to it speaks as the agent (the manager
//! may check only that the sender is in the unit). So it is never handed on: jails, hooks
//! and health checks start from an empty environment, and event handlers, which inherit the
//! agent's, have [`ENV`] removed.
//!
//! A notification never stalls or stops the agent: a send waits at most [`SEND_TIMEOUT`],
//! and a failed one is logged (the manager's own start and stop timeouts then tell the
//! operator). The order is kept by [`Notifier`]: no `READY=1` once stopping, no reload
//! messages before the first `READY=1`.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// The variable the service manager names its socket in.
pub const ENV: &str = "NOTIFY_SOCKET";
/// Longest wait for the manager to take one message.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest address: `sun_path` is 108 bytes, less the path's terminating NUL or the
/// abstract name's leading one.
const MAX_ADDRESS: usize = 107;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A socket file (`/run/systemd/notify`).
    Path(PathBuf),
    /// A name in the abstract namespace (`@NAME`; the bytes after the `@`).
    Abstract(Vec<u8>),
}

/// Why notifications cannot be sent. The agent runs on without them.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "{ENV}={value:?} is {reason}; the service manager gets no notifications, so a \
         Type=notify unit times out waiting for READY=1 (fix the unit's environment)"
    )]
    Address { value: String, reason: &'static str },
    #[error("cannot open a socket to notify the service manager: {0}")]
    Socket(#[source] io::Error),
}

impl Address {
    /// Parses a `NOTIFY_SOCKET` value: an absolute path, or `@NAME` (abstract).
    pub fn parse(value: &OsStr) -> Result<Address, NotifyError> {
        let bytes = value.as_bytes();
        let bad = |reason| NotifyError::Address {
            value: value.to_string_lossy().into_owned(),
            reason,
        };
        if bytes.contains(&0) {
            return Err(bad("not a socket address (it holds a NUL byte)"));
        }
        let address = match bytes.first() {
            Some(b'/') => Address::Path(PathBuf::from(value)),
            Some(b'@') if bytes.len() > 1 => Address::Abstract(bytes[1..].to_vec()),
            Some(b'@') => return Err(bad("an abstract socket address with no name")),
            _ if bytes.starts_with(b"vsock:") => {
                return Err(bad(
                    "an AF_VSOCK address, which this agent does not support",
                ));
            }
            None => return Err(bad("empty")),
            _ => return Err(bad("neither an absolute path nor an @abstract name")),
        };
        match &address {
            Address::Path(_) if bytes.len() > MAX_ADDRESS => {
                Err(bad("a path too long for a socket"))
            }
            Address::Abstract(n) if n.len() > MAX_ADDRESS => {
                Err(bad("a name too long for a socket"))
            }
            _ => Ok(address),
        }
    }

    fn socket_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Address::Path(p) => SocketAddr::from_pathname(p),
            Address::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
    }
}

/// Where the service stands, as last told to the manager.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Starting = 0,
    Ready = 1,
    Stopping = 2,
}

struct Inner {
    socket: UnixDatagram,
    to: SocketAddr,
    phase: AtomicU8,
}

/// Sends the service manager the agent's state changes. Cheap to clone; the default one
/// (no service manager asked) sends nothing.
#[derive(Clone, Default)]
pub struct Notifier(Option<Arc<Inner>>);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(inner) => write!(f, "Notifier({:?})", inner.to),
            None => f.write_str("Notifier(none)"),
        }
    }
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for; one that sends nothing when it is unset.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var_os(ENV) {
            Some(value) => Notifier::connect(&Address::parse(&value)?),
            None => Ok(Notifier::default()),
        }
    }

    /// A notifier that sends to `address`.
    pub fn connect(address: &Address) -> Result<Notifier, NotifyError> {
        let to = address.socket_addr().map_err(NotifyError::Socket)?;
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        (socket.set_write_timeout(Some(SEND_TIMEOUT))).map_err(NotifyError::Socket)?;
        Ok(Notifier(Some(Arc::new(Inner {
            socket,
            to,
            phase: AtomicU8::new(Phase::Starting as u8),
        }))))
    }

    /// Whether notifications are sent at all.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Sends one message (`KEY=VALUE` lines) as it is.
    pub fn send(&self, message: &str) -> io::Result<()> {
        match &self.0 {
            Some(inner) => inner
                .socket
                .send_to_addr(message.as_bytes(), &inner.to)
                .map(drop),
            None => Ok(()),
        }
    }

    /// `READY=1`: the service is up. Nothing once stopping.
    pub fn ready(&self) {
        if self.advance(Phase::Ready) {
            self.log_send("READY=1");
        }
    }

    /// `RELOADING=1` (with the monotonic time, as `Type=notify-reload` wants) when a reload
    /// starts; nothing before the service was ready or once it is stopping.
    pub fn reloading(&self) {
        if self.phase() == Some(Phase::Ready) {
            let usec = monotonic_usec();
            self.log_send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        }
    }

    /// `READY=1` again when a reload ended, whether or not it applied anything.
    pub fn reloaded(&self) {
        if self.phase() == Some(Phase::Ready) {
            self.log_send("READY=1");
        }
    }

    /// `STOPPING=1`: the shutdown began (sent once).
    pub fn stopping(&self) {
        if self.advance(Phase::Stopping) {
            self.log_send("STOPPING=1");
        }
    }

    fn phase(&self) -> Option<Phase> {
        let inner = self.0.as_ref()?;
        Some(match inner.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Stopping,
        })
    }

    /// Moves forward to `to`; false if already there or past it (or disabled).
    fn advance(&self, to: Phase) -> bool {
        let Some(inner) = &self.0 else { return false };
        inner.phase.fetch_max(to as u8, Ordering::AcqRel) < to as u8
    }

    fn log_send(&self, message: &str) {
        if let Err(e) = self.send(message) {
            let first = message.lines().next().unwrap_or_default();
            tracing::warn!(error = %e, message = first, to = ?self, "cannot notify the service manager");
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{Address, MAX_ADDRESS, Notifier, NotifyError};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    fn parse(s: &str) -> Result<Address, NotifyError> {
        Address::parse(OsStr::new(s))
    }

    fn reason(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    /// systemd's two forms: an absolute path, and `@NAME` for the abstract namespace.
    #[test]
    fn parses_paths_and_abstract_names() {
        assert_eq!(
            parse("/run/systemd/notify").unwrap(),
            Address::Path("/run/systemd/notify".into())
        );
        assert_eq!(
            parse("@/org/freedesktop/systemd1/notify/42").unwrap(),
            Address::Abstract(b"/org/freedesktop/systemd1/notify/42".to_vec())
        );
        let raw = OsStr::from_bytes(b"@name\xff");
        assert_eq!(
            Address::parse(raw).unwrap(),
            Address::Abstract(b"name\xff".to_vec())
        );
    }

    /// Anything else is refused with the reason, never guessed at.
    #[test]
    fn refuses_what_is_not_a_unix_socket_address() {
        assert!(reason("").contains("empty"), "{}", reason(""));
        assert!(reason("@").contains("no name"));
        assert!(reason("run/notify").contains("absolute path"));
        assert!(reason("vsock:2:1234").contains("AF_VSOCK"));
        let nul = OsStr::from_bytes(b"/run/a\0b");
        assert!(Address::parse(nul).unwrap_err().to_string().contains("NUL"));
        assert!(
            reason("x").contains("NOTIFY_SOCKET=\"x\""),
            "{}",
            reason("x")
        );
    }

    /// `sun_path` holds 108 bytes: a path needs its NUL, an abstract name its leading one.
    #[test]
    fn the_longest_address_fits_a_socket_and_one_more_byte_is_refused() {
        let path = format!("/{}", "p".repeat(MAX_ADDRESS - 1));
        assert!(parse(&path).is_ok());
        assert!(Notifier::connect(&parse(&path).unwrap()).is_ok());
        assert!(reason(&format!("{path}p")).contains("too long"));
        let name = format!("@{}", "n".repeat(MAX_ADDRESS));
        assert!(Notifier::connect(&parse(&name).unwrap()).is_ok());
        assert!(reason(&format!("{name}n")).contains("too long"));
    }

    /// A disabled notifier sends nothing and never fails.
    #[test]
    fn the_default_notifier_is_silent() {
        let n = Notifier::default();
        assert!(!n.is_enabled());
        assert!(n.send("READY=1").is_ok());
        n.ready();
        n.stopping();
    }

    /// READY=1 once stopping is not sent, reload messages only after READY=1, STOPPING=1
    /// once; read back from a real socket.
    #[test]
    fn messages_follow_the_service_phases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let n = Notifier::connect(&Address::Path(path)).unwrap();
        let drain = || {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(len) = rx.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
            got
        };
        n.reloading();
        n.reloaded();
        assert!(drain().is_empty(), "no reload messages before READY=1");
        n.ready();
        n.reloading();
        n.reloaded();
        let got = drain();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], "READY=1");
        assert!(
            got[1].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{got:?}"
        );
        assert!(got[1].rsplit('=').next().unwrap().parse::<u64>().unwrap() > 0);
        assert_eq!(got[2], "READY=1");
        n.stopping();
        n.stopping();
        n.ready();
        n.reloading();
        assert_eq!(drain(), ["STOPPING=1"]);
    }
}
