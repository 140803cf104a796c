//! The last entries of a store, read backwards from the end through the trailing sizes, so
//! `docker logs --tail N` costs what N costs, not what the store holds.

use std::fs::File;
use std::path::Path;

use bytes::Bytes;

use super::container::Shared;
use super::record::{self, BadRecord, Front};
use super::segment::{self, Opened};
use super::{Position, StoreError};
use crate::entry::LogEntry;

/// Bytes read per step backwards: many small records per read, and big enough that a
/// `--tail 10` of ordinary lines is one read.
const CHUNK: u64 = 64 << 10;

/// The last `n` entries, oldest first, and the end position they were read up to.
pub(crate) fn tail(shared: &Shared, n: usize) -> Result<(Vec<LogEntry>, Position), StoreError> {
    let (segments, end) = shared.tail_plan()?;
    let mut newest_first = Vec::new();
    for number in segments {
        let want = n - newest_first.len();
        if want == 0 {
            break;
        }
        // Only the active segment is bounded by the end: it may be written meanwhile.
        let limit = (number == end.segment).then_some(end.offset);
        match segment::open(&shared.dir, number)? {
            // Deleted by retention since the plan: everything older is gone too.
            None => break,
            Some(Opened::Plain { file, path }) => {
                let len = match limit {
                    Some(limit) => limit,
                    None => segment::file_len(&file, &path)?,
                };
                backwards(&file, &path, len, want, &mut newest_first)?;
            }
            Some(Opened::Gz { file, path }) => {
                let content = Bytes::from(segment::read_gz_all(file, &path)?);
                last_of(&content, &path, limit, want, &mut newest_first)?;
            }
        }
    }
    newest_first.reverse();
    Ok((newest_first, end))
}

/// Pushes up to `want` entries of a plain segment onto `out`, newest first, from byte `end` back.
fn backwards(
    file: &File,
    path: &Path,
    end: u64,
    want: usize,
    out: &mut Vec<LogEntry>,
) -> Result<(), StoreError> {
    let target = out.len() + want;
    // `chunk` holds the file's bytes [chunk_start, at).
    let mut chunk = Bytes::new();
    let mut chunk_start = end;
    let mut at = end;
    while at > 0 && out.len() < target {
        if at - chunk_start < 4 {
            (chunk, chunk_start) = read_back(file, path, at, 4)?;
        }
        let size = record::read_size(&chunk[(at - 4 - chunk_start) as usize..]);
        let len = record::record_len_for(size)
            .map_err(|bad| segment::bad_record(path, at - 4, bad))? as u64;
        let Some(start) = at.checked_sub(len) else {
            return Err(segment::corrupt(
                path,
                at - 4,
                format!("trailing size {size} points before the start of the segment"),
            ));
        };
        if start < chunk_start {
            (chunk, chunk_start) = read_back(file, path, at, len)?;
        }
        let relative = (start - chunk_start) as usize;
        let leading = record::read_size(&chunk[relative..]);
        if leading != size {
            let bad = BadRecord::SizesDiffer {
                leading,
                trailing: size,
            };
            return Err(segment::bad_record(path, start, bad));
        }
        let payload = chunk.slice(relative + 4..relative + 4 + size as usize);
        out.push(segment::decode(payload, path, start)?);
        at = start;
    }
    Ok(())
}

/// Reads at least `need` bytes (a chunk if more are there) ending at `at`; returns them and
/// where they start.
fn read_back(file: &File, path: &Path, at: u64, need: u64) -> Result<(Bytes, u64), StoreError> {
    let start = at.saturating_sub(need.max(CHUNK));
    let bytes = segment::read_exact_at(file, path, start, (at - start) as usize)?;
    Ok((Bytes::from(bytes), start))
}

/// Pushes up to `want` entries of a decompressed segment onto `out`, newest first. The records
/// are walked forward (a gzip stream has no way back) and only the last `want` decoded.
fn last_of(
    content: &Bytes,
    path: &Path,
    limit: Option<u64>,
    want: usize,
    out: &mut Vec<LogEntry>,
) -> Result<(), StoreError> {
    let end = limit.map_or(content.len(), |limit| {
        content
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX))
    });
    let mut payloads = Vec::new();
    let mut at = 0;
    while at < end {
        match record::front(&content[at..end]) {
            Ok(Front::Record { payload, end }) => {
                payloads.push((at, at + payload.start..at + payload.end));
                at += end;
            }
            Ok(Front::Incomplete { .. }) => {
                return Err(segment::corrupt(
                    path,
                    at as u64,
                    "the segment ends inside a record",
                ))
            }
            Err(bad) => return Err(segment::bad_record(path, at as u64, bad)),
        }
    }
    for (offset, payload) in payloads.into_iter().rev().take(want) {
        out.push(segment::decode(
            content.slice(payload),
            path,
            offset as u64,
        )?);
    }
    Ok(())
}
