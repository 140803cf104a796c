//! Where the last N entries of a store start, found without keeping any of them, so
//! `docker logs --tail N` streams forward from there with a [`Cursor`] and costs one read step
//! of memory whatever N and the store's size.
//!
//! Segments are counted newest first. A plain segment is counted backwards from its end through
//! the trailing sizes, a chunk at a time. A gzip stream cannot be read backwards: a compressed
//! segment is decompressed as a stream that counts its records, and, when the start falls inside
//! it, once more to find that record's offset. Only counts and offsets are kept.
//!
//! Damage counts as the forward reader meets it: a segment holds, for `docker logs`, the records
//! before its first one that is not whole or not a LogEntry (the cursor stops there; a reader
//! that skips damaged segments goes on with the next one). So the last N counted are the last N
//! a reader can show, and one damaged segment costs only what it cannot give.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use flate2::read::GzDecoder;
use prost::Message;

use super::catalog::Shared;
use super::cursor::Cursor;
use super::record::{self, BadRecord, FRAMING};
use super::segment::{self, Opened};
use super::{Damage, Position, StoreError};
use crate::entry::{self, LogEntry};

/// Bytes read per step backwards: many small records per read, and big enough that a
/// `--tail 10` of ordinary lines is one read. Also the buffer of a forward count.
const CHUNK: usize = 64 << 10;
/// Bytes of records [`tail`] reads forward per step.
const READ_STEP: usize = 256 << 10;

/// How much of a store's end to take: at most `records` entries whose records (framing
/// included) add up to at most `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub records: usize,
    pub bytes: u64,
}

impl Limit {
    pub(crate) fn records(records: usize) -> Self {
        Self {
            records,
            bytes: u64::MAX,
        }
    }

    pub(crate) fn bytes(bytes: u64) -> Self {
        Self {
            records: usize::MAX,
            bytes,
        }
    }

    fn is_spent(&self) -> bool {
        self.records == 0 || self.bytes == 0
    }

    /// What is left after `counted`.
    fn after(self, counted: &Counted) -> Self {
        Self {
            records: self.records - counted.records,
            bytes: self.bytes.saturating_sub(counted.bytes),
        }
    }
}

/// Where the last entries within `limit` start, and the end they were counted up to: reading
/// forward from the first to the second gives them, oldest first (fewer if retention deletes
/// some meanwhile).
pub(crate) fn start(shared: &Shared, limit: Limit) -> Result<(Position, Position), StoreError> {
    let (newest_first, end) = shared.tail_plan()?;
    let mut start = end;
    let mut left = limit;
    for number in newest_first {
        if left.is_spent() {
            break;
        }
        // Only the active segment is bounded by the end: it may be written meanwhile.
        let limit = (number == end.segment).then_some(end.offset);
        let counted = match segment::open(&shared.dir, number)? {
            // Deleted by retention since the plan: everything older is gone too.
            None => break,
            Some(Opened::Plain { file, path }) => {
                let len = match limit {
                    Some(limit) => limit,
                    None => segment::file_len(&file, &path)?,
                };
                match backwards(&file, &path, len, left) {
                    Ok(counted) => counted,
                    Err(error) if error.is_segment_damage() => {
                        // Backwards cannot tell how much of it a forward reader gets.
                        tracing::debug!(%error, "tail counts a damaged segment forward");
                        forwards(
                            || Ok(BufReader::with_capacity(CHUNK, At::new(&file))),
                            &path,
                            Some(len),
                            left,
                        )?
                    }
                    Err(error) => return Err(error),
                }
            }
            Some(Opened::Gz { file, path }) => {
                forwards(|| Ok(GzDecoder::new(At::new(&file))), &path, None, left)?
            }
        };
        let whole = counted.start == 0;
        left = left.after(&counted);
        start = Position {
            segment: number,
            offset: counted.start,
        };
        if !whole {
            // The limit ended inside this segment: nothing older can be part of the tail.
            break;
        }
    }
    Ok((start, end))
}

/// The last `n` entries, oldest first, and the end position they were read up to. Unlike a
/// `docker logs` stream, any damage on the way is an error: the callers want the entries as
/// they are, or nothing.
pub(crate) fn tail(
    shared: &Arc<Shared>,
    n: usize,
) -> Result<(Vec<LogEntry>, Position), StoreError> {
    let (from, end) = start(shared, Limit::records(n))?;
    let mut cursor = Cursor::new(Arc::clone(shared), from);
    let mut entries = Vec::new();
    while cursor.position() < end {
        let read = cursor.read(READ_STEP)?;
        if read.is_empty() {
            break;
        }
        for (entry, after) in read {
            if after > end {
                return Ok((entries, end));
            }
            entries.push(entry);
        }
    }
    Ok((entries, end))
}

/// What counting found in one segment: `records` (within the limit) of `bytes` start at offset
/// `start` and run to the counted end.
#[derive(Debug, PartialEq, Eq)]
struct Counted {
    records: usize,
    bytes: u64,
    start: u64,
}

