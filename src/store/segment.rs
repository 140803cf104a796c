//! Segment files: names, creating and opening them (plain or gzip), reading records out of them,
//! and cutting a torn record off the active one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use flate2::read::GzDecoder;
use prost::Message;

use super::last_time;
use super::record::{self, BadRecord, Front};
use super::{Damage, StoreError};
use crate::entry::LogEntry;

/// Segment numbers are written with this many digits, so names sort in order (u64::MAX has 20).
const DIGITS: usize = 20;
const LOG: &str = ".log";
const GZ: &str = ".log.gz";
const TMP: &str = ".log.gz.tmp";

pub(crate) const FILE_MODE: u32 = 0o600;
pub(crate) const DIR_MODE: u32 = 0o700;

pub(crate) fn log_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:0DIGITS$}{LOG}"))
}

pub(crate) fn gz_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:0DIGITS$}{GZ}"))
}

pub(crate) fn tmp_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:0DIGITS$}{TMP}"))
}

/// What a file in a container directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Log,
    Gz,
    Tmp,
}

/// The segment number and kind of a file name; None for anything else.
pub(crate) fn parse_name(name: &str) -> Option<(u64, Kind)> {
    let (digits, suffix) = name.split_at_checked(DIGITS)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = match suffix {
        LOG => Kind::Log,
        GZ => Kind::Gz,
        TMP => Kind::Tmp,
        _ => return None,
    };
    Some((digits.parse().ok()?, kind))
}

/// The segment files in `dir`, sorted by number then kind.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, Kind, PathBuf)>, StoreError> {
    let list_error = |source| StoreError::List {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        if let Some((number, kind)) = entry.file_name().to_str().and_then(parse_name) {
            found.push((number, kind, entry.path()));
        }
    }
    found.sort_by_key(|&(number, kind, _)| (number, kind as u8));
    Ok(found)
}

pub(crate) fn create_dir(path: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| StoreError::Create {
            path: path.to_owned(),
            source,
        })
}

/// A new, empty active segment, opened for appending.
pub(crate) fn create_active(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| StoreError::Create {
            path: path.to_owned(),
            source,
        })
}

/// An existing active segment, opened for appending (and for cutting a torn record off).
pub(crate) fn open_active(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })
}

/// The bytes segment `number` takes on disk (its `.log.gz` or `.log`, whichever is there), if
/// it can be learned.
pub(crate) fn disk_size(dir: &Path, number: u64, compressed: bool) -> Option<u64> {
    let (first, second) = if compressed {
        (gz_path(dir, number), log_path(dir, number))
    } else {
        // The compressor may have replaced the .log meanwhile.
        (log_path(dir, number), gz_path(dir, number))
    };
    std::fs::metadata(first)
        .or_else(|_| std::fs::metadata(second))
        .ok()
        .map(|meta| meta.len())
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(StoreError::Delete {
            path: path.to_owned(),
            source: error,
        }),
        _ => Ok(()),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let sync_error = |source| StoreError::Sync {
        path: dir.to_owned(),
        source,
    };
    File::open(dir)
        .map_err(sync_error)?
        .sync_all()
        .map_err(sync_error)
}

/// A segment opened for reading: the plain file if it exists, else the compressed one.
pub(crate) enum Opened {
    Plain { file: File, path: PathBuf },
    Gz { file: File, path: PathBuf },
}

/// Opens segment `number` for reading; None if neither file exists (deleted by retention).
/// The plain file is tried first: the compressor creates the `.gz` before it removes the `.log`,
/// so in this order one of them is always found.
pub(crate) fn open(dir: &Path, number: u64) -> Result<Option<Opened>, StoreError> {
    for (path, compressed) in [(log_path(dir, number), false), (gz_path(dir, number), true)] {
        match File::open(&path) {
            Ok(file) if compressed => return Ok(Some(Opened::Gz { file, path })),
            Ok(file) => return Ok(Some(Opened::Plain { file, path })),
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::Open { path, source }),
        }
    }
    Ok(None)
}

pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    file.metadata()
        .map(|meta| meta.len())
        .map_err(|source| StoreError::Read {
            path: path.to_owned(),
            offset: 0,
            source,
        })
}

/// Fills `buf` from `offset`, stopping early only at end of file; returns the bytes read.
pub(crate) fn read_at_most(
    file: &File,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, StoreError> {
    fill(buf, path, offset, |rest, at| file.read_at(rest, at))
}

/// Reads exactly `len` bytes at `offset`; a file that ends sooner is corrupt (readers only ask
/// for bytes the store's bookkeeping says are there).
pub(crate) fn read_exact_at(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0; len];
    let read = read_at_most(file, path, offset, &mut buf)?;
    if read < len {
        return Err(corrupt(
            path,
            offset + read as u64,
            Damage::FileEndsInsideRecord,
        ));
    }
    Ok(buf)
}

