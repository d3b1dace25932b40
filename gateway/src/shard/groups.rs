//! Groups: this shard as a group's home (membership changes, the one
//! order of the group's messages) and as a member's home (queueing a
//! group's messages and changes for its users' devices).
//!
//! A group message goes from the sender's shard to the group's home, which
//! checks that the sender is a member, gives it its id and stores it once
//! for the members whose home it is (the record holds the group id). Once
//! that record is durable it sends one [`GroupCopy`] per other shard that
//! is home to members; each stores one record for its members' devices and
//! answers [`ToHome::CopyStored`] once durable. ✓ goes to the sender when
//! every part is durable. Everything a member's home gets from the group's
//! home comes through one FIFO ring in the order the group's home decided,
//! so every member device sees the group's messages and changes in one
//! order. A retry is deduped at every home on (sender device, client id);
//! a retried send whose original is known sends the copies again, so a
//! crash between the group's home and a member's home loses nothing the
//! sender was told is stored.
//!
//! A change is applied, made durable as a router [`GroupRecord`], and
//! queued for every member (and for those it removes) as a notice: a
//! server record whose payload is [`NOTICE_GROUP`], then the change.

use bytes::Bytes;
use queue_engine::{Accepted, DeviceRef, NewMessage, QueueError, Storage};
use shard_router::{
    ConnRef, DeviceKey, GroupError, GroupId, GroupRecord, GroupRequest, ShardId, Target, UserId,
};
use wire_format::fb::{self, ErrorCode};

use super::note::GroupCopy;
use super::{Meta, ShardCore, ToConn, ToHome, Waiting, device_ref};

/// First byte of a stored group notice (receipt kinds are below 16).
pub(super) const NOTICE_GROUP: u8 = 16;

/// A group send waiting for its parts to be durable.
#[derive(Debug)]
pub(super) struct GroupSend {
    reply: ConnRef,
    from: DeviceKey,
    note: ToConn,
    /// Parts (this shard's record, each copy) not yet durable.
    left: u32,
}

/// The protocol code for a refused change.
fn group_code(error: &GroupError) -> ErrorCode {
    match error {
        GroupError::NotAdmin => ErrorCode::NotGroupAdmin,
        GroupError::Full { .. } => ErrorCode::GroupFull,
        GroupError::UnknownGroup | GroupError::AlreadyExists | GroupError::NoChange => {
            ErrorCode::UnknownGroup
        }
    }
}

fn change_of(record: &GroupRecord) -> fb::GroupChange {
    match record {
        GroupRecord::Created { .. } => fb::GroupChange::Created,
        GroupRecord::Added { .. } => fb::GroupChange::Added,
        GroupRecord::Removed { .. } => fb::GroupChange::Removed,
        GroupRecord::Left { .. } => fb::GroupChange::Left,
    }
}

