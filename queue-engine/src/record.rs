//! The bytes of one log record and their checksum.
//!
//! ```text
//! u32 len      bytes after this field: crc (4) + kind (1) + body; 5..=RECORD_BYTES_MAX
//! u32 crc32c   over kind + body (Castagnoli, hardware-accelerated)
//! u8  kind     1 message, 2 tombstone, 3 device, 4 group, 5 dedup (read,
//!              no longer written), 6 receipt (a message record the server
//!              made: never deduped), 7 sender window, 8 group message
//!              (the group's id, then a message body), 9 device life
//!              (linked, last active, unlinked), 10 setting (a user's or a
//!              device's named value, opaque here: the latest per key
//!              supersedes the earlier ones)
//! body         a fixed header per kind (little-endian), then variable bytes
//! ```
//!
//! A reader that finds fewer bytes than a record needs, or a checksum that
//! does not match, cannot tell a torn write from corruption by itself:
//! recovery decides from where it happened (see `recovery.rs`).

/// Largest record (after the length field): a 64 KiB payload with a
/// 1,024-device fan-out fits well inside.
pub const RECORD_BYTES_MAX: usize = RECORD_BYTES_MAX_U32 as usize;
const RECORD_BYTES_MAX_U32: u32 = 1 << 20;
const LEN_BYTES: usize = 4;
const CRC_BYTES: usize = 4;

/// A user's device, as the queue engine names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceRef {
    /// The user.
    pub user: u64,
    /// The device within the user.
    pub device: u32,
}

/// One recipient device of a message and the message's seq in its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient {
    /// The device.
    pub device: DeviceRef,
    /// The message's position in that device's queue.
    pub seq: u64,
}

/// Why queue entries died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// The device acknowledged delivery.
    Acked = 1,
    /// The TTL ran out first.
    Expired = 2,
}

/// A stored message: one copy, any number of recipient queue entries.
/// Receipts (✓✓, read, expired) are queued the same way but are records
/// of their own kind, so nothing a client chooses can make a message read
/// back as a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord<'a> {
    /// A receipt the server queued (kind 6), not a client's message: it
    /// has no dedup entry and `client_msg_id` is not the client's.
    pub receipt: bool,
    /// The group it was sent to (kind 8), or 0 for a message to a user or
    /// device.
    pub group: u64,
    /// Server-wide id.
    pub message_id: u64,
    /// The sending device.
    pub sender: DeviceRef,
    /// The sender's id for it (the dedup key with `sender`).
    pub client_msg_id: u64,
    /// When it was accepted, ms since the Unix epoch.
    pub accepted_ms: u64,
    /// When undelivered entries expire, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Every recipient device with its seq.
    pub recipients: Vec<Recipient>,
    /// The opaque payload.
    pub payload: &'a [u8],
}

/// Queue entries `seq_from..=seq_to` of `device` are dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// The device.
    pub device: DeviceRef,
    /// First dead seq.
    pub seq_from: u64,
    /// Last dead seq.
    pub seq_to: u64,
    /// Why.
    pub reason: DeathReason,
}

/// A dedup entry that outlives its message (written when reclaim drops a
/// dead message whose dedup window is still open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupRecord {
    /// The sending device.
    pub sender: DeviceRef,
    /// The sender's id for it.
    pub client_msg_id: u64,
    /// The original server message id.
    pub message_id: u64,
    /// When the window closes, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// A sender device's dedup window (see `dedup.rs`): written by reclaim
/// when it deletes message records whose ids are still inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRecord {
    /// The sending device.
    pub sender: DeviceRef,
    /// Its highest stored client id.
    pub high: u64,
    /// Bit `i` set: id `high - i` was stored.
    pub bits: u64,
}

/// Bytes of a window record.
pub const WINDOW_RECORD_LEN: u64 = (LEN_BYTES + CRC_BYTES + 1 + 12 + 8 + 8) as u64;

