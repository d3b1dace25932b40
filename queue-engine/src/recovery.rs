//! Opening a log: scan every segment, verify every record, decide what a
//! bad record means, and replay the good ones into the index.
//!
//! # Decision table
//!
//! The log writes one batch at a time and syncs it before writing the next,
//! so at a crash at most the last batch (at most [`LogConfig::torn_window`]
//! bytes at the end of the last segment) can be partly written. Everything
//! before it was synced: damage there is corruption, never a torn write.
//!
//! | # | found on disk | action |
//! |---|---|---|
//! | 1 | no segment | empty log; the first flush creates segment 0 |
//! | 2 | every record of every segment valid to its end, or followed by nothing but zeros to its end (a pre-sized segment, a zero-padded block) | replay all |
//! | 3 | last segment: a bad or incomplete record (short, zero length, bad checksum), and nothing but zeros from one torn window and one [`WRITE_BLOCK`] past it to the end | torn tail: truncate the segment at that record (durably), replay what precedes it |
//! | 4 | last segment: a bad record with bytes other than zeros further on than that | `Corruption { segment, offset }`: refuse to open |
//! | 5 | older segment: a bad or incomplete record followed by anything but zeros | `Corruption { segment, offset }`: refuse to open |
//! | 6 | a segment does not start where the previous one ends (missing or extra bytes between) | `Gap { expected, found }`: refuse to open |
//! | 7 | no checkpoint | rows 1–6 over the whole log |
//! | 8 | a checkpoint that is torn or not one (short, bad checksum, bad magic) | ignored: rows 1–6 over the whole log |
//! | 9 | a stale checkpoint: the segment holding its position was reclaimed | ignored: rows 1–6 over the whole log |
//! | 10 | a checkpoint past the log's end (its segment is shorter than its position, or gone at the end) | ignored: rows 1–6 over the whole log |
//! | 11 | a checkpoint inside the log | its index is loaded; rows 2–6 from its position on (older segments are not read) |
//!
//! A checkpoint is only ever written once the log is durable past its
//! position, so rows 9 and 10 mean the log was cut or reclaimed after it;
//! the log is the truth and a full replay is always correct.
//!
//! A refused open loses nothing: the operator decides (restore, or accept
//! the loss with a tool) and the gateway does not answer ✓ from a log it
//! cannot trust. Known limit: a flipped bit inside the final torn window of
//! a synced log looks like a torn tail (row 3) and the records after it are
//! dropped; the report says how many bytes were cut.

use std::io;

use crate::log::{LogConfig, WRITE_BLOCK};
use crate::record::{self, Record, RecordError};
use crate::storage::Storage;

/// Why a log cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The storage failed.
    #[error("storage: {0}")]
    Io(#[from] io::Error),
    /// A record that was synced is damaged (rows 4 and 5).
    #[error("corrupt record in segment {segment} at offset {offset}: {error}")]
    Corruption {
        /// Start of the segment.
        segment: u64,
        /// Offset of the bad record in it.
        offset: u64,
        /// What is wrong with it.
        error: RecordError,
    },
    /// Segments are not contiguous (row 6).
    #[error("log gap: expected a segment at {expected}, found {found}")]
    Gap {
        /// Where the next segment should start.
        expected: u64,
        /// Where it starts.
        found: u64,
    },
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Segment starts, ascending.
    pub segments: Vec<u64>,
    /// End of the valid log: the next append goes here.
    pub head: u64,
    /// Records replayed.
    pub records: u64,
    /// A torn tail cut off (row 3): segment, offset, bytes dropped.
    pub truncated: Option<(u64, u64, u64)>,
    /// The checkpoint loaded (row 11): the position replay started at.
    pub checkpoint: Option<u64>,
}

/// Why a checkpoint's position cannot start a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// The segment holding it is gone (row 9).
    Stale,
    /// The log does not reach it (row 10).
    PastTheEnd,
}

