//! The group commit's disk writes on io_uring: each batch from
//! [`queue_engine::Engine::poll_flush`] is one write through the shard's
//! own executor, on a segment file opened `O_DIRECT | O_DSYNC` (glommio's
//! `DmaFile`), so the write completes only once its data is durable, in
//! one io_uring operation, without the page cache.
//!
//! Why direct: a buffered `O_DSYNC` append cannot be issued without
//! blocking, so io_uring hands every one to a worker thread (on the
//! shard's own core), and each append that grows the file also writes the
//! inode. A direct write inside the file's allocated size is issued inline
//! and leaves the size alone. So every new segment is allocated to its full
//! size before it is used. If that fails (no space for a whole segment, a
//! file-size limit), the segment is still used and grows as it is written,
//! more slowly.
//!
//! Why `O_DSYNC` and not a plain direct write with an `fdatasync` linked
//! behind it in one io_uring chain: here the disk has a volatile cache and
//! no FUA, so either way a write is data, then a cache flush. With
//! `O_DSYNC` the kernel issues the flush from the write's completion, on a
//! worker of the core the disk's interrupt lands on (which waits whenever
//! something else holds that core: see `benchmarks/stalls.sh`); a linked
//! `fdatasync` runs on an io_uring worker thread instead, one more thread
//! to wake. Measured (interleaved, 10,000 msgs/s open loop): the chain
//! took a write from 0.29–0.31 ms to 0.41–0.46 ms on average, the p50
//! from 0.75–0.85 ms to 1.0–1.2 ms and the gateway's CPU from 71 to
//! 79–82 µs per message; only the worst run's p99 was better.
//!
//! Allocated is not enough: `fallocate`'s blocks are *unwritten* extents,
//! and the first write into each makes ext4 (XFS alike) convert it, a
//! metadata change that an `O_DSYNC` write must wait to be journaled.
//! Measured here, a 4 KiB direct `O_DSYNC` write into unwritten blocks took
//! 0.22–0.24 ms at the median with outliers of 27–36 ms (behind a journal
//! commit), against 0.16 ms and at most 3–4 ms into written ones. So the
//! next segment is made ahead, in the background, as a *spare*
//! ([`SPARE_FILE`]): allocated, every block written with zeros, synced.
//! A new segment is the spare renamed (then a fresh spare is begun); only
//! if none is ready yet is a segment allocated on the spot. Zeros are what
//! recovery reads as a segment's end, so a spare-made segment reads as an
//! allocated one did. The spare costs one segment of disk per shard.
//!
//! Direct I/O writes whole aligned blocks ([`queue_engine::WRITE_BLOCK`]):
//! a batch is written from the start of the block it begins in, that
//! block's earlier bytes (kept from the last write, or read back after a
//! restart) rewritten unchanged in front of it, and padded with zeros to
//! the end of its last block. Recovery reads zeros after a segment's last
//! record as its end (`queue_engine::recovery`). A segment that grows past
//! its allocated size, or was cut by recovery, still works: the kernel
//! then extends the file, more slowly.
//!
//! Sealed segments' files are closed once the next one is created (so a
//! reclaimed segment's space is freed when it is deleted). The layout is
//! `FsStorage`'s (`queue_engine`), which recovery and the backlog reads
//! use.
//!
//! Reclaim's disk work is here too, on the executor's blocking pool so the
//! event loop never waits for it: [`read_for_reclaim`] reads a sealed
//! segment (directly, a megabyte at a time, so the log's writes never wait
//! behind a long read) and verifies its records, [`delete_segment`] unlinks it and
//! makes the directory durable.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::{Directory, DmaFile, OpenOptions};
use queue_engine::{Flush, WRITE_BLOCK};
use tracing::warn;

/// [`WRITE_BLOCK`] as a length.
const BLOCK: usize = 4096;
/// The file a shard's next segment is made in, ahead of need. Not a
/// segment's name (those end in `.log`): recovery never reads it, and a
/// spare left by a stop is made again.
pub const SPARE_FILE: &str = "next-segment.spare";
/// Zeros written per write while a spare is made: small enough that a log
/// write queued behind one waits little.
const SPARE_WRITE: usize = 256 << 10;
const _: () = assert!(BLOCK as u64 == WRITE_BLOCK);

/// A shard's log directory, written on io_uring.
pub struct UringLog {
    dir: PathBuf,
    /// Bytes a new segment is allocated to.
    segment_bytes: u64,
    files: BTreeMap<u64, DmaFile>,
    /// The last partial block written, rewritten in front of the next batch.
    tail: Option<Tail>,
    /// The next segment, made by a task of its own.
    spare: Rc<RefCell<Spare>>,
}

