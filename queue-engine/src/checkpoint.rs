//! Checkpoints: the engine's index as of one log position, so a restart
//! loads it and replays only the log after it (restart time grows with
//! live state, not with history).
//!
//! ```text
//! magic "QECKPT03" | u64 position | u64 live_bytes | u64 live_records
//! u32 n, n × queue   (device 12 | next_seq 8 | u32 m | m × entry 24)
//! u32 n, n × shared  (position 8 | refs 4 | record_len 4)
//! u32 n, n × window  (device 12 | high 8 | bits 8 | record_at 8)
//! u32 n, n × known   (device 12 | client id 8 | message id 8 | position 8 | accepted 8)
//! u32 n, n × group   (order 8 | position of its live copy 8 | u32 len | bytes)
//! u32 n, n × device record (device 12 | position 8 | len 8)
//! u32 n, n × device life (device 12 | linked 8 | active 8 | unlinked 8 | position 8 | len 8)
//! u32 n, n × setting (user 8 | device 4 | name 4 | position 8 | len 8 | u32 vlen | value)
//! u32 crc32c of everything before it
//! ```
//!
//! A checkpoint is written (atomically, by the storage) only once the log
//! is durable past its position, so every record it reflects is on disk.
//! Recovery uses it only if the segment holding its position still exists
//! and the log reaches that far (`recovery.rs`, rows 7–10); anything else
//! is a full replay, which is always correct.

use std::collections::VecDeque;

use crate::dedup::Known;
use crate::engine::{Engine, Entry, Queue, Shared};
use crate::record::{DeviceLife, DeviceRef, SettingKey};

/// Version 02 added device lives, 03 settings; an older file is not read
/// (a full replay, which is always correct).
const MAGIC: &[u8; 8] = b"QECKPT03";

/// Little-endian writer.
struct W(Vec<u8>);

impl W {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("below 4 G items"));
    }
    fn device(&mut self, d: DeviceRef) {
        self.u64(d.user);
        self.u32(d.device);
    }
}

/// Little-endian reader; `None` once it runs out.
struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn len(&mut self) -> Option<usize> {
        self.u32().and_then(|n| usize::try_from(n).ok())
    }
    fn device(&mut self) -> Option<DeviceRef> {
        Some(DeviceRef {
            user: self.u64()?,
            device: self.u32()?,
        })
    }
    fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head.to_vec())
    }
}

impl Engine {
    /// The index as of the log's head, and that position. Hand the bytes
    /// to `Storage::write_checkpoint` only once [`Engine::durable`] is
    /// past the position. Costs a pass over the index.
    pub fn checkpoint(&self) -> (u64, Vec<u8>) {
        let position = self.log.head();
        let mut w = W(Vec::with_capacity(64 + 24 * self.live_records));
        w.0.extend_from_slice(MAGIC);
        for v in [position, self.live_bytes, self.live_records as u64] {
            w.u64(v);
        }
        w.len(self.queues.len());
        for (device, q) in self.queues.iter() {
            w.device(*device);
            w.u64(q.next_seq);
            w.len(q.entries.len());
            for e in &q.entries {
                w.u64(e.seq);
                w.u64(e.position);
                w.u32(e.len_and_kind);
                w.u32(e.expires_s);
            }
        }
        w.len(self.shared.len());
        for (position, s) in self.shared.iter() {
            w.u64(*position);
            w.u32(s.refs);
            w.u32(s.record_len);
        }
        self.put_windows(&mut w);
        w.len(self.group_records.len());
        for (order, bytes) in &self.group_records {
            w.u64(*order);
            w.u64(self.group_at.get(order).copied().unwrap_or(0));
            w.len(bytes.len());
            w.0.extend_from_slice(bytes);
        }
        w.len(self.device_records.len());
        for (device, (position, len)) in &self.device_records {
            w.device(*device);
            w.u64(*position);
            w.u64(*len);
        }
        w.len(self.lives.len());
        for (l, position, len) in self.lives.values() {
            w.device(l.device);
            for v in [l.linked_ms, l.active_ms, l.unlinked_ms, *position, *len] {
                w.u64(v);
            }
        }
        w.len(self.settings.len());
        for (key, (value, position, len)) in &self.settings {
            w.u64(key.user);
            w.u32(key.device);
            w.u32(u32::from(key.name));
            w.u64(*position);
            w.u64(*len);
            w.len(value.len());
            w.0.extend_from_slice(value);
        }
        let crc = crc32c::crc32c(&w.0);
        w.u32(crc);
        (position, w.0)
    }

