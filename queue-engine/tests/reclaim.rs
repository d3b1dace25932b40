//! Reclaim: space stays within twice the live bytes plus one segment under
//! churn, a device that never acks does not pin old segments, a crash
//! between copying and deleting loses nothing, and seqs never go back.

use queue_engine::*;

const OFFLINE: DeviceRef = DeviceRef {
    user: 99,
    device: 0,
};
const SENDER: DeviceRef = DeviceRef { user: 1, device: 0 };

fn config() -> EngineConfig {
    EngineConfig {
        log: LogConfig {
            segment_bytes_max: 16 * 1024,
            batch_bytes_max: 4096,
        },
        queue_messages_max: 100_000,
        queue_bytes_max: 1 << 30,
        ..EngineConfig::default()
    }
}

fn send(e: &mut Engine, id: u64, to: DeviceRef) -> u64 {
    let payload = [id.to_le_bytes()[0]; 150];
    let m = NewMessage {
        message_id: id,
        sender: SENDER,
        client_msg_id: id,
        recipients: &[to],
        ttl_ms: 0,
        payload: &payload,
        receipt: false,
        group: 0,
    };
    match e.append_message(0, &m).unwrap() {
        Accepted::Stored { seqs, .. } => seqs[0].1,
        other => panic!("{other:?}"),
    }
}

fn seqs(e: &Engine, device: DeviceRef) -> Vec<u64> {
    e.backlog(device, 0).map(|(seq, _)| seq).collect()
}

#[test]
fn churn_stays_within_twice_the_live_bytes_plus_one_segment() {
    let mut disk = SimDisk::new(1);
    let (mut e, _) = Engine::open(&mut disk, config(), 0).unwrap();
    let devices: Vec<DeviceRef> = (10..30).map(|user| DeviceRef { user, device: 0 }).collect();
    let (mut worst, mut reclaimed, mut offline_sent) = (0.0f64, 0, Vec::new());
    for id in 1..=20_000u64 {
        if id % 50 == 0 {
            offline_sent.push(send(&mut e, id, OFFLINE));
        } else {
            let device = devices[(id % 20) as usize];
            let seq = send(&mut e, id, device);
            if seq > 5 {
                e.ack(device, seq - 5, true).unwrap(); // acks trail by five
            }
        }
        flush_all(&mut e, &mut disk).unwrap();
        reclaimed += reclaim_all(&mut e, &mut disk).unwrap().len();
        let bound = 2 * e.live_bytes() + config().log.segment_bytes_max;
        assert!(
            e.log_bytes() <= bound,
            "message {id}: {} > {bound}",
            e.log_bytes()
        );
        worst = worst.max(e.log_bytes() as f64 / bound as f64);
    }
    eprintln!(
        "churn: {reclaimed} segments reclaimed, worst log/bound {worst:.2}, log {} B, live {} B",
        e.log_bytes(),
        e.live_bytes()
    );
    assert!(reclaimed > 50, "segments were reclaimed: {reclaimed}");
    assert!(e.log().segments()[0] > 0, "the first segments are gone");
    assert_eq!(
        seqs(&e, OFFLINE),
        offline_sent,
        "the offline device's backlog is intact"
    );
    let (reopened, _) = Engine::open(&mut disk, config(), 0).unwrap();
    assert_eq!(
        seqs(&reopened, OFFLINE),
        offline_sent,
        "and survives a restart"
    );
    for device in &devices {
        assert_eq!(seqs(&reopened, *device), seqs(&e, *device));
    }
}

/// An engine with 300 messages queued for the offline device.
fn backlog_of_300(seed: u64) -> (Engine, SimDisk) {
    let mut disk = SimDisk::new(seed);
    let (mut e, _) = Engine::open(&mut disk, config(), 0).unwrap();
    for id in 1..=300 {
        send(&mut e, id, OFFLINE);
    }
    (e, disk)
}

