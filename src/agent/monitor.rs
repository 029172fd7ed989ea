//! The `GET /v1/monitor` stream and the agent's log setup.
//!
//! A [`MonitorLayer`] turns every tracing event into one JSON line
//! (`{"type":"log","level","target","message",...fields}`) on a broadcast channel; the
//! agent task publishes `{"type":"event",...}` lines there too. Slow subscribers miss
//! lines (broadcast lag) instead of slowing the agent down.
//!
//! [`LogReload`] is how SIGHUP swaps the log filter (a tracing-subscriber reload layer).

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Applies a new log filter; returns a human-readable error if it is invalid.
pub type LogReload = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Publishes log events as NDJSON lines.
pub struct MonitorLayer {
    tx: broadcast::Sender<String>,
}

impl MonitorLayer {
    pub fn new(tx: broadcast::Sender<String>) -> Self {
        Self { tx }
    }
}

struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}

impl<S: tracing::Subscriber> Layer<S> for MonitorLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let meta = event.metadata();
        let mut v = JsonVisitor(Map::new());
        v.0.insert("type".into(), "log".into());
        v.0.insert("level".into(), meta.level().as_str().into());
        v.0.insert("target".into(), meta.target().into());
        event.record(&mut v);
        let _ = self.tx.send(Value::Object(v.0).to_string());
    }
}

/// Publishes a JSON value as one monitor line.
pub fn publish(tx: &broadcast::Sender<String>, value: Value) {
    if tx.receiver_count() > 0 {
        let _ = tx.send(value.to_string());
    }
}
