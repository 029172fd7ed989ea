//! Which nodes a deploy event is for, and where an event stands across them.
//!
//! Every node computes both from what gossip told it: the members (alive or not, and
//! their tags), which apps each node runs (its `deploy.apps` announcement), and the
//! outcomes nodes gossiped. No coordinator, so two nodes with the same view agree.

use std::collections::{BTreeMap, BTreeSet};

use crate::deploy::control::{Action, Orders};
use crate::deploy::rollout::{self, Decision, Plan};
use crate::deploy::signed::{DeployEvent, MaxParallel, MinHealthy, Targets};
use crate::deploy::status::{NodeOutcome, Progress, Result as Res};
use crate::gossip::query::FilterSet;
use crate::gossip::{Filter, Tags};

/// A member as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    /// Alive or suspect (it may still answer); failed and left members are not.
    pub alive: bool,
    /// Failed (unreachable, not left on purpose): a target it would have been is listed
    /// as unreachable in the progress (without a progress deadline; with one it stays a
    /// target, pending until the deadline).
    pub failed: bool,
    pub tags: Tags,
    /// The deploy event format its agent reads, `None` while its tags are not known (an
    /// old agent with no tags reads the same).
    pub deploy_format: Option<u16>,
}

impl MemberView {
    /// A member as the agent lists it (`alive`, `suspect`, `failed`, `left`).
    pub fn from_member(m: crate::wire::Member) -> Self {
        MemberView {
            deploy_format: m.known_format(),
            alive: matches!(m.status.as_str(), "alive" | "suspect"),
            failed: m.status == "failed",
            name: m.name,
            tags: m.tags,
        }
    }

    /// Whether its agent is known to read only formats older than `ev` needs.
    fn too_old_for(&self, ev: &DeployEvent) -> bool {
        self.deploy_format.is_some_and(|f| f < ev.format_needed())
    }
}

/// Compiled target filters of one event (the query filters' rules: any `--node`, every
/// `--tag`). A bad regex matches nothing (the CLI checks them before signing, so only a
/// hand-made event has one).
pub struct Matcher(Option<FilterSet>);

impl Matcher {
    pub fn new(t: &Targets) -> Self {
        let filters: Vec<Filter> = t
            .nodes
            .iter()
            .map(|p| Filter::NodeName(p.clone()))
            .chain(t.tags.iter().map(|(key, value)| Filter::Tag {
                key: key.clone(),
                value: value.clone(),
            }))
            .collect();
        Matcher(FilterSet::new(&filters).ok())
    }

    pub fn matches(&self, name: &str, tags: &Tags) -> bool {
        self.0.as_ref().is_some_and(|f| f.matches(name, tags))
    }
}

/// The targets of `ev`: alive members that match its filters, run its app and read its
/// format, plus any node that already reported an outcome for it.
pub fn targets(
    ev: &DeployEvent,
    members: &BTreeMap<String, MemberView>,
    node_apps: &BTreeMap<String, BTreeSet<String>>,
    outcomes: &BTreeMap<String, NodeOutcome>,
) -> Vec<String> {
    let id = ev.id_hex();
    let mut out: BTreeSet<String> = matching(ev, members, node_apps)
        .filter(|v| v.alive && !v.too_old_for(ev))
        .map(|v| v.name.clone())
        .collect();
    out.extend(
        outcomes
            .values()
            .filter(|o| o.event_id == id && o.app == ev.app)
            .map(|o| o.node.clone()),
    );
    out.into_iter().collect()
}

/// Alive member names.
pub fn alive(members: &BTreeMap<String, MemberView>) -> BTreeSet<String> {
    members
        .values()
        .filter(|m| m.alive)
        .map(|m| m.name.clone())
        .collect()
}

/// What the rest of the fleet knows of one event besides its outcomes: the operator's latest
/// order about it, and this node's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    pub orders: Option<&'a Orders>,
    pub now_ms: u64,
}

