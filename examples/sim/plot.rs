//! The reach plot: the fraction of nodes an event has reached against the time since it
//! was fired, one panel per cluster size, one line per loss rate, ours solid and the
//! Serf model dashed. Plain SVG, log-scaled time.

use std::fmt::Write as _;
use std::time::Duration;

/// One line of a panel.
pub struct Curve {
    pub nodes: usize,
    pub loss: f64,
    pub serf: bool,
    /// Arrival times after the fire, of every (node, event) pair; `None` never arrived.
    pub arrivals: Vec<Option<Duration>>,
}

const W: f64 = 360.0;
const H: f64 = 240.0;
const PAD: f64 = 48.0;
const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c"];
/// The time axis: 0.1 ms to 30 s.
const T_MIN: f64 = 1e-4;
const T_MAX: f64 = 30.0;

fn x_of(secs: f64) -> f64 {
    let f = (secs.max(T_MIN).ln() - T_MIN.ln()) / (T_MAX.ln() - T_MIN.ln());
    PAD + f.clamp(0.0, 1.0) * (W - 1.5 * PAD)
}

fn y_of(frac: f64) -> f64 {
    H - PAD - frac * (H - 1.5 * PAD)
}

/// The step curve of `arrivals` as SVG points.
fn points(arrivals: &[Option<Duration>]) -> String {
    let mut times: Vec<f64> = arrivals
        .iter()
        .flatten()
        .map(Duration::as_secs_f64)
        .collect();
    times.sort_by(f64::total_cmp);
    let total = arrivals.len().max(1) as f64;
    let mut out = format!("{:.1},{:.1}", x_of(T_MIN), y_of(0.0));
    for (k, t) in times.iter().enumerate() {
        let (x, before, after) = (x_of(*t), k as f64 / total, (k + 1) as f64 / total);
        let _ = write!(out, " {x:.1},{:.1} {x:.1},{:.1}", y_of(before), y_of(after));
    }
    let last = times.len() as f64 / total;
    let _ = write!(out, " {:.1},{:.1}", x_of(T_MAX), y_of(last));
    out
}

fn axes(out: &mut String, nodes: usize) {
    let (x0, x1, y0, y1) = (x_of(T_MIN), x_of(T_MAX), y_of(0.0), y_of(1.0));
    let _ = write!(
        out,
        r#"<text x="{:.0}" y="18" font-size="13" text-anchor="middle">N = {nodes}</text>
<path d="M{x0:.1},{y1:.1} V{y0:.1} H{x1:.1}" stroke="black" fill="none"/>"#,
        W / 2.0
    );
    for (secs, label) in [
        (1e-3, "1ms"),
        (1e-2, "10ms"),
        (0.1, "100ms"),
        (1.0, "1s"),
        (10.0, "10s"),
    ] {
        let x = x_of(secs);
        let _ = write!(
            out,
            r##"<path d="M{x:.1},{y0:.1} V{y1:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{label}</text>"##,
            y0 + 14.0
        );
    }
    for frac in [0.0, 0.5, 1.0] {
        let y = y_of(frac);
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{frac}</text>"#,
            x0 - 4.0,
            y + 3.0
        );
    }
}

fn legend(out: &mut String, losses: &[f64], top: f64) {
    let _ = write!(
        out,
        r#"<text x="{PAD:.0}" y="{top:.0}" font-size="11">fraction of nodes reached, against the time since the event was fired; solid: droot-fleet, dashed: the Serf model</text>"#
    );
    for (k, loss) in losses.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let y = top + 16.0 * (k + 1) as f64;
        let _ = write!(
            out,
            r#"<path d="M{PAD:.0},{y:.0} h20" stroke="{color}" stroke-width="2"/><path d="M{:.0},{y:.0} h20" stroke="{color}" stroke-width="2" stroke-dasharray="4 3"/><text x="{:.0}" y="{:.0}" font-size="11">loss {:.0}%</text>"#,
            PAD + 24.0,
            PAD + 50.0,
            y + 4.0,
            loss * 100.0
        );
    }
}

/// The whole figure.
pub fn svg(curves: &[Curve]) -> String {
    let mut sizes: Vec<usize> = curves.iter().map(|c| c.nodes).collect();
    sizes.dedup();
    let mut losses: Vec<f64> = curves.iter().map(|c| c.loss).collect();
    losses.sort_by(f64::total_cmp);
    losses.dedup();
    let width = (W * sizes.len() as f64).max(2.0 * W);
    let height = H + 30.0 + 16.0 * losses.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (p, nodes) in sizes.iter().enumerate() {
        let _ = write!(out, r#"<g transform="translate({:.0},0)">"#, W * p as f64);
        axes(&mut out, *nodes);
        for c in curves.iter().filter(|c| c.nodes == *nodes) {
            let k = losses.iter().position(|l| *l == c.loss).unwrap_or(0);
            let dash = if c.serf {
                r#" stroke-dasharray="4 3""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"{dash}/>"#,
                points(&c.arrivals),
                COLORS[k % COLORS.len()]
            );
        }
        out.push_str("</g>");
    }
    legend(&mut out, &losses, H + 4.0);
    out.push_str("</svg>\n");
    out
}
