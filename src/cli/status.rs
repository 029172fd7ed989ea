//! `query status` answers: parsed, rendered as a table with a per-app summary, and used by
//! `rollback` to find the version to go back to.
//!
//! Pure (no I/O). Answers come from every node of the fleet, so an answer that is not a
//! [`NodeStatus`] is reported as such, never trusted or dropped silently, and the rollback
//! version is chosen only when every target that has the app agrees on it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::QueryRequest;
use crate::api::QueryResponse;
use crate::deploy::controller::targets::Matcher;
use crate::deploy::signed::Targets;
use crate::deploy::status::{AppView, NodeStatus};
use crate::wire::Member;

/// The parsed answers of one `status` query (JSON: [`super::status_json`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusAnswers {
    /// Sorted by node.
    pub responses: Vec<NodeStatus>,
    /// Targets that did not answer in time.
    pub missing: Vec<String>,
    /// Answers that are not a node status: `(node, why)`.
    pub invalid: Vec<InvalidAnswer>,
    /// The app asked about, if any.
    pub app: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidAnswer {
    pub node: String,
    pub error: String,
}

/// Parses each answer's payload as a [`NodeStatus`] JSON; `app` (if given) keeps only it.
pub fn parse(r: &QueryResponse, app: Option<&str>) -> StatusAnswers {
    let mut out = StatusAnswers {
        missing: r.missing.clone(),
        app: app.map(String::from),
        ..Default::default()
    };
    out.missing.sort();
    for a in &r.answers {
        match serde_json::from_str::<NodeStatus>(&a.payload) {
            Ok(mut s) => {
                // The node that answered is who it is, whatever the payload says.
                s.node = a.node.clone();
                if let Some(app) = app {
                    s.apps.retain(|v| v.app == app);
                }
                s.apps.sort_by(|x, y| x.app.cmp(&y.app));
                out.responses.push(s);
            }
            Err(e) => out.invalid.push(InvalidAnswer {
                node: a.node.clone(),
                error: format!("not a status answer ({e})"),
            }),
        }
    }
    out.responses.sort_by(|a, b| a.node.cmp(&b.node));
    out.invalid.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// Adds the members gossip declared failed that `req`'s filters match to `missing`: a query
/// reaches alive members only, and a node that went down is the one the operator must see.
pub fn add_down(s: &mut StatusAnswers, members: &[Member], req: &QueryRequest) {
    let filters = Matcher::new(&Targets {
        nodes: req.nodes.clone(),
        tags: req.tags.clone().into_iter().collect(),
    });
    let answered: Vec<&str> = s.responses.iter().map(|r| r.node.as_str()).collect();
    let down = (members.iter())
        .filter(|m| m.status == "failed" && filters.matches(&m.name, &m.tags))
        .filter(|m| !answered.contains(&m.name.as_str()))
        .map(|m| m.name.clone());
    s.missing.extend(down);
    s.missing.sort();
    s.missing.dedup();
}

/// `s` on one line with control characters shown as `?`: the text comes from other nodes
/// and must not move the operator's cursor or change the terminal.
pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub(super) fn or_dash(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "-".to_string(), one_line)
}

fn last(v: &AppView) -> String {
    match &v.last {
        None => "-".into(),
        Some(o) => match &o.error {
            Some(e) => format!("{} {}: {}", o.result.as_str(), o.version, one_line(e)),
            None => format!("{} {}", o.result.as_str(), o.version),
        },
    }
}

/// How long ago `since` (unix seconds) was, in one unit: `42s`, `5m`, `3h`, `2d`.
fn ago(since: Option<u64>, now: u64) -> String {
    let Some(since) = since else {
        return "-".into();
    };
    let d = now.saturating_sub(since);
    match d {
        0..60 => format!("{d}s"),
        60..3600 => format!("{}m", d / 60),
        3600..86400 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86400),
    }
}

