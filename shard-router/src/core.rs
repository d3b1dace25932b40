//! [`RouterCore`]: one shard's router, a sans-IO state machine.
//!
//! Input comes through `handle_*` methods with time passed in: events of the
//! connections this shard holds (`handle_connect`, `handle_send`, …) and
//! batches from other shards (`handle_batch`). Output is polled: effects for
//! this shard's own shell (`poll_effect`: close a connection, deliver a
//! message, a presence update, a group record to make durable) and batches
//! for other shards (`poll_batch`, one per destination per turn).
//!
//! Each user's and group's state lives on its home shard (see
//! [`Placement`]); a connection stays on the shard that accepted it. Messages
//! to this shard itself take the same path as to any other (a local FIFO),
//! so ordering is the same whether or not a hop crosses cores: per sender,
//! per destination, FIFO.
//!
//! `M` is the shell's message handle (for example a stored message's header
//! and payload `Bytes`); the router never looks inside it.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::groups::{GROUP_MEMBERS_MAX_DEFAULT, GroupError, GroupRecord, Groups};
use crate::ids::{ConnId, ConnRef, DeviceKey, GroupId, NodeId, ShardId, Target, UserId};
use crate::outbox::Outbox;
use crate::placement::{Placement, Route};
use crate::presence::{LastSeen, Presence, PresenceUpdate};
use crate::registry::{Registry, Session};
use crate::slim::SlimVec;

/// Limits and settings of a router core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    /// Largest group.
    pub group_members_max: usize,
    /// Most users one connection may watch.
    pub subscriptions_per_conn_max: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            group_members_max: GROUP_MEMBERS_MAX_DEFAULT,
            subscriptions_per_conn_max: 1024,
        }
    }
}

/// Why the router wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The same device connected again elsewhere (`GoAway{ConnectedElsewhere}`).
    ConnectedElsewhere,
}

/// A group change requested by a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    /// Create `group` (id chosen by the shell) with `members`.
    Create {
        /// The new group's id.
        group: GroupId,
        /// Initial members besides the creator.
        members: Vec<UserId>,
    },
    /// Add `members` (admins only).
    Add {
        /// The group.
        group: GroupId,
        /// Users to add.
        members: Vec<UserId>,
    },
    /// Remove `members`; naming only oneself is leaving.
    Remove {
        /// The group.
        group: GroupId,
        /// Users to remove.
        members: Vec<UserId>,
    },
}

impl GroupRequest {
    fn group(&self) -> GroupId {
        match self {
            Self::Create { group, .. } | Self::Add { group, .. } | Self::Remove { group, .. } => {
                *group
            }
        }
    }
}

/// A message between router cores.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardMsg<M> {
    /// To the user's home: `device` connected on `session`.
    Register {
        /// The device.
        device: DeviceKey,
        /// Where and since when.
        session: Session,
    },
    /// To the user's home: `device` left `conn` at `at_ms`.
    Unregister {
        /// The device.
        device: DeviceKey,
        /// The connection it was on.
        conn: ConnRef,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
    /// To the shard holding `conn`: close it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// To the home of `to` (user, device or group): route `msg`.
    Forward {
        /// The sending device.
        from: DeviceKey,
        /// The address as the sender wrote it.
        to: Target,
        /// The message.
        msg: M,
    },
    /// From a group's home to a member's home: route `msg` to `user`.
    FanOut {
        /// The sending device.
        from: DeviceKey,
        /// The member.
        user: UserId,
        /// The group it was sent to.
        group: GroupId,
        /// The message.
        msg: M,
    },
    /// To the home of `to`: hand `msg` to the home shard's shell (which
    /// stores it before anything is delivered).
    Home {
        /// The device it comes from.
        from: DeviceKey,
        /// The address as the sender wrote it.
        to: Target,
        /// The message.
        msg: M,
    },
    /// To the shard holding `conn`: hand `msg` to it.
    Deliver {
        /// The connection.
        conn: ConnId,
        /// The sending device.
        from: DeviceKey,
        /// The address as the sender wrote it.
        to: Target,
        /// The message.
        msg: M,
    },
    /// To `user`'s home: `watcher` watches `user`.
    Subscribe {
        /// The watching connection.
        watcher: ConnRef,
        /// The watched user.
        user: UserId,
    },
    /// To `user`'s home: `watcher` stops watching `user`.
    Unsubscribe {
        /// The watching connection.
        watcher: ConnRef,
        /// The watched user.
        user: UserId,
    },
    /// To a watchers' shard: one update for all its watching connections.
    Presence {
        /// The watching connections on the destination shard.
        conns: Vec<ConnId>,
        /// The update.
        update: PresenceUpdate,
    },
    /// To `user`'s home: who may see `user`'s last seen.
    SetLastSeen {
        /// The user.
        user: UserId,
        /// The setting.
        visibility: LastSeen,
    },
    /// To the group's home: a change requested by `actor` on `reply_to`.
    Group {
        /// The requesting connection.
        reply_to: ConnRef,
        /// The requesting user.
        actor: UserId,
        /// The client's request id.
        request_id: u64,
        /// The change.
        request: GroupRequest,
    },
    /// To the requester's shard: the outcome of a group request.
    GroupReply {
        /// The requesting connection.
        conn: ConnId,
        /// The client's request id.
        request_id: u64,
        /// The durable record, or why not.
        result: Result<GroupRecord, GroupError>,
    },
}