thread_local! {
    /// The spare of each log directory this thread writes, shared by every
    /// [`UringLog`] on it (a shard makes one; a test may make several in
    /// turn): two never make a spare at the same path at once, and a log
    /// made anew takes up the spare its predecessor began.
    static SPARES: RefCell<BTreeMap<PathBuf, Rc<RefCell<Spare>>>> =
        const { RefCell::new(BTreeMap::new()) };
}

/// Where the spare segment stands.
#[derive(Default)]
enum Spare {
    /// None is being made.
    #[default]
    Absent,
    /// The last attempt failed (a full disk, say): tried again at the next
    /// segment, not at every batch.
    Failed,
    Making,
    /// Allocated, written with zeros and synced: ready to be renamed.
    Ready(DmaFile),
}

/// The bytes of the log's last partial block, as written.
struct Tail {
    segment: u64,
    /// Offset in the segment just past the last byte written.
    end: u64,
    bytes: Vec<u8>,
}

/// Where a batch goes: what [`UringLog::prepare`] needs of a [`Flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    segment: u64,
    create: bool,
    offset: u64,
}

impl Place {
    /// The place of `flush`.
    pub fn of(flush: &Flush) -> Self {
        Self {
            segment: flush.segment,
            create: flush.create,
            offset: flush.offset,
        }
    }
}

/// A batch in its aligned buffer, ready for [`UringLog::write_staged`].
pub struct Staged {
    buf: glommio::io::DmaBuffer,
    /// Where the buffer goes in its segment (a block boundary).
    start: u64,
    padded: usize,
    /// The log's last partial block once it is written.
    tail: Tail,
}

impl UringLog {
    /// The log in `dir` (which recovery opened already), whose new segments
    /// are allocated to `segment_bytes` (rounded up to whole blocks).
    pub fn new(dir: PathBuf, segment_bytes: u64) -> Self {
        let spare =
            SPARES.with(|spares| spares.borrow_mut().entry(dir.clone()).or_default().clone());
        Self {
            dir,
            segment_bytes: segment_bytes.div_ceil(WRITE_BLOCK).max(1) * WRITE_BLOCK,
            files: BTreeMap::new(),
            tail: None,
            spare,
        }
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(queue_engine::segment_file_name(segment))
    }

    /// Whether a spare segment is ready (tests wait on it).
    pub fn spare_ready(&self) -> bool {
        matches!(*self.spare.borrow(), Spare::Ready(_))
    }

    /// Begins making a spare segment on a task of its own, unless one is
    /// ready or being made (or the last attempt failed: then at the next
    /// segment). Called at the first write if not before; a shard calls it
    /// as it starts, so that its first new segment can be the spare too.
    pub fn make_spare(&self) {
        if !matches!(*self.spare.borrow(), Spare::Absent) {
            return;
        }
        *self.spare.borrow_mut() = Spare::Making;
        let (spare, path, bytes) = (
            self.spare.clone(),
            self.dir.join(SPARE_FILE),
            self.segment_bytes,
        );
        glommio::spawn_local(async move {
            let made = make_spare(&path, bytes).await;
            *spare.borrow_mut() = match made {
                Ok(file) => Spare::Ready(file),
                Err(e) => {
                    warn!("spare log segment not made ({e}); the next is allocated when needed");
                    let _ = glommio::io::remove(&path).await; // its space back, if it took some
                    Spare::Failed
                }
            };
        })
        .detach();
    }

    /// The spare segment, if one is ready.
    fn take_spare(&self) -> Option<DmaFile> {
        let mut spare = self.spare.borrow_mut();
        match std::mem::replace(&mut *spare, Spare::Absent) {
            Spare::Ready(file) => Some(file),
            other => {
                *spare = other;
                None
            }
        }
    }

    /// Performs one batch: creates its segment if new and writes it,
    /// durably. Report success with `Engine::handle_flushed`. The three
    /// steps, for a caller that cannot hold `flush` across an await:
    /// [`UringLog::prepare`], [`UringLog::stage`], [`UringLog::write_staged`].
    pub async fn write_flush(&mut self, flush: &Flush) -> io::Result<()> {
        self.prepare(Place::of(flush)).await?;
        let staged = self.stage(flush);
        self.write_staged(staged).await
    }

