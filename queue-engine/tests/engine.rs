//! The engine's behaviour through its public API, on the simulated disk:
//! queues, acks, fan-out from one record, dedup, limits, TTL, and that a
//! reopened engine has the same index.

use queue_engine::*;

const ALICE: DeviceRef = DeviceRef { user: 1, device: 0 };
const BOB_PHONE: DeviceRef = DeviceRef { user: 2, device: 0 };
const BOB_LAPTOP: DeviceRef = DeviceRef { user: 2, device: 1 };

fn engine(config: EngineConfig) -> (Engine, SimDisk) {
    let mut disk = SimDisk::new(3);
    let (engine, _) = Engine::open(&mut disk, config, 0).unwrap();
    (engine, disk)
}

fn send(
    e: &mut Engine,
    now: u64,
    id: u64,
    to: &[DeviceRef],
    payload: &[u8],
) -> Result<Accepted, QueueError> {
    let m = NewMessage {
        message_id: id,
        sender: ALICE,
        client_msg_id: id,
        recipients: to,
        ttl_ms: 0,
        payload,
        receipt: false,
        group: 0,
    };
    e.append_message(now, &m)
}

fn reopen(disk: &mut SimDisk, config: EngineConfig, now_ms: u64) -> Engine {
    Engine::open(disk, config, now_ms).unwrap().0
}

fn seqs(e: &Engine, device: DeviceRef, after: u64) -> Vec<u64> {
    e.backlog(device, after).map(|(seq, _)| seq).collect()
}

#[test]
fn messages_queue_in_seq_order_and_become_visible_when_durable() {
    let (mut e, mut disk) = engine(EngineConfig::default());
    for id in 1..=3 {
        send(&mut e, 10, id, &[BOB_PHONE], b"hi").unwrap();
    }
    assert!(
        seqs(&e, BOB_PHONE, 0).is_empty(),
        "nothing is visible before it is durable"
    );
    flush_all(&mut e, &mut disk).unwrap();
    assert_eq!(seqs(&e, BOB_PHONE, 0), [1, 2, 3]);
    assert_eq!(seqs(&e, BOB_PHONE, 2), [3], "resume after seq 2");
    assert_eq!(e.queue_len(BOB_PHONE), (3, 6));
    assert_eq!(e.queued_through(BOB_PHONE, 2), 2, "sent through seq 2");
    e.ack(BOB_PHONE, 1, false).unwrap();
    assert_eq!(e.queued_through(BOB_PHONE, 2), 1, "one left unacked");
    assert_eq!(seqs(&e, BOB_PHONE, 0), [2, 3]);
    assert_eq!(e.queued_through(BOB_LAPTOP, 9), 0, "no queue");
}

#[test]
fn one_record_serves_every_device_and_dies_with_its_last_reference() {
    let (mut e, mut disk) = engine(EngineConfig::default());
    let stored = send(&mut e, 0, 1, &[BOB_PHONE, BOB_LAPTOP], b"x").unwrap();
    let Accepted::Stored { position, seqs } = stored else {
        panic!("{stored:?}")
    };
    assert_eq!(seqs, [(BOB_PHONE, 1), (BOB_LAPTOP, 1)]);
    flush_all(&mut e, &mut disk).unwrap();
    assert_eq!(e.live_messages(), 1);
    assert_eq!(e.ack(BOB_PHONE, 1, false).unwrap(), [position]);
    assert_eq!(e.live_messages(), 1, "the laptop still holds it");
    assert_eq!(e.ack(BOB_LAPTOP, 1, true).unwrap(), [position]);
    assert_eq!(e.live_messages(), 0);
    assert!(
        e.ack(BOB_LAPTOP, 1, true).unwrap().is_empty(),
        "acking twice is harmless"
    );
}

