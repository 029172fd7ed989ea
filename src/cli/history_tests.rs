use super::*;
use crate::api::QueryAnswer;
use crate::deploy::journal::Kind;
use crate::deploy::phases::{Phase, PhaseTimes};
use crate::deploy::status::Result as Outcome;

fn entry(to: &str, at: u64, outcome: Outcome) -> Entry {
    let mut phases_ms = PhaseTimes::default();
    phases_ms.add(Phase::Fetch, Duration::from_millis(12));
    phases_ms.add(Phase::Health, Duration::from_millis(2500));
    Entry {
        kind: Kind::Deploy,
        event_id: format!("{at:032x}"),
        signer: Some("AbCdEf0123".into()),
        from: Some("v1".into()),
        to: to.into(),
        outcome,
        error: (outcome != Outcome::Ok).then(|| "health check failed\n\u{1b}[2J".into()),
        phases_ms,
        at,
    }
}

fn answer(node: &str, entries: Vec<Entry>, releases: &[&str]) -> QueryAnswer {
    let h = NodeHistory {
        node: "liar".into(),
        apps: vec![
            AppHistory {
                app: "web".into(),
                entries,
                omitted: 0,
                current: releases.last().map(|r| r.to_string()),
                previous: releases[..releases.len() - 1].last().map(|r| r.to_string()),
                releases: releases.iter().map(|r| r.to_string()).collect(),
            },
            AppHistory {
                app: "db".into(),
                entries: vec![entry("d9", 99, Outcome::Ok)],
                ..Default::default()
            },
        ],
        apps_omitted: 0,
    };
    QueryAnswer {
        node: node.into(),
        payload: serde_json::to_string(&h).unwrap(),
    }
}

fn response() -> QueryResponse {
    QueryResponse {
        answers: vec![
            answer(
                "web-2",
                vec![
                    entry("v3", 30, Outcome::RolledBack),
                    entry("v2", 20, Outcome::Ok),
                ],
                &["v1", "v2"],
            ),
            answer("web-1", vec![entry("v2", 25, Outcome::Ok)], &["v2"]),
            QueryAnswer {
                node: "web-4".into(),
                payload: "not json".into(),
            },
        ],
        missing: vec!["web-3".into()],
    }
}

#[test]
fn answers_merge_newest_first_across_nodes_for_the_app() {
    let h = parse(&response(), "web", 10);
    let rows: Vec<(&str, &str, u64)> = h
        .entries
        .iter()
        .map(|r| (r.node.as_str(), r.entry.to.as_str(), r.entry.at))
        .collect();
    // The node is who answered, not what the payload says; the other app is left out.
    assert_eq!(
        rows,
        [
            ("web-2", "v3", 30),
            ("web-1", "v2", 25),
            ("web-2", "v2", 20)
        ]
    );
    assert_eq!(h.nodes.len(), 2);
    assert_eq!(h.nodes[0].node, "web-1");
    assert_eq!(h.nodes[1].rollback_to.as_deref(), Some("v1"));
    assert_eq!(h.missing, ["web-3"]);
    assert_eq!(h.invalid.len(), 1);
    assert_eq!(h.invalid[0].node, "web-4");
    // The limit keeps the newest across the fleet.
    let h2 = parse(&response(), "web", 2);
    assert_eq!(h2.entries.len(), 2);
    assert_eq!(h2.entries[1].entry.at, 25);
    // A node without the app says so.
    let none = parse(&response(), "api", 10);
    assert!(none.entries.is_empty());
    assert_eq!(none.without_app, ["web-1", "web-2"]);
}

#[test]
fn the_table_shows_each_column_and_nothing_a_terminal_would_act_on() {
    let text = render(&parse(&response(), "web", 10));
    assert!(!text.contains('\u{1b}'), "{text}");
    let first = text.lines().nth(1).unwrap();
    for want in [
        "1970-01-01 00:00:30",
        "web-2",
        "deploy",
        &format!("{:032x}", 30),
        "AbCdEf0123",
        "v1 -> v3",
        "rolled_back",
        "fetch=12ms health=2.5s",
        "health check failed",
    ] {
        assert!(first.contains(want), "{want:?} not in {first:?}");
    }
    assert!(text.contains("web-2: v1 v2* -> rollback to v1"), "{text}");
    assert!(text.contains("web-1: v2* -> rollback to nothing"), "{text}");
    assert!(
        text.contains("3 node(s) answered, 1 did not: web-3"),
        "{text}"
    );
    assert!(text.contains("web-4: not a history answer"), "{text}");
    let json = serde_json::to_value(parse(&response(), "web", 10)).unwrap();
    let e = &json["entries"][0];
    assert_eq!(e["node"], "web-2");
    assert_eq!(e["phases_ms"]["health"], 2500);
    assert_eq!(e["outcome"], "rolled_back");
    assert_eq!(json["nodes"][1]["rollback_to"], "v1");
}

#[test]
fn durations_read_short() {
    assert_eq!(short(Duration::from_millis(7)), "7ms");
    assert_eq!(short(Duration::from_millis(1400)), "1.4s");
    assert_eq!(short(Duration::from_secs(125)), "2m05s");
}