    /// Gets a batch's segment ready: created if new, opened, and the bytes
    /// its first block already holds at hand (read back after a restart).
    pub async fn prepare(&mut self, place: Place) -> io::Result<()> {
        self.make_spare();
        if place.create {
            self.create(place.segment).await?;
        }
        self.open(place.segment).await?;
        let start = place.offset / WRITE_BLOCK * WRITE_BLOCK;
        let prefix = self.prefix(place.segment, start, place.offset).await?;
        self.tail = Some(Tail {
            segment: place.segment,
            end: place.offset,
            bytes: prefix,
        });
        Ok(())
    }

    /// Copies `flush` (whose place was [`UringLog::prepare`]d) into an
    /// aligned buffer, whole blocks: no await, so a caller may lend the
    /// batch for just this call.
    ///
    /// # Panics
    /// If the place of `flush` was not prepared last.
    pub fn stage(&mut self, flush: &Flush) -> Staged {
        let mut prefix = match self.tail.take() {
            Some(t) if t.segment == flush.segment && t.end == flush.offset => t.bytes,
            _ => panic!(
                "stage without prepare for segment {} offset {}",
                flush.segment, flush.offset
            ),
        };
        let start = flush.offset / WRITE_BLOCK * WRITE_BLOCK;
        let file = &self.files[&flush.segment];
        let len = prefix.len() + flush.bytes.len();
        let padded = len.next_multiple_of(BLOCK);
        let mut buf = file.alloc_dma_buffer(padded);
        let bytes = buf.as_bytes_mut();
        bytes[..prefix.len()].copy_from_slice(&prefix);
        bytes[prefix.len()..len].copy_from_slice(&flush.bytes);
        bytes[len..].fill(0);
        // What the next batch rewrites: this one's last partial block.
        prefix.clear();
        prefix.extend_from_slice(&bytes[len / BLOCK * BLOCK..len]);
        Staged {
            buf,
            start,
            padded,
            tail: Tail {
                segment: flush.segment,
                end: flush.end() - flush.segment,
                bytes: prefix,
            },
        }
    }

    /// Writes a staged batch, durably (the file is `O_DSYNC`).
    pub async fn write_staged(&mut self, staged: Staged) -> io::Result<()> {
        let Staged {
            buf,
            start,
            padded,
            tail,
        } = staged;
        let wrote = self.files[&tail.segment].write_at(buf, start).await?;
        if wrote != padded {
            // The kernel writes a regular file short only when it cannot
            // write the rest (no space, file size limit): fail-stop, as
            // for the error the next write would return.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short log write: {wrote} of {padded} bytes (disk full?)"),
            ));
        }
        self.tail = Some(tail);
        Ok(())
    }

    /// The bytes of `segment` from `start` (a block boundary) to `offset`,
    /// where a batch begins: kept from the last write, or read back (the
    /// first write after a restart).
    async fn prefix(&mut self, segment: u64, start: u64, offset: u64) -> io::Result<Vec<u8>> {
        let before = usize::try_from(offset - start).expect("within a block");
        let prefix = match self.tail.take() {
            Some(t) if t.segment == segment && t.end == offset => t.bytes,
            _ if before == 0 => Vec::new(),
            _ => self.files[&segment].read_at(start, before).await?.to_vec(),
        };
        if prefix.len() != before {
            return Err(io::Error::other(format!(
                "log segment {segment} is shorter than the offset {offset} it is written at"
            )));
        }
        Ok(prefix)
    }

    /// Creates segment `segment` (the spare renamed, or failing that a new
    /// file allocated on the spot), makes its name durable, and closes the
    /// sealed segments.
    async fn create(&mut self, segment: u64) -> io::Result<()> {
        // Sealed segments are never written again.
        for (_, sealed) in std::mem::take(&mut self.files) {
            sealed.close().await?;
        }
        let file = match self.take_spare() {
            Some(file) => {
                file.rename(self.path(segment)).await?;
                file
            }
            None => self.allocate(segment).await?,
        };
        self.files.insert(segment, file);
        Directory::open(&self.dir).await?.sync().await?;
        if matches!(*self.spare.borrow(), Spare::Failed) {
            *self.spare.borrow_mut() = Spare::Absent;
        }
        self.make_spare();
        Ok(())
    }

    /// Creates segment `segment` (failing if it exists) and allocates it:
    /// unwritten blocks, slower to write first than a spare's.
    async fn allocate(&self, segment: u64) -> io::Result<DmaFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(self.path(segment))
            .await?;
        match file.pre_allocate(self.segment_bytes, false).await {
            // The size and the allocation made durable before any write
            // relies on them: a write inside the size does not change it,
            // so nothing else would sync it.
            Ok(()) => file.fdatasync().await?,
            // Still correct, only slower: the file grows as written.
            Err(e) => warn!(
                segment,
                "log segment not allocated ({e}); it grows as it is written"
            ),
        }
        Ok(file)
    }

    /// Opens segment `segment` for direct writes, if it is not yet.
    async fn open(&mut self, segment: u64) -> io::Result<()> {
        if !self.files.contains_key(&segment) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DSYNC)
                .dma_open(self.path(segment))
                .await?;
            self.files.insert(segment, file);
        }
        Ok(())
    }
}