#[test]
fn cumulative_and_single_acks() {
    let (mut e, mut disk) = engine(EngineConfig::default());
    for id in 1..=5 {
        send(&mut e, 0, id, &[BOB_PHONE], b"m").unwrap();
    }
    flush_all(&mut e, &mut disk).unwrap();
    let peek = |e: &Engine, seq, cumulative| -> Vec<u64> {
        e.acked_by(BOB_PHONE, seq, cumulative)
            .unwrap()
            .map(|(s, _)| s)
            .collect()
    };
    assert_eq!(peek(&e, 4, false), [4]);
    assert_eq!(peek(&e, 3, true), [1, 2, 3]);
    assert_eq!(peek(&e, 4, false), [4], "peeking acknowledges nothing");
    assert_eq!(e.ack(BOB_PHONE, 4, false).unwrap().len(), 1);
    assert_eq!(peek(&e, 5, true), [1, 2, 3, 5], "4 is gone");
    assert_eq!(e.ack(BOB_PHONE, 3, true).unwrap().len(), 3);
    assert!(e.acked_by(BOB_PHONE, 9, true).is_err(), "never assigned");
    assert_eq!(seqs(&e, BOB_PHONE, 0), [5]);
    let never = QueueError::NotDelivered {
        device: BOB_PHONE,
        seq: 9,
    };
    assert_eq!(e.ack(BOB_PHONE, 9, true), Err(never));
    let other = QueueError::NotDelivered {
        device: BOB_LAPTOP,
        seq: 1,
    };
    assert_eq!(
        e.ack(BOB_LAPTOP, 1, true),
        Err(other),
        "another device's seq"
    );
}

#[test]
fn a_retry_is_answered_with_the_original() {
    let (mut e, _) = engine(EngineConfig::default());
    let stored = send(&mut e, 0, 7, &[BOB_PHONE], b"once").unwrap();
    let Accepted::Stored { position, .. } = stored else {
        panic!("{stored:?}")
    };
    let retry = send(&mut e, 1, 7, &[BOB_PHONE], b"once").unwrap();
    assert_eq!(
        retry,
        Accepted::Duplicate {
            message_id: 7,
            position
        }
    );
    assert_eq!(e.queue_len(BOB_PHONE).0, 1, "stored once");
}

#[test]
fn a_full_queue_refuses_the_whole_message() {
    let config = EngineConfig {
        queue_messages_max: 2,
        queue_bytes_max: 100,
        ..EngineConfig::default()
    };
    let (mut e, _) = engine(config);
    send(&mut e, 0, 1, &[BOB_PHONE], b"1").unwrap();
    send(&mut e, 0, 2, &[BOB_PHONE, BOB_LAPTOP], b"2").unwrap();
    let full = send(&mut e, 0, 3, &[BOB_LAPTOP, BOB_PHONE], b"3");
    assert_eq!(full, Err(QueueError::QueueFull { device: BOB_PHONE }));
    assert_eq!(
        e.queue_len(BOB_LAPTOP).0,
        1,
        "nothing stored for the device with room either"
    );
    let big = send(&mut e, 0, 4, &[BOB_LAPTOP], &[0; 100]);
    assert_eq!(
        big,
        Err(QueueError::QueueFull { device: BOB_LAPTOP }),
        "the byte limit"
    );
}

