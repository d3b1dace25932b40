//! The notes shards send each other, one enum per direction: [`ToHome`]
//! for a device's or user's home shard, [`ToConn`] for the shard holding a
//! connection. [`Note`] is the router's message type and carries either.

use bytes::Bytes;
use shard_router::{ConnRef, GroupRequest, UserId};
use wire_format::fb::{self, ErrorCode};

use super::AckRef;
use super::settings::PushToken;
use crate::abuse::AbuseState;

/// What shards tell each other (the router's message type).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// For the home of the note's target.
    Home(ToHome),
    /// For a connection.
    Conn(ToConn),
}

/// For a home shard (of the recipient, of a receipt's sender, or of the
/// connected device itself).
#[derive(Debug, Clone, PartialEq)]
pub enum ToHome {
    /// Store and deliver this message.
    Submit {
        /// The sending connection, for ✓ or a refusal.
        reply: ConnRef,
        /// The sender's id for it.
        client_msg_id: u64,
        /// Requested TTL in seconds (0 = default).
        ttl_s: u32,
        /// The opaque payload.
        payload: Bytes,
    },
    /// Store a receipt for the devices of the note's target.
    StoreReceipt(Receipt),
    /// The receipts for the device's ack `seq` are durable at one
    /// sender's home.
    ReceiptStored {
        /// The ack's id.
        ack: u64,
    },
    /// One `Expired` receipt of expiry pass `id` is durable at a sender's
    /// home (to the home of the device whose entry expired).
    ExpiryStored {
        /// The expiry pass.
        id: u64,
    },
    /// The device connected on `reply`; stream its queue after `after_seq`.
    Resume {
        /// The connection.
        reply: ConnRef,
        /// The device's last acknowledged seq.
        after_seq: u64,
    },
    /// The device acknowledged `seq`.
    DeviceAck {
        /// The connection it came from.
        reply: ConnRef,
        /// The seq.
        seq: u64,
        /// Everything up to `seq`.
        cumulative: bool,
    },
    /// The device's connection `reply` closed.
    Gone {
        /// The connection.
        reply: ConnRef,
        /// Its abuse limits, kept at the home until the next `Welcome`.
        abuse: Option<Box<AbuseState>>,
    },
    /// To the user's home: list the user's linked devices.
    Devices {
        /// The requesting connection.
        reply: ConnRef,
        /// The client's id for the request.
        request_id: u64,
    },
    /// To the user's home: unlink one of the user's devices.
    Unlink {
        /// The requesting connection.
        reply: ConnRef,
        /// The client's id for the request.
        request_id: u64,
        /// The device to unlink.
        device: u32,
    },
    /// To the user's home: change (or read) the user's privacy settings.
    Settings {
        /// The requesting connection.
        reply: ConnRef,
        /// The client's id for the request.
        request_id: u64,
        /// Last-seen visibility (`Unchanged` leaves it).
        last_seen: fb::LastSeenVisibility,
        /// Read receipts (`Unchanged` leaves it).
        read_receipts: fb::Switch,
    },
    /// To the device's home: its push token (empty: none).
    Push {
        /// The requesting connection.
        reply: ConnRef,
        /// The client's id for the request.
        request_id: u64,
        /// The token.
        token: PushToken,
    },
    /// To a group's home: a change the device asks for.
    Group {
        /// The requesting connection.
        reply: ConnRef,
        /// The client's id for the request.
        request_id: u64,
        /// The change.
        request: GroupRequest,
    },
    /// From a group's home to a member's home: queue this group message
    /// for `users`' devices (the note comes from the sending device).
    /// Boxed: the largest variant, one per group send and member home,
    /// it would make every note between shards 16 bytes larger.
    GroupCopy(Box<GroupCopy>),
    /// To a group's home: the copy `token` is durable at a member's home.
    CopyStored {
        /// The group send it belongs to.
        token: u64,
    },
    /// From a group's home to a member's home: queue this group change
    /// for `users`' devices (the note comes from the requesting device).
    GroupNotice {
        /// The stored notice (see `groups.rs`).
        notice: Bytes,
        /// The users to queue it for.
        users: Vec<UserId>,
    },
}

/// A group message on its way from the group's home to a member's home.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCopy {
    /// The group.
    pub group: u64,
    /// The group send at the group's home, for [`ToHome::CopyStored`].
    pub token: u64,
    /// The id the group's home gave it.
    pub message_id: u64,
    /// The sender's id for it (the member's home dedups on it too).
    pub client_msg_id: u64,
    /// Requested TTL in seconds.
    pub ttl_s: u32,
    /// The opaque payload.
    pub payload: Bytes,
    /// The members whose home is the destination.
    pub users: Vec<UserId>,
}