/// A gzip decoder over a compressed segment; the header is parsed on construction.
pub(crate) fn gz_reader(file: File) -> GzDecoder<File> {
    GzDecoder::new(file)
}

/// The whole uncompressed content of a compressed segment. Segments are bounded by max_size
/// (plus one record), so this is bounded too.
pub(crate) fn read_gz_all(file: File, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut content = Vec::new();
    gz_reader(file)
        .read_to_end(&mut content)
        .map_err(|source| StoreError::Read {
            path: path.to_owned(),
            offset: content.len() as u64,
            source,
        })?;
    Ok(content)
}

/// True when segment `number`'s `.log.gz` decompresses whole (trailer checked) to exactly its
/// `.log`'s length: only then may the `.log` go. Reads the whole segment; used only at open, for
/// the rare segment left with both files.
pub(crate) fn gz_matches_plain(dir: &Path, number: u64) -> bool {
    let gz = gz_path(dir, number);
    let (Ok(file), Ok(plain)) = (File::open(&gz), fs::metadata(log_path(dir, number))) else {
        return false;
    };
    read_gz_all(file, &gz).is_ok_and(|content| content.len() as u64 == plain.len())
}

/// The uncompressed length of a compressed segment, from the gzip trailer (ISIZE, the length
/// modulo 2^32: exact for any segment under 4 GiB, which max_size keeps them well below).
pub(crate) fn gz_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    let len = file_len(file, path)?;
    if len < 4 {
        return Err(corrupt(path, 0, Damage::GzipTooShort));
    }
    let isize = read_exact_at(file, path, len - 4, 4)?;
    Ok(u64::from(u32::from_le_bytes([
        isize[0], isize[1], isize[2], isize[3],
    ])))
}

/// The LastTime a compressed segment's gzip header holds, if any.
pub(crate) fn gz_last_time(file: File) -> Option<i64> {
    gz_reader(file)
        .header()
        .and_then(|header| header.extra())
        .and_then(last_time::parse_header_extra)
}

pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<Damage>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.into(),
    }
}

pub(crate) fn decode(payload: Bytes, path: &Path, offset: u64) -> Result<LogEntry, StoreError> {
    LogEntry::decode(payload).map_err(|source| StoreError::Decode {
        path: path.to_owned(),
        offset,
        source,
    })
}

/// The last record of a plain segment `len` bytes long, found through its trailing size, if it
/// is whole and decodes. Err only for I/O errors.
fn last_record(file: &File, path: &Path, len: u64) -> Result<Option<LogEntry>, StoreError> {
    if len < record::FRAMING as u64 {
        return Ok(None);
    }
    let trailing = record::read_size(&read_exact_at(file, path, len - 4, 4)?);
    if trailing == 0 {
        // Never written (see `recover`): a zero-filled tail.
        return Ok(None);
    }
    let Ok(record_len) = record::record_len_for(trailing) else {
        return Ok(None);
    };
    let Some(start) = len.checked_sub(record_len as u64) else {
        return Ok(None);
    };
    let bytes = read_exact_at(file, path, start, record_len)?;
    match record::front(&bytes) {
        Ok(Front::Record { payload, .. }) => Ok(LogEntry::decode(&bytes[payload]).ok()),
        _ => Ok(None),
    }
}

/// The time of the last entry of a plain sealed segment, if it has one.
pub(crate) fn plain_last_time(file: &File, path: &Path) -> Result<Option<i64>, StoreError> {
    let len = file_len(file, path)?;
    Ok(last_record(file, path, len)?.map(|entry| entry.time_nano))
}

/// What recovery found in the active segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Length after cutting off a torn record.
    pub len: u64,
    /// Time of the last whole record.
    pub last_time: Option<i64>,
}