#[test]
fn receipts_have_their_own_budget_and_never_crowd_out_messages() {
    let config = EngineConfig {
        queue_messages_max: 2,
        queue_receipts_max: 3,
        ..EngineConfig::default()
    };
    let (mut e, mut disk) = engine(config);
    let receipt = |e: &mut Engine, id: u64| {
        let m = NewMessage {
            message_id: 100 + id,
            sender: BOB_PHONE,
            client_msg_id: 0,
            recipients: &[ALICE],
            ttl_ms: 0,
            payload: &[1, 0, 0, 0, 0, 0, 0, 0, 0],
            receipt: true,
            group: 0,
        };
        e.append_message(0, &m)
    };
    let to_alice = |e: &mut Engine, id: u64| {
        let m = NewMessage {
            message_id: id,
            sender: BOB_PHONE,
            client_msg_id: id,
            recipients: &[ALICE],
            ttl_ms: 0,
            payload: b"hi",
            receipt: false,
            group: 0,
        };
        e.append_message(0, &m)
    };
    for id in 1..=3 {
        receipt(&mut e, id).unwrap();
    }
    let full = QueueError::QueueFull { device: ALICE };
    assert_eq!(receipt(&mut e, 4), Err(full), "the receipts' budget");
    to_alice(&mut e, 1).expect("receipts take no room from messages");
    to_alice(&mut e, 2).unwrap();
    assert_eq!(to_alice(&mut e, 3), Err(full), "the messages' budget");
    assert_eq!(
        e.queue_len(ALICE),
        (5, 4),
        "payload bytes count messages only"
    );
    // Acking the receipts frees their budget, and survives reopening.
    flush_all(&mut e, &mut disk).unwrap();
    e.ack(ALICE, 3, true).unwrap();
    flush_all(&mut e, &mut disk).unwrap();
    let mut r = reopen(&mut disk, config, 0);
    assert_eq!(r.queue_len(ALICE), (2, 4));
    receipt(&mut r, 5).expect("room again");
    assert_eq!(
        to_alice(&mut r, 9),
        Err(full),
        "messages still at their limit"
    );
}

#[test]
fn expiry_writes_tombstones_and_survives_reopening() {
    let config = EngineConfig {
        ttl_default_ms: 1_000,
        ..EngineConfig::default()
    };
    let (mut e, mut disk) = engine(config);
    send(&mut e, 0, 1, &[BOB_PHONE], b"old").unwrap();
    send(&mut e, 500, 2, &[BOB_PHONE], b"new").unwrap();
    let expired = e.expire(1_200);
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].device, expired[0].seq), (BOB_PHONE, 1));
    flush_all(&mut e, &mut disk).unwrap();
    let e = reopen(&mut disk, config, 1_200);
    assert_eq!(seqs(&e, BOB_PHONE, 0), [2]);
}

#[test]
fn expiry_looks_only_at_queues_with_an_entry_due() {
    let (mut e, mut disk) = engine(EngineConfig::default());
    let devices: Vec<DeviceRef> = (100..1_100)
        .map(|user| DeviceRef { user, device: 0 })
        .collect();
    for (i, d) in devices.iter().enumerate() {
        let m = NewMessage {
            message_id: i as u64 + 1,
            sender: ALICE,
            client_msg_id: i as u64 + 1,
            recipients: std::slice::from_ref(d),
            ttl_ms: 3_600_000,
            payload: b"long",
            receipt: false,
            group: 0,
        };
        e.append_message(0, &m).unwrap();
    }
    // BOB_PHONE: a long TTL first, then a short one (out of order).
    let mixed = [(2_000, 3_600_000), (2_001, 5_000), (2_002, 60_000)];
    for (id, ttl_ms) in mixed {
        let m = NewMessage {
            message_id: id,
            sender: ALICE,
            client_msg_id: id,
            recipients: &[BOB_PHONE],
            ttl_ms,
            payload: b"m",
            receipt: false,
            group: 0,
        };
        e.append_message(0, &m).unwrap();
    }
    flush_all(&mut e, &mut disk).unwrap();
    for now in (1_000..=4_000).step_by(1_000) {
        assert!(e.expire(now).is_empty());
    }
    assert_eq!(e.expiry_visits(), 0, "nothing due: no queue looked at");
    let gone = e.expire(5_000);
    assert_eq!(gone.iter().map(|x| x.seq).collect::<Vec<_>>(), [2]);
    assert_eq!(e.expiry_visits(), 1, "one queue, of 1,001");
    assert_eq!(seqs(&e, BOB_PHONE, 0), [1, 3]);
    let gone = e.expire(60_000);
    assert_eq!(gone.iter().map(|x| x.seq).collect::<Vec<_>>(), [3]);
    // Reopened, the heap is rebuilt from the records.
    flush_all(&mut e, &mut disk).unwrap();
    let mut r = reopen(&mut disk, EngineConfig::default(), 60_000);
    assert!(r.expire(61_000).is_empty());
    assert_eq!(
        r.expire(3_600_000).len(),
        1_001,
        "the long ones, all at once"
    );
    assert_eq!(seqs(&r, BOB_PHONE, 0), Vec::<u64>::new());
}

