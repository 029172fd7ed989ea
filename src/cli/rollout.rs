//! `rollout status|pause|resume|cancel EVENT_ID`: where a deploy's waves stand, and signed
//! orders that hold, release or end them (see [`crate::deploy::control`]).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::fleet::{Format, RpcArgs, runtime};
use super::signing::SigningKeyArg;
use crate::deploy::control::{Action, Control, SignedControl};
use crate::deploy::status::Progress;

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Each wave of a deploy, and which targets are done, pending or halted.
    Status(StatusArgs),
    /// Hold the waves that have not started (nodes deploying now finish).
    Pause(OrderArgs),
    /// Let a paused rollout go on.
    Resume(OrderArgs),
    /// Halt the rollout for good: finished nodes stay, nodes deploying now finish, the
    /// rest never start. Cannot be undone; deploy again to go on.
    Cancel(OrderArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The deploy event's id, as `event deploy` printed it.
    pub event_id: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

#[derive(Debug, Args)]
pub struct OrderArgs {
    /// The deploy event's id, as `event deploy` printed it.
    pub event_id: String,
    #[command(flatten)]
    pub signing: SigningKeyArg,
    /// An agent config file whose `signing_key` is the key when neither --signing-key nor
    /// DROOT_FLEET_SIGNING_KEY is given.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub rpc: RpcArgs,
}

pub fn execute(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        RolloutCommand::Status(a) => status(a),
        RolloutCommand::Pause(a) => order(a, Action::Pause),
        RolloutCommand::Resume(a) => order(a, Action::Resume),
        RolloutCommand::Cancel(a) => order(a, Action::Cancel),
    }
}

/// The progress of `event_id` from the local agent.
fn progress(rpc: &RpcArgs, event_id: &str) -> anyhow::Result<Progress> {
    let client = rpc.client()?;
    runtime()?
        .block_on(client.deploy_progress(event_id))?
        .with_context(|| format!("deploy event {event_id} is not known to the local agent"))
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let p = progress(&args.rpc, &args.event_id)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&p)?),
        Format::Text => print!("{}", render(&p)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollout status` as text: a header, then one line per wave.
pub fn render(p: &Progress) -> String {
    let state = match (&p.control, p.is_done()) {
        (Some(c), _) if c == "cancelled" || c == "paused" => c.as_str(),
        (_, true) if p.is_success() => "done",
        (_, true) => "ended",
        (_, false) => "rolling out",
    };
    let mut out = format!(
        "rollout {} of {} {}: {state}\n",
        p.event_id, p.app, p.version
    );
    for (i, wave) in p.waves.iter().enumerate() {
        let nodes: Vec<String> = wave
            .iter()
            .map(|n| format!("{n} {}", node_state(p, n)))
            .collect();
        out.push_str(&format!("wave {}: {}\n", i + 1, nodes.join(", ")));
    }
    for n in &p.unreachable {
        out.push_str(&format!("unreachable: {n}\n"));
    }
    for n in &p.too_old {
        out.push_str(&format!("agent too old for this event: {n}\n"));
    }
    for (n, e) in &p.errors {
        out.push_str(&format!("{n}: {e}\n"));
    }
    out
}

fn node_state(p: &Progress, n: &String) -> &'static str {
    let lists: [(&Vec<String>, &str); 5] = [
        (&p.ok, "ok"),
        (&p.failed, "failed"),
        (&p.rolled_back, "rolled back"),
        (&p.halted, "halted"),
        (&p.pending, "pending"),
    ];
    lists
        .iter()
        .find(|(l, _)| l.contains(n))
        .map_or("unknown", |(_, s)| s)
}

fn order(args: OrderArgs, action: Action) -> anyhow::Result<ExitCode> {
    let key = args.signing.load(args.config.as_deref())?;
    let id = hex::decode(args.event_id.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .with_context(|| format!("{:?} is not an event id (32 hex digits)", args.event_id))?;
    let p = progress(&args.rpc, &args.event_id)?;
    if p.control.as_deref() == Some("cancelled") {
        anyhow::bail!(
            "the rollout of {} was cancelled; deploy again to go on",
            args.event_id
        );
    }
    let control = Control {
        app: p.app.clone(),
        event_id: id,
        action,
        issued_at_ms: crate::wall::millis(),
        id: rand::random(),
    };
    let signed = SignedControl::sign(control, &key);
    let client = args.rpc.client()?;
    runtime()?.block_on(client.rollout(signed.bytes()))?;
    println!(
        "rollout {} of {} {}: {}",
        p.event_id,
        p.app,
        p.version,
        action.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_each_wave_with_its_nodes() {
        let p = Progress {
            event_id: "ab".into(),
            app: "web".into(),
            version: "v2".into(),
            waves: vec![vec!["n1".into()], vec!["n2".into(), "n3".into()]],
            ok: vec!["n1".into()],
            pending: vec!["n2".into(), "n3".into()],
            control: Some("paused".into()),
            ..Progress::default()
        };
        assert_eq!(
            render(&p),
            "rollout ab of web v2: paused\nwave 1: n1 ok\nwave 2: n2 pending, n3 pending\n"
        );
    }
}