/// Checks the end of the active segment after a restart: if its last record is not whole (a
/// crash mid-write, or garbage or zeros after it), scans forward from the start to the last whole record
/// and cuts the file there. Only the active segment is ever written, so only it can be torn.
pub(crate) fn recover(file: &File, path: &Path) -> Result<Recovered, StoreError> {
    let len = file_len(file, path)?;
    if len == 0 {
        return Ok(Recovered {
            len,
            last_time: None,
        });
    }
    if let Some(entry) = last_record(file, path, len)? {
        return Ok(Recovered {
            len,
            last_time: Some(entry.time_nano),
        });
    }
    // The end is torn: find the last whole record from the start. A record is whole when both
    // sizes agree and its payload decodes, the same test the check above made.
    let mut file_from_start = file;
    file_from_start
        .seek(SeekFrom::Start(0))
        .map_err(|source| StoreError::Read {
            path: path.to_owned(),
            offset: 0,
            source,
        })?;
    let mut reader = BufReader::with_capacity(1 << 16, file_from_start);
    let mut good = 0u64;
    let mut last_time = None;
    let mut payload = Vec::new();
    loop {
        let mut size = [0u8; 4];
        if read_fully(&mut reader, &mut size, path, good)? < 4 {
            break;
        }
        let size = u32::from_be_bytes(size);
        // The store never writes an empty record (the pipeline refuses empty entries), and
        // zeros would read as a run of them: a zero-filled tail left by a crash.
        if size == 0 {
            break;
        }
        let Ok(record_len) = record::record_len_for(size) else {
            break;
        };
        payload.resize(record_len - 4, 0);
        if read_fully(&mut reader, &mut payload, path, good + 4)? < payload.len() {
            break;
        }
        let (body, trailing) = payload.split_at(size as usize);
        if record::read_size(trailing) != size {
            break;
        }
        let Ok(entry) = LogEntry::decode(body) else {
            break;
        };
        last_time = Some(entry.time_nano);
        good += record_len as u64;
    }
    tracing::warn!(
        path = %path.display(),
        kept = good,
        cut = len - good,
        "cutting a torn record off the end of the active segment"
    );
    file.set_len(good)
        .and_then(|()| file.sync_all())
        .map_err(|source| StoreError::Truncate {
            path: path.to_owned(),
            offset: good,
            source,
        })?;
    Ok(Recovered {
        len: good,
        last_time,
    })
}

/// Reads the record at offset `at` of `reader` (a segment's uncompressed bytes, read forward)
/// into `record`: its payload, then its trailing size. Returns the record's whole length
/// (framing included), or None at a clean end (no byte left). Checks the framing; the payload
/// is not decoded.
pub(crate) fn next_record(
    reader: &mut impl Read,
    path: &Path,
    at: u64,
    record: &mut Vec<u8>,
) -> Result<Option<usize>, StoreError> {
    let mut size = [0u8; 4];
    let got = read_fully(reader, &mut size, path, at)?;
    if got == 0 {
        return Ok(None);
    }
    let ends_inside = || corrupt(path, at, Damage::SegmentEndsInsideRecord);
    if got < size.len() {
        return Err(ends_inside());
    }
    let size = u32::from_be_bytes(size);
    let len = record::record_len_for(size).map_err(|bad| corrupt(path, at, bad))?;
    record.resize(len - 4, 0);
    if read_fully(reader, record, path, at + 4)? < record.len() {
        return Err(ends_inside());
    }
    let trailing = record::read_size(&record[size as usize..]);
    if trailing != size {
        let bad = BadRecord::SizesDiffer {
            leading: size,
            trailing,
        };
        return Err(corrupt(path, at, bad));
    }
    Ok(Some(len))
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub(crate) fn read_fully(
    reader: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    offset: u64,
) -> Result<usize, StoreError> {
    fill(buf, path, offset, |rest, _| reader.read(rest))
}

/// Fills `buf` by calling `read(rest of buf, its offset)` until it is full or a call returns 0
/// (the end); returns the bytes read. A call cut short by a signal (EINTR) is made again: the
/// compressor and readers run beside signal handlers, and an interrupted read lost nothing.
/// `offset` is where `buf` starts in `path`, for the error.
fn fill(
    buf: &mut [u8],
    path: &Path,
    offset: u64,
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
) -> Result<usize, StoreError> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = offset + filled as u64;
        match read(&mut buf[filled..], at) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_owned(),
                    offset: at,
                    source,
                })
            }
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        let dir = Path::new("/x");
        let name = |path: PathBuf| path.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name(log_path(dir, 7)), "00000000000000000007.log");
        assert_eq!(
            parse_name(&name(gz_path(dir, u64::MAX))),
            Some((u64::MAX, Kind::Gz))
        );
        assert_eq!(parse_name(&name(tmp_path(dir, 3))), Some((3, Kind::Tmp)));
        for bad in [
            "",
            "7.log",
            "0000000000000000000x.log",
            "00000000000000000007.txt",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