/// Something this shard's shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<M> {
    /// Close a connection of this shard.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Hand a message to a connection of this shard.
    Deliver {
        /// The connection.
        conn: ConnId,
        /// The sending device.
        from: DeviceKey,
        /// The address as the sender wrote it.
        to: Target,
        /// The message.
        msg: M,
    },
    /// A message for this shard as the home of `to` (from [`RouterCore::route_home`]).
    Home {
        /// The device it comes from.
        from: DeviceKey,
        /// The address as the sender wrote it.
        to: Target,
        /// The message.
        msg: M,
    },
    /// No device of the target is online (this shard is its home): the
    /// message waits in the queue engine.
    Undelivered {
        /// The sending device.
        from: DeviceKey,
        /// The user or device that is offline.
        to: Target,
        /// The message.
        msg: M,
    },
    /// A presence update for connections of this shard.
    Presence {
        /// The watching connections.
        conns: Vec<ConnId>,
        /// The update.
        update: PresenceUpdate,
    },
    /// A group change to make durable (this shard is the group's home).
    Record(GroupRecord),
    /// The outcome of a group request made by a connection of this shard.
    GroupReply {
        /// The connection.
        conn: ConnId,
        /// The client's request id.
        request_id: u64,
        /// The record, or why not.
        result: Result<GroupRecord, GroupError>,
    },
    /// The target's home is another node: the shell forwards `msg` there
    /// (over the fleet's broker, not built yet).
    Remote {
        /// The home node.
        node: NodeId,
        /// The message for the home shard there.
        msg: ShardMsg<M>,
    },
    /// A subscription beyond the per-connection limit was refused.
    SubscriptionRefused {
        /// The connection.
        conn: ConnId,
        /// The user it asked to watch.
        user: UserId,
    },
}

/// What this shard knows of a connection it holds.
#[derive(Debug, Clone)]
struct LocalConn {
    device: DeviceKey,
    watching: SlimVec<UserId>,
}

/// One shard's router.
#[derive(Debug)]
pub struct RouterCore<M> {
    shard: ShardId,
    placement: Placement,
    config: RouterConfig,
    registry: Registry,
    presence: Presence,
    groups: Groups,
    conns: FxHashMap<ConnId, LocalConn>,
    outbox: Outbox<ShardMsg<M>>,
    local: VecDeque<ShardMsg<M>>,
    effects: VecDeque<Effect<M>>,
}

impl<M: Clone> RouterCore<M> {
    /// The router of shard `shard` in `placement`.
    pub fn new(shard: ShardId, placement: Placement, config: RouterConfig) -> Self {
        assert!(shard.0 < placement.shards(), "shard {shard:?} exists");
        Self {
            shard,
            outbox: Outbox::new(placement.shards()),
            placement,
            config,
            registry: Registry::new(),
            presence: Presence::new(),
            groups: Groups::new(config.group_members_max),
            conns: FxHashMap::default(),
            local: VecDeque::new(),
            effects: VecDeque::new(),
        }
    }

    /// This shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The registry of the users whose home is this shard.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Where every user and group lives.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The groups whose home is this shard.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    // ---- events of connections this shard holds ----------------------------

    /// Connection `conn` of this shard authenticated as `device`.
    pub fn handle_connect(&mut self, now_ms: u64, conn: ConnId, device: DeviceKey) {
        self.conns.insert(
            conn,
            LocalConn {
                device,
                watching: SlimVec::default(),
            },
        );
        let session = Session {
            conn: self.conn_ref(conn),
            since_ms: now_ms,
        };
        self.send_home(
            Target::Device(device),
            ShardMsg::Register { device, session },
        );
        self.run_local(now_ms);
    }