    fn put_windows(&self, w: &mut W) {
        let windows = &self.windows.windows;
        w.len(windows.len());
        for (device, window) in windows.iter() {
            w.device(*device);
            for v in [window.high, window.bits, window.record_at] {
                w.u64(v);
            }
        }
        let known: Vec<(&DeviceRef, &Known)> = self
            .windows
            .known
            .iter()
            .flat_map(|(d, ids)| ids.iter().map(move |k| (d, k)))
            .collect();
        w.len(known.len());
        for (device, k) in known {
            w.device(*device);
            for v in [k.client_msg_id, k.message_id, k.position, k.accepted_ms] {
                w.u64(v);
            }
        }
    }

    /// Loads a checkpoint into this engine, which must be empty; returns
    /// its position, or `None` if the bytes are not a whole, valid
    /// checkpoint (a torn write: recovery then replays the whole log).
    pub(crate) fn restore(&mut self, bytes: &[u8]) -> Option<u64> {
        let (body, crc) = bytes.split_last_chunk::<4>()?;
        if crc32c::crc32c(body) != u32::from_le_bytes(*crc) || !body.starts_with(MAGIC) {
            return None;
        }
        let mut r = R(&body[MAGIC.len()..]);
        let position = r.u64()?;
        self.live_bytes = r.u64()?;
        self.live_records = usize::try_from(r.u64()?).ok()?;
        for _ in 0..r.len()? {
            let device = r.device()?;
            let queue = read_queue(&mut r)?;
            self.file_expiry(device, &queue);
            self.queues.insert(device, queue);
        }
        for _ in 0..r.len()? {
            let at = r.u64()?;
            let shared = Shared {
                refs: r.u32()?,
                record_len: r.u32()?,
            };
            self.shared.insert(at, shared);
        }
        self.read_windows(&mut r)?;
        for _ in 0..r.len()? {
            let order = r.u64()?;
            let at = r.u64()?;
            let len = r.len()?;
            self.group_at.insert(order, at);
            self.group_records.insert(order, r.bytes(len)?);
        }
        for _ in 0..r.len()? {
            let device = r.device()?;
            self.device_records.insert(device, (r.u64()?, r.u64()?));
        }
        for _ in 0..r.len()? {
            let life = DeviceLife {
                device: r.device()?,
                linked_ms: r.u64()?,
                active_ms: r.u64()?,
                unlinked_ms: r.u64()?,
            };
            self.lives.insert(life.device, (life, r.u64()?, r.u64()?));
        }
        for _ in 0..r.len()? {
            let key = SettingKey {
                user: r.u64()?,
                device: r.u32()?,
                name: u8::try_from(r.u32()?).ok()?,
            };
            let (at, len) = (r.u64()?, r.u64()?);
            let vlen = r.len()?;
            self.settings.insert(key, (r.bytes(vlen)?, at, len));
        }
        r.0.is_empty().then_some(position)
    }

    fn read_windows(&mut self, r: &mut R<'_>) -> Option<()> {
        for _ in 0..r.len()? {
            let device = r.device()?;
            let window = crate::dedup::Window {
                high: r.u64()?,
                bits: r.u64()?,
                record_at: r.u64()?,
            };
            self.windows.windows.insert(device, window);
        }
        for _ in 0..r.len()? {
            let device = r.device()?;
            let k = Known {
                client_msg_id: r.u64()?,
                message_id: r.u64()?,
                position: r.u64()?,
                accepted_ms: r.u64()?,
            };
            let ids = self.windows.known.entry(device).or_insert_with(|| {
                self.windows.by_age.push_back((k.accepted_ms, device));
                VecDeque::new()
            });
            ids.push_back(k);
        }
        Some(())
    }

    /// Files a restored queue in the expiry heap under its earliest entry.
    fn file_expiry(&mut self, device: DeviceRef, queue: &Queue) {
        if queue.expiry_key != u32::MAX {
            self.expiry_filed += 1;
            self.expiry
                .push(std::cmp::Reverse((queue.expiry_key, device)));
        }
    }
}

fn read_queue(r: &mut R<'_>) -> Option<Queue> {
    let mut queue = Queue {
        next_seq: r.u64()?,
        ..Queue::default()
    };
    let n = r.len()?;
    queue.entries.reserve_exact(n.min(r.0.len() / 24));
    for _ in 0..n {
        let e = Entry {
            seq: r.u64()?,
            position: r.u64()?,
            len_and_kind: r.u32()?,
            expires_s: r.u32()?,
        };
        match e.is_receipt() {
            true => queue.receipts += 1,
            false => queue.bytes += u64::from(e.payload_len()),
        }
        let sorted = queue
            .entries
            .back()
            .is_none_or(|b| b.expires_s <= e.expires_s);
        queue.expiry_sorted &= sorted;
        queue.expiry_key = queue.expiry_key.min(e.expires_s);
        queue.entries.push_back(e);
    }
    Some(queue)
}
