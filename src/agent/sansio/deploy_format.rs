//! Which deploy events this agent reads, announced to the fleet in a reserved tag.
//!
//! A field added to the signed deploy event is refused by an older agent (trailing bytes),
//! so the CLI adds one only when every target announces a format that reads it, the way
//! Consul gates features on the version tags of its Serf members. The tag rides with the
//! node's own tags (older agents carry it like any other); the API lists it as a member's
//! `deploy_format`, not among its tags.

use crate::deploy::signed::DEPLOY_FORMAT;
use crate::gossip::Tags;

/// The tag that carries [`DEPLOY_FORMAT`].
pub const TAG: &str = "@deploy-format";

/// Tag keys that start with this are the agent's own: configured tags may not.
pub const RESERVED_PREFIX: char = '@';

/// Adds this agent's format to its own tags.
pub fn announce(tags: &mut Tags) {
    tags.insert(TAG.to_owned(), DEPLOY_FORMAT.to_string());
}

/// A member's tags as its operator set them, and the format it announces (1 when it
/// announces none: an agent from before the announcement).
pub fn split(mut tags: Tags) -> (Tags, u16) {
    let format = tags.remove(TAG).and_then(|v| v.parse().ok()).unwrap_or(1);
    (tags, format.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_then_split_off() {
        let mut tags: Tags = [("role".to_owned(), "web".to_owned())].into();
        announce(&mut tags);
        assert_eq!(tags.len(), 2);
        let (user, format) = split(tags.clone());
        assert_eq!(user, [("role".to_owned(), "web".to_owned())].into());
        assert_eq!(format, DEPLOY_FORMAT);
        // None announced, or garbage: the base format.
        assert_eq!(split(user.clone()), (user.clone(), 1));
        let mut odd = user.clone();
        odd.insert(TAG.into(), "nine".into());
        assert_eq!(split(odd), (user.clone(), 1));
        odd = user.clone();
        odd.insert(TAG.into(), "0".into());
        assert_eq!(split(odd).1, 1);
    }
}
