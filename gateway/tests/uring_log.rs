//! The gateway's log writer (`UringLog`: direct writes of whole blocks
//! into allocated segments) on the real disk, read back by the queue
//! engine's recovery: every record comes back, across segment rolls,
//! batches of every alignment and a writer restarted mid-block. And
//! reclaim's reads (`read_for_reclaim`) into a reused buffer.

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

/// Reclaim reads segments into the buffer of the last one
/// (`read_for_reclaim`'s `space`): a smaller segment read after a larger
/// one comes back exactly as on disk, with nothing of the larger one's
/// bytes past its end, and with the same records.
#[test]
fn a_reused_reclaim_buffer_shows_only_the_segment_read() {
    let dir = std::env::temp_dir().join(format!("uring-log-reuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir, 1..400, 3, 5);
    let segments = FsStorage::open(&dir).unwrap().segments().unwrap();
    let (first, second) = (segments[0], segments[1]);
    // The first segment grew past its allocated size (as one that could
    // not be allocated does): two more blocks (zeros, read as its end).
    let path = |s: u64| dir.join(queue_engine::segment_file_name(s));
    let mut grown = std::fs::read(path(first)).unwrap();
    grown.extend_from_slice(&[0; 8192]);
    std::fs::write(path(first), &grown).unwrap();
    let on_disk = std::fs::read(path(second)).unwrap();
    let expected = queue_engine::reclaim_scan(second, &on_disk).unwrap();
    let (read, records) = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            use gateway::uring_log::read_for_reclaim;
            let (bytes, _) = read_for_reclaim(dir.clone(), first, Vec::new())
                .await
                .unwrap();
            let space = bytes.into_space();
            let (bytes, records) = read_for_reclaim(dir.clone(), second, space).await.unwrap();
            let read = bytes.to_vec();
            std::fs::remove_dir_all(&dir).unwrap();
            (read, records)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(read.len(), on_disk.len(), "the second segment's length");
    assert!(read == on_disk, "the second segment's bytes, nothing else");
    assert_eq!(records, expected);
    assert!(!records.is_empty());
}

/// Which byte ranges of `path` the filesystem reports as unwritten extents
/// (allocated, never written: `FS_IOC_FIEMAP`), or `None` if it reports no
/// extents at all (tmpfs, say).
#[allow(unsafe_code)]
fn unwritten_extents(path: &std::path::Path) -> Option<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS: u32 = 64;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; EXTENTS as usize],
    }
    let file = std::fs::File::open(path).unwrap();
    let mut map = Fiemap {
        start: 0,
        length: u64::MAX,
        flags: FIEMAP_FLAG_SYNC,
        mapped_extents: 0,
        extent_count: EXTENTS,
        reserved: 0,
        extents: [Extent::default(); EXTENTS as usize],
    };
    // SAFETY: FS_IOC_FIEMAP reads and fills `map`, whose layout is the
    // kernel's `struct fiemap` followed by room for `extent_count` extents.
    let done = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &raw mut map) };
    if done != 0 || map.mapped_extents == 0 {
        return None;
    }
    let mapped = &map.extents[..map.mapped_extents as usize];
    Some(
        mapped
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
            .map(|e| (e.logical, e.length))
            .collect(),
    )
}

/// A segment made after the first is the spare renamed: every block of
/// it already written (zeros), so the log's first write into each is not
/// held up converting an unwritten extent (a journal commit per write).
/// Recovery reads it as before, the spare file beside the segments.
#[test]
fn new_segments_come_written_from_the_spare() {
    // Under the target directory: on the disk, where tmpfs reports no extents.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("uring-log-spare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let written = dir.clone();
    let (appended, first) = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let dir = written;
            let mut storage = FsStorage::open(&dir).unwrap();
            let (mut engine, _) = Engine::open(&mut storage, config(), 0).unwrap();
            let mut log = gateway::uring_log::UringLog::new(dir.clone(), SEGMENT);
            let (mut id, mut segments, mut first) = (1, Vec::new(), None);
            // Into the third segment, a little.
            while segments.len() < 3 || id % 20 != 0 {
                append(&mut engine, id);
                id += 1;
                while let Some(flush) = engine.poll_flush().cloned() {
                    if flush.create {
                        segments.push(flush.segment);
                        // The first segment is allocated on the spot; the
                        // next ones wait until a spare is ready.
                        let started = std::time::Instant::now();
                        while segments.len() > 1 && !log.spare_ready() {
                            assert!(started.elapsed().as_secs() < 30, "no spare made");
                            futures_lite::future::yield_now().await;
                        }
                    }
                    log.write_flush(&flush).await.unwrap();
                    engine.handle_flushed();
                    if first.is_none() {
                        let path = dir.join(queue_engine::segment_file_name(segments[0]));
                        first = Some(unwritten_extents(&path));
                    }
                }
            }
            (id - 1, first.unwrap())
        })
        .unwrap()
        .join()
        .unwrap();
    let segments = FsStorage::open(&dir).unwrap().segments().unwrap();
    assert_eq!(segments.len(), 3, "{segments:?}");
    let last = dir.join(queue_engine::segment_file_name(segments[2]));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), SEGMENT);
    match first {
        None => eprintln!("this filesystem reports no extents: the blocks' state is not checked"),
        Some(first) => {
            // The check can fail: after its first write, the segment made
            // on the spot was mostly unwritten blocks.
            assert!(!first.is_empty(), "the first segment, only allocated");
            let unwritten = unwritten_extents(&last).unwrap();
            assert_eq!(
                unwritten,
                vec![],
                "the last segment, from the spare: every block written"
            );
        }
    }
    let mut storage = FsStorage::open(&dir).unwrap();
    let (_, found) = Engine::open(&mut storage, config(), 0).unwrap();
    assert_eq!(found.truncated, None, "a clean log, no torn tail");
    assert_eq!(found.records, appended, "every message, once");
    std::fs::remove_dir_all(&dir).unwrap();
}
