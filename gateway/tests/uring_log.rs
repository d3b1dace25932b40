//! The gateway's log writer (`UringLog`: direct writes of whole blocks
//! into allocated segments) on the real disk, read back by the queue
//! engine's recovery: every record comes back, across segment rolls,
//! batches of every alignment and a writer restarted mid-block.

use glommio::{LocalExecutorBuilder, Placement};
use queue_engine::{DeviceRef, Engine, EngineConfig, FsStorage, LogConfig, NewMessage, Storage};

const SEGMENT: u64 = 64 << 10;

fn config() -> EngineConfig {
    EngineConfig {
        log: LogConfig {
            segment_bytes_max: SEGMENT,
            batch_bytes_max: 16 << 10,
        },
        queue_messages_max: usize::MAX,
        queue_bytes_max: u64::MAX,
        ..EngineConfig::default()
    }
}

/// Appends message `id` with a payload whose length varies with it, so
/// batches start and end at every offset within a block.
fn append(engine: &mut Engine, id: u64) {
    let payload = vec![u8::try_from(id % 251).unwrap(); usize::try_from(id * 37 % 900).unwrap()];
    let to = DeviceRef {
        user: 2 + id % 7,
        device: 0,
    };
    let message = NewMessage {
        message_id: id,
        sender: DeviceRef { user: 1, device: 0 },
        client_msg_id: id,
        recipients: &[to],
        ttl_ms: 0,
        payload: &payload,
        receipt: false,
        group: 0,
    };
    engine.append_message(0, &message).unwrap();
}

/// Appends messages `ids` in batches of `per_batch`, each batch written
/// through a `UringLog` that is replaced by a new one (no kept tail, as
/// after a restart) every `restart_every` batches.
fn write(dir: &std::path::Path, ids: std::ops::Range<u64>, per_batch: u64, restart_every: u64) {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let mut storage = FsStorage::open(&dir).unwrap();
            let (mut engine, _) = Engine::open(&mut storage, config(), 0).unwrap();
            let new_log = || gateway::uring_log::UringLog::new(dir.clone(), SEGMENT);
            let mut log = new_log();
            let ids: Vec<u64> = ids.collect();
            for (batch, chunk) in ids.chunks(usize::try_from(per_batch).unwrap()).enumerate() {
                if batch as u64 % restart_every == restart_every - 1 {
                    log = new_log();
                }
                chunk.iter().for_each(|id| append(&mut engine, *id));
                while let Some(flush) = engine.poll_flush().cloned() {
                    log.write_flush(&flush).await.unwrap();
                    engine.handle_flushed();
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn every_record_written_directly_is_recovered() {
    let dir = std::env::temp_dir().join(format!("uring-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir, 1..1500, 3, 5);
    // A second writer on the recovered log: its first batch starts inside
    // the block the first one left half full.
    write(&dir, 1500..2000, 1, 7);
    let mut storage = FsStorage::open(&dir).unwrap();
    let (engine, found) = Engine::open(&mut storage, config(), 0).unwrap();
    assert_eq!(found.truncated, None, "a clean log, no torn tail");
    assert_eq!(found.records, 1999, "every message, once");
    assert_eq!(engine.live_messages(), 1999);
    let segments = storage.segments().unwrap();
    assert!(segments.len() > 5, "the log rolled: {segments:?}");
    // Every segment was allocated to its full size when created.
    for start in &segments {
        let name = dir.join(queue_engine::segment_file_name(*start));
        assert_eq!(std::fs::metadata(name).unwrap().len(), SEGMENT);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