/// Where one event's rollout stands, as this node sees it.
pub struct Standing {
    pub targets: Vec<String>,
    pub plan: Plan,
    /// The targets the later waves wait for: the alive ones, and under a progress
    /// deadline the down ones too.
    alive: BTreeSet<String>,
    /// Outcomes per target; the late ones count as failed.
    by_node: BTreeMap<String, rollout::Outcome>,
    /// Targets past the progress deadline with no report.
    pub late: BTreeSet<String>,
    /// Why no target may start (see [`Decision::Held`]).
    held: Option<(String, bool)>,
}

impl Standing {
    pub fn new(
        ev: &DeployEvent,
        members: &BTreeMap<String, MemberView>,
        node_apps: &BTreeMap<String, BTreeSet<String>>,
        outcomes: &BTreeMap<String, NodeOutcome>,
        cx: Context<'_>,
    ) -> Standing {
        let mut targets = targets(ev, members, node_apps, outcomes);
        let mut alive = alive(members);
        if ev.options.progress_deadline_secs.is_some() {
            // A target that goes down stays one (and keeps its wave), and the waves after
            // it wait for it as for a live one: its silence counts against the deadline,
            // so they halt once that passes rather than shift or go on without it.
            let down = unreachable(ev, members, node_apps, &targets);
            alive.extend(down.iter().cloned());
            targets.extend(down);
            targets.sort();
        }
        let (plan, no_room) = plan(ev, &targets);
        let id = ev.id_hex();
        let reported: BTreeMap<String, (rollout::Outcome, u64)> = (outcomes.values())
            .filter(|o| o.event_id == id && o.app == ev.app)
            .map(|o| (o.node.clone(), (o.result, o.at)))
            .collect();
        let order = cx.orders.and_then(|o| o.about(&ev.id));
        let held = match order {
            Some(Action::Cancel) => Some(("cancelled by the operator".to_string(), true)),
            Some(Action::Pause) => Some(("paused by the operator".to_string(), false)),
            _ => no_room.map(|why| (why, false)),
        };
        // The deadline does not run while the rollout is held; a resume starts it again.
        let late = match (ev.options.progress_deadline_secs, &held) {
            (Some(d), None) => {
                let resumed = cx.orders.and_then(|o| o.resumed_at(&ev.id)).unwrap_or(0);
                let from = ev.issued_at_ms.max(resumed) / 1000;
                rollout::late(
                    &plan,
                    &alive,
                    &reported,
                    from,
                    cx.now_ms / 1000,
                    u64::from(d),
                )
            }
            _ => BTreeSet::new(),
        };
        let mut by_node: BTreeMap<String, rollout::Outcome> =
            reported.into_iter().map(|(n, (o, _))| (n, o)).collect();
        for n in &late {
            by_node.insert(n.clone(), rollout::Outcome::Failed);
        }
        Standing {
            targets,
            plan,
            alive,
            by_node,
            late,
            held,
        }
    }

    /// Whether `node` may start now.
    pub fn decide(&self, node: &str) -> Decision {
        match (&self.held, self.plan.wave_of(node)) {
            (_, None) => Decision::NotTarget,
            (Some((why, for_good)), _) => Decision::Held {
                why: why.clone(),
                for_good: *for_good,
            },
            (None, Some(_)) => self.plan.may_start(node, &self.alive, &self.by_node),
        }
    }
}

/// The waves of `ev` over `targets`: `--max-parallel` and `--canary`, each wave cut to what
/// `--min-healthy` leaves out of service (a wave's nodes are out together; the waves before
/// it are back by then). The error says why no node may go at all.
fn plan(ev: &DeployEvent, targets: &[String]) -> (Plan, Option<String>) {
    let mut r = ev.rollout;
    let Some(min) = ev.options.min_healthy else {
        return (Plan::new(&ev.id, targets, &r), None);
    };
    let total = targets.len();
    let keep = match min {
        MinHealthy::Count(n) => n as usize,
        MinHealthy::Percent(p) => (total * usize::from(p)).div_ceil(100),
    };
    let room = total.saturating_sub(keep);
    if room == 0 {
        let why = format!("--min-healthy keeps all {total} targets in service: none may deploy");
        return (Plan::new(&ev.id, targets, &r), Some(why));
    }
    let size = rollout::wave_size(total, r.max_parallel);
    r.max_parallel = Some(MaxParallel::Count(size.min(room) as u32));
    r.canary = r.canary.min(room as u32);
    (Plan::new(&ev.id, targets, &r), None)
}

