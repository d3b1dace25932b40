//! The log's disk path on this machine, side by side in one run:
//! a 4 KiB append + fdatasync with buffered writes (`std::fs`, what
//! `FsStorage` does), the same over pre-written blocks (segment recycling),
//! the same with glommio's `DmaFile` (O_DIRECT on io_uring), and durable
//! messages per second through the engine's group commit on real files:
//! on the calling thread, on glommio's blocking pool, buffered on io_uring
//! (the gateway before) and direct on io_uring (`UringLog`, the gateway).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glommio::io::DmaFile;
use glommio::{LocalExecutorBuilder, Placement};
use queue_engine::{DeviceRef, Engine, EngineConfig, FsStorage, NewMessage, flush_all};

const BLOCK: usize = 4096;
/// Blocks per measured file: appends grow it to 16 MiB, then start over.
const BLOCKS: u64 = 4096;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-log-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `path` created or emptied, open for reading and writing.
fn empty_file(path: &std::path::Path) -> std::fs::File {
    let mut options = OpenOptions::new();
    options.create(true).truncate(true).read(true).write(true);
    options.open(path).unwrap()
}

fn buffered(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_io");
    group.throughput(Throughput::Bytes(BLOCK as u64));
    let block = vec![0x5Au8; BLOCK];
    let path = scratch("append.log");
    group.bench_function("buffered_append_4KiB_fdatasync", |b| {
        let mut file = empty_file(&path);
        let mut at = 0;
        b.iter(|| {
            if at == BLOCKS {
                file = empty_file(&path);
                at = 0;
            }
            file.write_all_at(&block, at * BLOCK as u64).unwrap();
            file.sync_data().unwrap();
            at += 1;
        })
    });
    let path = scratch("prewritten.log");
    let file = empty_file(&path);
    for i in 0..BLOCKS {
        file.write_all_at(&block, i * BLOCK as u64).unwrap();
    }
    file.sync_all().unwrap();
    group.bench_function("buffered_overwrite_4KiB_fdatasync", |b| {
        let mut at = 0;
        b.iter(|| {
            file.write_all_at(&block, (at % BLOCKS) * BLOCK as u64)
                .unwrap();
            file.sync_data().unwrap();
            at += 1;
        })
    });
    group.finish();
}

fn direct(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_io");
    group.throughput(Throughput::Bytes(BLOCK as u64));
    let path = scratch("dma.log");
    group.bench_function("dma_append_4KiB_fdatasync", |b| {
        b.iter_custom(|iters| {
            let path = path.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    let _ = std::fs::remove_file(&path);
                    let file = DmaFile::create(&path).await.unwrap();
                    let start = Instant::now();
                    for i in 0..iters {
                        let mut buf = file.alloc_dma_buffer(BLOCK);
                        buf.as_bytes_mut().fill(0x5A);
                        file.write_at(buf, (i % BLOCKS) * BLOCK as u64)
                            .await
                            .unwrap();
                        file.fdatasync().await.unwrap();
                    }
                    let elapsed = start.elapsed();
                    file.close().await.unwrap();
                    elapsed
                })
                .unwrap()
                .join()
                .unwrap()
        })
    });
    group.finish();
}

