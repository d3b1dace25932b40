//! Per-sender-device abuse limits, sans-IO: new conversations per hour,
//! messages per recipient per second, group creations per day. Each is a
//! GCRA token bucket (one "theoretical arrival time" per bucket, exact
//! with integer arithmetic), so a refusal can say exactly when the next
//! one would pass (`retry_after_ms`).
//!
//! An [`AbuseState`] belongs to one device. The shard holding the
//! device's connection keeps it while the device is connected; when the
//! connection ends it travels to the device's home, which hands it back
//! with the next `Welcome`, whichever shard that connection lands on. So
//! reconnecting does not reset a limit; a restart of the process does
//! (the state is memory only).
//!
//! A "new conversation" is a message to a user (or one of its devices)
//! that the device has not written to among its last [`PEERS_MAX`]
//! recipients. Group messages never start one: joining a group is the
//! members' consent.

use rustc_hash::FxHashMap;
use shard_router::Target;
use wire_format::fb::ErrorCode;

/// Recent recipients remembered per device (least recently written first
/// out). Each costs about 40 bytes of hash table.
pub const PEERS_MAX: usize = 256;

const HOUR_US: u64 = 3_600 * 1_000_000;
const DAY_US: u64 = 24 * HOUR_US;
const SECOND_US: u64 = 1_000_000;

/// The limits (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbuseConfig {
    /// New conversations a device may start per hour (bursting a whole
    /// hour's worth).
    pub new_conversations_per_h: u32,
    /// Messages a device may send one recipient per second (bursting two
    /// seconds' worth).
    pub messages_per_recipient_per_s: u32,
    /// Groups a device may create per day (bursting a day's worth).
    pub group_creates_per_day: u32,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            new_conversations_per_h: 200,
            messages_per_recipient_per_s: 50,
            group_creates_per_day: 100,
        }
    }
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// New conversations per hour.
    NewConversations,
    /// Messages per recipient per second.
    PerRecipient,
    /// Group creations per day.
    GroupCreates,
}

impl Limit {
    /// Every limit.
    pub const ALL: [Limit; 3] = [
        Limit::NewConversations,
        Limit::PerRecipient,
        Limit::GroupCreates,
    ];

    /// The protocol error a refusal carries.
    pub fn code(self) -> ErrorCode {
        match self {
            Limit::NewConversations => ErrorCode::ConversationLimit,
            Limit::PerRecipient => ErrorCode::RecipientRateLimit,
            Limit::GroupCreates => ErrorCode::GroupCreateLimit,
        }
    }

    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Limit::NewConversations => "new_conversations",
            Limit::PerRecipient => "messages_per_recipient",
            Limit::GroupCreates => "group_creates",
        }
    }
}

/// A refusal: which limit, and when the same request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit.
    pub limit: Limit,
    /// Milliseconds from now (rounded up).
    pub retry_after_ms: u64,
}

/// A GCRA bucket: `rate` requests per `window_us`, `burst` of them at
/// once. `tat` is when the bucket would be full again (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Gcra {
    tat_us: u64,
}

impl Gcra {
    /// Takes one if allowed at `now_us`; else how long until it would be.
    fn take(&mut self, now_us: u64, rate: u32, window_us: u64, burst: u64) -> Result<(), u64> {
        if rate == 0 {
            return Ok(());
        }
        let interval = (window_us / u64::from(rate)).max(1);
        let tolerance = interval * burst.saturating_sub(1);
        let tat = self.tat_us.max(now_us);
        let early = tat - now_us;
        if early > tolerance {
            return Err((early - tolerance).div_ceil(1000));
        }
        self.tat_us = tat + interval;
        Ok(())
    }

    /// Adds what `other` has spent to this one's spending, at `now_us`.
    fn add(&mut self, other: Gcra, now_us: u64) {
        let debt = other.tat_us.saturating_sub(now_us);
        self.tat_us = self.tat_us.max(now_us) + debt;
    }

    /// Whether it is full again at `now_us` (as a fresh bucket).
    fn is_full(&self, now_us: u64) -> bool {
        self.tat_us <= now_us
    }
}

/// A recipient this device wrote to lately: its per-recipient bucket and
/// when it was last written to (µs), for least-recently-used eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    bucket: Gcra,
    last_us: u64,
}

/// A recipient: a user (kind 0) or a group (kind 1) id.
type PeerKey = (u64, u8);

/// One device's limits (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AbuseState {
    /// The highest `client_msg_id` counted: ids strictly increase per
    /// device, so one at or below it is a retry, which may have been stored
    /// already and must reach its home (to be answered as a duplicate),
    /// never be refused here.
    high_id: u64,
    conversations: Gcra,
    group_creates: Gcra,
    peers: FxHashMap<PeerKey, Peer>,
}

/// The recipient a send's target counts against: the user for a user or
/// device address, the group for a group.
fn peer_of(to: Target) -> PeerKey {
    match to {
        Target::User(u) => (u.0, 0),
        Target::Device(d) => (d.user.0, 0),
        Target::Group(g) => (g.0, 1),
    }
}

