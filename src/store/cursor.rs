//! Reading forward from a [`Position`]: what the shipper follows and `docker logs` replays.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use flate2::read::GzDecoder;

use super::catalog::{Located, Shared};
use super::record::{self, Front, FRAMING};
use super::segment::{self, Opened};
use super::{Damage, Position, StoreError};
use crate::entry::LogEntry;

/// A forward reader over one container's store. It holds the segment it is reading open
/// between calls, so a compressed segment is decompressed once, not once per read.
pub struct Cursor {
    shared: Arc<Shared>,
    position: Position,
    /// The open segment `position.segment`, if any.
    source: Option<Source>,
    /// Bytes of deleted segments this cursor jumped over.
    skipped: u64,
    /// An error met after records that were already returned; it comes with the next read.
    pending: Option<StoreError>,
}

enum Source {
    Plain {
        file: File,
        path: PathBuf,
    },
    Gz {
        // Boxed: the decoder's state is large and most sources are plain.
        reader: Box<GzDecoder<File>>,
        path: PathBuf,
        /// The uncompressed offset the decoder is at.
        at: u64,
    },
}

impl Cursor {
    pub(crate) fn new(shared: Arc<Shared>, from: Position) -> Self {
        let mut cursor = Self {
            shared,
            position: from,
            source: None,
            skipped: 0,
            pending: None,
        };
        // Clamp now, so position() says where reading will really start.
        match cursor.shared.locate(from) {
            Located::Gone { next, skipped } => {
                cursor.skipped += skipped;
                cursor.position = Position {
                    segment: next,
                    offset: 0,
                };
            }
            Located::Beyond { end } => cursor.position = end,
            // Past the end of a sealed segment: a position handed out before a power loss cut
            // the segment back (the store then never appends to it again). Reading goes on in
            // the next segment, and says so now: the shipper names the first entry it reads
            // by where it started (`position()`), and that must be a place no earlier entry
            // had. At the end exactly, the position stays: it is an entry's start, as it was
            // before a restart (a resent entry must get the id it had).
            Located::Sealed {
                len: Some(len),
                next,
            } if from.offset > len => {
                cursor.position = Position {
                    segment: next,
                    offset: 0,
                };
            }
            Located::Removed | Located::Active { .. } | Located::Sealed { .. } => {}
        }
        cursor
    }

    /// Where the next read starts: just after the last entry returned.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Bytes of records this cursor skipped because retention deleted them before it got there
    /// (segments deleted before the store was opened, or over 1024 rotations ago, count 0).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Reads forward up to about `max_bytes` of records (at least one record if any is there),
    /// following into the next segment at the end of one. Returns each entry with the position
    /// just after it; an empty vec means caught up with end(). If the segment it points into was
    /// deleted by retention, it moves on to the oldest existing one.
    pub fn read(&mut self, max_bytes: usize) -> Result<Vec<(LogEntry, Position)>, StoreError> {
        if let Some(error) = self.pending.take() {
            return Err(error);
        }
        loop {
            // `limit`: the published end in the active segment; sealed ones are read to EOF.
            let (limit, next) = match self.shared.locate(self.position) {
                Located::Removed => return Err(self.shared.removed_error()),
                Located::Beyond { end } => {
                    self.move_to(end);
                    continue;
                }
                Located::Gone { next, skipped } => {
                    self.skipped += skipped;
                    self.move_to(Position {
                        segment: next,
                        offset: 0,
                    });
                    continue;
                }
                Located::Active { end } => (Some(end), None),
                Located::Sealed { len, next } => {
                    // Known to be at its end: no need to open (or decompress) it. Never at
                    // offset 0: a compressed segment's length comes from its gzip trailer, and
                    // a damaged file (zeros or garbage after the gzip data) gives a bogus one
                    // that must not hide the whole segment (sealed segments are never empty).
                    let at_end = self.position.offset > 0
                        && len.is_some_and(|len| self.position.offset >= len);
                    if at_end {
                        self.move_to(Position {
                            segment: next,
                            offset: 0,
                        });
                        continue;
                    }
                    (None, Some(next))
                }
            };
            if limit == Some(self.position.offset) {
                return Ok(Vec::new());
            }
            if !self.open()? {
                continue;
            }
            let entries = self.read_records(max_bytes, limit)?;
            match next {
                Some(next) if entries.is_empty() => self.move_to(Position {
                    segment: next,
                    offset: 0,
                }),
                _ => return Ok(entries),
            }
        }
    }

