//! The group commit's disk writes on io_uring: each batch from
//! [`queue_engine::Engine::poll_flush`] is one write through the shard's
//! own executor (glommio's `BufferedFile`), on a file opened `O_DSYNC`, so
//! the write completes only once its data (and the file size) is durable,
//! as write + fdatasync would, in one io_uring operation instead of two
//! in a row. Segment files are opened once and kept; a new segment is
//! created with `create_new` and its directory entry made durable before
//! the batch is written; a sealed segment's file is closed once the next
//! one is created (so a reclaimed segment's space is freed when it is
//! deleted). The layout is `FsStorage`'s (`queue_engine`), which recovery
//! and the backlog reads use.
//!
//! Reclaim's disk work is here too, on the executor's blocking pool so the
//! event loop never waits for it: [`read_for_reclaim`] reads a sealed
//! segment and verifies its records, [`delete_segment`] unlinks it and
//! makes the directory durable.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use glommio::io::{BufferedFile, Directory, OpenOptions};
use queue_engine::Flush;

/// A shard's log directory, written on io_uring.
pub struct UringLog {
    dir: PathBuf,
    files: BTreeMap<u64, BufferedFile>,
}

impl UringLog {
    /// The log in `dir` (which recovery opened already).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
        }
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(queue_engine::segment_file_name(segment))
    }

    /// Performs one batch: creates its segment if new and writes it,
    /// durably. Report success with `Engine::handle_flushed`.
    pub async fn write_flush(&mut self, flush: Flush) -> io::Result<()> {
        if flush.create {
            // Sealed segments are never written again.
            for (_, sealed) in std::mem::take(&mut self.files) {
                sealed.close().await?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_DSYNC)
                .buffered_open(self.path(flush.segment))
                .await?;
            self.files.insert(flush.segment, file);
            Directory::open(&self.dir).await?.sync().await?;
        }
        let file = self.file(flush.segment).await?;
        let want = flush.bytes.len();
        let wrote = file.write_at(flush.bytes, flush.offset).await?;
        if wrote != want {
            // The kernel writes a regular file short only when it cannot
            // write the rest (no space, file size limit): fail-stop, as
            // for the error the next write would return.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short log write: {wrote} of {want} bytes (disk full?)"),
            ));
        }
        Ok(())
    }

    /// The open segment `segment`, opened on first use.
    async fn file(&mut self, segment: u64) -> io::Result<&BufferedFile> {
        if !self.files.contains_key(&segment) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DSYNC)
                .buffered_open(self.path(segment))
                .await?;
            self.files.insert(segment, file);
        }
        Ok(&self.files[&segment])
    }
}

/// A sealed segment's bytes and its records as `(position, len)`, read and
/// checksummed on the blocking pool.
pub async fn read_for_reclaim(
    dir: PathBuf,
    segment: u64,
) -> io::Result<(Vec<u8>, Vec<(u64, u64)>)> {
    glommio::executor()
        .spawn_blocking(move || {
            let bytes = std::fs::read(dir.join(queue_engine::segment_file_name(segment)))?;
            let records = queue_engine::reclaim_scan(segment, &bytes).map_err(io::Error::other)?;
            Ok((bytes, records))
        })
        .await
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
