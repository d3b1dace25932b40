//! Checkpoints, one test per row of the recovery decision table that
//! involves one (`recovery.rs`, rows 7–11): whichever way the engine
//! opens, its index is the one a full replay of the log gives.

use queue_engine::*;

const ALICE: DeviceRef = DeviceRef { user: 1, device: 0 };
const BOB_PHONE: DeviceRef = DeviceRef { user: 2, device: 0 };
const BOB_LAPTOP: DeviceRef = DeviceRef { user: 2, device: 1 };

fn config() -> EngineConfig {
    EngineConfig {
        log: LogConfig {
            segment_bytes_max: 4 << 10,
            batch_bytes_max: 1 << 10,
        },
        ..EngineConfig::default()
    }
}

fn send(e: &mut Engine, id: u64, to: &[DeviceRef], ttl_ms: u64) {
    let m = NewMessage {
        message_id: id,
        sender: ALICE,
        client_msg_id: id,
        recipients: to,
        ttl_ms,
        payload: &[id.to_le_bytes()[0]; 100],
        receipt: false,
        group: 0,
    };
    e.append_message(id, &m).unwrap();
}

/// Traffic of every kind: fan-out, acks, expiry, a device and a group
/// record, then reclaim of what is due.
fn traffic(e: &mut Engine, disk: &mut SimDisk, ids: std::ops::Range<u64>) {
    for id in ids {
        match id % 4 {
            0 => send(e, id, &[BOB_PHONE, BOB_LAPTOP], 0),
            1 => send(e, id, &[BOB_PHONE], 50),
            _ => send(e, id, &[BOB_LAPTOP], 0),
        }
        if id % 7 == 0 {
            // A device's life, superseded now and then.
            e.set_life(DeviceLife {
                device: BOB_LAPTOP,
                linked_ms: 1,
                active_ms: id,
                unlinked_ms: 0,
            });
            // A user's setting and a device's, superseded now and then.
            let key = |device, name| SettingKey {
                user: 2,
                device,
                name,
            };
            e.set_setting(key(SettingKey::USER, 1), &id.to_le_bytes());
            e.set_setting(key(1, 4), &[id.to_le_bytes()[0]; 40]);
        }
        flush_all(e, disk).unwrap();
        if id % 5 == 0 {
            let end = e.queue_end(BOB_PHONE);
            e.ack(BOB_PHONE, end, true).unwrap();
        }
    }
    e.register_device(1, DeviceRef { user: 3, device: 0 });
    e.append_group_record(b"group 7");
    e.expire(1_000_000);
    flush_all(e, disk).unwrap();
    reclaim_all(e, disk).unwrap();
}

/// What an engine's index says, as far as its API shows it.
fn digest(e: &Engine) -> String {
    let mut devices: Vec<DeviceRef> = e.devices().collect();
    devices.sort();
    let queues: Vec<String> = devices
        .iter()
        .map(|d| {
            let backlog: Vec<(u64, u64)> = e.backlog(*d, 0).collect();
            format!(
                "{d:?} {:?} end {} {backlog:?}",
                e.queue_len(*d),
                e.queue_end(*d)
            )
        })
        .collect();
    let groups: Vec<&[u8]> = e.group_records().collect();
    let mut lives: Vec<DeviceLife> = e.lives().collect();
    lives.sort_by_key(|l| l.device);
    let mut settings: Vec<(SettingKey, &[u8])> = e.settings().collect();
    settings.sort();
    format!(
        "{queues:?} live {} msgs {} dedup {:?} groups {groups:?} lives {lives:?} settings {settings:?} log {:?}",
        e.live_bytes(),
        e.live_messages(),
        e.dedup_entries(),
        (e.log().head(), e.log().segments()),
    )
}

/// The digest of a full replay of `disk`'s log (its checkpoint put aside).
fn full_replay(disk: &mut SimDisk) -> String {
    let checkpoint = disk.checkpoint.take();
    let (e, found) = Engine::open(disk, config(), 2_000_000).unwrap();
    assert_eq!(found.checkpoint, None);
    disk.checkpoint = checkpoint;
    digest(&e)
}

fn busy_engine() -> (Engine, SimDisk) {
    let mut disk = SimDisk::new(7);
    let (mut e, _) = Engine::open(&mut disk, config(), 0).unwrap();
    traffic(&mut e, &mut disk, 1..120);
    (e, disk)
}