fn row(node: &str, v: &AppView, now: u64) -> [String; 8] {
    let state = match v.pid {
        Some(pid) if !v.state.is_empty() => format!("{} ({pid})", v.state),
        _ if v.state.is_empty() => "-".into(),
        _ => v.state.clone(),
    };
    let phase = if v.phase.is_empty() {
        "-".into()
    } else {
        one_line(&v.phase)
    };
    [
        one_line(node),
        one_line(&v.app),
        or_dash(&v.current),
        or_dash(&v.desired_version),
        state,
        ago(v.since, now),
        phase,
        last(v),
    ]
}

/// The table (NODE APP VERSION DESIRED STATE SINCE PHASE LAST), then the summary lines.
/// `now` (unix seconds) makes SINCE an age.
pub fn render(s: &StatusAnswers, now: u64) -> String {
    let mut rows = vec![
        [
            "NODE", "APP", "VERSION", "DESIRED", "STATE", "SINCE", "PHASE", "LAST",
        ]
        .map(String::from),
    ];
    for n in &s.responses {
        if n.apps.is_empty() {
            let none = AppView {
                app: "-".into(),
                ..Default::default()
            };
            rows.push(row(&n.node, &none, now));
        }
        for v in &n.apps {
            rows.push(row(&n.node, v, now));
        }
    }
    let mut out = table(&rows);
    for l in summary(s) {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `rows` (the first is the header) as left-aligned columns two spaces apart; the last
/// column is not padded.
pub(super) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn most_common<'a>(values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for v in values {
        *n.entry(v).or_default() += 1;
    }
    n.into_iter().max_by_key(|(_, c)| *c).map(|(v, _)| v)
}

/// Per app: "18/20 nodes on web v42; 1 rolled_back; 1 did not answer", then the nodes
/// that did not answer and the invalid answers.
pub fn summary(s: &StatusAnswers) -> Vec<String> {
    let mut by_app: BTreeMap<&str, Vec<&AppView>> = BTreeMap::new();
    for n in &s.responses {
        for v in &n.apps {
            by_app.entry(&v.app).or_default().push(v);
        }
    }
    let mut out = Vec::new();
    if let Some(app) = s.app.as_deref().filter(|_| by_app.is_empty()) {
        out.push(format!("no answering node has app {}", one_line(app)));
    }
    for (app, views) in &by_app {
        let desired = most_common(views.iter().filter_map(|v| v.desired_version.as_deref()));
        let target =
            desired.or_else(|| most_common(views.iter().filter_map(|v| v.current.as_deref())));
        let Some(target) = target else {
            out.push(format!(
                "{app}: {} node(s), none has a release",
                views.len()
            ));
            continue;
        };
        let on = views
            .iter()
            .filter(|v| v.current.as_deref() == Some(target))
            .count();
        let mut line = format!(
            "{on}/{} nodes on {app} {target}",
            views.len() + s.missing.len()
        );
        let mut results: BTreeMap<&str, usize> = BTreeMap::new();
        for o in views.iter().filter_map(|v| v.last.as_ref()) {
            if o.version == target && o.result != crate::deploy::status::Result::Ok {
                *results.entry(o.result.as_str()).or_default() += 1;
            }
        }
        for (r, n) in results {
            line.push_str(&format!("; {n} {r}"));
        }
        if !s.missing.is_empty() {
            line.push_str(&format!("; {} did not answer", s.missing.len()));
        }
        out.push(line);
    }
    out.push(format!(
        "{} node(s) answered, {} did not{}",
        s.responses.len() + s.invalid.len(),
        s.missing.len(),
        if s.missing.is_empty() {
            String::new()
        } else {
            format!(": {}", one_line(&s.missing.join(", ")))
        }
    ));
    for i in &s.invalid {
        out.push(format!("{}: {}", one_line(&i.node), one_line(&i.error)));
    }
    out
}

/// Why `rollback` could not pick a version by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error(
        "no target reported app {app:?}{missing}; check the app name and --node/--tag, or \
         pass --to VERSION"
    )]
    NoApp { app: String, missing: String },
    #[error(
        "no target has a previous release of {app} to go back to (found: {found}); pass \
         --to VERSION"
    )]
    NoPrevious { app: String, found: String },
    #[error(
        "the targets disagree on the previous release of {app} (found: {found}); pass \
         --to VERSION to choose one"
    )]
    Disagree { app: String, found: String },
}

