//! The socket-activated test app (`tests/support/sockapp.c`): built once per test binary
//! with `gcc -static`, and release roots that run it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How a release of the test app behaves (files in its root the app reads at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Boots for this many ms, then serves and says `READY=1`.
    Boots(u64),
    /// Exits at once with status 1.
    Exits,
    /// Never becomes ready (and never accepts).
    NeverReady,
}

/// The static binary, built on first use.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("droot-fleet-sockapp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        super::jail::build_static_c(&dir, "sockapp", include_str!("../support/sockapp.c"))
    })
}

/// Makes `dir` a release root with `extra` files (name, content) besides
/// [`release`]'s.
pub fn release_with(dir: &Path, version: &str, behaviour: Behaviour, extra: &[(&str, &str)]) {
    release(dir, version, behaviour);
    for (name, text) in extra {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Makes `dir` a release root: a busybox rootfs with `/sockapp`, `/version` and the files
/// that give it `behaviour`.
pub fn release(dir: &Path, version: &str, behaviour: Behaviour) {
    super::busybox_rootfs(dir);
    std::fs::copy(binary(), dir.join("sockapp")).unwrap();
    std::fs::write(dir.join("version"), version).unwrap();
    match behaviour {
        Behaviour::Boots(ms) => std::fs::write(dir.join("delay_ms"), ms.to_string()).unwrap(),
        Behaviour::Exits => std::fs::write(dir.join("exit_code"), "1").unwrap(),
        Behaviour::NeverReady => std::fs::write(dir.join("never_ready"), "").unwrap(),
    }
}
