//! What the deploy side shows on `GET /v1/metrics`: deploys by app and outcome and the
//! phase durations (counted here as they happen), and, read at each scrape, the apps'
//! jails (up, restarts, the version running) and the artifact bytes fetched.
//!
//! Bounded: series exist only for the apps of the config (named at creation; any other
//! name is ignored), the three outcomes, and at most [`MAX_PHASES`] phase names, each a
//! short lowercase word. The counters live as long as the agent: none is derived from a
//! table that forgets (the outcome slots keep only each app's last outcome).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use super::activation::Outcome;
use super::status::{AppView, Result as Res};
use crate::metrics::histogram::PHASE_BUCKETS;
use crate::metrics::{Family, Histogram};

/// Most distinct phase names kept (each has a histogram per app).
pub const MAX_PHASES: usize = 16;
/// Longest phase name kept.
pub const MAX_PHASE_LEN: usize = 32;

/// The deploy metrics of one agent (shared by the controller, which counts, and the
/// control API, which renders).
#[derive(Debug)]
pub struct DeployMetrics {
    apps: BTreeSet<String>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    deploys: BTreeMap<(String, Res), u64>,
    phases: BTreeMap<(String, String), Histogram>,
    phase_names: BTreeSet<String>,
}

impl DeployMetrics {
    /// Metrics for `apps` (the config's), every outcome counter at 0.
    pub fn new(apps: impl IntoIterator<Item = String>) -> Self {
        let apps: BTreeSet<String> = apps.into_iter().collect();
        let mut inner = Inner::default();
        for app in &apps {
            for r in [Res::Ok, Res::Failed, Res::RolledBack] {
                inner.deploys.insert((app.clone(), r), 0);
            }
        }
        DeployMetrics {
            apps,
            inner: Mutex::new(inner),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one finished deploy of `app`.
    pub fn deploy_finished(&self, app: &str, outcome: &Outcome) {
        if let Some(n) = self
            .inner()
            .deploys
            .get_mut(&(app.to_owned(), Res::of(outcome)))
        {
            *n += 1;
        }
    }

    /// Records how long `phase` (`fetch`, `unpack`, `start`, `ready`, `health`, …) of a
    /// deploy of `app` took. An app not in the config, a phase name that is not a short
    /// lowercase word, or a new name once [`MAX_PHASES`] are known is not recorded.
    pub fn observe_phase(&self, app: &str, phase: &str, d: Duration) {
        if !self.apps.contains(app) || !phase_name_ok(phase) {
            return;
        }
        let mut inner = self.inner();
        if !inner.phase_names.contains(phase) {
            if inner.phase_names.len() >= MAX_PHASES {
                tracing::debug!(phase, "phase duration not recorded: too many phase names");
                return;
            }
            inner.phase_names.insert(phase.to_owned());
        }
        inner
            .phases
            .entry((app.to_owned(), phase.to_owned()))
            .or_insert_with(|| Histogram::new(PHASE_BUCKETS))
            .observe(d.as_secs_f64());
    }

    /// The families, with the apps' jails as `views` shows them.
    pub fn families(&self, views: &[AppView]) -> Vec<Family> {
        let mut deploys = Family::counter(
            "droot_fleet_deploys_total",
            "Deploys this node finished, by app and outcome (ok, failed, rolled_back).",
        );
        let mut phases = Family::histogram(
            "droot_fleet_deploy_phase_duration_seconds",
            "How long each phase of a deploy took, by app and phase.",
        );
        {
            let inner = self.inner();
            for ((app, r), n) in &inner.deploys {
                deploys.push(&[("app", app), ("outcome", r.as_str())], *n);
            }
            for ((app, phase), h) in &inner.phases {
                phases.push(&[("app", app), ("phase", phase)], h.snapshot());
            }
        }
        let fetched = Family::counter(
            "droot_fleet_artifact_fetched_bytes_total",
            "Artifact bytes fetched (from their store, s3, https or file, or from peers), \
             failed fetches included.",
        )
        .with(&[], super::fetch::stream::fetched_bytes());
        let from_peers = Family::counter(
            "droot_fleet_artifact_peer_bytes_total",
            "Artifact bytes taken from peers and checked against the chunk index (a part of \
             droot_fleet_artifact_fetched_bytes_total).",
        )
        .with(&[], super::fetch::peers::peer_bytes());
        let mut families = vec![deploys, phases, fetched, from_peers];
        families.extend(self.app_families(views));
        families
    }

    fn app_families(&self, views: &[AppView]) -> [Family; 3] {
        let mut up = Family::gauge(
            "droot_fleet_app_up",
            "Whether the app's jail is running (1) or not (0).",
        );
        let mut restarts = Family::counter(
            "droot_fleet_app_restarts_total",
            "Restarts of the app's jail after exits nobody asked for.",
        );
        let mut info = Family::gauge(
            "droot_fleet_app_info",
            "The release the app's current points at (always 1).",
        );
        for v in views.iter().filter(|v| self.apps.contains(&v.app)) {
            let app = [("app", v.app.as_str())];
            up.push(&app, u64::from(v.state == "running"));
            restarts.push(&app, u64::from(v.restarts));
            if let Some(version) = &v.current {
                info.push(&[("app", &v.app), ("version", version)], 1);
            }
        }
        [up, restarts, info]
    }
}

/// A phase name as a label value: 1 to [`MAX_PHASE_LEN`] of `a-z`, `0-9` and `_`.
fn phase_name_ok(phase: &str) -> bool {
    (1..=MAX_PHASE_LEN).contains(&phase.len())
        && phase
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render;

    fn ok(v: &str) -> Outcome {
        Outcome::Ok {
            event_id: "e".into(),
            version: v.into(),
        }
    }

    #[test]
    fn deploys_are_counted_by_app_and_outcome_from_zero() {
        let m = DeployMetrics::new(["web".to_owned(), "db".to_owned()]);
        m.deploy_finished("web", &ok("v1"));
        m.deploy_finished("web", &ok("v2"));
        let rolled = Outcome::RolledBack {
            event_id: "e".into(),
            version: "v3".into(),
            to: "v2".into(),
            error: "health".into(),
        };
        m.deploy_finished("web", &rolled);
        m.deploy_finished("ghost", &ok("v1"));
        let text = render(&m.families(&[]));
        for line in [
            "droot_fleet_deploys_total{app=\"web\",outcome=\"ok\"} 2\n",
            "droot_fleet_deploys_total{app=\"web\",outcome=\"rolled_back\"} 1\n",
            "droot_fleet_deploys_total{app=\"web\",outcome=\"failed\"} 0\n",
            "droot_fleet_deploys_total{app=\"db\",outcome=\"ok\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert!(!text.contains("ghost"), "{text}");
    }

    #[test]
    fn observe_phase_fills_a_histogram_per_app_and_phase() {
        let m = DeployMetrics::new(["web".to_owned()]);
        m.observe_phase("web", "fetch", Duration::from_micros(15_625));
        m.observe_phase("web", "fetch", Duration::from_secs(700));
        m.observe_phase("web", "health", Duration::from_secs(3));
        let text = render(&m.families(&[]));
        let fetch = "droot_fleet_deploy_phase_duration_seconds_bucket{app=\"web\",phase=\"fetch\"";
        for line in [
            format!("{fetch},le=\"0.01\"}} 0\n"),
            format!("{fetch},le=\"0.025\"}} 1\n"),
            format!("{fetch},le=\"600\"}} 1\n"),
            format!("{fetch},le=\"+Inf\"}} 2\n"),
            "droot_fleet_deploy_phase_duration_seconds_sum{app=\"web\",phase=\"fetch\"} 700.015625\n"
                .into(),
            "droot_fleet_deploy_phase_duration_seconds_count{app=\"web\",phase=\"health\"} 1\n"
                .into(),
        ] {
            assert!(text.contains(&line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn observe_phase_keeps_its_labels_bounded() {
        let m = DeployMetrics::new(["web".to_owned()]);
        m.observe_phase("other", "fetch", Duration::from_secs(1));
        for bad in ["", "Fetch", "a b", "x\"y", &"p".repeat(MAX_PHASE_LEN + 1)] {
            m.observe_phase("web", bad, Duration::from_secs(1));
        }
        for i in 0..MAX_PHASES + 5 {
            m.observe_phase("web", &format!("p{i}"), Duration::from_secs(1));
        }
        let inner = m.inner();
        assert_eq!(inner.phases.len(), MAX_PHASES);
        assert!(inner.phases.keys().all(|(app, _)| app == "web"));
        assert!(!inner.phase_names.contains(&format!("p{MAX_PHASES}")));
    }

    #[test]
    fn apps_up_restarts_and_the_running_version() {
        let m = DeployMetrics::new(["web".to_owned(), "db".to_owned()]);
        let views = [
            AppView {
                app: "web".into(),
                current: Some("v7".into()),
                state: "running".into(),
                restarts: 3,
                ..AppView::default()
            },
            AppView {
                app: "db".into(),
                state: "failed".into(),
                ..AppView::default()
            },
        ];
        let text = render(&m.families(&views));
        for line in [
            "droot_fleet_app_up{app=\"web\"} 1\n",
            "droot_fleet_app_up{app=\"db\"} 0\n",
            "droot_fleet_app_restarts_total{app=\"web\"} 3\n",
            "droot_fleet_app_info{app=\"web\",version=\"v7\"} 1\n",
            "# TYPE droot_fleet_artifact_fetched_bytes_total counter\n",
            "# TYPE droot_fleet_artifact_peer_bytes_total counter\n",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert!(!text.contains("app_info{app=\"db\""), "{text}");
    }
}