/// Counts records of a plain segment backwards from byte `end`, as many as `want` allows. Any
/// damage met is an error: the caller counts the segment forward instead.
fn backwards(file: &File, path: &Path, end: u64, want: Limit) -> Result<Counted, StoreError> {
    let mut window = Window::new(file, path);
    let mut at = end;
    let mut records = 0;
    while at > 0 && records < want.records {
        if at < FRAMING as u64 {
            return Err(segment::corrupt(path, 0, Damage::SegmentStartsInsideRecord));
        }
        let size = record::read_size(window.get(at - 4, 4)?);
        let len =
            record::record_len_for(size).map_err(|bad| segment::corrupt(path, at - 4, bad))?;
        let Some(start) = at.checked_sub(len as u64) else {
            return Err(segment::corrupt(
                path,
                at - 4,
                Damage::SizeBeforeStart { size },
            ));
        };
        let bytes = window.get(start, len)?;
        let leading = record::read_size(bytes);
        if leading != size {
            let bad = BadRecord::SizesDiffer {
                leading,
                trailing: size,
            };
            return Err(segment::corrupt(path, start, bad));
        }
        check_entry(&bytes[4..len - 4], path, start)?;
        if end - start > want.bytes {
            break;
        }
        records += 1;
        at = start;
    }
    Ok(Counted {
        records,
        bytes: end - at,
        start: at,
    })
}

/// Counts the last records within `want` a forward reader gets from a segment's content (`open`
/// gives it from its start, as often as asked), reading it once, or twice when it holds more
/// than `want`: the second time to the offset where they start.
fn forwards<R: Read>(
    open: impl Fn() -> Result<R, StoreError>,
    path: &Path,
    limit: Option<u64>,
    want: Limit,
) -> Result<Counted, StoreError> {
    let all = walk(open()?, path, limit, |_, _| false);
    if let Some(error) = &all.damage {
        tracing::debug!(%error, records = all.records, "tail counts the records before the damage");
    }
    if all.records <= want.records && all.at <= want.bytes {
        return Ok(Counted {
            records: all.records,
            bytes: all.at,
            start: 0,
        });
    }
    // Skip records until what is left fits both limits.
    let skip_records = all.records.saturating_sub(want.records);
    let skip_bytes = all.at.saturating_sub(want.bytes);
    let skipped = walk(open()?, path, limit, |records, at| {
        records >= skip_records && at >= skip_bytes
    });
    if skipped.records < skip_records || skipped.at < skip_bytes {
        // The file changed between the two reads (it is never written once sealed, so only a
        // damaged device does this): say so rather than count from a wrong place.
        return Err(skipped
            .damage
            .unwrap_or_else(|| segment::corrupt(path, skipped.at, Damage::SegmentShrank)));
    }
    Ok(Counted {
        records: all.records - skipped.records,
        bytes: all.at - skipped.at,
        start: skipped.at,
    })
}

/// How far a forward walk got.
struct Walk {
    records: usize,
    /// The offset just after the last record counted.
    at: u64,
    /// What stopped it before the end, if anything did.
    damage: Option<StoreError>,
}

/// Walks records forward from the start of `reader` (a segment's uncompressed content) up to
/// `limit` bytes, checking each as the cursor does, and stops once `done(records, offset)` says
/// so, or at the first damage. Keeps one record at a time.
fn walk(
    mut reader: impl Read,
    path: &Path,
    limit: Option<u64>,
    done: impl Fn(usize, u64) -> bool,
) -> Walk {
    let mut walked = Walk {
        records: 0,
        at: 0,
        damage: None,
    };
    let mut record = Vec::new();
    while !done(walked.records, walked.at) && limit.is_none_or(|limit| walked.at < limit) {
        match next_record(&mut reader, path, walked.at, &mut record) {
            Ok(Some(len)) => {
                walked.records += 1;
                walked.at += len;
            }
            Ok(None) => break,
            Err(error) => {
                walked.damage = Some(error);
                break;
            }
        }
    }
    walked
}

/// Reads the record at `at` into `record` and checks it as the cursor would; its whole length,
/// or None at a clean end.
fn next_record(
    reader: &mut impl Read,
    path: &Path,
    at: u64,
    record: &mut Vec<u8>,
) -> Result<Option<u64>, StoreError> {
    let Some(len) = segment::next_record(reader, path, at, record)? else {
        return Ok(None);
    };
    check_entry(&record[..len - FRAMING], path, at)?;
    Ok(Some(len as u64))
}

/// The cursor decodes every payload and stops at one that is not a LogEntry; counting must
/// stop there too. `time_of` accepts nothing the full decode refuses and allocates nothing;
/// only what it cannot judge is decoded.
fn check_entry(payload: &[u8], path: &Path, offset: u64) -> Result<(), StoreError> {
    if entry::time_of(payload).is_some() {
        return Ok(());
    }
    LogEntry::decode(payload)
        .map(drop)
        .map_err(|source| StoreError::Decode {
            path: path.to_owned(),
            offset,
            source,
        })
}

/// A file read from its start by position (pread), so several walks share one descriptor.
struct At<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> At<'a> {
    fn new(file: &'a File) -> Self {
        Self { file, offset: 0 }
    }
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// The bytes of a plain segment a backward count looks at: one buffer, refilled backwards a
/// chunk (or one larger record) at a time.
struct Window<'a> {
    file: &'a File,
    path: &'a Path,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    start: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, path: &'a Path) -> Self {
        Self {
            file,
            path,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The `len` bytes at `offset`, read (with up to a chunk before them) if not held.
    fn get(&mut self, offset: u64, len: usize) -> Result<&[u8], StoreError> {
        let end = offset + len as u64;
        let held = offset >= self.start && end <= self.start + self.buf.len() as u64;
        if !held {
            let start = end.saturating_sub(len.max(CHUNK) as u64);
            self.buf.resize((end - start) as usize, 0);
            let read = segment::read_at_most(self.file, self.path, start, &mut self.buf)?;
            if read < self.buf.len() {
                return Err(segment::corrupt(
                    self.path,
                    start + read as u64,
                    Damage::FileEndsInsideRecord,
                ));
            }
            self.start = start;
        }
        let from = (offset - self.start) as usize;
        Ok(&self.buf[from..from + len])
    }
}
