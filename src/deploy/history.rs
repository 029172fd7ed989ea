//! The built-in `history` query: a node's deploy journal ([`super::journal`]) for an app,
//! newest first, with the releases it still holds and what a rollback goes back to.
//!
//! A sibling of the `status` query rather than more fields in it: `status` is asked on
//! every `query status` and every `rollback` and stays small (most answers fit one UDP
//! datagram), while a history is tens of kilobytes. An answer travels back to the asking
//! node over a sealed stream when it does not fit a datagram (at most
//! [`crate::gossip::envelope::MAX_FRAME_PLAINTEXT`], 8 MiB); every node's answer is held to
//! [`MAX_ANSWER`] bytes, far below that, so that asking a large fleet stays cheap: entries
//! beyond the asked limit (at most [`MAX_LIMIT`]) are left out, errors are cut to
//! [`MAX_ANSWER_ERROR`] bytes, and when the answer is still too large the oldest entries go
//! first (each app says how many were left out).
//!
//! Payload: `APP [LIMIT]` (empty: every app, [`DEFAULT_LIMIT`] entries each). Answer: JSON
//! [`NodeHistory`]. Fields are only ever added, with `#[serde(default)]`.

use serde::{Deserialize, Serialize};

use super::journal::Entry;

/// The query's name.
pub const HISTORY_QUERY: &str = "history";
/// Largest answer of one node, in bytes.
pub const MAX_ANSWER: usize = 64 * 1024;
/// Most entries per app in an answer.
pub const MAX_LIMIT: usize = super::journal::KEEP;
/// Entries per app when the payload names no limit.
pub const DEFAULT_LIMIT: usize = 20;
/// Longest error text of an entry in an answer.
pub const MAX_ANSWER_ERROR: usize = 200;
/// Most releases listed per app (the newest).
pub const MAX_RELEASES: usize = 64;

/// One app's history on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHistory {
    pub app: String,
    /// Newest first.
    #[serde(default)]
    pub entries: Vec<Entry>,
    /// Entries the node holds beyond those listed (the limit, or the answer's size bound).
    #[serde(default)]
    pub omitted: usize,
    /// The release `current` names.
    #[serde(default)]
    pub current: Option<String>,
    /// What a rollback goes back to.
    #[serde(default)]
    pub previous: Option<String>,
    /// Releases on disk, in deploy order (oldest first).
    #[serde(default)]
    pub releases: Vec<String>,
}

/// A node's answer to the `history` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHistory {
    pub node: String,
    #[serde(default)]
    pub apps: Vec<AppHistory>,
    /// Apps left out to keep within [`MAX_ANSWER`].
    #[serde(default)]
    pub apps_omitted: usize,
}

/// What a `history` payload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `None`: every app.
    pub app: Option<String>,
    pub limit: usize,
}

impl Request {
    /// `APP [LIMIT]`; a limit that is not a number is the default, and at most
    /// [`MAX_LIMIT`].
    pub fn parse(payload: &[u8]) -> Request {
        let text = String::from_utf8_lossy(payload);
        let mut words = text.split_whitespace();
        let app = words.next().map(str::to_owned);
        let limit = words
            .next()
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(DEFAULT_LIMIT)
            .min(MAX_LIMIT);
        Request { app, limit }
    }

    /// The payload that asks for `limit` entries of `app`.
    pub fn payload(app: &str, limit: usize) -> String {
        format!("{app} {limit}")
    }
}

/// One app as a node holds it: its journal (oldest first) and its releases.
#[derive(Debug, Clone, Default)]
pub struct Held<'a> {
    pub app: &'a str,
    pub journal: &'a [Entry],
    pub current: Option<&'a str>,
    pub previous: Option<&'a str>,
    pub releases: &'a [String],
}