/// Takes a checkpoint the way a shell must: written once it is durable.
fn checkpoint(e: &mut Engine, disk: &mut SimDisk) -> u64 {
    let (position, bytes) = e.checkpoint();
    flush_all(e, disk).unwrap();
    assert!(e.durable() >= position);
    disk.write_checkpoint(&bytes).unwrap();
    position
}

#[test]
fn row_11_a_checkpoint_inside_the_log_is_loaded_and_the_rest_replayed() {
    let (mut e, mut disk) = busy_engine();
    let position = checkpoint(&mut e, &mut disk);
    traffic(&mut e, &mut disk, 120..130); // after the checkpoint
    let live = digest(&e);
    let (r, found) = Engine::open(&mut disk, config(), 2_000_000).unwrap();
    assert_eq!(found.checkpoint, Some(position));
    assert!(
        found.records < 60,
        "only the log after the checkpoint is replayed: {} records",
        found.records
    );
    assert_eq!(
        digest(&r),
        full_replay(&mut disk),
        "same index as a full replay"
    );
    assert_eq!(digest(&r), live, "same index as before the restart");
    // And it keeps working: dedup answers, acks, the next seq.
    let mut r = r;
    let retry = NewMessage {
        message_id: 0,
        sender: ALICE,
        client_msg_id: 129,
        recipients: &[BOB_PHONE],
        ttl_ms: 0,
        payload: b"again",
        receipt: false,
        group: 0,
    };
    assert!(matches!(
        r.append_message(2_000_000, &retry),
        Ok(Accepted::Duplicate { .. })
    ));
}

#[test]
fn row_8_a_torn_checkpoint_is_ignored() {
    let (mut e, mut disk) = busy_engine();
    checkpoint(&mut e, &mut disk);
    let whole = disk.checkpoint.clone().unwrap();
    for torn in [&whole[..whole.len() / 2], &whole[..4], &[][..]] {
        disk.checkpoint = Some(torn.to_vec());
        let (r, found) = Engine::open(&mut disk, config(), 2_000_000).unwrap();
        assert_eq!(
            found.checkpoint,
            None,
            "{} bytes of {}",
            torn.len(),
            whole.len()
        );
        assert_eq!(digest(&r), full_replay(&mut disk));
    }
    let mut flipped = whole.clone();
    flipped[20] ^= 1;
    disk.checkpoint = Some(flipped);
    let (_, found) = Engine::open(&mut disk, config(), 2_000_000).unwrap();
    assert_eq!(found.checkpoint, None, "a flipped bit fails the checksum");
}

#[test]
fn row_9_a_checkpoint_whose_segment_was_reclaimed_is_stale() {
    let (mut e, mut disk) = busy_engine();
    let position = checkpoint(&mut e, &mut disk);
    // Acks make everything dead; reclaim deletes up to the active segment.
    for _ in 0..10 {
        traffic(&mut e, &mut disk, 200..260);
        for d in [BOB_PHONE, BOB_LAPTOP] {
            let end = e.queue_end(d);
            if e.queue_len(d).0 > 0 {
                e.ack(d, end, true).unwrap();
            }
        }
        flush_all(&mut e, &mut disk).unwrap();
        reclaim_all(&mut e, &mut disk).unwrap();
    }
    assert!(e.log().segments()[0] > position, "its segment is gone");
    let (r, found) = Engine::open(&mut disk, config(), 2_000_000).unwrap();
    assert_eq!(found.checkpoint, None);
    assert_eq!(digest(&r), full_replay(&mut disk));
}

#[test]
fn row_10_a_checkpoint_past_the_end_of_the_log_is_ignored() {
    let (mut e, mut disk) = busy_engine();
    // A checkpoint written before its position was durable (what a shell
    // must not do, or what a disk that lost synced bytes looks like).
    send(&mut e, 500, &[BOB_PHONE], 0);
    let (position, bytes) = e.checkpoint();
    assert!(e.durable() < position);
    disk.write_checkpoint(&bytes).unwrap();
    disk.crash(); // the unsynced message may be lost, or torn
    let (r, found) = Engine::open(&mut disk, config(), 2_000_000).unwrap();
    if r.log().head() < position {
        assert_eq!(found.checkpoint, None, "the log ends at {}", r.log().head());
    }
    assert_eq!(digest(&r), full_replay(&mut disk));
}

#[test]
fn row_7_no_checkpoint_is_a_full_replay() {
    let (e, mut disk) = busy_engine();
    let (r, found) = Engine::open(&mut disk, config(), 2_000_000).unwrap();
    assert_eq!(found.checkpoint, None);
    assert_eq!(digest(&r), digest(&e));
}