    /// Moves to the start of the segment after the current one (or to the end), dropping a
    /// pending error: after a read error, so one damaged file does not hide what follows it.
    /// False if that is no move forward (the error was in the active segment, at the end).
    pub fn skip_segment(&mut self) -> bool {
        let before = self.position;
        let next = Position {
            segment: before.segment + 1,
            offset: 0,
        };
        let skipped = self.skipped;
        *self = Cursor::new(Arc::clone(&self.shared), next);
        self.skipped += skipped;
        self.position > before
    }

    fn move_to(&mut self, position: Position) {
        if position.segment != self.position.segment {
            self.source = None;
        }
        self.position = position;
    }

    /// Opens the current segment if it is not open. False if it was deleted meanwhile (the
    /// caller locates again and moves on).
    fn open(&mut self) -> Result<bool, StoreError> {
        if let Some(Source::Gz { at, .. }) = &self.source {
            if *at > self.position.offset {
                // A decoder cannot go back; start it over.
                self.source = None;
            }
        }
        if self.source.is_some() {
            return Ok(true);
        }
        self.shared.make_entry_durable(self.position.segment);
        match segment::open(&self.shared.dir, self.position.segment)? {
            Some(Opened::Plain { file, path }) => self.source = Some(Source::Plain { file, path }),
            Some(Opened::Gz { file, path }) => {
                self.source = Some(Source::Gz {
                    reader: Box::new(segment::gz_reader(file)),
                    path,
                    at: 0,
                })
            }
            None => {
                return match self.shared.locate(self.position) {
                    Located::Active { .. } | Located::Sealed { .. } => Err(StoreError::Missing {
                        path: segment::log_path(&self.shared.dir, self.position.segment),
                    }),
                    _ => Ok(false),
                }
            }
        }
        Ok(true)
    }

    fn read_records(
        &mut self,
        max_bytes: usize,
        limit: Option<u64>,
    ) -> Result<Vec<(LogEntry, Position)>, StoreError> {
        let want = Want {
            segment: self.position.segment,
            offset: self.position.offset,
            max_bytes,
            limit,
        };
        let mut entries = Vec::new();
        let outcome = match &mut self.source {
            Some(Source::Plain { file, path }) => read_plain(file, path, &want, &mut entries),
            Some(Source::Gz { reader, path, at }) => read_gz(reader, path, at, &want, &mut entries),
            None => Ok(()),
        };
        if let Some((_, after)) = entries.last() {
            self.position = *after;
        }
        match outcome {
            Err(error) if !entries.is_empty() => {
                self.pending = Some(error);
                Ok(entries)
            }
            Err(error) => Err(error),
            Ok(()) => Ok(entries),
        }
    }
}

/// What one read of a segment asks for: records from `offset` of `segment`, about `max_bytes`
/// of them (at least one), none at or past `limit` (the end readers may see of the active
/// segment).
struct Want {
    segment: u64,
    offset: u64,
    max_bytes: usize,
    limit: Option<u64>,
}