    /// Connection `conn` of this shard closed.
    pub fn handle_disconnect(&mut self, now_ms: u64, conn: ConnId) {
        let Some(local) = self.conns.remove(&conn) else {
            return;
        };
        let watcher = self.conn_ref(conn);
        for user in local.watching {
            self.send_home(Target::User(user), ShardMsg::Unsubscribe { watcher, user });
        }
        let device = local.device;
        let msg = ShardMsg::Unregister {
            device,
            conn: watcher,
            at_ms: now_ms,
        };
        self.send_home(Target::Device(device), msg);
        self.run_local(now_ms);
    }

    /// Connection `conn` sent `msg` to `to`. The sender is the connection's
    /// authenticated device, never something the client says.
    pub fn handle_send(&mut self, now_ms: u64, conn: ConnId, to: Target, msg: M) {
        let Some(from) = self.conns.get(&conn).map(|c| c.device) else {
            return;
        };
        self.send_home(to, ShardMsg::Forward { from, to, msg });
        self.run_local(now_ms);
    }

    /// Connection `conn` wants presence updates of `users`.
    pub fn handle_subscribe(&mut self, now_ms: u64, conn: ConnId, users: &[UserId]) {
        let watcher = self.conn_ref(conn);
        let max = self.config.subscriptions_per_conn_max;
        let Some(local) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut accepted = Vec::new();
        for user in users {
            if local.watching.contains(user) {
                continue;
            }
            if local.watching.len() >= max {
                self.effects
                    .push_back(Effect::SubscriptionRefused { conn, user: *user });
                continue;
            }
            local.watching.push(*user);
            accepted.push(*user);
        }
        for user in accepted {
            self.send_home(Target::User(user), ShardMsg::Subscribe { watcher, user });
        }
        self.run_local(now_ms);
    }

    /// Connection `conn` no longer wants presence updates of `users`.
    pub fn handle_unsubscribe(&mut self, now_ms: u64, conn: ConnId, users: &[UserId]) {
        let watcher = self.conn_ref(conn);
        let Some(local) = self.conns.get_mut(&conn) else {
            return;
        };
        let gone: Vec<UserId> = users
            .iter()
            .copied()
            .filter(|u| local.watching.contains(u))
            .collect();
        local.watching.retain(|u| !gone.contains(u));
        for user in gone {
            self.send_home(Target::User(user), ShardMsg::Unsubscribe { watcher, user });
        }
        self.run_local(now_ms);
    }

    /// The user of connection `conn` changes who sees its last seen.
    pub fn handle_set_last_seen(&mut self, now_ms: u64, conn: ConnId, visibility: LastSeen) {
        let Some(user) = self.conns.get(&conn).map(|c| c.device.user) else {
            return;
        };
        self.send_home(
            Target::User(user),
            ShardMsg::SetLastSeen { user, visibility },
        );
        self.run_local(now_ms);
    }

    /// At `user`'s home: who sees its last seen, as its stored setting
    /// says (applied directly: the caller is the home, at start or once
    /// the change is durable). Takes effect in later updates.
    pub fn set_last_seen_at_home(&mut self, user: UserId, visibility: LastSeen) {
        self.presence.set_visibility(user, visibility);
    }

    /// Connection `conn` asks for a group change.
    pub fn handle_group(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u64,
        request: GroupRequest,
    ) {
        let Some(actor) = self.conns.get(&conn).map(|c| c.device.user) else {
            return;
        };
        let reply_to = self.conn_ref(conn);
        let target = Target::Group(request.group());
        self.send_home(
            target,
            ShardMsg::Group {
                reply_to,
                actor,
                request_id,
                request,
            },
        );
        self.run_local(now_ms);
    }

    /// Validates `actor`'s change of a group homed here and applies it;
    /// the record still has to be made durable before anyone is told.
    pub fn change_group(
        &mut self,
        actor: UserId,
        request: &GroupRequest,
    ) -> Result<GroupRecord, GroupError> {
        let record = match request {
            GroupRequest::Create { group, members } => self.groups.create(*group, actor, members),
            GroupRequest::Add { group, members } => self.groups.add(*group, actor, members),
            GroupRequest::Remove { group, members } => self.groups.remove(*group, actor, members),
        }?;
        self.groups.apply(&record);
        Ok(record)
    }

    /// Replays a durable group record at startup (this shard is its home).
    pub fn replay_group_record(&mut self, record: &GroupRecord) {
        self.groups.apply(record);
    }

