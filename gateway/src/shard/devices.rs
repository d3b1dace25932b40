//! Linked devices, at their user's home: a bounded set per user
//! (`devices_per_user_max`), linked when a device first authenticates,
//! listed and unlinked on request (a client's `DeviceUnlink`, the admin
//! endpoint, or idleness past `device_idle_ms`).
//!
//! Unlinking deletes what the device had queued (its senders get no ✓✓
//! for it), writes the device's life record as unlinked (its tokens are
//! refused from then on with `DeviceUnlinked`), closes its session with
//! that code, and queues a `DeviceChanged` notice for the user's other
//! devices: a server record whose payload is [`NOTICE_DEVICE`], then the
//! change.

use queue_engine::{DeviceLife, DeviceRef, Storage};
use shard_router::{ConnRef, DeviceId, DeviceKey, Target, UserId};
use wire_format::fb::{self, ErrorCode};

use super::{ShardCore, ToConn, device_key, device_ref};
use crate::clock::Now;

/// First byte of a stored device notice.
pub(super) const NOTICE_DEVICE: u8 = 17;

/// How often idle devices are looked for, ms.
pub(super) const IDLE_SCAN_MS: u64 = 60_000;

/// The frame note for a stored device notice delivered at `seq` to
/// `device`; `requester` is the device that asked for the change.
pub(super) fn device_notice_note(
    payload: &[u8],
    seq: u64,
    device: DeviceKey,
    requester: DeviceKey,
) -> Option<ToConn> {
    let body = payload.strip_prefix(&[NOTICE_DEVICE])?;
    let unlinked = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    let change = fb::DeviceChange(*body.get(4)?);
    let request_id = u64::from_le_bytes(body.get(5..13)?.try_into().ok()?);
    Some(ToConn::DeviceChanged {
        seq,
        request_id: if device == requester { request_id } else { 0 },
        device: unlinked,
        change,
    })
}

impl<S: Storage> ShardCore<S> {
    /// Whether `device` was unlinked (its tokens are refused).
    pub(super) fn is_unlinked(&self, device: DeviceKey) -> bool {
        self.engine
            .life(device_ref(device))
            .is_some_and(|l| l.unlinked_ms != 0)
    }

    /// Links `device` on its first `Hello`, or says why not; records it
    /// as active now either way it is let in.
    pub(super) fn admit_device(&mut self, now_ms: u64, device: DeviceKey) -> Result<(), ErrorCode> {
        if self.is_unlinked(device) {
            return Err(ErrorCode::DeviceUnlinked);
        }
        let dref = device_ref(device);
        if !self.is_registered(device) {
            let linked = self.devices.get(&device.user).map_or(0, Vec::len);
            if linked >= self.config.devices_per_user_max {
                return Err(ErrorCode::TooManyDevices);
            }
            self.engine.register_device(now_ms, dref);
            let devices = self.devices.entry(device.user).or_default();
            devices.push(device.device);
            devices.sort_unstable();
        }
        self.touch_device(now_ms, device);
        Ok(())
    }

    /// Records `device` as active at `now_ms`.
    pub(super) fn touch_device(&mut self, now_ms: u64, device: DeviceKey) {
        let dref = device_ref(device);
        let linked_ms = self.engine.life(dref).map_or(now_ms, |l| l.linked_ms);
        self.engine.set_life(DeviceLife {
            device: dref,
            linked_ms,
            active_ms: now_ms,
            unlinked_ms: 0,
        });
    }

    /// The linked devices of `user` (homed here), in device order.
    pub fn linked_devices(&self, user: u64) -> Vec<fb::DeviceInfo> {
        let user = UserId(user);
        let now_ms = self.now_ms;
        self.devices
            .get(&user)
            .into_iter()
            .flatten()
            .map(|d| {
                let key = DeviceKey { user, device: *d };
                let life = self.engine.life(device_ref(key));
                let online = self.cursors.contains_key(&key);
                let active = life.map_or(0, |l| l.active_ms);
                let active = if online { now_ms } else { active };
                fb::DeviceInfo::new(life.map_or(0, |l| l.linked_ms), active, d.0, online)
            })
            .collect()
    }

    /// A client's `DevicesGet` reached the user's home.
    pub(super) fn devices_request(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        reply: ConnRef,
        request_id: u64,
    ) {
        let devices = self.linked_devices(from.user.0);
        let note = ToConn::Devices {
            request_id,
            devices,
        };
        self.send_conn(now_ms, reply, from, Target::Device(from), note);
    }

    /// A client's `DeviceUnlink` of `device` reached the user's home.
    pub(super) fn unlink_request(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        reply: ConnRef,
        request_id: u64,
        device: u32,
    ) {
        let target = DeviceKey {
            user: from.user,
            device: DeviceId(device),
        };
        if self
            .unlink(now_ms, target, Some((from, request_id)))
            .is_err()
        {
            let code = ErrorCode::UnknownDevice;
            let note = ToConn::RefusedRequest { code, request_id };
            self.send_conn(now_ms, reply, from, Target::Device(from), note);
        }
    }

