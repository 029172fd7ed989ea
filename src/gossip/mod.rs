//! Sans-io gossip core (in progress).