#[test]
fn a_crash_between_copying_and_deleting_loses_nothing() {
    let (mut e, mut disk) = backlog_of_300(2);
    flush_all(&mut e, &mut disk).unwrap();
    let before = seqs(&e, OFFLINE);
    let oldest = e.log().segments()[0];
    let bytes = disk.read(oldest).unwrap();
    e.reclaim(oldest, &bytes).unwrap();
    // The copies are in the log but not flushed; the power goes.
    disk.crash();
    let (reopened, _) = Engine::open(&mut disk, config(), 0).unwrap();
    assert_eq!(seqs(&reopened, OFFLINE), before);
}

#[test]
fn a_crash_after_the_copies_are_durable_but_before_the_delete_replays_both_once() {
    let (mut e, mut disk) = backlog_of_300(4);
    e.ack(OFFLINE, 10, true).unwrap();
    flush_all(&mut e, &mut disk).unwrap();
    let (before, live) = (seqs(&e, OFFLINE), e.live_messages());
    let oldest = e.log().segments()[0];
    let bytes = disk.read(oldest).unwrap();
    e.reclaim(oldest, &bytes).unwrap();
    flush_all(&mut e, &mut disk).unwrap(); // copies durable, original still there
    let (reopened, _) = Engine::open(&mut disk, config(), 0).unwrap();
    assert_eq!(
        seqs(&reopened, OFFLINE),
        before,
        "each entry once, in order"
    );
    assert_eq!(
        reopened.live_messages(),
        live,
        "originals released by their copies"
    );
}

#[test]
fn seqs_continue_after_their_tombstones_are_reclaimed() {
    let mut disk = SimDisk::new(3);
    let (mut e, _) = Engine::open(&mut disk, config(), 0).unwrap();
    let device = DeviceRef { user: 5, device: 0 };
    let mut last = 0;
    for id in 1..=400 {
        last = send(&mut e, id, device);
        e.ack(device, last, true).unwrap();
        flush_all(&mut e, &mut disk).unwrap();
        reclaim_all(&mut e, &mut disk).unwrap();
    }
    assert!(
        e.log().segments()[0] > 0,
        "the segments with the acks are gone"
    );
    let (mut reopened, _) = Engine::open(&mut disk, config(), 0).unwrap();
    assert_eq!(
        send(&mut reopened, 1_000, device),
        last + 1,
        "no seq is reused"
    );
}

/// A crash between copying a group record forward and deleting its old
/// segment leaves two copies; the stale one is not copied again, so group
/// records never multiply however often that happens.
#[test]
fn group_records_are_copied_once_whatever_the_crashes() {
    let mut disk = SimDisk::new(3);
    let (mut e, _) = Engine::open(&mut disk, config(), 0).unwrap();
    e.append_group_record(b"group 1 created");
    let mut id = 0;
    for round in 0..30 {
        // Fill and ack a segment's worth so the oldest becomes reclaimable.
        for _ in 0..120 {
            id += 1;
            let seq = send(&mut e, id, SENDER);
            e.ack(SENDER, seq, true).unwrap();
        }
        flush_all(&mut e, &mut disk).unwrap();
        if let Some(segment) = e.reclaim_due() {
            let bytes = disk.read(segment).unwrap();
            e.reclaim(segment, &bytes).unwrap();
            flush_all(&mut e, &mut disk).unwrap();
            if round % 2 == 0 {
                // The copies are durable; the process dies before the delete.
                disk.crash();
                e = Engine::open(&mut disk, config(), 0).unwrap().0;
            } else {
                disk.remove(segment).unwrap();
                e.segment_deleted(segment);
            }
        }
    }
    while let Some(segment) = e.reclaim_due() {
        let bytes = disk.read(segment).unwrap();
        e.reclaim(segment, &bytes).unwrap();
        flush_all(&mut e, &mut disk).unwrap();
        disk.remove(segment).unwrap();
        e.segment_deleted(segment);
    }
    let mut copies = 0;
    for segment in e.log().segments().to_vec() {
        let bytes = disk.read(segment).unwrap();
        let mut at = 0;
        while let Ok((record, n)) = record::decode(&bytes[at..]) {
            copies += usize::from(matches!(record, record::Record::Group { .. }));
            at += n;
        }
    }
    assert_eq!(e.group_records().count(), 1);
    assert!(
        copies <= 2,
        "{copies} copies of one group record in the log"
    );
    assert!(e.log_bytes() <= 2 * e.live_bytes() + 2 * (16 << 10));
}

