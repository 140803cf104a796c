//! The local store: one directory of segment files per container. It is the spool the shipper
//! follows and the source `docker logs` reads; nothing else holds log data.
//!
//! # Layout on disk
//!
//! ```text
//! <root>/<64-hex container id>/
//!     00000000000000000001.log        a sealed segment, not yet compressed
//!     00000000000000000002.log.gz     a sealed, compressed segment
//!     00000000000000000003.log        the active segment (highest number), appended to
//! ```
//!
//! Segments are numbered, never renamed (the engine's drivers shift `container.log.N` on every
//! rotation; a stable number lets a checkpoint say "segment 7, offset 1234" for good). The number
//! is 20 decimal digits so names sort in order. A new store's first number is the current time
//! in microseconds, so a store removed and created again never reuses a (segment, offset): those
//! pairs are the document ids in Elasticsearch.
//!
//! # Record layout (the engine's `local` driver layout)
//!
//! `[u32 BE size][LogEntry protobuf, size bytes][u32 BE size]`, back to back, nothing else: the
//! trailing size lets tail read backwards from the end of a file without an index.
//!
//! # Invariants
//! - Only the active segment is written, only by appending whole records; a batch goes out in one
//!   `write` per segment it touches.
//! - Rotation happens before a record is written when the active segment is at or over
//!   `max_size` (so a segment can exceed it by at most one record), as the engine's drivers do.
//! - A sealed segment is compressed in the background when `compress` is set: written to
//!   `N.log.gz.tmp`, synced, renamed to `N.log.gz`, and only then `N.log` is removed, so a reader
//!   always finds one of the two. The gzip header's extra field holds
//!   `{"LastTime":"<RFC 3339 nanos>"}` (the time of the segment's last entry), as the engine's
//!   `local` driver writes it, so a `--since` read can skip whole files.
//! - At most `max_file` segments are kept for `docker logs`; older ones are deleted, oldest first,
//!   unless a shipper still needs them (the store's pin): those stay as backlog, hidden from
//!   `docker logs`, within the plugin-wide spool budget (`spool`).
//! - A torn record at the end of the active segment (a crash mid-write) is found when the store is
//!   opened and cut off; every record before it stays readable. So are garbage and zeros after
//!   the last record (a crash can leave a zero-filled tail): a payload is never empty (the
//!   pipeline refuses empty entries), so zeros never read as records.
//! - A failed write (disk full, read-only) drops the active segment's descriptor; the next append
//!   reopens the file by path and cuts it back to its last whole record, so storing resumes by
//!   itself when the disk is usable again, and the plugin does not pin a broken mount.
//! - Offsets in a [`Position`] count bytes of the uncompressed segment.
//! - A (segment, offset) is handed out once, ever: it names a document in Elasticsearch. The
//!   active segment is synced only at stop, shutdown or close, so after a power loss it can be
//!   shorter than positions already shipped from it (the checkpoint is synced every second). So
//!   a process never appends to a segment an earlier process wrote: the first time it opens a
//!   store for writing ([`Stores::open_container`]), the active segment found on disk is sealed
//!   (deleted if empty) and a new one started; so is a segment whose file system lost data
//!   under this process. A store closed and opened again by the same process goes on in its
//!   active segment. A cursor at a position past a sealed segment's end goes on at the start of
//!   the next segment.
//! - A segment's number is never reused: a rotation takes the active number plus one; a segment
//!   started by a new process takes the highest number on disk plus one, or the current time in
//!   microseconds if that is more, because a power loss can take the directory entry of a newer
//!   segment with it (rotations are far slower than the clock, so every number used before is
//!   below it). So a [`Position`] names the same bytes for as long as they exist. And a clock
//!   set back at boot is covered too: a cursor syncs the directory before it reads from a
//!   segment whose entry is not known to be on disk (once per new segment, on the reader's
//!   thread), so a segment whose records were handed out cannot vanish from the listing.
//!
//! # Concurrency
//! One mutex per container guards the segment list and the active file. [`ContainerStore::append`]
//! holds it while writing (page-cache writes, short); readers hold it only to learn which
//! segments exist and where the end is, then read the files without it. Readers open `N.log`
//! first and `N.log.gz` only if that is missing: the compressor creates the `.gz` before it removes
//! the `.log`, so the other order could miss both. The compressor and retention take the same
//! mutex around creating, renaming and deleting files, so a segment deleted by retention is never
//! resurrected as a `.gz`.
//!
//! # Modules
//! - `record`: record framing and the [`Batch`] the pipeline fills.
//! - `segment`: file names, opening a segment (plain or gzip), recovery of a torn active segment.
//! - `last_time`: the RFC 3339 `LastTime` of the gzip header.
//! - `catalog`: one container's segments (sealed, deleted, active), where a position falls,
//!   the pin and retention: the bookkeeping readers and the compressor share.
//! - `writer`: one container's write path: append, rotation, recovery of the active segment,
//!   sync.
//! - `container`: one container's store, composing its catalog, writer and compression queue.
//! - `tail`: reading the last entries backwards.
//! - `cursor`: reading forward from a [`Position`].
//! - `compress`: the background compressor thread.
//! - `stores`: all containers' stores under one root.
//! - `spool`: the plugin-wide budget for backlog kept beyond max-file.