/// Failed members that match `ev`, run its app and read its format, but are not among
/// `targets`.
fn unreachable(
    ev: &DeployEvent,
    members: &BTreeMap<String, MemberView>,
    node_apps: &BTreeMap<String, BTreeSet<String>>,
    targets: &[String],
) -> Vec<String> {
    matching(ev, members, node_apps)
        .filter(|v| v.failed && !v.too_old_for(ev) && !targets.contains(&v.name))
        .map(|v| v.name.clone())
        .collect()
}

/// Alive or failed members that match `ev` and run its app, but whose agents cannot read it
/// (they announce an older deploy event format): they would refuse it and never report.
/// One among `targets` (it reported on the event before a downgrade) is a target already.
fn too_old(
    ev: &DeployEvent,
    members: &BTreeMap<String, MemberView>,
    node_apps: &BTreeMap<String, BTreeSet<String>>,
    targets: &[String],
) -> Vec<String> {
    matching(ev, members, node_apps)
        .filter(|v| (v.alive || v.failed) && v.too_old_for(ev) && !targets.contains(&v.name))
        .map(|v| v.name.clone())
        .collect()
}

/// Members that match `ev`'s filters and run its app.
fn matching<'a>(
    ev: &'a DeployEvent,
    members: &'a BTreeMap<String, MemberView>,
    node_apps: &'a BTreeMap<String, BTreeSet<String>>,
) -> impl Iterator<Item = &'a MemberView> {
    let m = Matcher::new(&ev.targets);
    (members.values())
        .filter(move |v| m.matches(&v.name, &v.tags))
        .filter(|v| node_apps.get(&v.name).is_some_and(|a| a.contains(&ev.app)))
}

