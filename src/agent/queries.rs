//! Built-in query handlers, registered in Rust and keyed by query name.
//!
//! A registered handler answers synchronously inside the agent task, so it must be
//! quick (no I/O). Configured `[[handler]] event = "query:NAME"` commands are the
//! escape hatch for anything slow (see [`super::handlers`]). Built-ins:
//!
//! - `ping`: answers this node's name;
//! - `blob` (only with `blob_query = true`, off by default): answers N bytes (N =
//!   decimal payload, default 16384, max 1 MiB) — a test aid for answers too large for a
//!   datagram (they travel over TCP); left on, any key holder could make every node
//!   send 1 MiB.

use std::collections::HashMap;
use std::sync::Arc;

/// A Rust query handler: payload in, answer out.
pub type QueryFn = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// Query handlers by name.
#[derive(Clone, Default)]
pub struct QueryRegistry {
    handlers: HashMap<String, QueryFn>,
}

impl std::fmt::Debug for QueryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

/// Largest `blob` answer.
pub const MAX_BLOB: usize = 1024 * 1024;

impl QueryRegistry {
    /// The built-ins for node `name`; `blob` only if asked for.
    pub fn with_builtins(name: &str, blob: bool) -> Self {
        let mut r = Self::default();
        let node = name.to_owned();
        r.register("ping", Arc::new(move |_| node.clone().into_bytes()));
        if !blob {
            return r;
        }
        r.register(
            "blob",
            Arc::new(|payload| {
                let n = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .unwrap_or(16 * 1024)
                    .min(MAX_BLOB);
                vec![b'x'; n]
            }),
        );
        r
    }

    /// Adds or replaces a handler.
    pub fn register(&mut self, name: &str, handler: QueryFn) {
        self.handlers.insert(name.to_owned(), handler);
    }

    /// The handler for `name`.
    pub fn get(&self, name: &str) -> Option<&QueryFn> {
        self.handlers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins() {
        // Regression (issue 10): `blob` answered any key holder by default.
        assert!(
            QueryRegistry::with_builtins("n1", false)
                .get("blob")
                .is_none()
        );
        let r = QueryRegistry::with_builtins("n1", true);
        assert_eq!(r.get("ping").unwrap()(b""), b"n1");
        assert_eq!(r.get("blob").unwrap()(b"20000").len(), 20000);
        assert_eq!(r.get("blob").unwrap()(b"").len(), 16384);
        assert!(r.get("nope").is_none());
    }
}