fn listing(groups: &BTreeMap<String, Vec<String>>) -> String {
    groups
        .iter()
        .map(|(prev, nodes)| {
            let shown: Vec<&str> = nodes.iter().take(5).map(String::as_str).collect();
            let more = nodes.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{prev} on {}{more}", shown.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `previous` release every target with `app` reports, if they all agree.
pub fn rollback_version(s: &StatusAnswers, app: &str) -> Result<String, RollbackError> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &s.responses {
        for v in n.apps.iter().filter(|v| v.app == app) {
            let key = v
                .previous
                .clone()
                .unwrap_or_else(|| "no previous release".into());
            groups.entry(key).or_default().push(n.node.clone());
        }
    }
    if groups.is_empty() {
        let missing = if s.missing.is_empty() {
            String::new()
        } else {
            format!(
                " ({} did not answer: {})",
                s.missing.len(),
                s.missing.join(", ")
            )
        };
        return Err(RollbackError::NoApp {
            app: app.into(),
            missing,
        });
    }
    let found = listing(&groups);
    let versions: Vec<&String> = s
        .responses
        .iter()
        .flat_map(|n| n.apps.iter())
        .filter(|v| v.app == app)
        .filter_map(|v| v.previous.as_ref())
        .collect();
    match versions.first() {
        None => Err(RollbackError::NoPrevious {
            app: app.into(),
            found,
        }),
        Some(first) if groups.len() == 1 => Ok((*first).clone()),
        Some(_) => Err(RollbackError::Disagree {
            app: app.into(),
            found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::QueryAnswer;
    use crate::deploy::status::{NodeOutcome, Result as Outcome};

    fn view(app: &str, current: &str, previous: Option<&str>) -> AppView {
        AppView {
            app: app.into(),
            current: Some(current.into()),
            previous: previous.map(String::from),
            desired_version: Some("v2".into()),
            state: "running".into(),
            pid: Some(42),
            since: Some(1000),
            phase: "idle".into(),
            ..Default::default()
        }
    }

    fn answers(nodes: &[(&str, Vec<AppView>)], missing: &[&str]) -> QueryResponse {
        QueryResponse {
            answers: nodes
                .iter()
                .map(|(n, apps)| QueryAnswer {
                    node: n.to_string(),
                    payload: serde_json::to_string(&NodeStatus {
                        node: "liar".into(),
                        apps: apps.clone(),
                    })
                    .unwrap(),
                })
                .collect(),
            missing: missing.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn parses_sorts_and_filters() {
        let mut r = answers(
            &[
                (
                    "n2",
                    vec![view("web", "v2", Some("v1")), view("db", "d1", None)],
                ),
                ("n1", vec![view("web", "v2", Some("v1"))]),
            ],
            &["n3"],
        );
        r.answers.push(QueryAnswer {
            node: "n0".into(),
            payload: "hello from a handler".into(),
        });
        let s = parse(&r, Some("web"));
        let nodes: Vec<&str> = s.responses.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(nodes, ["n1", "n2"], "sorted, and named by who answered");
        assert!(s.responses.iter().all(|n| n.apps.len() == 1));
        assert_eq!(s.missing, ["n3"]);
        assert_eq!(s.invalid.len(), 1);
        assert_eq!(s.invalid[0].node, "n0");
    }

    #[test]
    fn down_members_the_filters_match_are_missing() {
        let member = |name: &str, status: &str, role: &str| Member {
            name: name.into(),
            addr: "10.0.0.1:7946".into(),
            status: status.into(),
            tags: [("role".to_string(), role.to_string())].into(),
            deploy_format: 2,
            apps: None,
            identity: None,
        };
        let mut s = parse(&answers(&[], &["n3"]), Some("web"));
        let members = [
            member("n1", "failed", "web"),
            member("n2", "left", "web"),
            member("n3", "failed", "web"),
            member("n4", "failed", "db"),
            member("x5", "failed", "web"),
        ];
        let req = QueryRequest {
            nodes: vec!["n.*".into()],
            tags: [("role".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        add_down(&mut s, &members, &req);
        assert_eq!(s.missing, ["n1", "n3"]);
        // One that answered before gossip declared it failed is not also missing.
        let mut s = parse(&answers(&[("n1", vec![])], &[]), Some("web"));
        add_down(&mut s, &members, &req);
        assert_eq!(s.missing, ["n3"]);
    }

    #[test]
    fn table_and_summary() {
        let mut bad = view("web", "v1", None);
        bad.last = Some(NodeOutcome {
            node: "b".into(),
            app: "web".into(),
            event_id: "ee".into(),
            version: "v2".into(),
            result: Outcome::RolledBack,
            error: Some("health check\nfailed".into()),
            at: 0,
        });
        let r = answers(
            &[("a", vec![view("web", "v2", Some("v1"))]), ("b", vec![bad])],
            &["c"],
        );
        let text = render(&parse(&r, None), 1000 + 150);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NODE  APP  VERSION  DESIRED  STATE         SINCE  PHASE"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("a     web  v2       v2       running (42)  2m     idle"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("rolled_back v2: health check failed"),
            "{text}"
        );
        assert_eq!(
            lines[3],
            "1/3 nodes on web v2; 1 rolled_back; 1 did not answer"
        );
        assert_eq!(lines[4], "2 node(s) answered, 1 did not: c");
    }

    #[test]
    fn since_is_an_age_in_one_unit() {
        assert_eq!(ago(None, 5), "-");
        assert_eq!(ago(Some(10), 5), "0s", "a clock behind the node's");
        assert_eq!(ago(Some(0), 59), "59s");
        assert_eq!(ago(Some(0), 3599), "59m");
        assert_eq!(ago(Some(0), 86399), "23h");
        assert_eq!(ago(Some(0), 3 * 86400), "3d");
    }

    #[test]
    fn remote_text_cannot_drive_the_terminal() {
        let mut v = view("web", "v2\x1b[2J", None);
        v.phase = "idle\r\x1b]0;owned\x07".into();
        let r = answers(&[("a", vec![v])], &["m\x1b[31m"]);
        let text = render(&parse(&r, None), 0);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("v2?[2J"), "{text:?}");
    }

    #[test]
    fn rollback_agrees() {
        let r = answers(
            &[
                ("a", vec![view("web", "v2", Some("v1"))]),
                (
                    "b",
                    vec![view("web", "v2", Some("v1")), view("db", "x", None)],
                ),
                ("c", vec![view("db", "x", None)]),
            ],
            &[],
        );
        assert_eq!(rollback_version(&parse(&r, None), "web").unwrap(), "v1");
    }

    #[test]
    fn rollback_refuses_disagreement_and_nothing() {
        let r = answers(
            &[
                ("a", vec![view("web", "v3", Some("v2"))]),
                ("b", vec![view("web", "v2", Some("v1"))]),
                ("c", vec![view("web", "v2", None)]),
            ],
            &[],
        );
        let err = rollback_version(&parse(&r, None), "web").unwrap_err();
        assert!(matches!(err, RollbackError::Disagree { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("v1 on b; v2 on a"), "{msg}");
        assert!(msg.contains("no previous release on c"), "{msg}");
        assert!(msg.contains("--to VERSION"), "{msg}");

        let r = answers(&[("a", vec![view("web", "v1", None)])], &[]);
        let err = rollback_version(&parse(&r, None), "web").unwrap_err();
        assert!(matches!(err, RollbackError::NoPrevious { .. }), "{err}");

        let r = answers(&[("a", vec![view("db", "v1", None)])], &["z"]);
        let s = parse(&r, Some("web"));
        assert!(render(&s, 0).contains("no answering node has app web"));
        let err = rollback_version(&s, "web").unwrap_err();
        assert!(err.to_string().contains("1 did not answer: z"), "{err}");
    }
}