fn read_plain(
    file: &File,
    path: &std::path::Path,
    want: &Want,
    entries: &mut Vec<(LogEntry, Position)>,
) -> Result<(), StoreError> {
    let &Want {
        segment,
        offset,
        max_bytes,
        limit,
    } = want;
    let end = match limit {
        Some(end) => end,
        None => segment::file_len(file, path)?,
    };
    let available = end.saturating_sub(offset);
    if available == 0 {
        return Ok(());
    }
    let asked = (max_bytes.max(FRAMING) as u64).min(available) as usize;
    let mut buf = vec![0; asked];
    let read = segment::read_at_most(file, path, offset, &mut buf)?;
    buf.truncate(read);
    // At least one record: if the first does not fit in max_bytes, read exactly it.
    match record::front(&buf) {
        Ok(Front::Incomplete {
            needed: Some(needed),
        }) if needed as u64 <= available => {
            buf = segment::read_exact_at(file, path, offset, needed)?;
        }
        Ok(Front::Incomplete { .. }) => {
            return Err(segment::corrupt(
                path,
                offset,
                Damage::SegmentEndsInsideRecord,
            ))
        }
        Ok(Front::Record { .. }) => {}
        Err(bad) => return Err(segment::corrupt(path, offset, bad)),
    }
    let buf = Bytes::from(buf);
    let mut at = 0;
    loop {
        let record_offset = offset + at as u64;
        match record::front(&buf[at..]) {
            Ok(Front::Record { payload, end }) => {
                let payload = buf.slice(at + payload.start..at + payload.end);
                let entry = segment::decode(payload, path, record_offset)?;
                at += end;
                let after = Position {
                    segment,
                    offset: offset + at as u64,
                };
                entries.push((entry, after));
            }
            // The rest is for the next read.
            Ok(Front::Incomplete { .. }) => return Ok(()),
            Err(bad) => return Err(segment::corrupt(path, record_offset, bad)),
        }
    }
}

fn read_gz(
    reader: &mut GzDecoder<File>,
    path: &std::path::Path,
    at: &mut u64,
    want: &Want,
    entries: &mut Vec<(LogEntry, Position)>,
) -> Result<(), StoreError> {
    let read_error = |at: u64| {
        move |source: io::Error| StoreError::Read {
            path: path.to_owned(),
            offset: at,
            source,
        }
    };
    if *at < want.offset {
        let wanted = want.offset - *at;
        let skipped = io::copy(&mut reader.by_ref().take(wanted), &mut io::sink())
            .map_err(read_error(*at))?;
        *at += skipped;
        if skipped < wanted {
            // The position is past this segment's data: nothing more here.
            return Ok(());
        }
    }
    let mut bytes = 0;
    let mut record = Vec::new();
    while bytes < want.max_bytes || entries.is_empty() {
        if want.limit.is_some_and(|limit| *at >= limit) {
            break;
        }
        let Some(len) = segment::next_record(reader, path, *at, &mut record)? else {
            break;
        };
        let record_offset = *at;
        // Taken whole: the entry's fields may point into it, so the next record gets its own.
        let payload = Bytes::from(std::mem::take(&mut record)).slice(..len - FRAMING);
        let entry = segment::decode(payload, path, record_offset)?;
        *at += len as u64;
        bytes += len;
        entries.push((
            entry,
            Position {
                segment: want.segment,
                offset: *at,
            },
        ));
    }
    Ok(())
}

/// A cursor at the first segment that may hold entries at or after `since_nano`.
pub(crate) fn since(shared: Arc<Shared>, since_nano: i64) -> Result<Cursor, StoreError> {
    let plan = shared.since_plan()?;
    for (number, known) in plan.sealed {
        let last_time = match known {
            Some(time) => Some(time),
            None => match segment::open(&shared.dir, number)? {
                // Deleted by retention since the plan: nothing to read there.
                None => continue,
                Some(Opened::Plain { file, path }) => segment::plain_last_time(&file, &path)?,
                Some(Opened::Gz { file, .. }) => segment::gz_last_time(file),
            },
        };
        if let (None, Some(time)) = (known, last_time) {
            shared.remember_last_time(number, time);
        }
        match last_time {
            Some(time) if time < since_nano => {}
            // Newer entries, or no way to tell: read from here.
            _ => {
                return Ok(Cursor::new(
                    shared,
                    Position {
                        segment: number,
                        offset: 0,
                    },
                ))
            }
        }
    }
    Ok(Cursor::new(
        shared,
        Position {
            segment: plan.active,
            offset: 0,
        },
    ))
}