/// `held`'s answer with at most `cap` entries per app (newest first).
fn build(node: &str, held: &[Held<'_>], cap: usize) -> NodeHistory {
    let apps = held
        .iter()
        .map(|h| {
            let entries: Vec<Entry> = h
                .journal
                .iter()
                .rev()
                .take(cap)
                .cloned()
                .map(|mut e| {
                    e.error = e
                        .error
                        .map(|x| super::executor::truncate(x, MAX_ANSWER_ERROR));
                    e
                })
                .collect();
            let skip = h.releases.len().saturating_sub(MAX_RELEASES);
            AppHistory {
                app: h.app.to_owned(),
                omitted: h.journal.len() - entries.len(),
                entries,
                current: h.current.map(str::to_owned),
                previous: h.previous.map(str::to_owned),
                releases: h.releases[skip..].to_vec(),
            }
        })
        .collect();
    NodeHistory {
        node: node.to_owned(),
        apps,
        apps_omitted: 0,
    }
}

fn encode(h: &NodeHistory) -> Vec<u8> {
    serde_json::to_vec(h).unwrap_or_default()
}

/// This node's answer to `req`, at most [`MAX_ANSWER`] bytes: as many of the newest
/// entries per app as fit (up to the limit), then as many apps as fit.
pub fn answer(node: &str, held: &[Held<'_>], req: &Request) -> Vec<u8> {
    let held: Vec<Held<'_>> = held
        .iter()
        .filter(|h| req.app.as_deref().is_none_or(|a| a == h.app))
        .cloned()
        .collect();
    let fits = |cap: usize| {
        let bytes = encode(&build(node, &held, cap));
        (bytes.len() <= MAX_ANSWER).then_some(bytes)
    };
    if let Some(bytes) = fits(req.limit) {
        return bytes;
    }
    // The largest cap that fits: a few encodings, not one per entry.
    let (mut lo, mut hi) = (0, req.limit);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        match fits(mid) {
            Some(_) => lo = mid,
            None => hi = mid,
        }
    }
    if let Some(bytes) = fits(lo) {
        return bytes;
    }
    // Not even the apps alone fit: the first ones that do, counting the rest.
    let mut out = build(node, &held, 0);
    let skeleton = NodeHistory {
        node: node.to_owned(),
        apps: Vec::new(),
        apps_omitted: out.apps.len(),
    };
    let mut total = encode(&skeleton).len();
    let mut fit = 0;
    for a in &out.apps {
        let size = serde_json::to_vec(a).map_or(usize::MAX, |b| b.len() + 1);
        if total.saturating_add(size) > MAX_ANSWER {
            break;
        }
        total += size;
        fit += 1;
    }
    out.apps_omitted = out.apps.len() - fit;
    out.apps.truncate(fit);
    encode(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::journal::Kind;
    use crate::deploy::status::Result as Outcome;

    fn entry(n: usize, error: Option<String>) -> Entry {
        Entry {
            kind: Kind::Deploy,
            event_id: format!("{n:032x}"),
            signer: Some("AbCdEf0123".into()),
            from: Some(format!("v{}", n.saturating_sub(1))),
            to: format!("v{n}"),
            outcome: Outcome::Failed,
            error,
            phases_ms: Default::default(),
            at: n as u64,
        }
    }

    fn parse(bytes: &[u8]) -> NodeHistory {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn the_payload_names_app_and_limit() {
        let r = Request::parse(b"web 5");
        assert_eq!((r.app.as_deref(), r.limit), (Some("web"), 5));
        assert_eq!(Request::parse(b"").app, None);
        assert_eq!(Request::parse(b"web x").limit, DEFAULT_LIMIT);
        assert_eq!(Request::parse(b"web 99999").limit, MAX_LIMIT);
        let p = Request::payload("web", 7);
        assert_eq!(Request::parse(p.as_bytes()).limit, 7);
    }

    #[test]
    fn entries_come_newest_first_up_to_the_limit_for_the_app_asked() {
        let journal: Vec<Entry> = (1..=5).map(|n| entry(n, None)).collect();
        let releases = vec!["v4".to_string(), "v5".to_string()];
        let held = [
            Held {
                app: "web",
                journal: &journal,
                current: Some("v5"),
                previous: Some("v4"),
                releases: &releases,
            },
            Held {
                app: "db",
                ..Default::default()
            },
        ];
        let a = parse(&answer("n1", &held, &Request::parse(b"web 3")));
        assert_eq!(a.node, "n1");
        assert_eq!(a.apps.len(), 1);
        let web = &a.apps[0];
        let tos: Vec<&str> = web.entries.iter().map(|e| e.to.as_str()).collect();
        assert_eq!(tos, ["v5", "v4", "v3"]);
        assert_eq!(web.omitted, 2);
        assert_eq!(web.previous.as_deref(), Some("v4"));
        assert_eq!(web.releases, releases);
        let all = parse(&answer("n1", &held, &Request::parse(b"")));
        assert_eq!(all.apps.len(), 2);
    }

    /// Every app in `names` holding `journal`.
    fn each_holding<'a>(names: &'a [String], journal: &'a [Entry]) -> Vec<Held<'a>> {
        names
            .iter()
            .map(|n| Held {
                app: n,
                journal,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn an_answer_stays_within_its_bound_dropping_the_oldest_first() {
        let long = "e".repeat(crate::deploy::journal::MAX_ERROR);
        let journal: Vec<Entry> = (1..=MAX_LIMIT)
            .map(|n| entry(n, Some(long.clone())))
            .collect();
        let names: Vec<String> = (0..40).map(|i| format!("app{i}")).collect();
        let held = each_holding(&names, &journal);
        let all = Request {
            app: None,
            limit: MAX_LIMIT,
        };
        let bytes = answer("n1", &held, &all);
        assert!(bytes.len() <= MAX_ANSWER, "{}", bytes.len());
        let a = parse(&bytes);
        assert_eq!(a.apps.len(), 40);
        let kept = a.apps[0].entries.len();
        assert!(kept > 0 && kept < MAX_LIMIT, "{kept}");
        // The newest stay; errors are cut.
        assert_eq!(a.apps[0].entries[0].to, format!("v{MAX_LIMIT}"));
        assert_eq!(a.apps[0].omitted, MAX_LIMIT - kept);
        let e = a.apps[0].entries[0].error.as_ref().unwrap();
        assert!(e.len() <= MAX_ANSWER_ERROR);
        // So many apps that none of their entries fit: apps are left out, counted.
        let many: Vec<String> = (0..3000)
            .map(|i| format!("a-rather-long-app-name-{i}"))
            .collect();
        let held = each_holding(&many, &journal);
        let bytes = answer("n1", &held, &Request::parse(b""));
        assert!(bytes.len() <= MAX_ANSWER, "{}", bytes.len());
        let a = parse(&bytes);
        assert!(a.apps_omitted > 0 && a.apps.len() + a.apps_omitted == 3000);
    }
}