/// A device's life as a linked device of its user: the latest record of
/// a device supersedes the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLife {
    /// The device.
    pub device: DeviceRef,
    /// When it was linked (first authenticated), ms since the Unix epoch.
    pub linked_ms: u64,
    /// When it was last connected, ms since the Unix epoch.
    pub active_ms: u64,
    /// When it was unlinked, or 0 while it is linked.
    pub unlinked_ms: u64,
}

/// Whose setting, and which: a user's (`device` is [`SettingKey::USER`])
/// or one device's. `name` is the shell's; the engine keeps the latest
/// value per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SettingKey {
    /// The user.
    pub user: u64,
    /// The device, or [`SettingKey::USER`] for a user-wide setting.
    pub device: u32,
    /// Which setting (the shell's numbering).
    pub name: u8,
}

impl SettingKey {
    /// The `device` of a user-wide setting.
    pub const USER: u32 = u32::MAX;
}

/// Largest value of a setting record.
pub const SETTING_VALUE_BYTES_MAX: usize = 1024;

/// One record, borrowed from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A message.
    Message(MessageRecord<'a>),
    /// Dead queue entries.
    Tombstone(Tombstone),
    /// A device exists (registered at `registered_ms`) and its next seq is
    /// at least `next_seq`: reclaim rewrites this floor when it drops the
    /// tombstones that implied it, so seqs never go back after a restart.
    Device {
        /// The device.
        device: DeviceRef,
        /// When, ms since the Unix epoch.
        registered_ms: u64,
        /// Lowest seq the next message may get.
        next_seq: u64,
    },
    /// A group membership change, opaque here (the router's record).
    /// `order` is the position it was first written at: copies made by
    /// reclaim keep it, so replay applies group changes in their order.
    Group {
        /// Replay order.
        order: u64,
        /// The router's record.
        bytes: &'a [u8],
    },
    /// A dedup entry without its message (older logs; now a window).
    Dedup(DedupRecord),
    /// A sender's dedup window.
    Window(WindowRecord),
    /// A device's life (kind 9).
    Life(DeviceLife),
    /// A user's or device's setting (kind 10), at most
    /// [`SETTING_VALUE_BYTES_MAX`] bytes.
    Setting {
        /// Whose and which.
        key: SettingKey,
        /// Its value (opaque here).
        value: &'a [u8],
    },
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The buffer ends inside the record (`need` bytes from its start).
    #[error("record needs {need} bytes, {have} remain")]
    Incomplete {
        /// Bytes the record needs, counted from its length field.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The length field is outside `5..=RECORD_BYTES_MAX` (zeroes read as
    /// length 0: unwritten space).
    #[error("record length {len} is impossible")]
    BadLength {
        /// The length field.
        len: u32,
    },
    /// The checksum does not match the bytes.
    #[error("record checksum mismatch")]
    BadChecksum,
    /// The checksum matches but the body does not parse (a bug, not a fault).
    #[error("record of kind {kind} is malformed")]
    Malformed {
        /// The kind byte.
        kind: u8,
    },
}

/// Bytes of a message record with `recipients` and a `payload_len` payload:
/// the framing (9), id (8), sender (12), three times (24), count (2), then
/// 20 per recipient and the payload; a group message has its group id (8)
/// first.
pub fn message_len(recipients: usize, payload_len: usize, group: bool) -> usize {
    LEN_BYTES + CRC_BYTES + 1 + 46 + 20 * recipients + payload_len + if group { 8 } else { 0 }
}

/// Bytes `encode` will write for `record`, without writing them.
pub fn encoded_len(record: &Record<'_>) -> usize {
    let body = match record {
        Record::Message(m) => {
            return message_len(m.recipients.len(), m.payload.len(), m.group != 0);
        }
        Record::Tombstone(_) => 12 + 8 + 8 + 1,
        Record::Device { .. } => 12 + 8 + 8,
        Record::Group { bytes, .. } => 8 + bytes.len(),
        Record::Dedup(_) => 12 + 8 + 8 + 8,
        Record::Window(_) => 12 + 8 + 8,
        Record::Life(_) => 12 + 8 + 8 + 8,
        Record::Setting { value, .. } => 12 + 1 + value.len(),
    };
    LEN_BYTES + CRC_BYTES + 1 + body
}

/// Appends `record` to `out` and returns the bytes written.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_BYTES + CRC_BYTES]);
    match record {
        Record::Message(m) => {
            match (m.receipt, m.group) {
                (true, _) => out.push(6),
                (false, 0) => out.push(1),
                (false, group) => {
                    out.push(8);
                    out.extend_from_slice(&group.to_le_bytes());
                }
            }
            put_message(m, out);
        }
        Record::Tombstone(t) => {
            out.push(2);
            put_device(t.device, out);
            out.extend_from_slice(&t.seq_from.to_le_bytes());
            out.extend_from_slice(&t.seq_to.to_le_bytes());
            out.push(t.reason as u8);
        }
        Record::Device {
            device,
            registered_ms,
            next_seq,
        } => {
            out.push(3);
            put_device(*device, out);
            out.extend_from_slice(&registered_ms.to_le_bytes());
            out.extend_from_slice(&next_seq.to_le_bytes());
        }
        Record::Group { order, bytes } => {
            out.push(4);
            out.extend_from_slice(&order.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Record::Dedup(d) => {
            out.push(5);
            put_device(d.sender, out);
            for v in [d.client_msg_id, d.message_id, d.expires_ms] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Record::Life(l) => {
            out.push(9);
            put_device(l.device, out);
            for v in [l.linked_ms, l.active_ms, l.unlinked_ms] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Record::Setting { key, value } => {
            assert!(value.len() <= SETTING_VALUE_BYTES_MAX, "setting too large");
            out.push(10);
            out.extend_from_slice(&key.user.to_le_bytes());
            out.extend_from_slice(&key.device.to_le_bytes());
            out.push(key.name);
            out.extend_from_slice(value);
        }
        Record::Window(w) => {
            out.push(7);
            put_device(w.sender, out);
            out.extend_from_slice(&w.high.to_le_bytes());
            out.extend_from_slice(&w.bits.to_le_bytes());
        }
    }
    let len = out.len() - start - LEN_BYTES;
    assert!(
        len <= RECORD_BYTES_MAX,
        "record of {len} bytes exceeds the limit"
    );
    let crc = crc32c::crc32c(&out[start + LEN_BYTES + CRC_BYTES..]);
    let len = u32::try_from(len).expect("checked against RECORD_BYTES_MAX");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn put_device(d: DeviceRef, out: &mut Vec<u8>) {
    out.extend_from_slice(&d.user.to_le_bytes());
    out.extend_from_slice(&d.device.to_le_bytes());
}

fn put_message(m: &MessageRecord<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&m.message_id.to_le_bytes());
    put_device(m.sender, out);
    for v in [m.client_msg_id, m.accepted_ms, m.expires_ms] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let count = u16::try_from(m.recipients.len()).expect("at most 65,535 recipients");
    out.extend_from_slice(&count.to_le_bytes());
    for r in &m.recipients {
        put_device(r.device, out);
        out.extend_from_slice(&r.seq.to_le_bytes());
    }
    out.extend_from_slice(m.payload);
}

/// Reads the record at the start of `buf`; returns it and its total size.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), RecordError> {
    decode_checked(buf, true)
}

/// [`decode`] without the checksum, for bytes whose records were decoded
/// (and so checksummed) once already and have not changed since: reclaim
/// scans a segment on the blocking pool, then copies its live records
/// forward on the shard.
pub(crate) fn decode_verified(buf: &[u8]) -> Result<(Record<'_>, usize), RecordError> {
    decode_checked(buf, false)
}

fn decode_checked(buf: &[u8], check: bool) -> Result<(Record<'_>, usize), RecordError> {
    let Some(len) = buf
        .first_chunk::<LEN_BYTES>()
        .map(|b| u32::from_le_bytes(*b))
    else {
        return Err(RecordError::Incomplete {
            need: LEN_BYTES,
            have: buf.len(),
        });
    };
    if !(5..=RECORD_BYTES_MAX_U32).contains(&len) {
        return Err(RecordError::BadLength { len });
    }
    let total = LEN_BYTES + len as usize;
    let Some(record) = buf.get(LEN_BYTES..total) else {
        return Err(RecordError::Incomplete {
            need: total,
            have: buf.len(),
        });
    };
    let (crc, rest) = record.split_at(CRC_BYTES);
    if check && crc32c::crc32c(rest) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(RecordError::BadChecksum);
    }
    let (kind, body) = (rest[0], &rest[1..]);
    let record = parse(kind, body).ok_or(RecordError::Malformed { kind })?;
    Ok((record, total))
}

/// A bounded reader over a record body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2")))
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn device(&mut self) -> Option<DeviceRef> {
        Some(DeviceRef {
            user: self.u64()?,
            device: self.u32()?,
        })
    }
    /// Everything left; the body is then fully consumed.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn done(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

fn parse(kind: u8, body: &[u8]) -> Option<Record<'_>> {
    let mut b = Body(body);
    let record = match kind {
        1 => Record::Message(parse_message(&mut b, false, 0)?),
        6 => Record::Message(parse_message(&mut b, true, 0)?),
        8 => {
            let group = b.u64().filter(|g| *g != 0)?;
            Record::Message(parse_message(&mut b, false, group)?)
        }
        2 => Record::Tombstone(Tombstone {
            device: b.device()?,
            seq_from: b.u64()?,
            seq_to: b.u64()?,
            reason: match b.u8()? {
                1 => DeathReason::Acked,
                2 => DeathReason::Expired,
                _ => return None,
            },
        }),
        3 => Record::Device {
            device: b.device()?,
            registered_ms: b.u64()?,
            next_seq: b.u64()?,
        },
        4 => Record::Group {
            order: b.u64()?,
            bytes: b.rest(),
        },
        5 => Record::Dedup(DedupRecord {
            sender: b.device()?,
            client_msg_id: b.u64()?,
            message_id: b.u64()?,
            expires_ms: b.u64()?,
        }),
        9 => Record::Life(DeviceLife {
            device: b.device()?,
            linked_ms: b.u64()?,
            active_ms: b.u64()?,
            unlinked_ms: b.u64()?,
        }),
        10 => {
            let device = b.device()?;
            let key = SettingKey {
                user: device.user,
                device: device.device,
                name: b.u8()?,
            };
            let value = b.rest();
            if value.len() > SETTING_VALUE_BYTES_MAX {
                return None;
            }
            Record::Setting { key, value }
        }
        7 => Record::Window(WindowRecord {
            sender: b.device()?,
            high: b.u64()?,
            bits: b.u64()?,
        }),
        _ => return None,
    };
    b.done()?;
    Some(record)
}

fn parse_message<'a>(b: &mut Body<'a>, receipt: bool, group: u64) -> Option<MessageRecord<'a>> {
    let (message_id, sender) = (b.u64()?, b.device()?);
    let (client_msg_id, accepted_ms, expires_ms) = (b.u64()?, b.u64()?, b.u64()?);
    let count = b.u16()?;
    let recipients = (0..count)
        .map(|_| {
            Some(Recipient {
                device: b.device()?,
                seq: b.u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let payload = b.rest();
    Some(MessageRecord {
        receipt,
        group,
        message_id,
        sender,
        client_msg_id,
        accepted_ms,
        expires_ms,
        recipients,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(payload: &[u8]) -> Record<'_> {
        Record::Message(MessageRecord {
            receipt: false,
            group: 0,
            message_id: 9,
            sender: DeviceRef { user: 1, device: 2 },
            client_msg_id: 3,
            accepted_ms: 4,
            expires_ms: 5,
            recipients: vec![Recipient {
                device: DeviceRef { user: 6, device: 0 },
                seq: 7,
            }],
            payload,
        })
    }

    #[test]
    fn every_kind_round_trips() {
        let device = DeviceRef { user: 6, device: 1 };
        let receipt = match message(b"\x00ids") {
            Record::Message(m) => Record::Message(MessageRecord { receipt: true, ..m }),
            _ => unreachable!(),
        };
        let group_message = match message(b"to a group") {
            Record::Message(m) => Record::Message(MessageRecord { group: 77, ..m }),
            _ => unreachable!(),
        };
        let records = [
            message(b"ciphertext"),
            receipt,
            group_message,
            Record::Tombstone(Tombstone {
                device,
                seq_from: 1,
                seq_to: 9,
                reason: DeathReason::Expired,
            }),
            Record::Device {
                device,
                registered_ms: 77,
                next_seq: 5,
            },
            Record::Group {
                order: 3,
                bytes: b"router record",
            },
            Record::Dedup(DedupRecord {
                sender: device,
                client_msg_id: 1,
                message_id: 2,
                expires_ms: 3,
            }),
            Record::Life(DeviceLife {
                device,
                linked_ms: 5,
                active_ms: 6,
                unlinked_ms: 7,
            }),
            Record::Window(WindowRecord {
                sender: device,
                high: 70,
                bits: 0b1011,
            }),
            Record::Setting {
                key: SettingKey {
                    user: 6,
                    device: SettingKey::USER,
                    name: 3,
                },
                value: b"until",
            },
            Record::Setting {
                key: SettingKey {
                    user: 6,
                    device: 1,
                    name: 4,
                },
                value: b"",
            },
        ];
        let mut out = Vec::new();
        let sizes: Vec<usize> = records.iter().map(|r| encode(r, &mut out)).collect();
        let predicted: Vec<usize> = records.iter().map(encoded_len).collect();
        assert_eq!(predicted, sizes, "encoded_len agrees with encode");
        let window_at = records
            .iter()
            .position(|r| matches!(r, Record::Window(_)))
            .unwrap();
        assert_eq!(
            sizes[window_at],
            usize::try_from(WINDOW_RECORD_LEN).unwrap()
        );
        let mut at = 0;
        for (record, size) in records.iter().zip(sizes) {
            let (decoded, used) = decode(&out[at..]).unwrap();
            assert_eq!((&decoded, used), (record, size));
            at += used;
        }
        assert_eq!(at, out.len());
    }

    #[test]
    fn zeroes_short_buffers_and_flipped_bits_are_told_apart() {
        let mut out = Vec::new();
        let size = encode(&message(b"payload"), &mut out);
        assert_eq!(decode(&[0; 16]), Err(RecordError::BadLength { len: 0 }));
        assert_eq!(
            decode(&out[..size - 1]),
            Err(RecordError::Incomplete {
                need: size,
                have: size - 1
            })
        );
        for bit in [8 * 8, 8 * 20, 8 * (size - 1)] {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&flipped), Err(RecordError::BadChecksum), "bit {bit}");
        }
    }

    #[test]
    fn a_verified_record_decodes_alike_without_its_checksum() {
        let mut out = Vec::new();
        let size = encode(&message(b"payload"), &mut out);
        assert_eq!(decode_verified(&out), decode(&out));
        assert_eq!(decode_verified(&out).unwrap().1, size);
        // The checksum is what it skips: a flipped checksum byte passes.
        let mut flipped = out.clone();
        flipped[LEN_BYTES] ^= 1;
        assert_eq!(decode(&flipped), Err(RecordError::BadChecksum));
        assert_eq!(decode_verified(&flipped), decode(&out));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&data);
        }

        #[test]
        fn any_message_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..500), seqs in proptest::collection::vec(any::<u64>(), 0..20)) {
            let recipients = seqs.iter().map(|s| Recipient { device: DeviceRef { user: *s, device: 1 }, seq: *s }).collect();
            let record = Record::Message(MessageRecord { receipt: seqs.len() % 2 == 0, group: if seqs.len() % 3 == 1 && seqs.len() % 2 == 1 { 5 } else { 0 }, message_id: 1, sender: DeviceRef { user: 2, device: 3 }, client_msg_id: 4, accepted_ms: 5, expires_ms: 6, recipients, payload: &payload });
            let mut out = Vec::new();
            let size = encode(&record, &mut out);
            prop_assert_eq!(decode(&out).unwrap(), (record, size));
        }
    }
}