/// An entry whose record reclaim copied forward is not durable again until
/// the copy is: the backlog stops there rather than skip to a later seq
/// (which a cumulative ack would then take past the skipped one).
#[test]
fn the_backlog_waits_for_a_moved_entry_and_never_skips_it() {
    let mut disk = SimDisk::new(5);
    let (mut e, _) = Engine::open(&mut disk, config(), 0).unwrap();
    let first = send(&mut e, 1, OFFLINE);
    let mut id = 1;
    while e.log().segments().len() < 3 {
        id += 1;
        let seq = send(&mut e, id, SENDER);
        e.ack(SENDER, seq, true).unwrap();
    }
    let second = send(&mut e, id + 1, OFFLINE);
    flush_all(&mut e, &mut disk).unwrap();
    let segment = e.reclaim_due().expect("the first segment is mostly dead");
    let bytes = disk.read(segment).unwrap();
    e.reclaim(segment, &bytes).unwrap();
    // The copy of `first` is not durable yet; `second` is.
    let visible: Vec<u64> = e.backlog(OFFLINE, 0).map(|(seq, _)| seq).collect();
    assert_eq!(
        visible,
        Vec::<u64>::new(),
        "seq {second} must not overtake {first}"
    );
    flush_all(&mut e, &mut disk).unwrap();
    assert_eq!(seqs(&e, OFFLINE), [first, second]);
}

/// Settings (kind 10) live as long as they are the latest of their key:
/// reclaim copies the latest forward once and drops the superseded, and a
/// restart reads back exactly the latest values.
#[test]
fn settings_keep_their_latest_value_through_reclaim_and_restart() {
    let mut disk = SimDisk::new(5);
    let (mut e, _) = Engine::open(&mut disk, config(), 0).unwrap();
    let key = |user, name| SettingKey {
        user,
        device: SettingKey::USER,
        name,
    };
    for round in 0..2_000u64 {
        // Two keys rewritten often, one written once at the start.
        e.set_setting(key(1, 1), &round.to_le_bytes());
        e.set_setting(key(2, 3), &[round.to_le_bytes()[0]; 100]);
        if round == 0 {
            e.set_setting(key(3, 2), b"once");
        }
        flush_all(&mut e, &mut disk).unwrap();
    }
    reclaim_all(&mut e, &mut disk).unwrap();
    assert!(
        e.log_bytes() <= 2 * e.live_bytes() + 2 * 16 * 1024,
        "superseded settings are dead bytes: log {} live {}",
        e.log_bytes(),
        e.live_bytes()
    );
    let before: Vec<(SettingKey, Vec<u8>)> = {
        let mut s: Vec<_> = e.settings().map(|(k, v)| (k, v.to_vec())).collect();
        s.sort();
        s
    };
    assert_eq!(before.len(), 3);
    assert_eq!(e.setting(key(1, 1)), Some(&1_999u64.to_le_bytes()[..]));
    assert_eq!(e.setting(key(3, 2)), Some(&b"once"[..]), "copied forward");
    let (r, _) = Engine::open(&mut disk, config(), 0).unwrap();
    let mut after: Vec<_> = r.settings().map(|(k, v)| (k, v.to_vec())).collect();
    after.sort();
    assert_eq!(after, before);
    assert_eq!(r.live_bytes(), e.live_bytes(), "each counted once");
}