#[test]
fn a_retry_past_the_backstop_is_known_stored_and_one_below_the_window_is_stale() {
    let config = EngineConfig {
        dedup_ids_ms: 1_000,
        ..EngineConfig::default()
    };
    let (mut e, mut disk) = engine(config);
    send(&mut e, 0, 1, &[BOB_PHONE], b"first").unwrap();
    let within = send(&mut e, 900, 1, &[BOB_PHONE], b"first").unwrap();
    assert!(matches!(within, Accepted::Duplicate { message_id: 1, .. }));
    e.expire(1_001);
    let forgotten = send(&mut e, 1_001, 1, &[BOB_PHONE], b"first").unwrap();
    assert_eq!(
        forgotten,
        Accepted::Forgotten,
        "stored; its id is no longer kept"
    );
    assert_eq!(e.dedup_entries(), (1, 0), "one window, no originals");
    let far = 1 + DEDUP_WINDOW;
    send(&mut e, 1_001, far, &[BOB_PHONE], b"far").unwrap();
    let stale = send(&mut e, 1_001, 1, &[BOB_PHONE], b"first");
    assert_eq!(
        stale,
        Err(QueueError::Stale {
            sender: ALICE,
            client_msg_id: 1
        })
    );
    let gap = send(&mut e, 1_001, far - 1, &[BOB_PHONE], b"gap").unwrap();
    assert!(
        matches!(gap, Accepted::Stored { .. }),
        "inside the window, never stored"
    );
    // The window survives a restart (from the records it is rebuilt from).
    flush_all(&mut e, &mut disk).unwrap();
    let mut r = reopen(&mut disk, config, 1_002);
    let after = send(&mut r, 1_002, 1, &[BOB_PHONE], b"first");
    assert!(matches!(after, Err(QueueError::Stale { .. })), "{after:?}");
    let again = send(&mut r, 1_002, far - 1, &[BOB_PHONE], b"gap").unwrap();
    assert!(matches!(again, Accepted::Duplicate { .. }), "{again:?}");
}

#[test]
fn reopening_rebuilds_queues_seqs_refs_and_dedup() {
    let (mut e, mut disk) = engine(EngineConfig::default());
    e.register_device(0, BOB_LAPTOP);
    send(&mut e, 0, 1, &[BOB_PHONE, BOB_LAPTOP], b"a").unwrap();
    send(&mut e, 0, 2, &[BOB_PHONE], b"b").unwrap();
    e.append_group_record(b"group 9: created");
    flush_all(&mut e, &mut disk).unwrap();
    e.ack(BOB_PHONE, 1, true).unwrap();
    flush_all(&mut e, &mut disk).unwrap();

    let mut r = reopen(&mut disk, EngineConfig::default(), 1);
    assert_eq!(seqs(&r, BOB_PHONE, 0), [2]);
    assert_eq!(seqs(&r, BOB_LAPTOP, 0), [1]);
    assert_eq!(r.live_messages(), 2);
    let groups: Vec<&[u8]> = r.group_records().collect();
    assert_eq!(groups, [b"group 9: created".as_slice()]);
    let retry = send(&mut r, 1, 2, &[BOB_PHONE], b"b").unwrap();
    assert!(
        matches!(retry, Accepted::Duplicate { message_id: 2, .. }),
        "{retry:?}"
    );
    let next = send(&mut r, 1, 3, &[BOB_PHONE], b"c").unwrap();
    let Accepted::Stored { seqs, .. } = next else {
        panic!("{next:?}")
    };
    assert_eq!(seqs, [(BOB_PHONE, 3)], "seqs continue after a restart");
}

