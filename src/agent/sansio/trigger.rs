//! What a handler is run for ([`Trigger`]), which configured `[[handler]]`s it selects
//! and the environment they get: plain functions of the trigger, the settings and the
//! node's tags. They live here so the machine decides which handlers an event owes and
//! with what environment without the process-spawning half ([`crate::agent::handlers`]).
//!
//! A handler's environment, set on top of the agent's own ([`env()`]):
//!
//! | variable | value |
//! |---|---|
//! | `DROOT_FLEET_EVENT` | `user`, `query`, `member-join`, `member-leave`, `member-failed` |
//! | `DROOT_FLEET_USER_EVENT` | the user event name (user events) |
//! | `DROOT_FLEET_QUERY_NAME` | the query name (queries) |
//! | `DROOT_FLEET_LTIME` | the Lamport time |
//! | `DROOT_FLEET_NODE` | this node's name |
//! | `DROOT_FLEET_TAG_<KEY>` | this node's tags (key upper-cased, non-alphanumerics → `_`) |
//! | `DROOT_FLEET_MEMBER` | the member that joined/left/failed (member events) |
//! | `DROOT_FLEET_RPC` | this agent's control API, so `droot-fleet` in a handler talks to it |
//!
//! The event-context variables among them are never inherited from the agent's own
//! environment ([`is_event_context_var`]).

use crate::agent::config::{EventFilter, HandlerConfig, RpcAddr};
use crate::gossip::Tags;

/// What a handler is run for.
#[derive(Debug, Clone)]
pub enum Trigger {
    User { name: String, ltime: u64 },
    Query { name: String, ltime: u64 },
    Member { kind: String, node: String },
}

impl Trigger {
    fn kind(&self) -> &str {
        match self {
            Self::User { .. } => "user",
            Self::Query { .. } => "query",
            Self::Member { kind, .. } => kind,
        }
    }
}

/// Whether `filter` selects `trigger`.
pub fn matches(filter: &EventFilter, trigger: &Trigger) -> bool {
    match (filter, trigger) {
        (EventFilter::All, Trigger::Query { .. }) => false,
        (EventFilter::All, _) => true,
        (EventFilter::User(want), Trigger::User { name, .. })
        | (EventFilter::Query(want), Trigger::Query { name, .. }) => {
            want.as_ref().is_none_or(|w| w == name)
        }
        (EventFilter::Member(k), Trigger::Member { kind, .. }) => k == kind,
        (EventFilter::UserPrefix(p), Trigger::User { name, .. }) => name.starts_with(p.as_str()),
        _ => false,
    }
}

/// The handlers of `configured` that `trigger` selects.
pub fn matching(configured: &[HandlerConfig], trigger: &Trigger) -> Vec<HandlerConfig> {
    configured
        .iter()
        .filter(|h| matches(&h.filter, trigger))
        .cloned()
        .collect()
}

/// Event-context variables a handler must not inherit from the agent's environment.
pub fn is_event_context_var(name: &str) -> bool {
    const EXACT: [&str; 6] = [
        "DROOT_FLEET_EVENT",
        "DROOT_FLEET_USER_EVENT",
        "DROOT_FLEET_QUERY_NAME",
        "DROOT_FLEET_LTIME",
        "DROOT_FLEET_NODE",
        "DROOT_FLEET_MEMBER",
    ];
    EXACT.contains(&name) || name.starts_with("DROOT_FLEET_TAG_")
}

/// Environment of a handler (set on top of the agent's own, see the module docs).
pub fn env(trigger: &Trigger, node: &str, rpc: &RpcAddr, tags: &Tags) -> Vec<(String, String)> {
    let mut env = vec![
        ("DROOT_FLEET_EVENT".to_owned(), trigger.kind().to_owned()),
        ("DROOT_FLEET_NODE".to_owned(), node.to_owned()),
        ("DROOT_FLEET_RPC".to_owned(), rpc.to_string()),
    ];
    match trigger {
        Trigger::User { name, ltime } => {
            env.push(("DROOT_FLEET_USER_EVENT".into(), name.clone()));
            env.push(("DROOT_FLEET_LTIME".into(), ltime.to_string()));
        }
        Trigger::Query { name, ltime } => {
            env.push(("DROOT_FLEET_QUERY_NAME".into(), name.clone()));
            env.push(("DROOT_FLEET_LTIME".into(), ltime.to_string()));
        }
        Trigger::Member { node, .. } => env.push(("DROOT_FLEET_MEMBER".into(), node.clone())),
    }
    // The agent's own tags (`@deploy-format`) are not the operator's.
    let own = |k: &str| k.starts_with(super::deploy_format::RESERVED_PREFIX);
    for (k, v) in tags.iter().filter(|(k, _)| !own(k)) {
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push((format!("DROOT_FLEET_TAG_{key}"), v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let user = Trigger::User {
            name: "deploy".into(),
            ltime: 1,
        };
        let query = Trigger::Query {
            name: "deploy".into(),
            ltime: 1,
        };
        assert!(matches(&EventFilter::All, &user));
        assert!(!matches(&EventFilter::All, &query));
        assert!(matches(&EventFilter::User(None), &user));
        assert!(matches(&EventFilter::User(Some("deploy".into())), &user));
        assert!(!matches(&EventFilter::User(Some("other".into())), &user));
        assert!(matches(&EventFilter::Query(Some("deploy".into())), &query));
    }

    #[test]
    fn handlers_see_the_operators_tags_not_the_agents_own() {
        let user = Trigger::User {
            name: "deploy".into(),
            ltime: 1,
        };
        let mut tags: Tags = [("dc-1".to_owned(), "eu".to_owned())].into();
        super::super::deploy_format::announce(&mut tags);
        let rpc = RpcAddr::Unix("/run/a.sock".into());
        let env = env(&user, "n1", &rpc, &tags);
        let tag_vars: Vec<_> = (env.iter())
            .filter(|(k, _)| k.starts_with("DROOT_FLEET_TAG_"))
            .collect();
        assert_eq!(
            tag_vars,
            [&("DROOT_FLEET_TAG_DC_1".to_owned(), "eu".to_owned())]
        );
    }
}