/// Makes a spare segment at `path`: allocated to `bytes`, every block
/// written with zeros (`O_DSYNC`), synced. A file already there (left by a
/// stop, in an unknown state) is replaced. Its name is made durable when it
/// becomes a segment.
async fn make_spare(path: &std::path::Path, bytes: u64) -> io::Result<DmaFile> {
    match glommio::io::remove(path).await {
        Err(glommio::GlommioError::IoError(e)) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e);
        }
        _ => {}
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await?;
    file.pre_allocate(bytes, false).await?;
    let mut at = 0;
    while at < bytes {
        let len = usize::try_from(bytes - at).map_or(SPARE_WRITE, |left| left.min(SPARE_WRITE));
        let mut zeros = file.alloc_dma_buffer(len);
        zeros.as_bytes_mut().fill(0);
        if file.write_at(zeros, at).await? != len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        at += len as u64;
    }
    file.fdatasync().await?;
    Ok(file)
}

/// A sealed segment's bytes and its records as `(position, len)`, read and
/// checksummed on the blocking pool into `space`: the buffer of an earlier
/// reclaim ([`SegmentBytes::into_space`]), or an empty `Vec`.
pub async fn read_for_reclaim(
    dir: PathBuf,
    segment: u64,
    space: Vec<u8>,
) -> io::Result<(SegmentBytes, Vec<(u64, u64)>)> {
    glommio::executor()
        .spawn_blocking(move || {
            let path = dir.join(queue_engine::segment_file_name(segment));
            let bytes = read_segment(&path, space)?;
            let records = queue_engine::reclaim_scan(segment, &bytes).map_err(io::Error::other)?;
            Ok((bytes, records))
        })
        .await
}

/// Bytes reclaim reads at a time: a log write queued behind one waits for
/// at most this much to be read.
const RECLAIM_READ_CHUNK: usize = 1 << 20;

/// A whole segment in memory, aligned for direct reads.
pub struct SegmentBytes {
    space: Vec<u8>,
    at: usize,
    len: usize,
}

impl SegmentBytes {
    /// The buffer, for the next segment's read.
    pub fn into_space(self) -> Vec<u8> {
        self.space
    }
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.space[self.at..self.at + self.len]
    }
}

/// Reads the segment file at `path` directly (where the filesystem allows
/// it), one [`RECLAIM_READ_CHUNK`] at a time. A single buffered read of a
/// whole segment queued megabytes of readahead ahead of the log's own
/// writes, which the disk's scheduler served after the reads (a stall of
/// the group commit of tens of milliseconds per reclaimed segment), and
/// filled the page cache with a file about to be deleted.
///
/// `space` is reused as it is: a fresh 64 MiB buffer cost the kernel's
/// zeroing of every page it faulted in and the allocator's own zeroing on
/// top, 9% of the gateway's CPU under closed-loop load (`perf`). Stale
/// bytes past the read are never exposed: the result ends where it did.
fn read_segment(path: &std::path::Path, mut space: Vec<u8>) -> io::Result<SegmentBytes> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    let file = match open(libc::O_DIRECT) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(0)?, // tmpfs
        other => other?,
    };
    let size = usize::try_from(file.metadata()?.len()).expect("a segment fits in memory");
    let padded = size.next_multiple_of(BLOCK);
    if space.len() < padded + BLOCK {
        space = vec![0; padded + BLOCK]; // not resized: that would copy the old bytes
    }
    let at = space.as_ptr().align_offset(BLOCK);
    let buf = &mut space[at..at + padded];
    let mut done = 0;
    while done < padded {
        let want = (padded - done).min(RECLAIM_READ_CHUNK);
        let got = file.read_at(&mut buf[done..done + want], done as u64)?;
        done += got;
        if got < want {
            break; // the end of the file
        }
    }
    Ok(SegmentBytes {
        space,
        at,
        len: done.min(size),
    })
}

/// Deletes a reclaimed segment and makes its directory entry's removal
/// durable, on the blocking pool.
pub async fn delete_segment(dir: PathBuf, segment: u64) -> io::Result<()> {
    glommio::executor()
        .spawn_blocking(move || {
            std::fs::remove_file(dir.join(queue_engine::segment_file_name(segment)))?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
}
