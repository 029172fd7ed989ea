//! What the deploy controller keeps across restarts (`DATA_DIR/deploy-state`), with a
//! format header so that a file of another release or a cut one is named as such.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::deploy::signed::SeenSnapshot;
use crate::deploy::status::NodeOutcome;

/// What survives a restart.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// [`DesiredState::encode`].
    pub desired: Vec<u8>,
    /// Last finished event id (hex) per app.
    pub done: BTreeMap<String, String>,
    /// This node's last outcome per app.
    pub outcomes: Vec<NodeOutcome>,
    /// The deploy event ids accepted, so a replay after a restart is still refused as one.
    pub seen: SeenSnapshot,
}

/// The deploy state file starts with this, then [`STATE_VERSION`], then postcard: a file of
/// another format is named as such instead of being misread as this one.
const STATE_MAGIC: &[u8; 4] = b"DFDS";
/// Bumped when [`Persisted`] changes shape (postcard has no field tags).
const STATE_VERSION: u8 = 1;

impl Persisted {
    /// The deploy state file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = STATE_MAGIC.to_vec();
        out.push(STATE_VERSION);
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Reads [`Self::encode`]'s bytes; the error says what is wrong with them.
    pub fn decode(bytes: &[u8]) -> Result<Persisted, String> {
        let Some(rest) = bytes.strip_prefix(STATE_MAGIC) else {
            return Err("not a droot-fleet deploy state file (no DFDS header)".into());
        };
        match rest.split_first() {
            Some((&STATE_VERSION, body)) => {
                postcard::from_bytes(body).map_err(|e| format!("corrupt: {e}"))
            }
            Some((v, _)) => Err(format!(
                "format version {v}, this agent reads {STATE_VERSION}: written by another droot-fleet release"
            )),
            None => Err("truncated after its header".into()),
        }
    }
}
