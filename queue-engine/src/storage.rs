//! Where segments live: the [`Storage`] trait, the real backend
//! ([`FsStorage`]: files, `fdatasync`, directory `fsync`) and a seeded
//! simulated disk ([`SimDisk`]) that loses what was not synced and tears
//! writes when it "crashes".
//!
//! A segment is named by the log position of its first byte; its file name
//! is that position in 20 decimal digits, so names sort by position.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The segment files of one shard's log.
pub trait Storage {
    /// Start positions of every segment, ascending.
    fn segments(&self) -> io::Result<Vec<u64>>;
    /// The whole content of segment `start`.
    fn read(&self, start: u64) -> io::Result<Vec<u8>>;
    /// Fills `buf` from segment `start` at `offset` (`pread`).
    fn read_at(&self, start: u64, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Creates empty segment `start`; its name is durable on return.
    fn create(&mut self, start: u64) -> io::Result<()>;
    /// Writes `data` at `offset` inside segment `start` (not yet durable).
    fn write(&mut self, start: u64, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every write to segment `start` durable (`fdatasync`).
    fn sync(&mut self, start: u64) -> io::Result<()>;
    /// Cuts segment `start` to `len` bytes, durably.
    fn truncate(&mut self, start: u64, len: u64) -> io::Result<()>;
    /// Deletes segment `start`, durably.
    fn remove(&mut self, start: u64) -> io::Result<()>;
    /// The checkpoint last written, if any (its bytes are checked by the
    /// engine, so a torn one is harmless).
    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    /// Replaces the checkpoint with `bytes`, atomically and durably.
    fn write_checkpoint(&mut self, _bytes: &[u8]) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// One storage shared by several owners of one thread (a simulated shard's
/// engine and its reader).
impl<S: Storage> Storage for std::rc::Rc<std::cell::RefCell<S>> {
    fn segments(&self) -> io::Result<Vec<u64>> {
        self.borrow().segments()
    }
    fn read(&self, start: u64) -> io::Result<Vec<u8>> {
        self.borrow().read(start)
    }
    fn read_at(&self, start: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.borrow().read_at(start, offset, buf)
    }
    fn create(&mut self, start: u64) -> io::Result<()> {
        self.borrow_mut().create(start)
    }
    fn write(&mut self, start: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.borrow_mut().write(start, offset, data)
    }
    fn sync(&mut self, start: u64) -> io::Result<()> {
        self.borrow_mut().sync(start)
    }
    fn truncate(&mut self, start: u64, len: u64) -> io::Result<()> {
        self.borrow_mut().truncate(start, len)
    }
    fn remove(&mut self, start: u64) -> io::Result<()> {
        self.borrow_mut().remove(start)
    }
    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        self.borrow().read_checkpoint()
    }
    fn write_checkpoint(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.borrow_mut().write_checkpoint(bytes)
    }
}

/// The file name of the segment starting at log position `start`, in
/// [`FsStorage`]'s directory (for writers of the same layout).
pub fn segment_file_name(start: u64) -> String {
    format!("{start:020}.log")
}

/// Segments as files in one directory.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    open: BTreeMap<u64, File>,
}

impl FsStorage {
    /// Opens (creating) the log directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(Self {
            dir: dir.as_ref().to_path_buf(),
            open: BTreeMap::new(),
        })
    }

    fn path(&self, start: u64) -> PathBuf {
        self.dir.join(segment_file_name(start))
    }

    fn file(&mut self, start: u64) -> io::Result<&File> {
        if !self.open.contains_key(&start) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(start))?;
            self.open.insert(start, file);
        }
        Ok(&self.open[&start])
    }

    /// Makes the directory's entries (created or removed files) durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Storage for FsStorage {
    fn segments(&self) -> io::Result<Vec<u64>> {
        let mut starts = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(start) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
                starts.push(start);
            }
        }
        starts.sort_unstable();
        Ok(starts)
    }

    fn read(&self, start: u64) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(start))
    }

    fn read_at(&self, start: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.open.get(&start) {
            Some(file) => file.read_exact_at(buf, offset),
            None => File::open(self.path(start))?.read_exact_at(buf, offset),
        }
    }

    fn create(&mut self, start: u64) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(start))?;
        self.open.insert(start, file);
        self.sync_dir()
    }

    fn write(&mut self, start: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(start)?.write_all_at(data, offset)
    }

    fn sync(&mut self, start: u64) -> io::Result<()> {
        self.file(start)?.sync_data()
    }

    fn truncate(&mut self, start: u64, len: u64) -> io::Result<()> {
        let file = self.file(start)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&mut self, start: u64) -> io::Result<()> {
        self.open.remove(&start);
        std::fs::remove_file(self.path(start))?;
        self.sync_dir()
    }

    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.dir.join(CHECKPOINT_FILE)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Written to a temporary file, fsynced, renamed over the old one and
    /// the directory fsynced: a crash leaves the old or the new, whole.
    fn write_checkpoint(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(CHECKPOINT_FILE))?;
        self.sync_dir()
    }
}