impl AbuseState {
    /// A `Send` to `to` with `client_msg_id` at `now_ms`: counted, or
    /// refused. A retry (an id not above every id counted) always passes.
    pub fn check_send(
        &mut self,
        c: &AbuseConfig,
        now_ms: u64,
        to: Target,
        client_msg_id: u64,
    ) -> Result<(), Refusal> {
        let off = c.new_conversations_per_h == 0 && c.messages_per_recipient_per_s == 0;
        if off || client_msg_id <= self.high_id {
            return Ok(());
        }
        let checked = self.count_send(c, now_ms, to);
        if checked.is_ok() {
            self.high_id = client_msg_id;
        }
        checked
    }

    fn count_send(&mut self, c: &AbuseConfig, now_ms: u64, to: Target) -> Result<(), Refusal> {
        let now_us = now_ms.saturating_mul(1000);
        let key = peer_of(to);
        let refuse = |limit, retry_after_ms| Refusal {
            limit,
            retry_after_ms,
        };
        if !self.peers.contains_key(&key) {
            if key.1 == 0 {
                let rate = c.new_conversations_per_h;
                self.conversations
                    .take(now_us, rate, HOUR_US, u64::from(rate))
                    .map_err(|ms| refuse(Limit::NewConversations, ms))?;
            }
            self.make_room();
        }
        let rate = c.messages_per_recipient_per_s;
        let peer = self.peers.entry(key).or_insert(Peer {
            bucket: Gcra::default(),
            last_us: now_us,
        });
        peer.last_us = now_us;
        peer.bucket
            .take(now_us, rate, SECOND_US, 2 * u64::from(rate))
            .map_err(|ms| refuse(Limit::PerRecipient, ms))
    }

    /// A `GroupCreate` at `now_ms`: counted, or refused.
    pub fn check_group_create(&mut self, c: &AbuseConfig, now_ms: u64) -> Result<(), Refusal> {
        let rate = c.group_creates_per_day;
        self.group_creates
            .take(now_ms.saturating_mul(1000), rate, DAY_US, u64::from(rate))
            .map_err(|retry_after_ms| Refusal {
                limit: Limit::GroupCreates,
                retry_after_ms,
            })
    }

    /// Forgets the least recently written peer if the memory is full (a
    /// scan, only when a new conversation starts past [`PEERS_MAX`]).
    fn make_room(&mut self) {
        self.make_room_for(1);
    }

    /// Forgets the least recently written peer if fewer than `n` more fit.
    fn make_room_for(&mut self, n: usize) {
        if self.peers.len() + n <= PEERS_MAX {
            return;
        }
        let oldest = self
            .peers
            .iter()
            .min_by_key(|(_, p)| p.last_us)
            .map(|(k, _)| *k);
        if let Some(oldest) = oldest {
            self.peers.remove(&oldest);
        }
    }

    /// Whether keeping it would change nothing any more at `now_ms`: every
    /// bucket is full again and no peer was written to within `memory_ms`.
    /// Such a state may be forgotten.
    pub fn is_idle(&self, now_ms: u64, memory_ms: u64) -> bool {
        let now_us = now_ms.saturating_mul(1000);
        let horizon = now_us.saturating_sub(memory_ms.saturating_mul(1000));
        self.conversations.is_full(now_us)
            && self.group_creates.is_full(now_us)
            && self.peers.values().all(|p| p.last_us < horizon)
    }

    /// Takes in `other`, the state of another connection of the same
    /// device, at `now_ms`: what each bucket has spent adds up (a bucket's
    /// debt is how far its full time lies ahead), and every peer either
    /// knows is kept, so two connections cannot double the limits.
    pub fn merge(&mut self, other: &AbuseState, now_ms: u64) {
        let now_us = now_ms.saturating_mul(1000);
        self.high_id = self.high_id.max(other.high_id);
        self.conversations.add(other.conversations, now_us);
        self.group_creates.add(other.group_creates, now_us);
        for (key, theirs) in &other.peers {
            match self.peers.get_mut(key) {
                Some(peer) => {
                    peer.bucket.add(theirs.bucket, now_us);
                    peer.last_us = peer.last_us.max(theirs.last_us);
                }
                None => {
                    self.peers.insert(*key, *theirs);
                }
            }
        }
        while self.peers.len() > PEERS_MAX {
            self.make_room_for(0);
        }
    }

    /// Recipients remembered.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard_router::{DeviceKey, GroupId, UserId};

    fn config(conversations: u32, per_recipient: u32, groups: u32) -> AbuseConfig {
        AbuseConfig {
            new_conversations_per_h: conversations,
            messages_per_recipient_per_s: per_recipient,
            group_creates_per_day: groups,
        }
    }

    fn user(u: u64) -> Target {
        Target::User(UserId(u))
    }

