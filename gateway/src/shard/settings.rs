//! A user's settings at its home shard, each a durable setting record
//! (`queue_engine::SettingKey`, the latest per key wins): privacy (who
//! sees the user's last seen; whether its read receipts are relayed), an
//! operator's ban, and each device's push token. Also the operator's
//! actions on a user's sessions: kick and ban, and the user's info.
//!
//! Read receipts are dropped where they are sent, on the shard holding the
//! reader's connection: the user's home tells each connection the setting
//! in its `Welcome` and again whenever it changes.

use queue_engine::{SettingKey, Storage};
use shard_router::{ConnRef, DeviceKey, LastSeen, Target, UserId};
use wire_format::fb::{self, ErrorCode};

use super::{ShardCore, ToConn, device_ref};
use crate::clock::Now;

/// Setting names (the `SettingKey::name` this shell gives them).
mod name {
    /// User: `[1]` hides last seen; absent or `[0]`: everyone sees it.
    pub const LAST_SEEN: u8 = 1;
    /// User: `[0]` read receipts off; absent or `[1]`: on.
    pub const READ_RECEIPTS: u8 = 2;
    /// User: banned until (u64 LE, ms since the Unix epoch; `u64::MAX`:
    /// until lifted; 0 or absent: not banned).
    pub const BAN_UNTIL: u8 = 3;
    /// Device: push platform length (1 byte), platform, token; empty: none.
    pub const PUSH_TOKEN: u8 = 4;
}

/// A ban with no end.
pub const BANNED_FOR_GOOD: u64 = u64::MAX;

fn user_key(user: UserId, name: u8) -> SettingKey {
    SettingKey {
        user: user.0,
        device: SettingKey::USER,
        name,
    }
}

fn device_key_of(device: DeviceKey, name: u8) -> SettingKey {
    SettingKey {
        user: device.user.0,
        device: device.device.0,
        name,
    }
}

/// A device's registered push token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushToken {
    /// The push service ("apns", "fcm", ...).
    pub platform: String,
    /// The platform's token, opaque.
    pub token: Vec<u8>,
}

impl PushToken {
    fn encode(&self) -> Vec<u8> {
        let platform = self.platform.as_bytes();
        let mut v = Vec::with_capacity(1 + platform.len() + self.token.len());
        v.push(u8::try_from(platform.len()).expect("platform names are short"));
        v.extend_from_slice(platform);
        v.extend_from_slice(&self.token);
        v
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let (len, rest) = value.split_first()?;
        let platform = rest.get(..usize::from(*len))?;
        let token = rest.get(usize::from(*len)..)?;
        Some(Self {
            platform: String::from_utf8_lossy(platform).into_owned(),
            token: token.to_vec(),
        })
    }
}

/// What the operator sees of one device of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Linked, last active, online.
    pub info: fb::DeviceInfo,
    /// Entries (messages and receipts) queued for it.
    pub queued: usize,
    /// Payload bytes of the messages queued for it.
    pub queued_bytes: u64,
    /// Whether it registered a push token.
    pub push: bool,
}

/// What the operator sees of a user (`GET /users?user=U`).
#[derive(Debug, Clone, PartialEq)]
pub struct UserInfo {
    /// The user.
    pub user: u64,
    /// Its linked devices.
    pub devices: Vec<DeviceState>,
    /// Banned until (ms since the Unix epoch; [`BANNED_FOR_GOOD`]), or 0.
    pub banned_until_ms: u64,
    /// Whether it hides its last seen.
    pub last_seen_hidden: bool,
    /// Whether its read receipts are relayed.
    pub read_receipts: bool,
}

impl<S: Storage> ShardCore<S> {
    fn user_setting(&self, user: UserId, name: u8) -> Option<u8> {
        self.engine
            .setting(user_key(user, name))
            .and_then(|v| v.first().copied())
    }

    /// Whether `user` hides its last seen.
    pub(super) fn last_seen_hidden(&self, user: UserId) -> bool {
        self.user_setting(user, name::LAST_SEEN) == Some(1)
    }

    /// Whether `user`'s read receipts are relayed.
    pub(super) fn read_receipts_on(&self, user: UserId) -> bool {
        self.user_setting(user, name::READ_RECEIPTS) != Some(0)
    }