/// Storage that keeps nothing (for measuring the engine's own memory and
/// CPU): writes vanish, reads fail, so a test that reads back notices.
#[derive(Debug, Default)]
pub struct NullStorage(Vec<u64>);

impl Storage for NullStorage {
    fn segments(&self) -> io::Result<Vec<u64>> {
        Ok(self.0.clone())
    }
    fn read(&self, _: u64) -> io::Result<Vec<u8>> {
        Err(io::Error::other("a NullStorage keeps nothing"))
    }
    fn read_at(&self, _: u64, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("a NullStorage keeps nothing"))
    }
    fn create(&mut self, start: u64) -> io::Result<()> {
        self.0.push(start);
        Ok(())
    }
    fn write(&mut self, _: u64, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn sync(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn remove(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The checkpoint's file name in [`FsStorage`]'s directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// A small deterministic generator (splitmix64) so simulations reproduce
/// from their seed alone.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

#[derive(Debug, Clone, Default)]
struct SimSegment {
    /// What a crash leaves at least: the content at the last sync.
    durable: Vec<u8>,
    /// The content as the running process sees it.
    current: Vec<u8>,
}

/// An operation of [`SimDisk`] that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimOp {
    /// [`Storage::create`].
    Create,
    /// [`Storage::write`].
    Write,
    /// [`Storage::sync`].
    Sync,
    /// [`Storage::read_at`] (a failing sector under a queued record).
    Read,
}

/// An in-memory disk with seeded faults. Writes are volatile until `sync`;
/// [`SimDisk::crash`] keeps only what was synced, plus, per segment, maybe a
/// torn prefix of what was not (with a flipped bit in it, sometimes), the way
/// a power cut leaves a partly written sector run. [`SimDisk::fail_next`]
/// makes the next create, write or sync fail with an I/O error (a full or
/// failing disk); a failed write may still have landed in part, and a
/// failed sync made nothing durable.
#[derive(Debug, Clone)]
pub struct SimDisk {
    segments: BTreeMap<u64, SimSegment>,
    /// The checkpoint file (tests may put any bytes there).
    pub checkpoint: Option<Vec<u8>>,
    rng: SimRng,
    failing: std::cell::RefCell<Vec<SimOp>>,
    /// Bytes written, syncs done (for the tests' accounting).
    pub stats: SimStats,
}

/// What a simulated disk has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// `write` calls.
    pub writes: u64,
    /// `sync` calls.
    pub syncs: u64,
    /// Crashes that tore a segment's unsynced tail.
    pub torn: u64,
}

impl SimDisk {
    /// An empty disk whose faults follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            segments: BTreeMap::new(),
            checkpoint: None,
            rng: SimRng::new(seed),
            failing: std::cell::RefCell::new(Vec::new()),
            stats: SimStats::default(),
        }
    }

    /// The next `op` fails with an I/O error (once per call).
    pub fn fail_next(&mut self, op: SimOp) {
        self.failing.get_mut().push(op);
    }

    /// Whether an injected failure of `op` is due (and uses it up).
    fn fails(&self, op: SimOp) -> io::Result<()> {
        let mut failing = self.failing.borrow_mut();
        match failing.iter().position(|f| *f == op) {
            Some(at) => {
                failing.remove(at);
                Err(io::Error::other(format!("simulated {op:?} failure")))
            }
            None => Ok(()),
        }
    }

    /// Power cut: unsynced bytes are lost, except a random torn prefix of
    /// them in some segments, sometimes with one bit flipped.
    pub fn crash(&mut self) {
        for segment in self.segments.values_mut() {
            let synced = segment.durable.len().min(segment.current.len());
            let unsynced = segment.current.len() - synced;
            let mut after = segment.durable.clone();
            if unsynced > 0 && self.rng.one_in(2) {
                let keep = usize::try_from(self.rng.below(unsynced as u64 + 1)).expect("small");
                after.truncate(synced);
                after.extend_from_slice(&segment.current[synced..synced + keep]);
                if keep > 0 && self.rng.one_in(4) {
                    let at = synced + usize::try_from(self.rng.below(keep as u64)).expect("small");
                    after[at] ^= 1 << self.rng.below(8);
                }
                self.stats.torn += 1;
            }
            segment.current = after.clone();
            segment.durable = after;
        }
    }

    /// Flips one bit of synced data in segment `start` at `offset` (media
    /// corruption, for recovery tests).
    pub fn flip_bit(&mut self, start: u64, offset: usize, bit: u8) {
        let segment = self.segments.get_mut(&start).expect("segment exists");
        segment.durable[offset] ^= 1 << bit;
        segment.current[offset] ^= 1 << bit;
    }

    /// Total bytes currently stored.
    pub fn bytes(&self) -> usize {
        self.segments.values().map(|s| s.current.len()).sum()
    }

    fn segment(&mut self, start: u64) -> io::Result<&mut SimSegment> {
        self.segments
            .get_mut(&start)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

impl Storage for SimDisk {
    fn segments(&self) -> io::Result<Vec<u64>> {
        Ok(self.segments.keys().copied().collect())
    }

    fn read(&self, start: u64) -> io::Result<Vec<u8>> {
        let segment = self.segments.get(&start).ok_or(io::ErrorKind::NotFound)?;
        Ok(segment.current.clone())
    }

    fn read_at(&self, start: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.fails(SimOp::Read)?;
        let segment = self.segments.get(&start).ok_or(io::ErrorKind::NotFound)?;
        let offset = usize::try_from(offset).expect("segments fit in memory");
        let bytes = segment.current.get(offset..offset + buf.len());
        buf.copy_from_slice(bytes.ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }

    fn create(&mut self, start: u64) -> io::Result<()> {
        self.fails(SimOp::Create)?;
        if self.segments.insert(start, SimSegment::default()).is_some() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        Ok(())
    }

    fn write(&mut self, start: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.stats.writes += 1;
        // A failed write may have landed in part: a prefix of it.
        let failed = self.fails(SimOp::Write).err();
        let landed = match failed {
            None => data.len(),
            Some(_) => usize::try_from(self.rng.below(data.len() as u64 + 1)).expect("small"),
        };
        let data = &data[..landed];
        let segment = self.segment(start)?;
        let offset = usize::try_from(offset).expect("segments fit in memory");
        if segment.current.len() < offset + data.len() {
            segment.current.resize(offset + data.len(), 0);
        }
        segment.current[offset..offset + data.len()].copy_from_slice(data);
        failed.map_or(Ok(()), Err)
    }

    fn sync(&mut self, start: u64) -> io::Result<()> {
        self.stats.syncs += 1;
        self.fails(SimOp::Sync)?;
        let segment = self.segment(start)?;
        segment.durable = segment.current.clone();
        Ok(())
    }

    fn truncate(&mut self, start: u64, len: u64) -> io::Result<()> {
        let segment = self.segment(start)?;
        let len = usize::try_from(len).expect("segments fit in memory");
        segment.current.truncate(len);
        segment.durable = segment.current.clone();
        Ok(())
    }

    fn remove(&mut self, start: u64) -> io::Result<()> {
        self.segments
            .remove(&start)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.checkpoint.clone())
    }

    /// Atomic and durable at once (a rename over the old one).
    fn write_checkpoint(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.checkpoint = Some(bytes.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(storage: &mut impl Storage) {
        storage.create(0).unwrap();
        storage.create(4096).unwrap();
        storage.write(0, 0, b"hello ").unwrap();
        storage.write(0, 6, b"world").unwrap();
        storage.sync(0).unwrap();
        assert_eq!(storage.read(0).unwrap(), b"hello world");
        let mut word = [0; 5];
        storage.read_at(0, 6, &mut word).unwrap();
        assert_eq!(&word, b"world");
        assert!(storage.read_at(0, 8, &mut word).is_err(), "past the end");
        storage.truncate(0, 5).unwrap();
        assert_eq!(storage.read(0).unwrap(), b"hello");
        assert_eq!(storage.segments().unwrap(), [0, 4096]);
        storage.remove(0).unwrap();
        assert_eq!(storage.segments().unwrap(), [4096]);
        assert!(storage.create(4096).is_err(), "names are unique");
    }

    #[test]
    fn both_backends_behave_alike() {
        let dir = std::env::temp_dir().join(format!("qe-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        exercise(&mut FsStorage::open(&dir).unwrap());
        exercise(&mut SimDisk::new(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_keeps_synced_bytes_and_at_most_a_prefix_of_the_rest() {
        for seed in 0..200 {
            let mut disk = SimDisk::new(seed);
            disk.create(0).unwrap();
            disk.write(0, 0, b"synced").unwrap();
            disk.sync(0).unwrap();
            disk.write(0, 6, b"-volatile").unwrap();
            disk.crash();
            let after = disk.read(0).unwrap();
            assert_eq!(&after[..6], b"synced", "seed {seed}");
            assert!(after.len() <= 15);
        }
    }
}