    /// Unlinks `device` (see the module docs). `request` is the device
    /// that asked and its request id, `None` for the operator or idleness.
    pub(super) fn unlink(
        &mut self,
        now_ms: u64,
        device: DeviceKey,
        request: Option<(DeviceKey, u64)>,
    ) -> Result<(), ErrorCode> {
        if !self.is_registered(device) {
            return Err(ErrorCode::UnknownDevice);
        }
        let dref = device_ref(device);
        let linked_ms = self.engine.life(dref).map_or(0, |l| l.linked_ms);
        let position = self.engine.set_life(DeviceLife {
            device: dref,
            linked_ms,
            active_ms: now_ms,
            unlinked_ms: now_ms,
        });
        // After the life record: a durable tombstone implies a durable
        // unlink (a restart finishes an unlink whose tombstone was lost).
        self.drop_queue(device);
        if let Some(devices) = self.devices.get_mut(&device.user) {
            devices.retain(|d| *d != device.device);
            if devices.is_empty() {
                self.devices.remove(&device.user);
            }
        }
        self.stats.devices_unlinked += 1;
        if let Some(cursor) = self.cursors.remove(&device) {
            let note = ToConn::Refused {
                code: ErrorCode::DeviceUnlinked,
                client_msg_id: 0,
            };
            // Told once it is durable: a crash before never unlinked it.
            self.ack_when_durable(now_ms, cursor.conn, device, position, note);
        }
        let (requester, request_id) = request.unwrap_or((device, 0));
        self.store_device_notice(now_ms, requester, device, request_id);
        self.run_effects(now_ms);
        Ok(())
    }

    /// At start: an unlink whose life record was durable and whose
    /// tombstone was not leaves a queue behind; delete it now.
    pub(super) fn finish_unlinks(&mut self) {
        let unlinked: Vec<DeviceKey> = self
            .engine
            .lives()
            .filter(|l| l.unlinked_ms != 0 && self.engine.queue_len(l.device).0 > 0)
            .map(|l| device_key(l.device))
            .collect();
        for device in unlinked {
            self.drop_queue(device);
        }
    }

    /// Deletes everything queued for `device` that no ack has taken yet
    /// (what a pending ack covers leaves when it settles).
    fn drop_queue(&mut self, device: DeviceKey) {
        let dref = device_ref(device);
        let end = self.engine.queue_end(dref);
        if end == 0 {
            return;
        }
        let floor = self.receipted.get(&device).copied().unwrap_or(0);
        let pending = self.acks.get(&device);
        let taken = |seq: u64| {
            seq <= floor
                || pending.is_some_and(|acks| {
                    acks.iter()
                        .any(|a| (a.cumulative && seq <= a.seq) || a.seq == seq)
                })
        };
        let positions: Option<Vec<u64>> = self.engine.acked_by(dref, end, true).ok().map(|e| {
            e.filter(|(seq, _)| !taken(*seq))
                .map(|(_, position)| position)
                .collect()
        });
        let Some(positions) = positions else {
            return self.anomaly("an unlinked device's queue end was refused");
        };
        for position in positions {
            self.forget_one(device, position);
        }
        if self.acks.contains_key(&device) {
            // Settling the pending acks tombstones up to their seqs; the
            // rest goes now, past what they cover.
            self.receipted.insert(device, end);
        }
        if self.engine.ack(dref, end, true).is_err() {
            self.anomaly("an unlinked device's queue could not be deleted");
        }
    }

    /// Queues "`device` was unlinked" for the user's other devices.
    fn store_device_notice(
        &mut self,
        now_ms: u64,
        requester: DeviceKey,
        device: DeviceKey,
        request_id: u64,
    ) {
        let user = device.user;
        let recipients: Vec<DeviceRef> = self
            .devices
            .get(&user)
            .into_iter()
            .flatten()
            .map(|d| device_ref(DeviceKey { user, device: *d }))
            .filter(|d| self.engine.has_room(*d, 0, true))
            .collect();
        if recipients.is_empty() {
            return;
        }
        let mut payload = vec![NOTICE_DEVICE];
        payload.extend_from_slice(&device.device.0.to_le_bytes());
        payload.push(fb::DeviceChange::Unlinked.0);
        payload.extend_from_slice(&request_id.to_le_bytes());
        let kind = fb::ReceiptKind(NOTICE_DEVICE);
        let to = Target::User(user);
        if self
            .store_server_record(now_ms, requester, to, kind, &payload, &recipients, now_ms)
            .is_err()
        {
            self.anomaly("a device notice with room was refused");
        }
    }

    /// The operator unlinks `device` of `user` (homed here); false if the
    /// user has no such linked device.
    pub fn admin_unlink(&mut self, now: Now, user: u64, device: u32) -> bool {
        self.set_now(now);
        let device = DeviceKey::new(user, device);
        tracing::info!(user, device = device.device.0, "unlinked by the operator");
        self.unlink(now.wall_ms, device, None).is_ok()
    }

    /// Unlinks devices not connected for longer than `device_idle_ms`.
    pub(super) fn unlink_idle(&mut self, now_ms: u64) {
        let idle_ms = self.config.device_idle_ms;
        let idle: Vec<DeviceKey> = self
            .engine
            .lives()
            .filter(|l| l.unlinked_ms == 0 && l.active_ms.saturating_add(idle_ms) < now_ms)
            .map(|l| device_key(l.device))
            .filter(|d| !self.cursors.contains_key(d) && self.is_registered(*d))
            .collect();
        for device in idle {
            tracing::info!(
                user = device.user.0,
                device = device.device.0,
                "unlinking an idle device"
            );
            if self.unlink(now_ms, device, None).is_err() {
                self.anomaly("an idle linked device could not be unlinked");
            }
        }
    }
}
