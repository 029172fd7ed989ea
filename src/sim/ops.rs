//! What a scenario does to a simulated cluster, and what it reads back: events, crashes
//! and restarts, pauses, tag changes, membership views.

use std::time::Duration;

use super::cluster::Cluster;
use crate::gossip::Tags;

impl Cluster {
    /// Node `origin` fires the user event `name`; its arrivals are tracked.
    pub fn fire(&mut self, origin: usize, name: &str, payload: Vec<u8>) {
        self.stats.track(name, origin);
        let name = name.to_owned();
        self.input(origin, |m, now| {
            let (result, effects) = m.publish_event(now, &name, payload);
            if let Err(e) = result {
                panic!("the simulator's event {name} was refused: {e}");
            }
            effects
        });
    }

    /// Node `i` dies: it drops everything until [`Cluster::restart`].
    pub fn crash(&mut self, i: usize) {
        let node = self.node_mut(i);
        node.up = false;
        node.life += 1;
        self.stats.disturbed[i] = true;
    }

    /// Node `i` comes back with a fresh state (its restart counter bumped) and joins; its
    /// deploy controller restores what it had persisted.
    pub fn restart(&mut self, i: usize) {
        let (setup, seed) = (self.config().setup.clone(), self.config().seed);
        let deploy = self.config().deploy.clone();
        let node = self.node_mut(i);
        node.bump = node.bump.wrapping_add(1);
        node.life += 1;
        node.up = true;
        node.machine =
            super::node::machine(i, node.bump, &node.join, &setup, deploy.as_ref(), seed);
        if let (Some(old), Some(d)) = (node.deploy.as_mut(), deploy.as_ref()) {
            *old = old.restarted(&super::node::name(i), d);
        }
        self.start_now(i);
    }

    /// Node `i` stops handling anything for `dur` (SIGSTOP): what reaches it waits.
    pub fn pause(&mut self, i: usize, dur: Duration) {
        let until = self.clock() + dur;
        self.node_mut(i).paused_until = until;
        self.stats.disturbed[i] = true;
    }

    /// Node `i`'s tags change (a SIGHUP with a new config).
    pub fn set_tags(&mut self, i: usize, tags: Tags) {
        let mut settings = self.node(i).settings().clone();
        settings.tags = tags;
        let now = self.now();
        let m = self.machine_mut(i);
        m.reload(now, settings, Vec::new());
    }

    /// The tags node `viewer` holds for node `about`.
    pub fn tags_seen(&self, viewer: usize, about: usize) -> Option<Tags> {
        self.node(viewer).tags_of(&super::node::name(about))
    }

    /// Whether every node that is up counts exactly the other up nodes as active.
    pub fn converged(&self) -> bool {
        let up = self.up_count();
        (0..self.len())
            .filter(|&i| self.is_up(i))
            .all(|i| self.node(i).active_members() + 1 == up)
    }

    /// How many up nodes have delivered the tracked event `name`.
    pub fn reached(&self, name: &str) -> usize {
        (self.stats.arrivals(name).unwrap_or_default().iter())
            .filter(|a| a.is_some())
            .count()
    }

    /// How many nodes are up.
    pub fn up_count(&self) -> usize {
        (0..self.len()).filter(|&i| self.is_up(i)).count()
    }
}

impl Cluster {
    /// How many members node `i` counts as active, itself not included.
    pub fn active_members(&self, i: usize) -> usize {
        self.node(i).active_members()
    }
}
