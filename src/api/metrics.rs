//! `GET /v1/metrics` (and the scrape-only listener of `metrics_addr`): the agent's metrics
//! in the Prometheus text format.
//!
//! Nothing is counted twice: the gossip and handler counters are the ones `GET /v1/info`
//! shows (read through [`Command::Info`]), the members come from [`Command::Members`], and
//! the deploy side renders its own families ([`DeployView::metrics`]). Turning those
//! snapshots into families ([`agent_families`]) is pure and unit-tested.
//!
//! [`DeployView::metrics`]: crate::deploy::status::DeployView::metrics

use std::collections::BTreeMap;

use crate::agent::{AgentError, Command};
use crate::metrics::{Family, render};
use crate::wire::{Info, Member};

/// Member states, each always shown (0 when none).
const STATES: [&str; 4] = ["alive", "suspect", "left", "failed"];

/// The metrics text of the agent and its deploy controller.
pub async fn gather(services: &super::Services) -> Result<String, AgentError> {
    let info = services.agent.call(Command::Info).await?;
    let members = services.agent.call(Command::Members).await?;
    let mut families = agent_families(&info, &members);
    if let Some(deploy) = &services.deploy {
        families.extend(deploy.metrics());
    }
    Ok(render(&families))
}

/// The agent's families from its info counters and member list.
pub fn agent_families(info: &Info, members: &[Member]) -> Vec<Family> {
    let c = |key: &str| info.counters.get(key).copied().unwrap_or(0);
    let states = members_by_state(members);
    let dropped = by_reason(
        "droot_fleet_gossip_packets_dropped_total",
        "Gossip datagrams dropped before any parser used them, by reason.",
        &[
            ("auth", "packets_dropped_auth"),
            ("short", "packets_dropped_short"),
            ("version", "packets_dropped_version"),
            ("oversize", "packets_dropped_oversize"),
            ("malformed", "packets_dropped_malformed"),
        ],
        c,
    );
    let streams = by_reason(
        "droot_fleet_gossip_streams_dropped_total",
        "Inbound gossip TCP streams (joins, push/pulls) dropped, by reason: auth (a key this \
         node does not hold), evicted (closed or refused at the open-stream limit).",
        &[
            ("auth", "streams_dropped_auth"),
            ("evicted", "streams_evicted"),
        ],
        c,
    );
    let counter = |name, help, key| Family::counter(name, help).with(&[], c(key));
    vec![
        Family::gauge("droot_fleet_build_info", "The agent's version (always 1).")
            .with(&[("version", env!("CARGO_PKG_VERSION"))], 1),
        states,
        counter(
            "droot_fleet_gossip_packets_received_total",
            "Gossip datagrams received.",
            "packets_received",
        ),
        counter(
            "droot_fleet_gossip_packets_sent_total",
            "Gossip datagrams sent.",
            "packets_sent",
        ),
        counter(
            "droot_fleet_gossip_received_bytes_total",
            "Bytes of the gossip datagrams received, sealed.",
            "bytes_received",
        ),
        counter(
            "droot_fleet_gossip_sent_bytes_total",
            "Bytes of the gossip datagrams sent, sealed.",
            "bytes_sent",
        ),
        dropped,
        streams,
        counter(
            "droot_fleet_events_handled_total",
            "User events delivered to this node's handlers and consumers (each once).",
            "events_delivered",
        ),
        counter(
            "droot_fleet_queries_handled_total",
            "Queries this node matched and answered.",
            "queries_matched",
        ),
        counter(
            "droot_fleet_handler_runs_total",
            "Handler processes run (every attempt).",
            "handler_runs",
        ),
        counter(
            "droot_fleet_handler_failures_total",
            "Handler processes that could not start, timed out or exited non-zero.",
            "handler_failures",
        ),
    ]
}

/// The members this node knows, by state.
fn members_by_state(members: &[Member]) -> Family {
    let mut by_state: BTreeMap<&str, u64> = STATES.iter().map(|s| (*s, 0)).collect();
    for m in members {
        if let Some(n) = by_state.get_mut(m.status.as_str()) {
            *n += 1;
        }
    }
    let mut states = Family::gauge(
        "droot_fleet_members",
        "Members this node knows (itself included), by state.",
    );
    for s in STATES {
        states.push(&[("state", s)], by_state[s]);
    }
    states
}

/// A counter family with a `reason` label, one series per `(reason, counter key)`.
fn by_reason(
    name: &'static str,
    help: &'static str,
    reasons: &[(&str, &str)],
    count: impl Fn(&str) -> u64,
) -> Family {
    let mut family = Family::counter(name, help);
    for (reason, key) in reasons {
        family.push(&[("reason", reason)], count(key));
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, status: &str) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.1:7946".into(),
            status: status.into(),
            tags: BTreeMap::new(),
            deploy_format: 2,
            apps: None,
            identity: None,
        }
    }

    #[test]
    fn families_from_info_and_members() {
        let info = Info {
            name: "n1".into(),
            addr: "127.0.0.1:7946".into(),
            tags: BTreeMap::new(),
            bump: 0,
            members_alive: 2,
            counters: [
                ("packets_received", 10),
                ("bytes_sent", 4096),
                ("packets_dropped_auth", 3),
                ("events_delivered", 5),
                ("handler_failures", 1),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            identity_mode: "off".into(),
            identity: None,
        };
        let members = [
            member("n1", "alive"),
            member("n2", "alive"),
            member("n3", "failed"),
            member("n4", "weird"),
        ];
        let text = render(&agent_families(&info, &members));
        for line in [
            "droot_fleet_members{state=\"alive\"} 2\n",
            "droot_fleet_members{state=\"suspect\"} 0\n",
            "droot_fleet_members{state=\"failed\"} 1\n",
            "droot_fleet_gossip_packets_received_total 10\n",
            "droot_fleet_gossip_sent_bytes_total 4096\n",
            "droot_fleet_gossip_packets_dropped_total{reason=\"auth\"} 3\n",
            "droot_fleet_gossip_packets_dropped_total{reason=\"malformed\"} 0\n",
            "droot_fleet_events_handled_total 5\n",
            "droot_fleet_handler_failures_total 1\n",
            "# TYPE droot_fleet_handler_runs_total counter\n",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        // No member's name is a label value; an unknown state is no series of its own.
        assert!(!text.contains("n2") && !text.contains("weird"), "{text}");
    }
}
