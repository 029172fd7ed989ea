//! The Prometheus text exposition format, version 0.0.4: families of samples to text.
//!
//! Guarantees of [`render`]: every family with samples gets one `# HELP` and one `# TYPE`
//! line before its samples; label values are escaped (`\\`, `\"`, `\n`) and HELP text too
//! (`\\`, `\n`), so no value can end a line or a quote early; a histogram sample becomes its
//! cumulative `_bucket` lines (the last one `le="+Inf"`, equal to `_count`), then `_sum`
//! and `_count`. A family without samples is left out (nothing to say about it yet).

use std::fmt::Write as _;

use super::histogram::Snapshot;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
    Histogram(Snapshot),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<Snapshot> for Value {
    fn from(v: Snapshot) -> Self {
        Value::Histogram(v)
    }
}

/// One sample: its labels (names are the code's own, values are escaped) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// A metric family: name, help, type and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    pub fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Counter, help)
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Gauge, help)
    }

    pub fn histogram(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Histogram, help)
    }

    /// Adds a sample with `labels`.
    pub fn with(mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) -> Self {
        self.push(labels, value);
        self
    }

    /// Adds a sample with `labels`.
    pub fn push(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) {
        self.samples.push(Sample {
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            value: value.into(),
        });
    }
}

/// The text of `families`, in their order.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            sample(&mut out, f.name, s);
        }
    }
    out
}

fn sample(out: &mut String, name: &str, s: &Sample) {
    match &s.value {
        Value::Int(v) => line(out, name, "", &s.labels, None, &v.to_string()),
        Value::Float(v) => line(out, name, "", &s.labels, None, &float(*v)),
        Value::Histogram(h) => {
            for (le, count) in &h.buckets {
                let le = float(*le);
                line(
                    out,
                    name,
                    "_bucket",
                    &s.labels,
                    Some(&le),
                    &count.to_string(),
                );
            }
            line(out, name, "_sum", &s.labels, None, &float(h.sum));
            line(out, name, "_count", &s.labels, None, &h.count.to_string());
        }
    }
}

/// `name{labels,le="…"} value`.
fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)));
    let mut first = true;
    for (k, v) in all {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A float as the format writes it: `+Inf`, `-Inf`, `NaN`, or decimal.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn counters_and_gauges_with_help_type_and_labels() {
        let text = render(&[
            Family::counter("x_total", "Things done.").with(&[], 3),
            Family::gauge("y", "Level.")
                .with(&[("app", "web"), ("state", "up")], 1)
                .with(&[("app", "db"), ("state", "up")], Value::Float(0.5)),
            Family::counter("never_total", "Left out: no samples."),
        ]);
        assert_eq!(
            text,
            "# HELP x_total Things done.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y Level.\n# TYPE y gauge\ny{app=\"web\",state=\"up\"} 1\n\
             y{app=\"db\",state=\"up\"} 0.5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let text = render(&[
            Family::gauge("v", "a \\ b\nc").with(&[("version", "a\"b\\c\nd} 9\nevil 1")], 1)
        ]);
        assert_eq!(
            text,
            "# HELP v a \\\\ b\\nc\n# TYPE v gauge\n\
             v{version=\"a\\\"b\\\\c\\nd} 9\\nevil 1\"} 1\n"
        );
        // One sample line: nothing in a value started a line of its own.
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 1);
    }

    #[test]
    fn floats_use_the_formats_spelling() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(0.025), "0.025");
        assert_eq!(float(600.0), "600");
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_inf_sum_and_count() {
        let mut h = Histogram::new(&[0.125, 1.0]);
        for v in [0.0625, 0.125, 0.5, 7.0] {
            h.observe(v);
        }
        let text = render(&[Family::histogram("d_seconds", "Durations.")
            .with(&[("app", "web"), ("phase", "fetch")], h.snapshot())]);
        assert_eq!(
            text,
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{app=\"web\",phase=\"fetch\",le=\"0.125\"} 2\n\
             d_seconds_bucket{app=\"web\",phase=\"fetch\",le=\"1\"} 3\n\
             d_seconds_bucket{app=\"web\",phase=\"fetch\",le=\"+Inf\"} 4\n\
             d_seconds_sum{app=\"web\",phase=\"fetch\"} 7.6875\n\
             d_seconds_count{app=\"web\",phase=\"fetch\"} 4\n"
        );
    }

    #[test]
    fn a_histogram_without_labels_still_gets_le() {
        let h = Histogram::new(&[1.0]);
        let text = render(&[Family::histogram("e_seconds", "E.").with(&[], h.snapshot())]);
        assert!(text.contains("e_seconds_bucket{le=\"1\"} 0\n"), "{text}");
        assert!(text.contains("e_seconds_bucket{le=\"+Inf\"} 0\n"), "{text}");
        assert!(
            text.contains("e_seconds_sum 0\ne_seconds_count 0\n"),
            "{text}"
        );
    }
}