/// A receipt on its way to the home of the user it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// Delivered, read or expired.
    pub kind: fb::ReceiptKind,
    /// The messages it is about.
    pub message_ids: Vec<u64>,
    /// When it happened.
    pub at_ms: u64,
    /// For a `Delivered` receipt: the ack to confirm (with
    /// [`ToHome::ReceiptStored`]) once the receipt is durable.
    pub confirm: Option<AckRef>,
}

/// For the shard holding a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ToConn {
    /// ✓.
    Acked {
        /// The sender's id.
        client_msg_id: u64,
        /// The server's id.
        message_id: u64,
        /// When it was accepted.
        at_ms: u64,
        /// A retry of a stored message.
        duplicate: bool,
    },
    /// A refusal.
    Refused {
        /// Why.
        code: ErrorCode,
        /// The `Send` it is about, or 0. Fatal or not by its code.
        client_msg_id: u64,
    },
    /// A queued message.
    Message {
        /// Its seq in the device's queue.
        seq: u64,
        /// The server's id.
        message_id: u64,
        /// When it was accepted.
        at_ms: u64,
        /// The opaque payload.
        payload: Bytes,
    },
    /// A queued receipt.
    Receipt {
        /// Its seq in the device's queue.
        seq: u64,
        /// Delivered, read or expired.
        kind: fb::ReceiptKind,
        /// The messages it is about.
        message_ids: Vec<u64>,
        /// When it happened.
        at_ms: u64,
    },
    /// The answer to [`ToHome::Resume`].
    Welcome {
        /// Entries queued after the resume point.
        backlog_count: u32,
        /// Where the queue resumes: the device's resume point, or 0 if
        /// that was past the queue's end.
        resume_seq: u64,
        /// Whether the user's read receipts are relayed.
        read_receipts: bool,
        /// The device's abuse limits, as its last connection left them.
        abuse: Option<Box<AbuseState>>,
    },
    /// The user's settings (the answer to a `SettingsSet`, or news of a
    /// change another device made).
    Settings {
        /// The request, on the requesting device; else 0.
        request_id: u64,
        /// Last seen hidden.
        last_seen_hidden: bool,
        /// Read receipts relayed.
        read_receipts: bool,
    },
    /// A queued gap notice: messages dropped before the device read them.
    Gap {
        /// Its seq in the device's queue.
        seq: u64,
        /// Why they were dropped.
        cause: fb::GapCause,
        /// Per sending device.
        senders: Vec<fb::GapSender>,
    },
    /// The abuse limits of a connection this device's newer connection
    /// replaced: merged into this one's (what both spent adds up), so
    /// connecting again does not reset them.
    Abuse(Box<AbuseState>),
    /// A request took effect (`PushRegister`).
    Done {
        /// The request.
        request_id: u64,
    },
    /// The operator closes this session (`Kicked`, `Banned`).
    Close {
        /// Why.
        code: ErrorCode,
        /// How long the client should wait, ms (0: does not apply).
        retry_after_ms: u64,
    },
    /// A group change (queued at `seq`; 0: answered directly, nothing
    /// changed).
    GroupChanged {
        /// Its seq in the device's queue, or 0.
        seq: u64,
        /// The request it answers, on the requesting device; else 0.
        request_id: u64,
        /// The group.
        group: u64,
        /// What changed.
        change: fb::GroupChange,
        /// Who changed it.
        actor: u64,
        /// The users it is about.
        members: Vec<u64>,
    },
    /// The answer to a `DevicesGet`.
    Devices {
        /// The request.
        request_id: u64,
        /// The user's linked devices.
        devices: Vec<fb::DeviceInfo>,
    },
    /// A queued device change.
    DeviceChanged {
        /// Its seq in the device's queue.
        seq: u64,
        /// The request it answers, on the requesting device; else 0.
        request_id: u64,
        /// The device it is about.
        device: u32,
        /// What changed.
        change: fb::DeviceChange,
    },
    /// A refused group or device request.
    RefusedRequest {
        /// Why.
        code: ErrorCode,
        /// The request.
        request_id: u64,
    },
    /// Relayed to online devices only.
    Typing {
        /// The state.
        state: fb::TypingState,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard_router::ShardMsg;

    /// Every note between shards is moved a few times per message (into
    /// the router's outbox, through the mesh, out of the batch): kept at
    /// 128 bytes, a move is four vector copies instead of a `memcpy` call.
    #[test]
    fn a_note_between_shards_fits_128_bytes() {
        assert!(size_of::<Note>() <= 80, "Note: {}", size_of::<Note>());
        let msg = size_of::<ShardMsg<Note>>();
        assert!(msg <= 128, "ShardMsg<Note>: {msg}");
    }
}