    /// Sends `msg` to the home shard of `to`, where it surfaces as
    /// [`Effect::Home`]: the path of everything the home must store first.
    pub fn route_home(&mut self, now_ms: u64, from: DeviceKey, to: Target, msg: M) {
        self.send_home(to, ShardMsg::Home { from, to, msg });
        self.run_local(now_ms);
    }

    /// Hands `msg` to connection `conn` on whichever shard holds it, where it
    /// surfaces as [`Effect::Deliver`]. FIFO per destination shard.
    pub fn route_to_conn(
        &mut self,
        now_ms: u64,
        conn: ConnRef,
        from: DeviceKey,
        to: Target,
        msg: M,
    ) {
        let conn_id = conn.conn;
        let deliver = ShardMsg::Deliver {
            conn: conn_id,
            from,
            to,
            msg,
        };
        self.send_to(conn.shard, deliver);
        self.run_local(now_ms);
    }

    /// The device a connection of this shard authenticated as.
    pub fn conn_device(&self, conn: ConnId) -> Option<DeviceKey> {
        self.conns.get(&conn).map(|c| c.device)
    }

    // ---- batches from other shards ------------------------------------------

    /// A batch from another shard (or this one), in its order.
    pub fn handle_batch(&mut self, now_ms: u64, batch: Vec<ShardMsg<M>>) {
        self.local.extend(batch);
        self.run_local(now_ms);
    }

    // ---- output -------------------------------------------------------------

    /// The next thing this shard's shell must do.
    pub fn poll_effect(&mut self) -> Option<Effect<M>> {
        self.effects.pop_front()
    }

    /// The next batch for another shard. Call until `None` once per turn of
    /// the event loop: each destination gets one batch per turn.
    pub fn poll_batch(&mut self) -> Option<(ShardId, Vec<ShardMsg<M>>)> {
        self.outbox.pop_batch()
    }

    // ---- internals ----------------------------------------------------------

    fn conn_ref(&self, conn: ConnId) -> ConnRef {
        ConnRef {
            shard: self.shard,
            conn,
        }
    }

    fn send_home(&mut self, target: Target, msg: ShardMsg<M>) {
        match self.placement.route(target) {
            Route::Shard(shard) => self.send_to(shard, msg),
            Route::Node(node) => self.effects.push_back(Effect::Remote { node, msg }),
        }
    }

    fn send_to(&mut self, shard: ShardId, msg: ShardMsg<M>) {
        route(self.shard, &mut self.local, &mut self.outbox, shard, msg);
    }

    fn run_local(&mut self, now_ms: u64) {
        while let Some(msg) = self.local.pop_front() {
            self.handle_msg(now_ms, msg);
        }
    }

    fn handle_msg(&mut self, now_ms: u64, msg: ShardMsg<M>) {
        match msg {
            ShardMsg::Register { device, session } => self.on_register(now_ms, device, session),
            ShardMsg::Unregister {
                device,
                conn,
                at_ms,
            } => self.on_unregister(device, conn, at_ms),
            ShardMsg::Close { conn, reason } => {
                self.effects.push_back(Effect::Close { conn, reason })
            }
            ShardMsg::Forward { from, to, msg } => self.on_forward(from, to, msg),
            ShardMsg::Home { from, to, msg } => {
                self.effects.push_back(Effect::Home { from, to, msg })
            }
            ShardMsg::FanOut {
                from,
                user,
                group,
                msg,
            } => self.deliver_to_user(from, user, Target::Group(group), msg),
            ShardMsg::Deliver {
                conn,
                from,
                to,
                msg,
            } => self.effects.push_back(Effect::Deliver {
                conn,
                from,
                to,
                msg,
            }),
            ShardMsg::Subscribe { watcher, user } => {
                let update = self.presence.subscribe(watcher, user);
                let msg = ShardMsg::Presence {
                    conns: vec![watcher.conn],
                    update,
                };
                self.send_to(watcher.shard, msg);
            }
            ShardMsg::Unsubscribe { watcher, user } => self.presence.unsubscribe(watcher, user),
            ShardMsg::Presence { conns, update } => {
                self.effects.push_back(Effect::Presence { conns, update })
            }
            ShardMsg::SetLastSeen { user, visibility } => {
                self.presence.set_visibility(user, visibility)
            }
            ShardMsg::Group {
                reply_to,
                actor,
                request_id,
                request,
            } => self.on_group(reply_to, actor, request_id, request),
            ShardMsg::GroupReply {
                conn,
                request_id,
                result,
            } => self.effects.push_back(Effect::GroupReply {
                conn,
                request_id,
                result,
            }),
        }
    }

