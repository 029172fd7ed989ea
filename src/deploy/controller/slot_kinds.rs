//! The superseding kinds the deploy controller keeps in gossip, with the policy and the
//! validator of each: one list, registered by the agent's controller and by the
//! simulator's nodes alike.

use std::sync::Arc;

use super::core::{APPS_KIND, desired_version};
use crate::deploy::control::{CONTROL_KIND, SignedControl};
use crate::deploy::signed::{SignedEvent, Trust};
use crate::deploy::status::{DESIRED_KIND, NodeOutcome, OUTCOME_KIND, outcome_key};
use crate::gossip::kinds::{KindPolicy, Validator};
use crate::gossip::supersede::Superseding;

/// Most apps the fleet's desired states are kept for.
const MAX_APPS: usize = 4096;
/// Most apps one node's outcomes are kept for.
const MAX_APPS_PER_NODE: usize = 256;

/// The kinds in the order a resync reads them back: app lists and outcomes before the
/// desired states they are judged against, rollout orders last.
pub const RESYNC_ORDER: [&str; 4] = [APPS_KIND, OUTCOME_KIND, DESIRED_KIND, CONTROL_KIND];

/// Every kind with its policy; `trust`: the keys deploy events and orders must be signed by.
pub fn slot_kinds(trust: &Trust) -> Vec<(&'static str, KindPolicy)> {
    vec![
        (
            DESIRED_KIND,
            KindPolicy::fleet(MAX_APPS, desired_validator(trust.clone())),
        ),
        (
            OUTCOME_KIND,
            KindPolicy::node(MAX_APPS_PER_NODE).checked(outcome_validator()),
        ),
        (APPS_KIND, KindPolicy::node(1).checked(apps_validator())),
        (
            CONTROL_KIND,
            KindPolicy::fleet(2 * MAX_APPS, control_validator(trust.clone())),
        ),
    ]
}

/// The validator of `deploy.control` slots: a trusted signature, keyed by its app, at the
/// version its issue time gives.
fn control_validator(trust: Trust) -> Validator {
    Arc::new(
        move |item: &Superseding| match SignedControl::decode_signed(&item.body, &trust) {
            Ok(s) => s.control.slot_key() == item.key && s.control.slot_version() == item.version,
            Err(_) => false,
        },
    )
}

/// The validator of `deploy.desired` slots: a signed event this node trusts, for the
/// slot's app, at the slot's version.
fn desired_validator(trust: Trust) -> Validator {
    Arc::new(
        move |item: &Superseding| match SignedEvent::decode_trusted(&item.body, &trust) {
            Ok(s) => s.event.app == item.key && desired_version(&s.event) == item.version,
            Err(_) => false,
        },
    )
}

/// The validator of `deploy.outcome` slots: well formed, keyed by its app and node.
fn outcome_validator() -> Validator {
    Arc::new(|item: &Superseding| {
        postcard::from_bytes::<NodeOutcome>(&item.body)
            .is_ok_and(|o| item.key == outcome_key(&o.app, &o.node) && o.node == item.origin)
    })
}

/// The validator of `deploy.apps` slots: a list of app names, keyed by its origin.
fn apps_validator() -> Validator {
    Arc::new(|item: &Superseding| {
        item.key == item.origin && postcard::from_bytes::<Vec<String>>(&item.body).is_ok()
    })
}