mod catalog;
mod compress;
mod container;
mod cursor;
mod last_time;
mod record;
mod segment;
mod spool;
mod stores;
mod tail;
#[cfg(test)]
mod tests;
mod writer;

use std::io;
use std::path::PathBuf;

pub use container::ContainerStore;
pub use cursor::Cursor;
pub use record::{BadRecord, Batch};
pub use spool::Spool;
pub use stores::{Removal, Stores};

/// The largest record payload the store accepts. The FIFO pipeline must cap frames at or below
/// it; the engine splits lines at 16 KiB, so real entries are far smaller. The cap exists so a
/// corrupt size field can never make a reader allocate gigabytes.
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;

/// Rotation and retention of one container's store, from its log-opts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Rotate when the active segment is at or over this many bytes before a record; 0 never
    /// rotates.
    pub max_size: u64,
    /// Segments kept, the active one included; 0 counts as 1.
    pub max_file: u32,
    /// Gzip sealed segments in the background.
    pub compress: bool,
}

impl Default for StoreLimits {
    /// The engine's `local` driver defaults.
    fn default() -> Self {
        Self {
            max_size: 20 << 20,
            max_file: 5,
            compress: true,
        }
    }
}

/// A place in a container's store: a segment number and a byte offset into the uncompressed
/// segment. Record boundaries are the only positions the store hands out.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl StoreError {
    /// Damage confined to one segment (bytes that are not records, a file that cannot be read
    /// or is missing): a reader can go on with the next segment. Not a removed store.
    pub fn is_segment_damage(&self) -> bool {
        matches!(
            self,
            Self::Corrupt { .. } | Self::Decode { .. } | Self::Read { .. } | Self::Missing { .. }
        )
    }
}

/// A failed append: `error` stopped it after its first `stored` records, which are in the
/// store (a batch that spans a rotation can fail in its second segment); the rest are not.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AppendError {
    pub stored: usize,
    #[source]
    pub error: StoreError,
}

impl AppendError {
    /// Nothing of the batch was stored.
    pub(crate) fn none(error: StoreError) -> Self {
        Self { stored: 0, error }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot read {path} at offset {offset}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("cannot append to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot sync {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot cut the torn record off {path} at offset {offset}: {source}")]
    Truncate {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("cannot delete {path}: {source}")]
    Delete { path: PathBuf, source: io::Error },
    #[error("cannot compress {path}: {source}")]
    Compress { path: PathBuf, source: io::Error },
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: Damage,
    },
    #[error("record in {path} at offset {offset} is not a LogEntry: {source}")]
    Decode {
        path: PathBuf,
        offset: u64,
        source: prost::DecodeError,
    },
    #[error("segment {path} is missing (neither it nor its .gz exists)")]
    Missing { path: PathBuf },
    #[error("cannot append to {path}: a record of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("the store {path} was removed")]
    Removed { path: PathBuf },
    #[error("cannot start the store's compression thread: {source}")]
    Thread { source: io::Error },
}

/// What is wrong with the bytes at a [`StoreError::Corrupt`] offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The record's framing: a size over the limit, or sizes that differ.
    #[error(transparent)]
    Record(#[from] BadRecord),
    #[error("the segment ends inside a record")]
    SegmentEndsInsideRecord,
    #[error("the file ends inside a record")]
    FileEndsInsideRecord,
    #[error("the segment starts with a partial record")]
    SegmentStartsInsideRecord,
    #[error("trailing size {size} points before the start of the segment")]
    SizeBeforeStart { size: u32 },
    #[error("the segment got shorter while it was read")]
    SegmentShrank,
    #[error("too short for a gzip file")]
    GzipTooShort,
}