    /// Until when `user` is banned (ms since the Unix epoch), or 0.
    pub(super) fn banned_until(&self, user: UserId) -> u64 {
        self.engine
            .setting(user_key(user, name::BAN_UNTIL))
            .and_then(|v| v.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// If `user` is banned at `now_ms`: how long is left, ms (0: for good).
    pub(super) fn ban_left(&self, now_ms: u64, user: UserId) -> Option<u64> {
        match self.banned_until(user) {
            BANNED_FOR_GOOD => Some(0),
            until if until > now_ms => Some(until - now_ms),
            _ => None,
        }
    }

    /// `device`'s push token, if it registered one.
    pub fn push_token(&self, device: DeviceKey) -> Option<PushToken> {
        let value = self
            .engine
            .setting(device_key_of(device, name::PUSH_TOKEN))?;
        PushToken::decode(value).filter(|t| !t.token.is_empty())
    }

    /// Whether `device` registered a push token (no allocation: asked per
    /// message for each recipient device that is not connected).
    pub(super) fn has_push_token(&self, device: DeviceKey) -> bool {
        self.engine
            .setting(device_key_of(device, name::PUSH_TOKEN))
            .and_then(|v| v.split_first())
            .is_some_and(|(len, rest)| rest.len() > usize::from(*len))
    }

    /// At start: the router's presence hides the last seen of every user
    /// homed here whose setting says so.
    pub(super) fn replay_settings(&mut self) {
        let hidden: Vec<UserId> = self
            .engine
            .settings()
            .filter(|(k, v)| k.name == name::LAST_SEEN && k.device == SettingKey::USER && *v == [1])
            .map(|(k, _)| UserId(k.user))
            .collect();
        for user in hidden {
            self.router.set_last_seen_at_home(user, LastSeen::Nobody);
        }
    }

    /// The user's settings as a note (`request_id` on the requester).
    fn settings_note(&self, user: UserId, request_id: u64) -> ToConn {
        ToConn::Settings {
            request_id,
            last_seen_hidden: self.last_seen_hidden(user),
            read_receipts: self.read_receipts_on(user),
        }
    }

    /// A client's `SettingsSet` reached the user's home: store what
    /// changed, apply it, and answer with the settings once durable (the
    /// user's other connected devices are told too).
    pub(super) fn settings_request(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        reply: ConnRef,
        request_id: u64,
        last_seen: fb::LastSeenVisibility,
        read_receipts: fb::Switch,
    ) {
        let user = from.user;
        let mut written = None;
        let hide = match last_seen {
            fb::LastSeenVisibility::Everyone => Some(false),
            fb::LastSeenVisibility::Nobody => Some(true),
            _ => None,
        };
        if let Some(hide) = hide.filter(|h| *h != self.last_seen_hidden(user)) {
            let key = user_key(user, name::LAST_SEEN);
            written = Some(self.engine.set_setting(key, &[u8::from(hide)]));
            let visibility = if hide {
                LastSeen::Nobody
            } else {
                LastSeen::Everyone
            };
            self.router.set_last_seen_at_home(user, visibility);
        }
        let on = match read_receipts {
            fb::Switch::On => Some(true),
            fb::Switch::Off => Some(false),
            _ => None,
        };
        if let Some(on) = on.filter(|o| *o != self.read_receipts_on(user)) {
            let key = user_key(user, name::READ_RECEIPTS);
            written = Some(self.engine.set_setting(key, &[u8::from(on)]));
        }
        let note = self.settings_note(user, request_id);
        let Some(position) = written else {
            return self.send_conn(now_ms, reply, from, Target::Device(from), note);
        };
        self.stats.settings_changed += 1;
        self.ack_when_durable(now_ms, reply, from, position, note);
        // The user's other connections learn it too (a reader's shard
        // drops its read receipts while they are off).
        let others: Vec<(DeviceKey, ConnRef)> = self
            .cursors
            .iter()
            .filter(|(d, c)| d.user == user && c.conn != reply)
            .map(|(d, c)| (*d, c.conn))
            .collect();
        for (device, conn) in others {
            let note = self.settings_note(user, 0);
            self.ack_when_durable(now_ms, conn, device, position, note);
        }
    }

    /// A device's `PushRegister` reached its home: store the token (empty:
    /// forget it) and answer `Done` once durable.
    pub(super) fn push_request(
        &mut self,
        now_ms: u64,
        from: DeviceKey,
        reply: ConnRef,
        request_id: u64,
        token: PushToken,
    ) {
        let value = match token.token.is_empty() {
            true => Vec::new(),
            false => token.encode(),
        };
        let position = self
            .engine
            .set_setting(device_key_of(from, name::PUSH_TOKEN), &value);
        self.stats.push_tokens_set += 1;
        let note = ToConn::Done { request_id };
        self.ack_when_durable(now_ms, reply, from, position, note);
    }

    /// The notifier was told `token` is no longer valid: forget it, unless
    /// the device registered another meanwhile. True if it was forgotten.
    pub fn forget_push_token(&mut self, now: Now, device: DeviceKey, token: &[u8]) -> bool {
        self.set_now(now);
        if self.push_token(device).is_none_or(|t| t.token != token) {
            return false;
        }
        self.engine
            .set_setting(device_key_of(device, name::PUSH_TOKEN), &[]);
        true
    }

    /// The connections the home knows for `user` (one `device`, or all).
    fn sessions_of(&self, user: UserId, device: Option<u32>) -> Vec<(DeviceKey, ConnRef)> {
        self.cursors
            .iter()
            .filter(|(d, _)| d.user == user && device.is_none_or(|x| d.device.0 == x))
            .map(|(d, c)| (*d, c.conn))
            .collect()
    }

    /// Closes the sessions of `user` (one `device`, or all) with `code`.
    fn close_sessions(
        &mut self,
        now_ms: u64,
        user: UserId,
        device: Option<u32>,
        code: ErrorCode,
    ) -> usize {
        let sessions = self.sessions_of(user, device);
        let retry_after_ms = match code {
            ErrorCode::Banned => self.ban_left(now_ms, user).unwrap_or(0),
            _ => 0,
        };
        for (device, conn) in &sessions {
            self.cursors.remove(device);
            self.touch_device(now_ms, *device);
            let note = ToConn::Close {
                code,
                retry_after_ms,
            };
            self.send_conn(now_ms, *conn, *device, Target::Device(*device), note);
        }
        self.run_effects(now_ms);
        sessions.len()
    }

    /// The operator closes `user`'s sessions (one `device`, or all) with
    /// `Kicked`; returns how many.
    pub fn admin_kick(&mut self, now: Now, user: u64, device: Option<u32>) -> usize {
        self.set_now(now);
        let closed = self.close_sessions(now.wall_ms, UserId(user), device, ErrorCode::Kicked);
        tracing::info!(user, ?device, closed, "kicked by the operator");
        self.stats.kicked += closed as u64;
        closed
    }

    /// The operator bans `user` until `until_ms` ([`BANNED_FOR_GOOD`]; 0
    /// lifts the ban). The ban is a setting record, durable with the next
    /// group commit; every session of the user is closed with `Banned`
    /// now, and its `Hello`s are refused until then.
    pub fn admin_ban(&mut self, now: Now, user: u64, until_ms: u64) {
        self.set_now(now);
        let user = UserId(user);
        self.engine
            .set_setting(user_key(user, name::BAN_UNTIL), &until_ms.to_le_bytes());
        tracing::info!(user = user.0, until_ms, "ban set by the operator");
        if self.ban_left(now.wall_ms, user).is_some() {
            self.stats.banned += 1;
            self.close_sessions(now.wall_ms, user, None, ErrorCode::Banned);
        }
    }

    /// What the operator sees of `user` (homed here).
    pub fn user_info(&self, user: u64) -> UserInfo {
        let uid = UserId(user);
        let devices = self
            .linked_devices(user)
            .into_iter()
            .map(|info| {
                let key = DeviceKey::new(user, info.device());
                let (queued, queued_bytes) = self.engine.queue_len(device_ref(key));
                DeviceState {
                    info,
                    queued,
                    queued_bytes,
                    push: self.push_token(key).is_some(),
                }
            })
            .collect();
        UserInfo {
            user,
            devices,
            banned_until_ms: self.banned_until(uid),
            last_seen_hidden: self.last_seen_hidden(uid),
            read_receipts: self.read_receipts_on(uid),
        }
    }
}
