//! Memory of the in-memory index, measured with a counting allocator
//! (deterministic, unlike time): bytes per queued message for the queues and
//! record references, and the dedup state per sender device once its
//! messages are acked (its last originals, then past the backstop only its
//! window).
//!
//! `cargo test -p queue-engine --test memory -- --nocapture` prints them.

use queue_engine::*;
use testkit::live;

#[global_allocator]
static ALLOCATOR: testkit::Counting = testkit::Counting;

const DEVICES: u64 = 2_000;
const PER_DEVICE: u64 = 100;
/// Senders: 1,500 over the 64 parts of the window map fill its tables to
/// 73 %; one window is 41 B of table (key, value and a control byte), so the
/// cost per sender runs from 47 B (tables full) to 94 B (just doubled).
const SENDERS: u64 = 1_500;

#[test]
fn bytes_per_queued_message() {
    let mut disk = NullStorage::default();
    // The payload cache is one fixed ring, not a cost per message.
    let config = EngineConfig {
        queue_messages_max: 1_000,
        payload_cache_bytes: 0,
        ..EngineConfig::default()
    };
    let (mut engine, _) = Engine::open(&mut disk, config, 0).unwrap();
    // Every device has a queue and the log its buffers before we start.
    for user in 0..DEVICES {
        engine.register_device(0, DeviceRef { user, device: 0 });
    }
    flush_all(&mut engine, &mut disk).unwrap();
    let payload = [7u8; 100];
    let start = live();
    let messages = DEVICES * PER_DEVICE;
    for id in 0..messages {
        let to = DeviceRef {
            user: id % DEVICES,
            device: 0,
        };
        let sender = DeviceRef {
            user: 1_000_000 + id % SENDERS,
            device: 0,
        };
        let m = NewMessage {
            message_id: id,
            sender,
            client_msg_id: 1 + id / SENDERS,
            recipients: &[to],
            ttl_ms: 0,
            payload: &payload,
            receipt: false,
            group: 0,
        };
        engine.append_message(0, &m).unwrap();
        if id % 1_000 == 0 {
            flush_all(&mut engine, &mut disk).unwrap();
        }
    }
    flush_all(&mut engine, &mut disk).unwrap();
    let queued = live() - start;
    for user in 0..DEVICES {
        engine
            .ack(DeviceRef { user, device: 0 }, PER_DEVICE, true)
            .unwrap();
    }
    flush_all(&mut engine, &mut disk).unwrap();
    engine.shrink_to_fit();
    let acked = live() - start;
    // Past the backstop the originals go too: one window per sender is left.
    engine.expire(config.dedup_ids_ms + 1);
    engine.shrink_to_fit();
    let idle = live() - start;
    let per_message = |bytes: isize| bytes as f64 / messages as f64;
    let index = per_message(queued - acked);
    let per_sender = |bytes: isize| bytes as f64 / SENDERS as f64;
    eprintln!(
        "memory: {index:.1} B per queued message (queues + record refs), \
         {:.1} B per message while queued; once acked, dedup holds {:.0} B per \
         sender (originals of its last {DEDUP_WINDOW} ids), {:.1} B past the backstop",
        per_message(queued),
        per_sender(acked),
        per_sender(idle),
    );
    assert_eq!(
        engine.dedup_entries(),
        (usize::try_from(SENDERS).unwrap(), 0)
    );
    assert!(
        index <= 48.0,
        "index: {index:.1} B per queued message (goal: <= 48)"
    );
    // Inside the window: 32 B per original, at most DEDUP_WINDOW of them.
    assert!(
        per_sender(acked) <= 48.0 * DEDUP_WINDOW as f64,
        "dedup: {:.0} B per sender inside the window",
        per_sender(acked)
    );
    // The target: at most 64 B per sender device once idle, and
    // nothing per message.
    assert!(
        per_sender(idle) <= 64.0,
        "dedup: {:.1} B per idle sender (goal: <= 64)",
        per_sender(idle)
    );
}