/// Where `ev` stands across its targets.
pub fn progress(
    ev: &DeployEvent,
    members: &BTreeMap<String, MemberView>,
    node_apps: &BTreeMap<String, BTreeSet<String>>,
    outcomes: &BTreeMap<String, NodeOutcome>,
    cx: Context<'_>,
) -> Progress {
    let standing = Standing::new(ev, members, node_apps, outcomes, cx);
    let id = ev.id_hex();
    let mut p = Progress {
        event_id: id.clone(),
        app: ev.app.clone(),
        version: ev.version.clone(),
        waves: standing.plan.waves.clone(),
        control: (cx.orders.and_then(|o| o.about(&ev.id))).map(|a| a.as_str().to_string()),
        ..Progress::default()
    };
    for n in &standing.targets {
        let reported = outcomes
            .get(&crate::deploy::status::outcome_key(&ev.app, n))
            .filter(|o| o.event_id == id);
        match reported {
            Some(o) => {
                match o.result {
                    Res::Ok => p.ok.push(n.clone()),
                    Res::Failed => p.failed.push(n.clone()),
                    Res::RolledBack => p.rolled_back.push(n.clone()),
                }
                if let Some(e) = &o.error {
                    p.errors.insert(n.clone(), e.clone());
                }
            }
            None if standing.late.contains(n) => {
                p.failed.push(n.clone());
                let d = ev.options.progress_deadline_secs.unwrap_or_default();
                let why = format!("no report within the progress deadline ({d}s)");
                p.errors.insert(n.clone(), why);
            }
            None => match standing.decide(n) {
                Decision::Halted { .. } | Decision::Held { for_good: true, .. } => {
                    p.halted.push(n.clone())
                }
                _ => p.pending.push(n.clone()),
            },
        }
    }
    // Failed members that match are targets too, for the count: the deploy has not
    // reached them. Without a progress deadline the waves leave them out (they cannot
    // report), so they never hold up a wave, and they converge once back; with one they
    // are targets already (none is left here).
    p.unreachable = unreachable(ev, members, node_apps, &standing.targets);
    // So are members whose agents cannot read the event: it does not reach them.
    p.too_old = too_old(ev, members, node_apps, &standing.targets);
    p.targets = standing.targets;
    p.targets.extend(p.unreachable.iter().cloned());
    p.targets.extend(p.too_old.iter().cloned());
    p.targets.sort();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::signed::{MaxParallel, Rollout};

    fn ev(targets: Targets, rollout: Rollout) -> DeployEvent {
        DeployEvent {
            app: "web".into(),
            version: "v2".into(),
            url: String::new(),
            sha256: None,
            targets,
            rollout,
            issued_at_ms: 1,
            id: [7; 16],
            options: Default::default(),
            chunks: None,
        }
    }

    fn members(n: usize) -> BTreeMap<String, MemberView> {
        (0..n)
            .map(|i| {
                let name = format!("n{i}");
                let mut tags = Tags::new();
                tags.insert("role".into(), if i % 2 == 0 { "web" } else { "db" }.into());
                let v = MemberView {
                    name: name.clone(),
                    alive: true,
                    failed: false,
                    tags,
                    deploy_format: Some(crate::deploy::signed::DEPLOY_FORMAT),
                };
                (name, v)
            })
            .collect()
    }

    fn all_run_web(m: &BTreeMap<String, MemberView>) -> BTreeMap<String, BTreeSet<String>> {
        m.keys()
            .map(|k| (k.clone(), BTreeSet::from(["web".to_string()])))
            .collect()
    }

    fn outcome(node: &str, result: Res, e: &DeployEvent) -> (String, NodeOutcome) {
        (
            crate::deploy::status::outcome_key("web", node),
            NodeOutcome {
                node: node.into(),
                app: "web".into(),
                event_id: e.id_hex(),
                version: "v2".into(),
                result,
                error: (result != Res::Ok).then(|| "boom".into()),
                at: 1,
            },
        )
    }

    #[test]
    fn targets_follow_filters_apps_and_liveness() {
        let mut m = members(6);
        let mut apps = all_run_web(&m);
        let t = Targets {
            nodes: vec!["n[0-3]".into(), "n5".into()],
            tags: vec![("role".into(), "web".into())],
        };
        let e = ev(t, Rollout::default());
        assert_eq!(targets(&e, &m, &apps, &BTreeMap::new()), ["n0", "n2"]);
        // A node that does not run the app, and a dead one, are not targets.
        apps.get_mut("n0").unwrap().clear();
        m.get_mut("n2").unwrap().alive = false;
        m.get_mut("n2").unwrap().failed = true;
        assert!(targets(&e, &m, &apps, &BTreeMap::new()).is_empty());
        // The failed one that would have been a target is reported as unreachable.
        apps.get_mut("n0").unwrap().insert("web".into());
        assert_eq!(
            progress(&e, &m, &apps, &BTreeMap::new(), Context::default()).unreachable,
            ["n2"]
        );
        apps.get_mut("n0").unwrap().clear();
        // ...unless it already reported for this event.
        let o: BTreeMap<_, _> = [outcome("n2", Res::Ok, &e)].into();
        assert_eq!(targets(&e, &m, &apps, &o), ["n2"]);
        // No filters: every node that runs the app.
        let all = ev(Targets::default(), Rollout::default());
        assert_eq!(targets(&all, &m, &apps, &BTreeMap::new()).len(), 4);
    }

    #[test]
    fn progress_counts_and_halts_later_waves() {
        let m = members(6);
        let apps = all_run_web(&m);
        let e = ev(
            Targets::default(),
            Rollout {
                max_parallel: Some(MaxParallel::Count(2)),
                canary: 1,
            },
        );
        let p = progress(&e, &m, &apps, &BTreeMap::new(), Context::default());
        assert_eq!(p.pending.len(), 6);
        assert!(!p.is_done());
        let plan = Plan::new(&e.id, &p.targets, &e.rollout);
        let canary = plan.waves[0][0].clone();
        let o: BTreeMap<_, _> = [outcome(&canary, Res::RolledBack, &e)].into();
        let p = progress(&e, &m, &apps, &o, Context::default());
        assert_eq!(p.rolled_back, std::slice::from_ref(&canary));
        assert_eq!(p.halted.len(), 5);
        assert!(p.is_done() && !p.is_success());
        assert_eq!(p.errors[&canary], "boom");
        // All ok: success.
        let o: BTreeMap<_, _> = p.targets.iter().map(|n| outcome(n, Res::Ok, &e)).collect();
        let p = progress(&e, &m, &apps, &o, Context::default());
        assert!(p.is_done() && p.is_success(), "{p:?}");
    }

    fn listed(status: &str, tags: &[(&str, &str)], deploy_format: u16) -> MemberView {
        MemberView::from_member(crate::wire::Member {
            name: "n".into(),
            addr: "127.0.0.1:7946".into(),
            status: status.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            deploy_format,
            apps: None,
            identity: None,
        })
    }

    #[test]
    fn member_status_decides_alive_and_unreachable() {
        let v = |s| listed(s, &[], 2);
        assert!(v("alive").alive && v("suspect").alive);
        assert!(!v("failed").alive && v("failed").failed);
        assert!(!v("left").alive && !v("left").failed);
        // A format is known once tags are: no tags at all may be tags not arrived yet.
        assert_eq!(listed("alive", &[], 2).deploy_format, Some(2));
        assert_eq!(
            listed("alive", &[("role", "web")], 1).deploy_format,
            Some(1)
        );
        assert_eq!(listed("alive", &[], 1).deploy_format, None);
    }

    #[test]
    fn agents_too_old_for_the_event_are_not_targets_and_not_a_success() {
        let mut m = members(4);
        m.get_mut("n1").unwrap().deploy_format = Some(1);
        m.get_mut("n2").unwrap().deploy_format = None;
        let mut down = m["n3"].clone();
        (down.alive, down.failed, down.deploy_format) = (false, true, Some(1));
        m.insert("n3".into(), down);
        let apps = all_run_web(&m);
        let mut e = ev(Targets::default(), Rollout::default());
        // An event every agent reads: n1 is a target, failed n3 unreachable.
        let p = progress(&e, &m, &apps, &BTreeMap::new(), Context::default());
        assert_eq!(p.pending, ["n0", "n1", "n2"]);
        assert_eq!(p.unreachable, ["n3"]);
        assert!(p.too_old.is_empty());
        // One that pins a chunk index: n1 and n3 would refuse it; n2's format is not
        // known yet, so it stays a target.
        e.chunks = Some([1; 32]);
        assert_eq!(targets(&e, &m, &apps, &BTreeMap::new()), ["n0", "n2"]);
        let p = progress(&e, &m, &apps, &BTreeMap::new(), Context::default());
        assert_eq!(p.too_old, ["n1", "n3"]);
        assert!(p.unreachable.is_empty());
        assert_eq!(p.targets, ["n0", "n1", "n2", "n3"]);
        let o: BTreeMap<_, _> = ["n0", "n2"]
            .iter()
            .map(|n| outcome(n, Res::Ok, &e))
            .collect();
        let p = progress(&e, &m, &apps, &o, Context::default());
        assert!(p.is_done() && !p.is_success(), "{p:?}");
        // One that reported on the event before its agent went back is a target, once.
        let mut o = o;
        o.extend([outcome("n1", Res::Ok, &e)]);
        let p = progress(&e, &m, &apps, &o, Context::default());
        assert_eq!(p.too_old, ["n3"]);
        assert_eq!(p.targets, ["n0", "n1", "n2", "n3"]);
    }

    #[test]
    fn bad_regex_matches_nothing() {
        let m = Matcher::new(&Targets {
            nodes: vec!["(".into()],
            tags: vec![],
        });
        assert!(!m.matches("n1", &Tags::new()));
    }
}
