//! How an in-process consumer stands among the owed handlers: as a handler entry whose
//! "command" is [`CONSUMER_MARK`]` + name` (a configured `[[handler]]` may not start
//! with `@`), so it shares the journal, the state file, the retries and the slots.
//! These are the name rules only; the machine uses them to tell a consumer from a
//! process without the channels that reach it ([`crate::agent::consumers`]).

use std::time::Duration;

use crate::agent::config::{EventFilter, HandlerConfig};

/// First word of the command of a handler that stands for a consumer.
pub const CONSUMER_MARK: &str = "@consumer:";

/// The owed-handler entry standing for consumer `name` of the user events named
/// `prefix*`.
pub fn consumer_handler(name: &str, prefix: &str) -> HandlerConfig {
    HandlerConfig {
        filter: EventFilter::UserPrefix(prefix.to_owned()),
        command: vec![format!("{CONSUMER_MARK}{name}")],
        timeout: Duration::MAX,
    }
}

/// The consumer a handler entry stands for, if it is one.
pub fn consumer_name(handler: &HandlerConfig) -> Option<&str> {
    handler.command.first()?.strip_prefix(CONSUMER_MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_entry_names_its_consumer() {
        let h = consumer_handler("deploy", "deploy-");
        assert_eq!(consumer_name(&h), Some("deploy"));
        assert!(matches!(&h.filter, EventFilter::UserPrefix(p) if p == "deploy-"));
        let process = HandlerConfig {
            command: vec!["/bin/deploy".into()],
            ..h
        };
        assert_eq!(consumer_name(&process), None);
    }
}