#[test]
fn a_backlog_reads_back_its_payloads_even_after_reclaim_moves_them() {
    let config = EngineConfig {
        log: LogConfig {
            segment_bytes_max: 1024,
            batch_bytes_max: 512,
        },
        ..EngineConfig::default()
    };
    let (mut e, mut disk) = engine(config);
    for id in 1..=40u64 {
        let payload = format!("message {id}");
        send(&mut e, 100 + id, id, &[BOB_PHONE], payload.as_bytes()).unwrap();
        flush_all(&mut e, &mut disk).unwrap();
    }
    for _ in 0..2 {
        // Nothing is dead, so reclaim is never due: force the oldest segment.
        let oldest = e.log().segments()[0];
        let bytes = disk.read(oldest).unwrap();
        e.reclaim(oldest, &bytes).unwrap();
        flush_all(&mut e, &mut disk).unwrap();
        disk.remove(oldest).unwrap();
        e.segment_deleted(oldest);
    }
    assert!(e.log().segments()[0] > 0, "segments were reclaimed");
    let backlog: Vec<(u64, u64)> = e.backlog(BOB_PHONE, 35).collect();
    let read: Vec<StoredMessage> = backlog
        .iter()
        .map(|(_, p)| read_message(&e, &disk, *p).unwrap())
        .collect();
    assert_eq!(read.len(), 5);
    assert_eq!(read[0].payload, b"message 36");
    assert_eq!(
        (read[4].message_id, read[4].sender, read[4].accepted_ms),
        (40, ALICE, 140)
    );
    let recent = e.recent_payload(backlog[4].1).map(|b| &b[..]);
    assert_eq!(
        recent,
        Some(&b"message 40"[..]),
        "recent ones come from memory"
    );
    let first = read_message(&e, &disk, e.backlog(BOB_PHONE, 0).next().unwrap().1).unwrap();
    assert_eq!(
        first.payload, b"message 1",
        "moved by reclaim, still readable"
    );
}

#[test]
fn receipts_are_their_own_record_kind_whatever_the_client_id() {
    let config = EngineConfig {
        payload_cache_bytes: 0, // every read comes from the disk
        ..EngineConfig::default()
    };
    let (mut e, mut disk) = engine(config);
    // A client id with bit 63 set is legal and stays a message.
    let high = (1 << 63) + 12_345;
    let m = NewMessage {
        message_id: 7,
        sender: ALICE,
        client_msg_id: high,
        recipients: &[BOB_PHONE],
        ttl_ms: 0,
        payload: b"ciphertext",
        receipt: false,
        group: 0,
    };
    e.append_message(0, &m).unwrap();
    // Two receipts with the same (sender, client id) are both stored:
    // receipts are never deduped.
    for id in [8, 9] {
        let r = NewMessage {
            message_id: id,
            client_msg_id: 0,
            payload: b"\x00ids",
            receipt: true,
            group: 0,
            ..m
        };
        assert!(matches!(
            e.append_message(0, &r),
            Ok(Accepted::Stored { .. })
        ));
    }
    flush_all(&mut e, &mut disk).unwrap();
    let e = reopen(&mut disk, config, 1);
    let kinds: Vec<(bool, u64, Vec<u8>)> = e
        .backlog(BOB_PHONE, 0)
        .map(|(_, position)| read_message(&e, &disk, position).unwrap())
        .map(|s| (s.receipt, s.client_msg_id, s.payload))
        .collect();
    assert_eq!(
        kinds,
        [
            (false, high, b"ciphertext".to_vec()),
            (true, 0, b"\x00ids".to_vec()),
            (true, 0, b"\x00ids".to_vec()),
        ]
    );
}

