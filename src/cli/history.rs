//! `history APP`: every node's deploy journal for the app (the built-in `history` query,
//! [`crate::deploy::history`]), merged newest first, then per node the releases it still
//! holds and what a rollback goes back to.
//!
//! Parsing, merging and rendering are pure. Answers come from every node of the fleet: the
//! node that answered is who it is, whatever the payload says; an answer that is not a
//! history is reported as such; text from nodes is shown on one line without control
//! characters.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::fleet::{Format, RpcArgs, print_json, runtime, tag_filters};
use super::status::{InvalidAnswer, one_line, or_dash, table};
use crate::api::{QueryRequest, QueryResponse};
use crate::deploy::history::{AppHistory, DEFAULT_LIMIT, HISTORY_QUERY, MAX_LIMIT, NodeHistory};
use crate::deploy::journal::Entry;
use crate::durations::parse_duration;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The app.
    pub app: String,
    /// Only nodes whose whole name matches REGEX (repeatable: any may match).
    #[arg(long = "node", value_name = "REGEX")]
    pub nodes: Vec<String>,
    /// Only nodes whose tag KEY matches REGEX as a whole (KEY=REGEX, repeatable: all must
    /// match).
    #[arg(long = "tag", value_name = "KEY=REGEX")]
    pub tags: Vec<String>,
    /// Show the newest N deploys across the nodes (at most 100).
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_name = "N")]
    pub limit: usize,
    /// How long to wait for answers (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

pub fn execute(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    super::deploy_event::check_app(&args.app)?;
    if !(1..=MAX_LIMIT).contains(&args.limit) {
        anyhow::bail!("--limit {}: give 1 to {MAX_LIMIT}", args.limit);
    }
    let timeout = parse_duration(&args.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let req = QueryRequest {
        name: HISTORY_QUERY.into(),
        payload: crate::deploy::history::Request::payload(&args.app, args.limit),
        nodes: args.nodes,
        tags: tag_filters(&args.tags)?,
        timeout_ms: Some(timeout.as_millis().try_into().unwrap_or(u64::MAX)),
    };
    let r = runtime()?.block_on(args.rpc.client()?.query(&req))?;
    let h = parse(&r, &args.app, args.limit);
    match args.format {
        Format::Json => print_json(&h)?,
        Format::Text => print!("{}", render(&h)),
    }
    Ok(ExitCode::SUCCESS)
}

/// One deploy on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub node: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// What one node holds of the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    pub node: String,
    /// The release `current` names.
    pub current: Option<String>,
    /// What `rollback` goes back to.
    pub rollback_to: Option<String>,
    /// Releases on disk, oldest first.
    pub releases: Vec<String>,
    /// Entries the node holds beyond those it sent.
    pub omitted: usize,
}

/// The merged answers (`--format json` prints this).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct History {
    pub app: String,
    /// Newest first, across nodes.
    pub entries: Vec<Row>,
    /// Sorted by node; nodes that answered without the app are not listed.
    pub nodes: Vec<Held>,
    /// Matching nodes that did not answer in time.
    pub missing: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<InvalidAnswer>,
    /// Nodes that answered but do not run the app.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub without_app: Vec<String>,
}

/// Merges the answers: the newest `limit` entries of `app` across nodes (ties in time: by
/// node, then each node's own order).
pub fn parse(r: &QueryResponse, app: &str, limit: usize) -> History {
    let mut h = History {
        app: app.to_owned(),
        missing: r.missing.clone(),
        ..Default::default()
    };
    h.missing.sort();
    let mut answers: Vec<(String, AppHistory)> = Vec::new();
    for a in &r.answers {
        match serde_json::from_str::<NodeHistory>(&a.payload) {
            Ok(n) => match n.apps.into_iter().find(|x| x.app == app) {
                Some(x) => answers.push((a.node.clone(), x)),
                None => h.without_app.push(a.node.clone()),
            },
            Err(e) => h.invalid.push(InvalidAnswer {
                node: a.node.clone(),
                error: format!("not a history answer ({e})"),
            }),
        }
    }
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    for (node, x) in answers {
        h.entries.extend(x.entries.into_iter().map(|entry| Row {
            node: node.clone(),
            entry,
        }));
        h.nodes.push(Held {
            node,
            current: x.current,
            rollback_to: x.previous,
            releases: x.releases,
            omitted: x.omitted,
        });
    }
    // Stable: equal times keep the node order, and each node's newest-first order.
    h.entries.sort_by_key(|r| std::cmp::Reverse(r.entry.at));
    h.entries.truncate(limit);
    h.without_app.sort();
    h.invalid.sort_by(|a, b| a.node.cmp(&b.node));
    h
}

/// `12ms`, `1.4s`, `2m05s`.
fn short(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", d.as_secs_f64()),
        _ => format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60),
    }
}

fn row(r: &Row) -> [String; 9] {
    let e = &r.entry;
    let time = crate::release::layout::display_time(e.at);
    let phases: Vec<String> = e
        .phases_ms
        .iter()
        .map(|(p, d)| format!("{p}={}", short(d)))
        .collect();
    [
        time.trim_end_matches(" UTC").to_owned(),
        one_line(&r.node),
        e.kind.as_str().to_owned(),
        one_line(&e.event_id),
        or_dash(&e.signer),
        format!("{} -> {}", or_dash(&e.from), one_line(&e.to)),
        e.outcome.as_str().to_owned(),
        if phases.is_empty() {
            "-".into()
        } else {
            phases.join(" ")
        },
        or_dash(&e.error),
    ]
}

/// The table (TIME (UTC), NODE, KIND, EVENT, SIGNER, FROM -> TO, OUTCOME, PHASES, ERROR),
/// then per node the releases it holds and its rollback target, then who did not answer.
pub fn render(h: &History) -> String {
    let header = [
        "TIME (UTC)",
        "NODE",
        "KIND",
        "EVENT",
        "SIGNER",
        "FROM -> TO",
        "OUTCOME",
        "PHASES",
        "ERROR",
    ];
    let mut rows = vec![header.map(String::from)];
    rows.extend(h.entries.iter().map(row));
    let mut out = match h.entries.is_empty() {
        true => format!("no deploys of {} recorded\n", one_line(&h.app)),
        false => table(&rows),
    };
    if !h.nodes.is_empty() {
        out.push_str("\nreleases held (oldest first, * current) and the rollback target:\n");
    }
    for n in &h.nodes {
        let held: Vec<String> = n
            .releases
            .iter()
            .map(|r| match n.current.as_deref() == Some(r.as_str()) {
                true => format!("{}*", one_line(r)),
                false => one_line(r),
            })
            .collect();
        out.push_str(&format!(
            "{}: {} -> rollback to {}\n",
            one_line(&n.node),
            if held.is_empty() {
                "none".to_string()
            } else {
                held.join(" ")
            },
            n.rollback_to
                .as_deref()
                .map_or_else(|| "nothing (no earlier good release)".into(), one_line)
        ));
    }
    let answered = h.nodes.len() + h.without_app.len() + h.invalid.len();
    out.push_str(&format!(
        "{answered} node(s) answered, {} did not{}\n",
        h.missing.len(),
        match h.missing.is_empty() {
            true => String::new(),
            false => format!(": {}", one_line(&h.missing.join(", "))),
        }
    ));
    if !h.without_app.is_empty() {
        let nodes = one_line(&h.without_app.join(", "));
        out.push_str(&format!("without {}: {nodes}\n", one_line(&h.app)));
    }
    for i in &h.invalid {
        out.push_str(&format!("{}: {}\n", one_line(&i.node), one_line(&i.error)));
    }
    out
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