    fn on_register(&mut self, now_ms: u64, device: DeviceKey, session: Session) {
        if let Some(old) = self.registry.register(device, session) {
            let reason = CloseReason::ConnectedElsewhere;
            self.send_to(
                old.shard,
                ShardMsg::Close {
                    conn: old.conn,
                    reason,
                },
            );
        }
        self.presence_changed(device.user, true, now_ms);
    }

    fn on_unregister(&mut self, device: DeviceKey, conn: ConnRef, at_ms: u64) {
        if self.registry.unregister(device, conn) && !self.registry.is_online(device.user) {
            self.presence_changed(device.user, false, at_ms);
        }
    }

    /// Tells every watcher of `user` about a change, one message per shard.
    fn presence_changed(&mut self, user: UserId, online: bool, now_ms: u64) {
        let Some((update, watchers)) = self.presence.set_online(user, online, now_ms) else {
            return;
        };
        let mut by_shard: Vec<(ShardId, Vec<ConnId>)> = Vec::new();
        for w in watchers {
            match by_shard.iter_mut().find(|(s, _)| *s == w.shard) {
                Some((_, conns)) => conns.push(w.conn),
                None => by_shard.push((w.shard, vec![w.conn])),
            }
        }
        for (shard, conns) in by_shard {
            self.send_to(shard, ShardMsg::Presence { conns, update });
        }
    }

    fn on_forward(&mut self, from: DeviceKey, to: Target, msg: M) {
        match to {
            Target::User(user) => self.deliver_to_user(from, user, to, msg),
            Target::Device(device) => match self.registry.session(device).copied() {
                Some(s) => self.send_to(
                    s.conn.shard,
                    ShardMsg::Deliver {
                        conn: s.conn.conn,
                        from,
                        to,
                        msg,
                    },
                ),
                None => self
                    .effects
                    .push_back(Effect::Undelivered { from, to, msg }),
            },
            Target::Group(group) => self.fan_out(from, group, msg),
        }
    }

    /// Hands `msg` to every online device of `user` except the sending one.
    fn deliver_to_user(&mut self, from: DeviceKey, user: UserId, to: Target, msg: M) {
        let mut delivered = false;
        for (device, session) in self.registry.online_devices(user) {
            if (DeviceKey {
                user,
                device: *device,
            }) == from
            {
                continue; // not echoed to the sending device
            }
            let conn = session.conn;
            let deliver = ShardMsg::Deliver {
                conn: conn.conn,
                from,
                to,
                msg: msg.clone(),
            };
            route(
                self.shard,
                &mut self.local,
                &mut self.outbox,
                conn.shard,
                deliver,
            );
            delivered = true;
        }
        if !delivered {
            let offline = Target::User(user);
            self.effects.push_back(Effect::Undelivered {
                from,
                to: offline,
                msg,
            });
        }
    }

    /// From the group's home: one `FanOut` per member, batched per shard.
    fn fan_out(&mut self, from: DeviceKey, group: GroupId, msg: M) {
        let Some(members) = self.groups.members(group) else {
            return;
        };
        if !members.contains_key(&from.user) {
            return;
        }
        let members: Vec<UserId> = members.keys().copied().collect();
        for user in members {
            let home = self.placement.user_shard(user);
            self.send_to(
                home,
                ShardMsg::FanOut {
                    from,
                    user,
                    group,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn on_group(
        &mut self,
        reply_to: ConnRef,
        actor: UserId,
        request_id: u64,
        request: GroupRequest,
    ) {
        let result = self.change_group(actor, &request);
        if let Ok(record) = &result {
            self.effects.push_back(Effect::Record(record.clone()));
        }
        let reply = ShardMsg::GroupReply {
            conn: reply_to.conn,
            request_id,
            result,
        };
        self.send_to(reply_to.shard, reply);
    }
}

/// Queues `msg` for shard `to`: this shard's own FIFO if `to` is `here`,
/// else the outbox. A free function so callers can keep borrowing other
/// fields (the registry) while sending.
fn route<M>(
    here: ShardId,
    local: &mut VecDeque<ShardMsg<M>>,
    outbox: &mut Outbox<ShardMsg<M>>,
    to: ShardId,
    msg: ShardMsg<M>,
) {
    if to == here {
        local.push_back(msg);
    } else {
        outbox.push(to, msg);
    }
}