#[test]
fn a_lazy_receipt_rides_the_next_due_batch_or_waits_to_be_sealed() {
    let (mut e, mut disk) = engine(EngineConfig::default());
    let receipt = |id| NewMessage {
        message_id: id,
        sender: BOB_PHONE,
        client_msg_id: 0,
        recipients: &[ALICE],
        ttl_ms: 0,
        payload: b"\x00ids",
        receipt: true,
        group: 0,
    };
    let Ok(Accepted::Stored { position, .. }) = e.append_message_lazy(0, &receipt(1)) else {
        panic!("stored")
    };
    assert!(e.poll_flush().is_none(), "a receipt alone makes no write");
    assert!(e.lazy_pending());
    // A message makes the batch due, and the receipt goes with it.
    send(&mut e, 0, 2, &[BOB_PHONE], b"hi").unwrap();
    let flush = e.poll_flush().expect("the message's batch is due");
    let start = flush.segment + flush.offset;
    assert!(start <= position && position < flush.end(), "in that batch");
    write_flush(&mut disk, flush).unwrap();
    e.handle_flushed();
    assert!(e.durable() > position);
    assert_eq!(seqs(&e, ALICE, 0), [1], "durable, so visible");
    // Alone again, it waits for the seal (the shell's timer).
    e.append_message_lazy(0, &receipt(3)).unwrap();
    assert!(e.poll_flush().is_none());
    e.seal_lazy();
    let flush = e.poll_flush().expect("sealed, it is due");
    write_flush(&mut disk, flush).unwrap();
    e.handle_flushed();
    assert_eq!(seqs(&e, ALICE, 0), [1, 2]);
    // An urgent receipt (the old way) makes its batch due by itself.
    e.append_message(0, &receipt(4)).unwrap();
    assert!(e.poll_flush().is_some());
}

#[test]
fn a_record_over_the_limit_is_refused_not_a_crash() {
    let (mut e, _) = engine(EngineConfig {
        queue_bytes_max: u64::MAX,
        ..EngineConfig::default()
    });
    let payload = vec![0; 1 << 20];
    let refused = send(&mut e, 0, 1, &[BOB_PHONE], &payload);
    assert!(
        matches!(refused, Err(QueueError::TooLarge { .. })),
        "{refused:?}"
    );
    let fits = vec![0; 256 << 10];
    assert!(send(&mut e, 0, 2, &[BOB_PHONE, BOB_LAPTOP], &fits).is_ok());
}

#[test]
fn a_group_message_keeps_its_group_through_the_disk_and_its_bytes_are_counted() {
    let config = EngineConfig {
        payload_cache_bytes: 0,
        ..EngineConfig::default()
    };
    let (mut e, mut disk) = engine(config);
    let base = e.live_bytes();
    let m = NewMessage {
        message_id: 7,
        sender: ALICE,
        client_msg_id: 1,
        recipients: &[BOB_PHONE],
        ttl_ms: 0,
        payload: b"to the group",
        receipt: false,
        group: 99,
    };
    e.append_message(0, &m).unwrap();
    let two = NewMessage {
        client_msg_id: 2,
        recipients: &[BOB_PHONE, BOB_LAPTOP],
        ..m
    };
    e.append_message(0, &two).unwrap();
    flush_all(&mut e, &mut disk).unwrap();
    let mut e = reopen(&mut disk, config, 1);
    let groups: Vec<u64> = e
        .backlog(BOB_PHONE, 0)
        .map(|(_, position)| read_message(&e, &disk, position).unwrap().group)
        .collect();
    assert_eq!(groups, [99, 99]);
    e.ack(BOB_PHONE, 2, true).unwrap();
    e.ack(BOB_LAPTOP, 1, true).unwrap();
    flush_all(&mut e, &mut disk).unwrap();
    // The group records' 8 extra bytes leave with them.
    let after = e.live_bytes();
    let e2 = reopen(&mut disk, config, 2);
    assert_eq!(e.live_messages(), 0);
    assert_eq!(after, e2.live_bytes(), "live bytes agree with a replay");
    assert_eq!(after, base, "nothing is live once every entry is acked");
}
