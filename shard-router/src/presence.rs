//! Presence on a user's home shard: online or offline, last seen, the
//! user's privacy setting, and who watches the user.
//!
//! The registry says whether a user is online; this module remembers what
//! watchers were told and produces an update only on a real change (first
//! device connected, last one gone). Fan-out to watchers is the router
//! core's job: it groups them by shard, one message per shard.

use rustc_hash::FxHashMap;

use crate::ids::{ConnRef, UserId};
use crate::slim::SlimVec;

/// Who may see when a user was last online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastSeen {
    /// Everyone who watches the user.
    #[default]
    Everyone,
    /// Nobody: watchers see online/offline but last seen as 0.
    Nobody,
}

/// What a watcher is told about a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// The watched user.
    pub user: UserId,
    /// Whether any device of the user is connected.
    pub online: bool,
    /// Last time the user was online, ms since the Unix epoch; 0 when hidden
    /// or never seen.
    pub last_seen_ms: u64,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    online: bool,
    last_seen_ms: u64,
    visibility: LastSeen,
    watchers: SlimVec<ConnRef>,
}

/// Presence of the users whose home is this shard.
#[derive(Debug, Default, Clone)]
pub struct Presence {
    users: FxHashMap<UserId, Entry>,
}

impl Presence {
    /// No users known.
    pub fn new() -> Self {
        Self::default()
    }

    /// `watcher` starts watching `user`; returns the current state to send.
    pub fn subscribe(&mut self, watcher: ConnRef, user: UserId) -> PresenceUpdate {
        let entry = self.users.entry(user).or_default();
        if !entry.watchers.contains(&watcher) {
            entry.watchers.push(watcher);
        }
        update(user, entry)
    }

    /// `watcher` stops watching `user`.
    pub fn unsubscribe(&mut self, watcher: ConnRef, user: UserId) {
        if let Some(entry) = self.users.get_mut(&user) {
            entry.watchers.retain(|w| *w != watcher);
            self.forget_if_idle(user);
        }
    }

    /// Records whether `user` is online at `now_ms`. On a change, returns the
    /// update and the watchers to send it to.
    pub fn set_online(
        &mut self,
        user: UserId,
        online: bool,
        now_ms: u64,
    ) -> Option<(PresenceUpdate, &[ConnRef])> {
        let entry = self.users.entry(user).or_default();
        if entry.online == online {
            return None;
        }
        entry.online = online;
        entry.last_seen_ms = now_ms;
        let entry = &self.users[&user];
        Some((update(user, entry), entry.watchers.as_slice()))
    }

    /// Sets who may see `user`'s last seen. Takes effect in later updates.
    pub fn set_visibility(&mut self, user: UserId, visibility: LastSeen) {
        self.users.entry(user).or_default().visibility = visibility;
    }

    /// The state a new watcher of `user` would be told.
    pub fn current(&self, user: UserId) -> PresenceUpdate {
        self.users.get(&user).map_or(
            PresenceUpdate {
                user,
                online: false,
                last_seen_ms: 0,
            },
            |entry| update(user, entry),
        )
    }

    /// Watchers of `user`.
    pub fn watchers(&self, user: UserId) -> &[ConnRef] {
        self.users.get(&user).map_or(&[], |e| e.watchers.as_slice())
    }

    fn forget_if_idle(&mut self, user: UserId) {
        let idle = self.users.get(&user).is_some_and(|e| {
            e.watchers.is_empty()
                && !e.online
                && e.visibility == LastSeen::Everyone
                && e.last_seen_ms == 0
        });
        if idle {
            self.users.remove(&user);
        }
    }
}

fn update(user: UserId, entry: &Entry) -> PresenceUpdate {
    let last_seen_ms = match entry.visibility {
        LastSeen::Everyone => entry.last_seen_ms,
        LastSeen::Nobody => 0,
    };
    PresenceUpdate {
        user,
        online: entry.online,
        last_seen_ms,
    }
}