    #[test]
    fn new_conversations_are_limited_per_hour_and_old_ones_are_not() {
        let c = config(3, 0, 0);
        let mut s = AbuseState::default();
        let t0 = 1_000_000;
        for u in 1..=3 {
            s.check_send(&c, t0, user(u), u).unwrap();
        }
        let refused = s.check_send(&c, t0, user(4), 4).unwrap_err();
        assert_eq!(refused.limit, Limit::NewConversations);
        assert_eq!(
            refused.retry_after_ms, 1_200_000,
            "one token per 20 minutes"
        );
        // Writing again to a known peer (or one of its devices) is no new
        // conversation; nor is a group.
        let device = Target::Device(DeviceKey::new(2, 1));
        s.check_send(&c, t0, device, 5).unwrap();
        s.check_send(&c, t0, Target::Group(GroupId(9)), 6).unwrap();
        // 20 minutes later one more.
        s.check_send(&c, t0 + 1_200_000, user(4), 7).unwrap();
        assert!(s.check_send(&c, t0 + 1_200_000, user(5), 8).is_err());
    }

    #[test]
    fn messages_per_recipient_burst_two_seconds_then_pace() {
        let c = config(0, 10, 0);
        let mut s = AbuseState::default();
        let t0 = 5_000;
        for id in 1..=20 {
            s.check_send(&c, t0, user(7), id).unwrap();
        }
        let refused = s.check_send(&c, t0, user(7), 21).unwrap_err();
        assert_eq!(refused.limit, Limit::PerRecipient);
        assert_eq!(refused.retry_after_ms, 100);
        // Another recipient has a bucket of its own.
        s.check_send(&c, t0, user(8), 22).unwrap();
        s.check_send(&c, t0 + 100, user(7), 23).unwrap();
        assert!(s.check_send(&c, t0 + 100, user(7), 24).is_err());
    }

    #[test]
    fn group_creations_are_limited_per_day() {
        let c = config(0, 0, 2);
        let mut s = AbuseState::default();
        s.check_group_create(&c, 0).unwrap();
        s.check_group_create(&c, 0).unwrap();
        let refused = s.check_group_create(&c, 0).unwrap_err();
        assert_eq!(refused.limit, Limit::GroupCreates);
        assert_eq!(refused.retry_after_ms, 12 * 3_600_000);
        assert_eq!(refused.limit.code(), ErrorCode::GroupCreateLimit);
    }

    /// A retry may have been stored already: it must reach its home and be
    /// answered as a duplicate, so it is never refused (nor counted).
    #[test]
    fn a_retry_is_never_refused() {
        let c = config(1, 1, 0);
        let mut s = AbuseState::default();
        s.check_send(&c, 0, user(1), 10).unwrap();
        assert!(
            s.check_send(&c, 0, user(2), 11).is_err(),
            "a new conversation"
        );
        assert!(s.check_send(&c, 0, user(1), 12).is_ok(), "burst of 2");
        assert!(s.check_send(&c, 0, user(1), 13).is_err(), "per recipient");
        for retry in [10, 12] {
            assert!(s.check_send(&c, 0, user(1), retry).is_ok(), "retry {retry}");
        }
        assert!(
            s.check_send(&c, 0, user(1), 13).is_err(),
            "13 was refused, not stored"
        );
    }

    /// A device connected twice (one connection replacing the other) ends
    /// with what both spent, not a fresh state.
    #[test]
    fn merging_adds_up_what_two_connections_spent() {
        let c = config(3, 1, 1);
        let (mut a, mut b) = (AbuseState::default(), AbuseState::default());
        a.check_send(&c, 0, user(1), 1).unwrap();
        a.check_send(&c, 0, user(2), 2).unwrap();
        b.check_group_create(&c, 0).unwrap();
        b.check_send(&c, 0, user(3), 3).unwrap();
        a.merge(&b, 0);
        assert!(a.check_send(&c, 0, user(4), 4).is_err(), "3 of 3 spent");
        assert!(a.check_group_create(&c, 0).is_err(), "no group left");
        assert!(a.check_send(&c, 0, user(3), 2).is_ok(), "a retry of b's id");
        assert_eq!(a.peers(), 3);
    }

    #[test]
    fn zero_means_no_limit_and_peers_stay_bounded() {
        let c = config(0, 0, 0);
        let mut s = AbuseState::default();
        for u in 0..10_000 {
            s.check_send(&c, 0, user(u % 300), u + 1).unwrap();
            s.check_group_create(&c, 0).unwrap();
        }
        assert_eq!(s.peers(), 0, "nothing kept when both send limits are off");
        let c = config(0, 1_000_000, 0);
        for u in 0..10_000 {
            s.check_send(&c, 0, user(u % 300), u + 1).unwrap();
        }
        assert_eq!(s.peers(), PEERS_MAX, "peers stay bounded");
    }

    #[test]
    fn a_state_is_idle_once_its_buckets_refill_and_its_peers_age() {
        let c = config(2, 1, 1);
        let mut s = AbuseState::default();
        s.check_send(&c, 0, user(1), 1).unwrap();
        s.check_group_create(&c, 0).unwrap();
        assert!(!s.is_idle(1_000, 60_000));
        assert!(!s.is_idle(DAY_US / 1000, DAY_US / 1000), "peer too recent");
        assert!(s.is_idle(DAY_US / 1000 + 1, 60_000));
    }
}