/// The stored notice: `16 | group u64 | change u8 | actor u64 |
/// request_id u64 | members u64...`.
fn notice_bytes(record: &GroupRecord, request_id: u64) -> Vec<u8> {
    let members = record.members();
    let mut out = Vec::with_capacity(26 + 8 * members.len());
    out.push(NOTICE_GROUP);
    out.extend_from_slice(&record.group().0.to_le_bytes());
    out.push(change_of(record).0);
    out.extend_from_slice(&record.actor().0.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    for m in members {
        out.extend_from_slice(&m.0.to_le_bytes());
    }
    out
}

/// The little-endian `u64` at `at` in `bytes`, if it is all there.
fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The frame note for a stored notice delivered at `seq` to `device`;
/// `requester` is the device that asked for the change.
pub(super) fn notice_note(
    payload: &[u8],
    seq: u64,
    device: DeviceKey,
    requester: DeviceKey,
) -> Option<ToConn> {
    let body = payload.strip_prefix(&[NOTICE_GROUP])?;
    let u64_at = |i: usize| le_u64(body, i);
    let group = u64_at(0)?;
    let change = fb::GroupChange(*body.get(8)?);
    let actor = u64_at(9)?;
    let request_id = u64_at(17)?;
    let members = body.get(25..)?;
    if members.len() % 8 != 0 {
        return None;
    }
    let members = members
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Some(ToConn::GroupChanged {
        seq,
        request_id: if device == requester { request_id } else { 0 },
        group,
        change,
        actor,
        members,
    })
}

impl<S: Storage> ShardCore<S> {
    /// A new group id: unique with overwhelming odds (a seeded 64-bit
    /// mix); a taken one is refused by its home and the client retries.
    pub(super) fn next_group_id(&mut self) -> u64 {
        self.group_ids = self.group_ids.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.group_ids;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    }

    /// `users` split by home shard: this shard's, and every other's.
    fn by_home(&self, users: impl Iterator<Item = UserId>) -> Vec<(ShardId, Vec<UserId>)> {
        let mut homes: Vec<(ShardId, Vec<UserId>)> = Vec::new();
        for user in users {
            let home = self.router.placement().user_shard(user);
            match homes.iter_mut().find(|(s, _)| *s == home) {
                Some((_, us)) => us.push(user),
                None => homes.push((home, vec![user])),
            }
        }
        homes
    }

    /// The devices of `users` (homed here) with room for an entry, never
    /// `from` itself; devices without room are counted as skipped, and
    /// told of a message they miss in a gap notice.
    fn member_devices(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        users: &[UserId],
        payload_len: usize,
        notice: bool,
    ) -> Vec<DeviceRef> {
        let (mut out, mut skipped) = (Vec::new(), Vec::new());
        for user in users {
            for device in self.devices.get(user).into_iter().flatten() {
                let d = DeviceKey {
                    user: *user,
                    device: *device,
                };
                if d == from && !notice {
                    continue;
                }
                match self
                    .engine
                    .has_room(device_ref(d), payload_len as u64, notice)
                {
                    true => out.push(device_ref(d)),
                    false => skipped.push(d),
                }
            }
        }
        self.stats.group_skipped += skipped.len() as u64;
        for d in skipped.iter().filter(|_| !notice) {
            self.gap(*d, from, now_ms, fb::GapCause::QueueFull);
        }
        out
    }

    /// Stores `payload` once for `devices` as a group record; returns what
    /// the engine said. Nothing is kept in memory for a record nobody here
    /// receives.
    #[allow(clippy::too_many_arguments)]
    fn store_group_record(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        group: u64,
        message_id: u64,
        client_msg_id: u64,
        ttl_s: u32,
        payload: &[u8],
        devices: &[DeviceRef],
    ) -> Result<Accepted, QueueError> {
        let m = NewMessage {
            message_id,
            sender: device_ref(from),
            client_msg_id,
            recipients: devices,
            ttl_ms: u64::from(ttl_s) * 1000,
            payload: if devices.is_empty() { &[] } else { payload },
            receipt: false,
            group,
        };
        let accepted = self.engine.append_message(now_ms, &m)?;
        if let Accepted::Stored { position, seqs } = &accepted
            && !seqs.is_empty()
        {
            let meta = Meta {
                from,
                to: Target::Group(GroupId(group)),
                message_id,
                at_ms: now_ms,
                receipt: None,
                pending: u32::try_from(seqs.len()).expect("at most 65,535 recipients"),
            };
            self.stored(*position, meta, seqs);
        }
        Ok(accepted)
    }

    // ---- this shard as the group's home ---------------------------------------

    /// A `Send` to `group` reached its home.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_send(
        &mut self,
        now_ms: u64,
        reply: ConnRef,
        from: DeviceKey,
        group: GroupId,
        client_msg_id: u64,
        ttl_s: u32,
        payload: &Bytes,
    ) {
        let refuse = |code| ToConn::Refused {
            code,
            client_msg_id,
        };
        if self.failed.is_some() {
            let note = refuse(ErrorCode::StorageUnavailable);
            return self.send_conn(now_ms, reply, from, Target::Device(from), note);
        }
        let members = self.router.groups().members(group);
        let member = members.is_some_and(|m| m.contains_key(&from.user));
        // A retry of a stored send is answered as one even if the sender
        // has left since: it was stored, so no refusal may say otherwise.
        if !member && !self.engine.was_stored(device_ref(from), client_msg_id) {
            let note = refuse(ErrorCode::UnknownGroup);
            return self.send_conn(now_ms, reply, from, Target::Device(from), note);
        }
        let users: Vec<UserId> = members
            .into_iter()
            .flat_map(|m| m.keys().copied())
            .collect();
        let homes = self.by_home(users.into_iter());
        let here: Vec<UserId> = homes
            .iter()
            .find(|(s, _)| *s == self.shard)
            .map(|(_, us)| us.clone())
            .unwrap_or_default();
        let devices = self.member_devices(now_ms, from, &here, payload.len(), false);
        let message_id = self.next_message_id();
        let stored = self.store_group_record(
            now_ms,
            from,
            group.0,
            message_id,
            client_msg_id,
            ttl_s,
            payload,
            &devices,
        );
        let (message_id, position, duplicate) = match stored {
            Ok(Accepted::Stored { position, .. }) => {
                self.stats.messages_stored += 1;
                (message_id, position, false)
            }
            Ok(Accepted::Duplicate {
                message_id,
                position,
            }) => {
                self.stats.duplicates += 1;
                (message_id, position, true)
            }
            Ok(Accepted::Forgotten) => {
                self.stats.duplicates += 1;
                let note = ToConn::Acked {
                    client_msg_id,
                    message_id: 0,
                    at_ms: now_ms,
                    duplicate: true,
                };
                return self.send_conn(now_ms, reply, from, Target::Device(from), note);
            }
            Err(error) => {
                let code = match error {
                    QueueError::Stale { .. } => ErrorCode::RetryTooOld,
                    QueueError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
                    _ => {
                        self.anomaly("a group record was refused for a reason it cannot have");
                        ErrorCode::Internal
                    }
                };
                return self.send_conn(now_ms, reply, from, Target::Device(from), refuse(code));
            }
        };
        let note = ToConn::Acked {
            client_msg_id,
            message_id,
            at_ms: now_ms,
            duplicate,
        };
        let copy = GroupCopy {
            group: group.0,
            token: 0,
            message_id,
            client_msg_id,
            ttl_s,
            payload: payload.clone(),
            users: Vec::new(),
        };
        self.send_copies(now_ms, (reply, from), position, note, copy, homes);
    }

    /// Waits for this shard's record at `position` and one copy per other
    /// home in `homes`, then answers `note` (✓) on `reply`.
    fn send_copies(
        &mut self,
        now_ms: u64,
        (reply, from): (ConnRef, DeviceKey),
        position: u64,
        note: ToConn,
        copy: GroupCopy,
        homes: Vec<(ShardId, Vec<UserId>)>,
    ) {
        let remote: Vec<Vec<UserId>> = homes
            .into_iter()
            .filter(|(s, _)| *s != self.shard)
            .map(|(_, users)| users)
            .collect();
        let token = self.next_token;
        self.next_token += 1;
        let left = 1 + u32::try_from(remote.len()).expect("few shards");
        let send = GroupSend {
            reply,
            from,
            note,
            left,
        };
        self.group_sends.insert(token, send);
        for users in remote {
            let to = Target::User(users[0]);
            let copy = GroupCopy {
                token,
                users,
                ..copy.clone()
            };
            self.when_durable(
                now_ms,
                position,
                from,
                to,
                ToHome::GroupCopy(Box::new(copy)),
            );
        }
        self.when_durable_part(now_ms, position, token);
    }

    /// Sends `note` to the home of `to` once the log is durable past
    /// `position` (at once if it already is).
    fn when_durable(
        &mut self,
        now_ms: u64,
        position: u64,
        from: DeviceKey,
        to: Target,
        note: ToHome,
    ) {
        if position < self.engine.durable() {
            return self.send_home(now_ms, from, to, note);
        }
        let waiting = Waiting::Home { from, to, note };
        self.waiting.push_back((position, waiting));
    }

    fn when_durable_part(&mut self, now_ms: u64, position: u64, token: u64) {
        if position < self.engine.durable() {
            return self.group_part_done(now_ms, token);
        }
        self.waiting
            .push_back((position, Waiting::GroupPart(token)));
    }

    /// One part of group send `token` is durable; ✓ once all are.
    pub(super) fn group_part_done(&mut self, now_ms: u64, token: u64) {
        let Some(send) = self.group_sends.get_mut(&token) else {
            return self.anomaly("a group part was confirmed for a send nobody waits on");
        };
        send.left -= 1;
        if send.left > 0 {
            return;
        }
        let send = self.group_sends.remove(&token).expect("found above");
        let to = Target::Device(send.from);
        self.send_conn(now_ms, send.reply, send.from, to, send.note);
    }

    /// A change of `group` requested by `from` reached the group's home.
    pub(super) fn group_request(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        reply: ConnRef,
        request_id: u64,
        request: GroupRequest,
    ) {
        if self.failed.is_some() {
            let code = ErrorCode::StorageUnavailable;
            let note = ToConn::RefusedRequest { code, request_id };
            return self.send_conn(now_ms, reply, from, Target::Device(from), note);
        }
        let actor = from.user;
        let record = match self.router.change_group(actor, &request) {
            Ok(record) => record,
            Err(GroupError::NoChange) => {
                // Nothing changed (a repeated request): said at once,
                // nothing is queued.
                let note = self.unchanged(&request, actor, request_id);
                return self.send_conn(now_ms, reply, from, Target::Device(from), note);
            }
            Err(error) => {
                let note = ToConn::RefusedRequest {
                    code: group_code(&error),
                    request_id,
                };
                return self.send_conn(now_ms, reply, from, Target::Device(from), note);
            }
        };
        // Everyone who is a member after the change, and whoever it removed.
        let group = record.group();
        let mut audience: Vec<UserId> = record.members().to_vec();
        if let Some(members) = self.router.groups().members(group) {
            audience.extend(members.keys().copied());
        }
        audience.sort_unstable();
        audience.dedup();
        let position = self.engine.append_group_record(&record.encode());
        self.stats.group_changes += 1;
        let notice = Bytes::from(notice_bytes(&record, request_id));
        for (shard, users) in self.by_home(audience.into_iter()) {
            if shard == self.shard {
                self.store_notice(now_ms, from, group, &notice, &users);
                continue;
            }
            let to = Target::User(users[0]);
            let note = ToHome::GroupNotice {
                notice: notice.clone(),
                users,
            };
            self.when_durable(now_ms, position, from, to, note);
        }
    }

    /// The direct answer to a request that changed nothing.
    fn unchanged(&self, request: &GroupRequest, actor: UserId, request_id: u64) -> ToConn {
        let (group, change) = match request {
            GroupRequest::Create { group, .. } => (group, fb::GroupChange::Created),
            GroupRequest::Add { group, .. } => (group, fb::GroupChange::Added),
            GroupRequest::Remove { group, .. } => (group, fb::GroupChange::Removed),
        };
        ToConn::GroupChanged {
            seq: 0,
            request_id,
            group: group.0,
            change,
            actor: actor.0,
            members: Vec::new(),
        }
    }

    // ---- this shard as a member's home ------------------------------------------

    /// A group message from the group's home for members homed here.
    pub(super) fn group_copy(&mut self, now_ms: u64, from: DeviceKey, copy: GroupCopy) {
        let devices = self.member_devices(now_ms, from, &copy.users, copy.payload.len(), false);
        let stored = self.store_group_record(
            now_ms,
            from,
            copy.group,
            copy.message_id,
            copy.client_msg_id,
            copy.ttl_s,
            &copy.payload,
            &devices,
        );
        let done = ToHome::CopyStored { token: copy.token };
        let home = Target::Group(GroupId(copy.group));
        match stored {
            Ok(Accepted::Stored { position, .. } | Accepted::Duplicate { position, .. }) => {
                self.when_durable(now_ms, position, from, home, done)
            }
            // Stored long ago (forgotten), or a retry the window refuses:
            // either way nothing more is stored here.
            Ok(Accepted::Forgotten) | Err(QueueError::Stale { .. }) => {
                self.send_home(now_ms, from, home, done)
            }
            Err(_) => {
                self.anomaly("a group copy was refused for a reason it cannot have");
                self.send_home(now_ms, from, home, done);
            }
        }
    }

    /// A group notice from the group's home for members homed here.
    pub(super) fn group_notice(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        notice: &[u8],
        users: &[UserId],
    ) {
        let Some(group) = notice
            .strip_prefix(&[NOTICE_GROUP])
            .and_then(|b| le_u64(b, 0))
        else {
            return self.anomaly("a group notice without its group");
        };
        self.store_notice(now_ms, from, GroupId(group), notice, users);
    }

    /// Queues a group notice for the devices of `users` (homed here),
    /// including the requesting device (its copy names its request).
    pub(super) fn store_notice(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        group: GroupId,
        notice: &[u8],
        users: &[UserId],
    ) {
        let devices = self.member_devices(now_ms, from, users, notice.len(), true);
        if devices.is_empty() {
            return;
        }
        let kind = fb::ReceiptKind(NOTICE_GROUP);
        let to = Target::Group(group);
        if self
            .store_server_record(now_ms, from, to, kind, notice, &devices, now_ms)
            .is_err()
        {
            self.anomaly("a group notice with room was refused");
        }
    }
}