/// Scans `storage`, truncates a torn tail, and calls `apply` with every
/// valid record, its position and its length, in log order.
pub fn recover(
    storage: &mut impl Storage,
    config: &LogConfig,
    apply: impl FnMut(u64, u64, Record<'_>),
) -> Result<Recovered, RecoveryError> {
    let first = storage.segments()?.first().copied().unwrap_or(0);
    let found = recover_from(storage, config, first, apply)?;
    Ok(found.expect("the log's own start is inside it"))
}

/// [`recover`] from log position `from` (a checkpoint's): segments that
/// end before it are not read, and records before it in its segment are
/// skipped. `Ok(Err(_))` when `from` cannot start a replay; nothing was
/// applied or changed then.
pub(crate) fn recover_from(
    storage: &mut impl Storage,
    config: &LogConfig,
    from: u64,
    mut apply: impl FnMut(u64, u64, Record<'_>),
) -> Result<Result<Recovered, Unusable>, RecoveryError> {
    let all = storage.segments()?;
    let Some(k) = all.iter().rposition(|s| *s <= from) else {
        // No segment at or before it: an empty log starts at `from` = 0.
        return Ok(match all.is_empty() && from == 0 {
            true => Ok(Recovered::default()),
            false => Err(Unusable::Stale),
        });
    };
    let segments = all[k..].to_vec();
    let mut found = Recovered {
        segments: all.clone(),
        ..Recovered::default()
    };
    let mut expected = segments[0];
    let mut skip = usize::try_from(from - segments[0]).expect("inside a segment");
    for (i, &start) in segments.iter().enumerate() {
        if start != expected {
            return Err(RecoveryError::Gap {
                expected,
                found: start,
            });
        }
        let data = storage.read(start)?;
        if skip > data.len() {
            return Ok(Err(Unusable::PastTheEnd));
        }
        let (tail, bad) = scan(
            &data[skip..],
            start + skip as u64,
            &mut apply,
            &mut found.records,
        );
        let valid = skip + tail;
        skip = 0;
        if let Some(error) = bad {
            let last = i + 1 == segments.len();
            let reach = valid + usize::try_from(config.torn_window() + WRITE_BLOCK).expect("small");
            let torn = last && zeros(data.get(reach..).unwrap_or_default());
            if !torn {
                return Err(RecoveryError::Corruption {
                    segment: start,
                    offset: valid as u64,
                    error,
                });
            }
            storage.truncate(start, valid as u64)?;
            found.truncated = Some((start, valid as u64, (data.len() - valid) as u64));
        }
        expected = start + valid as u64;
    }
    found.head = expected;
    Ok(Ok(found))
}

/// Whether `bytes` are all zero: space no record was written to.
fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Replays the valid prefix of one segment; returns its length and the
/// error that ended it, if any. Zeros from there to the end are no error:
/// they are the segment's unwritten end.
pub(crate) fn scan(
    data: &[u8],
    start: u64,
    apply: &mut impl FnMut(u64, u64, Record<'_>),
    records: &mut u64,
) -> (usize, Option<RecordError>) {
    let mut offset = 0;
    while offset < data.len() {
        match record::decode(&data[offset..]) {
            Ok((record, len)) => {
                apply(start + offset as u64, len as u64, record);
                *records += 1;
                offset += len;
            }
            Err(error) => return (offset, (!zeros(&data[offset..])).then_some(error)),
        }
    }
    (offset, None)
}

#[cfg(test)]
mod tests {
    //! One test per row of the decision table.
    #![allow(clippy::cast_possible_truncation)] // test sizes are tiny
    use super::*;
    use crate::record::{DeviceRef, encode};
    use crate::storage::SimDisk;

    fn rec(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &Record::Device {
                device: DeviceRef { user: n, device: 0 },
                registered_ms: n,
                next_seq: 0,
            },
            &mut out,
        );
        out
    }

    /// A disk with `segments`, each holding `per_segment` records, synced.
    fn disk(segments: u64, per_segment: u64) -> (SimDisk, Vec<u64>) {
        let mut disk = SimDisk::new(7);
        let (mut position, mut starts) = (0, Vec::new());
        for s in 0..segments {
            disk.create(position).unwrap();
            starts.push(position);
            let bytes: Vec<u8> = (0..per_segment).flat_map(|r| rec(s * 100 + r)).collect();
            disk.write(position, 0, &bytes).unwrap();
            disk.sync(position).unwrap();
            position += bytes.len() as u64;
        }
        (disk, starts)
    }

    fn open(
        disk: &mut SimDisk,
        config: &LogConfig,
    ) -> (Result<Recovered, RecoveryError>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = recover(disk, config, |_, _, r| {
            if let Record::Device { registered_ms, .. } = r {
                seen.push(registered_ms);
            }
        });
        (result, seen)
    }

    #[test]
    fn row_1_no_segment_is_an_empty_log() {
        let (found, seen) = open(&mut SimDisk::new(1), &LogConfig::default());
        assert_eq!(found.unwrap(), Recovered::default());
        assert!(seen.is_empty());
    }

    #[test]
    fn row_2_a_clean_log_replays_everything() {
        let (mut disk, starts) = disk(3, 4);
        let (found, seen) = open(&mut disk, &LogConfig::default());
        let found = found.unwrap();
        assert_eq!(found.segments, starts);
        assert_eq!(found.records, 12);
        assert_eq!(found.truncated, None);
        assert_eq!(seen, [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203]);
        assert_eq!(found.head, starts[2] + 4 * rec(0).len() as u64);
    }

    #[test]
    fn row_3_a_torn_tail_is_truncated() {
        let r = rec(0).len() as u64;
        for torn in [r / 2, 3, 1] {
            let (mut disk, starts) = disk(2, 4);
            let last = starts[1];
            disk.write(last, 4 * r, &rec(999)[..torn as usize]).unwrap(); // a partial record
            disk.write(last, 4 * r + torn, &[0; 7]).unwrap(); // and zeroes after it
            let (found, seen) = open(&mut disk, &LogConfig::default());
            let found = found.unwrap();
            assert_eq!(found.truncated, Some((last, 4 * r, torn + 7)));
            assert_eq!(seen.len(), 8);
            assert_eq!(disk.read(last).unwrap().len() as u64, 4 * r, "cut durably");
            assert_eq!(found.head, last + 4 * r);
        }
        // A bad checksum at the very end is a torn tail too.
        let (mut disk, starts) = disk(1, 4);
        disk.flip_bit(starts[0], 3 * r as usize + 9, 2);
        let (found, seen) = open(&mut disk, &LogConfig::default());
        assert_eq!(found.unwrap().truncated, Some((0, 3 * r, r)));
        assert_eq!(seen, [0, 1, 2]);
    }

    #[test]
    fn row_4_damage_before_the_torn_reach_of_the_last_segment_is_corruption() {
        let r = rec(0).len();
        let config = LogConfig {
            batch_bytes_max: 0,
            ..LogConfig::default()
        };
        let window = config.torn_window() as usize;
        let (mut disk, starts) = disk(1, ((window + WRITE_BLOCK as usize) / r + 5) as u64);
        disk.flip_bit(starts[0], r + 9, 0); // in the second record, far before the window
        let (found, _) = open(&mut disk, &config);
        match found.unwrap_err() {
            RecoveryError::Corruption {
                segment: 0,
                offset,
                error: RecordError::BadChecksum,
            } => {
                assert_eq!(offset, r as u64)
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn row_5_damage_in_an_older_segment_is_corruption_with_its_position() {
        let r = rec(0).len() as u64;
        let (mut disk, starts) = disk(3, 4);
        disk.flip_bit(starts[1], (2 * r + 5) as usize, 3);
        let (found, _) = open(&mut disk, &LogConfig::default());
        let error = found.unwrap_err();
        assert!(
            matches!(error, RecoveryError::Corruption { segment, offset, .. } if segment == starts[1] && offset == 2 * r),
            "{error}"
        );
        assert_eq!(
            disk.read(starts[1]).unwrap().len() as u64,
            4 * r,
            "nothing was cut"
        );
    }

    /// Pads every segment of `disk` with zeros to `size` bytes, as a shell
    /// that pre-sizes its segments leaves them.
    fn presize(disk: &mut SimDisk, starts: &[u64], size: usize) {
        for &start in starts {
            let len = disk.read(start).unwrap().len();
            disk.write(start, len as u64, &vec![0; size - len]).unwrap();
            disk.sync(start).unwrap();
        }
    }

    #[test]
    fn row_2_zeros_after_the_last_record_are_a_segments_end() {
        let r = rec(0).len() as u64;
        let (mut disk, starts) = disk(3, 4);
        presize(&mut disk, &starts, 3 << 20);
        let (found, seen) = open(&mut disk, &LogConfig::default());
        let found = found.unwrap();
        assert_eq!(found.truncated, None, "zeros are no torn tail");
        assert_eq!(found.records, 12);
        assert_eq!(seen.len(), 12);
        assert_eq!(found.head, starts[2] + 4 * r);
        assert_eq!(disk.read(starts[2]).unwrap().len(), 3 << 20, "nothing cut");
        for (i, &start) in starts.iter().enumerate() {
            let bytes = disk.read(start).unwrap();
            let records = crate::engine::reclaim_scan(start, &bytes).unwrap();
            assert_eq!(records.len(), 4, "segment {i}");
        }
    }

    #[test]
    fn row_3_a_torn_batch_in_a_presized_segment_is_truncated() {
        let r = rec(0).len() as u64;
        let (mut disk, starts) = disk(2, 4);
        let last = starts[1];
        presize(&mut disk, &starts, 3 << 20);
        // A torn block-padded batch: its first sector zero, garbage later.
        disk.write(last, 4 * r + 512, &rec(999)).unwrap();
        let (found, seen) = open(&mut disk, &LogConfig::default());
        let found = found.unwrap();
        assert_eq!(seen.len(), 8);
        assert_eq!(found.head, last + 4 * r);
        assert_eq!(found.truncated, Some((last, 4 * r, (3 << 20) - 4 * r)));
        assert_eq!(disk.read(last).unwrap().len() as u64, 4 * r, "cut durably");
    }

    #[test]
    fn row_4_bytes_past_the_torn_reach_of_a_presized_segment_are_corruption() {
        let r = rec(0).len() as u64;
        let config = LogConfig::default();
        let reach = config.torn_window() + WRITE_BLOCK;
        let (mut disk, starts) = disk(1, 4);
        presize(&mut disk, &starts, 3 << 20);
        // A stray byte just inside the reach is a torn tail...
        let mut torn = disk.clone();
        torn.write(0, 4 * r + reach - 1, &[1]).unwrap();
        assert!(open(&mut torn, &config).0.unwrap().truncated.is_some());
        // ...one just past it cannot be: only one batch is ever unsynced.
        disk.write(0, 4 * r + reach, &[1]).unwrap();
        let error = open(&mut disk, &config).0.unwrap_err();
        assert!(
            matches!(error, RecoveryError::Corruption { segment: 0, offset, error: RecordError::BadLength { len: 0 } } if offset == 4 * r),
            "{error}"
        );
    }

    #[test]
    fn row_5_a_stray_byte_after_an_older_segments_zeros_is_corruption() {
        let r = rec(0).len() as u64;
        let (mut disk, starts) = disk(3, 4);
        presize(&mut disk, &starts, 1 << 16);
        disk.write(starts[1], (1 << 16) - 1, &[1]).unwrap();
        let error = open(&mut disk, &LogConfig::default()).0.unwrap_err();
        assert!(
            matches!(error, RecoveryError::Corruption { segment, offset, .. } if segment == starts[1] && offset == 4 * r),
            "{error}"
        );
        let bytes = disk.read(starts[1]).unwrap();
        assert!(crate::engine::reclaim_scan(starts[1], &bytes).is_err());
    }

    #[test]
    fn row_6_a_missing_segment_is_a_gap() {
        let (mut disk, starts) = disk(3, 2);
        disk.remove(starts[1]).unwrap();
        let (found, _) = open(&mut disk, &LogConfig::default());
        let error = found.unwrap_err();
        assert!(
            matches!(error, RecoveryError::Gap { expected, found } if expected == starts[1] && found == starts[2]),
            "{error}"
        );
    }
}