/// An engine on a fresh `FsStorage` in `dir`, with no queue limits.
fn fresh_engine(dir: &std::path::Path) -> (Engine, FsStorage) {
    let _ = std::fs::remove_dir_all(dir);
    let mut storage = FsStorage::open(dir).unwrap();
    let config = EngineConfig {
        queue_messages_max: usize::MAX,
        queue_bytes_max: u64::MAX,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::open(&mut storage, config, 0).unwrap();
    (engine, storage)
}

/// Appends `per_batch` 100-byte messages (ids after `*id`).
fn append_batch(engine: &mut Engine, id: &mut u64, per_batch: u64) {
    let payload = [0x5Au8; 100];
    for _ in 0..per_batch {
        *id += 1;
        let to = DeviceRef {
            user: *id % 1000,
            device: 0,
        };
        let m = NewMessage {
            message_id: *id,
            sender: DeviceRef { user: 1, device: 0 },
            client_msg_id: *id,
            recipients: &[to],
            ttl_ms: 0,
            payload: &payload,
            receipt: false,
            group: 0,
        };
        engine.append_message(0, &m).unwrap();
    }
}

/// How a glommio shard performs its group commits.
#[derive(Clone, Copy)]
enum Commit {
    /// `write_flush` on glommio's blocking thread pool (the gateway before
    /// issue #14).
    BlockingPool,
    /// One buffered `O_DSYNC` write per commit on the executor's io_uring
    /// (the gateway before its direct writes; io_uring hands each to a
    /// worker thread).
    UringBuffered,
    /// `UringLog`: one direct `O_DSYNC` write per commit into an allocated
    /// segment, on the executor's io_uring (the gateway now).
    Uring,
}

/// The gateway's group commit before direct writes: a buffered `O_DSYNC`
/// file per segment, each batch one io_uring write at its offset.
async fn write_buffered(
    files: &mut std::collections::BTreeMap<u64, glommio::io::BufferedFile>,
    dir: &std::path::Path,
    flush: &queue_engine::Flush,
) {
    if let std::collections::btree_map::Entry::Vacant(slot) = files.entry(flush.segment) {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_DSYNC)
            .buffered_open(dir.join(queue_engine::segment_file_name(flush.segment)))
            .await
            .unwrap();
        slot.insert(file);
    }
    let want = flush.bytes.len();
    let wrote = files[&flush.segment]
        .write_at(flush.bytes.clone(), flush.offset)
        .await
        .unwrap();
    assert_eq!(wrote, want);
}

/// Time for `iters` group commits of `per_batch` messages each, made the
/// way `commit` says from inside a glommio executor.
fn commit_in_executor(dir: PathBuf, per_batch: u64, iters: u64, commit: Commit) -> Duration {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let (mut engine, storage) = fresh_engine(&dir);
            let mut storage = Some(storage);
            let segment_bytes = queue_engine::LogConfig::default().segment_bytes_max;
            let mut log = gateway::uring_log::UringLog::new(dir.clone(), segment_bytes);
            let mut buffered = std::collections::BTreeMap::new();
            let mut id = 0;
            let start = Instant::now();
            for _ in 0..iters {
                append_batch(&mut engine, &mut id, per_batch);
                while let Some(flush) = engine.poll_flush().cloned() {
                    match commit {
                        Commit::Uring => log.write_flush(&flush).await.unwrap(),
                        Commit::UringBuffered => write_buffered(&mut buffered, &dir, &flush).await,
                        Commit::BlockingPool => {
                            let mut s = storage.take().unwrap();
                            let (s, result) = glommio::executor()
                                .spawn_blocking(move || {
                                    let result = queue_engine::write_flush(&mut s, &flush);
                                    (s, result)
                                })
                                .await;
                            result.unwrap();
                            storage = Some(s);
                        }
                    }
                    engine.handle_flushed();
                }
            }
            let elapsed = start.elapsed();
            let _ = std::fs::remove_dir_all(&dir);
            elapsed
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Durable 100-byte messages per second when `per_batch` arrive per group
/// commit: on the calling thread (`FsStorage`), and from a glommio shard
/// through the blocking pool and through io_uring.
fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_io");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for per_batch in [1u64, 32, 512] {
        group.throughput(Throughput::Elements(per_batch));
        group.bench_function(format!("group_commit_{per_batch}_msgs_of_100B"), |b| {
            let dir = scratch(&format!("engine-{per_batch}"));
            let (mut engine, mut storage) = fresh_engine(&dir);
            let mut id = 0u64;
            b.iter(|| {
                append_batch(&mut engine, &mut id, per_batch);
                flush_all(&mut engine, &mut storage).unwrap();
            });
            drop(engine);
            let _ = std::fs::remove_dir_all(&dir);
        });
        for (name, commit) in [
            ("blocking_pool", Commit::BlockingPool),
            ("uring_buffered", Commit::UringBuffered),
            ("uring", Commit::Uring),
        ] {
            let id = format!("group_commit_{name}_{per_batch}_msgs_of_100B");
            group.bench_function(id, |b| {
                let dir = scratch(&format!("engine-{name}-{per_batch}"));
                b.iter_custom(|iters| commit_in_executor(dir.clone(), per_batch, iters, commit));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, buffered, direct, group_commit);
criterion_main!(benches);
