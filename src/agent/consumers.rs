//! In-process event consumers: Rust code (such as the deploy controller) that takes
//! user events with the journal's guarantees, like a `[[handler]]` process does.
//!
//! A consumer is registered before the agent starts ([`super::Agent::register_consumer`])
//! for the user events whose name starts with a prefix, and reads [`Delivery`]s from a
//! channel. Inside the agent it is one more owed handler ([`super::pending`]) whose
//! "command" names it ([`crate::agent::sansio::consumer_name`]), so it shares the
//! journal, the state file, the retries and the slots.
//!
//! Guarantee: a consumer gets every matching event, in arrival order of the owed
//! handlers, until it [`Delivery::ack`]s it. The event is journaled as owed to the
//! consumer *before* delivery and the acknowledgement is journaled *after*, so an
//! event is never lost (crash, full disk, a dropped delivery: it comes again, after a
//! backoff), and it is delivered again only if the agent stopped between delivery and
//! acknowledgement — the consumer then sees the same [`crate::gossip::EventId`] and
//! can recognise it (acknowledge once its effect is durable). A [`Delivery`] dropped
//! without an ack counts as a failure and is retried with backoff.

use tokio::sync::{mpsc, oneshot};

use super::config::HandlerConfig;
use super::sansio::consumer_name::{consumer_handler, consumer_name};
use crate::gossip::UserEvent;

/// How many deliveries may wait in a consumer's channel.
const CHANNEL: usize = 64;

/// One event for a consumer. Call [`Delivery::ack`] once it is handled for good.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: UserEvent,
    ack: oneshot::Sender<()>,
}

impl Delivery {
    /// The event is handled: it will not be delivered again (journaled).
    pub fn ack(self) {
        let _ = self.ack.send(());
    }
}

#[derive(Debug, Clone)]
struct Consumer {
    name: String,
    prefix: String,
    tx: mpsc::Sender<Delivery>,
}

/// Registered consumers.
#[derive(Debug, Clone, Default)]
pub struct Consumers {
    list: Vec<Consumer>,
}

/// Why a delivery did not end in an acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// No consumer of that name is registered (the state file owed an event to one
    /// that is no longer built in).
    #[error("no in-process consumer named {0:?} is registered")]
    Unknown(String),
    /// The consumer's receiver is gone, or it dropped the delivery without an ack.
    #[error("consumer {0:?} did not acknowledge the event; it stays owed and is retried")]
    NotAcked(String),
}

impl Consumers {
    /// Registers consumer `name` for user events named `prefix*`; returns its channel.
    /// A second registration under the same name replaces the first.
    pub fn register(&mut self, name: &str, prefix: &str) -> mpsc::Receiver<Delivery> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        self.list.retain(|c| c.name != name);
        self.list.push(Consumer {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            tx,
        });
        rx
    }

    /// The owed-handler entries standing for the consumers (appended to the
    /// configured handlers).
    pub fn handler_configs(&self) -> Vec<HandlerConfig> {
        self.list
            .iter()
            .map(|c| consumer_handler(&c.name, &c.prefix))
            .collect()
    }

    /// Hands `event` to the consumer `handler` stands for and waits for its ack.
    pub async fn deliver(
        &self,
        handler: &HandlerConfig,
        event: UserEvent,
    ) -> Result<(), ConsumeError> {
        let name = consumer_name(handler).unwrap_or_default();
        let Some(c) = self.list.iter().find(|c| c.name == name) else {
            return Err(ConsumeError::Unknown(name.to_owned()));
        };
        let not_acked = || ConsumeError::NotAcked(name.to_owned());
        let (ack, acked) = oneshot::channel();
        c.tx.send(Delivery { event, ack })
            .await
            .map_err(|_| not_acked())?;
        acked.await.map_err(|_| not_acked())
    }
}

/// A debugging and test aid (`droot-fleet agent --debug-consumer PREFIX=FILE`, hidden):
/// appends `ID NAME PAYLOAD` for each delivery to `file`, then acknowledges it — except
/// the first delivery of an event whose payload starts with `hold`, which it keeps
/// unacknowledged (as if the agent stopped before the ack).
pub async fn record_to_file(mut rx: mpsc::Receiver<Delivery>, file: std::path::PathBuf) {
    use std::io::Write as _;
    let mut held = Vec::new();
    while let Some(d) = rx.recv().await {
        let id = d.event.id.0.to_string();
        let seen = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').next() == Some(id.as_str()));
        let line = format!(
            "{id} {} {}\n",
            d.event.name,
            String::from_utf8_lossy(&d.event.payload)
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_all()));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), cause = %e, "debug consumer could not record; not acknowledged");
            continue;
        }
        if d.event.payload.starts_with(b"hold") && !seen {
            held.push(d);
        } else {
            d.ack();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::sansio::consumer_name::CONSUMER_MARK;
    use crate::gossip::EventId;

    #[tokio::test]
    async fn delivery_waits_for_the_ack() {
        let mut cs = Consumers::default();
        let mut rx = cs.register("deploy", "deploy-");
        let h = cs.handler_configs().remove(0);
        assert_eq!(consumer_name(&h), Some("deploy"));
        let ev = UserEvent::new(EventId(1), "n1", 1, "deploy-web", vec![]).unwrap();
        let (c2, ev2) = (cs.clone(), ev.clone());
        let acked = tokio::spawn(async move { c2.deliver(&h, ev2).await });
        let d = rx.recv().await.unwrap();
        assert_eq!(d.event, ev);
        d.ack();
        acked.await.unwrap().unwrap();

        // Dropped without an ack: a failure (retried by the caller).
        let h = cs.handler_configs().remove(0);
        let c2 = cs.clone();
        let nacked = tokio::spawn(async move { c2.deliver(&h, ev).await });
        drop(rx.recv().await.unwrap());
        assert!(matches!(
            nacked.await.unwrap(),
            Err(ConsumeError::NotAcked(_))
        ));
        let stranger = HandlerConfig {
            command: vec![format!("{CONSUMER_MARK}gone")],
            ..cs.handler_configs().remove(0)
        };
        let ev = UserEvent::new(EventId(2), "n1", 1, "deploy-web", vec![]).unwrap();
        assert!(matches!(
            cs.deliver(&stranger, ev).await,
            Err(ConsumeError::Unknown(_))
        ));
    }
}
