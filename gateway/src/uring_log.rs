//! The group commit's disk writes on io_uring: each batch from
//! [`queue_engine::Engine::poll_flush`] is one write through the shard's
//! own executor (glommio's `BufferedFile`), on a file opened `O_DSYNC`, so
//! the write completes only once its data (and the file size) is durable,
//! as write + fdatasync would, in one io_uring operation instead of two
//! in a row. Segment files are opened once and kept; a new segment is
//! created with `create_new` and its directory entry made durable before
//! the batch is written. The layout is `FsStorage`'s (`queue_engine`), which recovery
//! and the backlog reads use.

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
