//! One container's store: the list of segments, appends with rotation and retention, and the
//! bookkeeping readers and the compressor consult under the store's mutex.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::compress::CompressQueue;
use super::cursor::{self, Cursor};
use super::record::Batch;
use super::segment::{self, Kind};
use super::spool::Spool;
use super::{tail, AppendError, Position, StoreError, StoreLimits, MAX_PAYLOAD_LEN};
use crate::container_id::ContainerId;
use crate::entry::LogEntry;

/// The number of a new store's first segment: microseconds since the epoch. Document ids and
/// checkpoints name (segment, offset); a store removed (DESTROY_LOGS_ON_STOP, age) and created
/// again for the same container must never reuse a number, or its new lines would collide with
/// ids Elasticsearch already holds and be answered 409 (dropped as duplicates).
#[cfg(not(test))]
fn first_segment_number() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

/// The store's unit tests assert exact file names; they start at 1.
#[cfg(test)]
fn first_segment_number() -> u64 {
    1
}

/// The number of a segment started after `highest` by a process that cannot know every number
/// used before it: the highest it finds plus one, or the current time in microseconds if that is
/// more. A power loss can take a new segment's directory entry with it (the directory is synced
/// only at stop, shutdown or close), so the highest number on disk may be lower than one whose
/// entries were shipped; the time cannot be: numbers grow by one per rotation, far slower than
/// the clock, so every number handed out before is below the time of the start.
fn fresh_segment_number(highest: u64) -> u64 {
    highest.saturating_add(1).max(first_segment_number())
}

/// How many deleted segments' lengths are remembered for [`Cursor::skipped_bytes`]: a cursor
/// further behind than this many rotations counts the older ones as 0 bytes.
const DELETED_REMEMBERED: usize = 1024;

pub struct ContainerStore {
    id: ContainerId,
    shared: Arc<Shared>,
}

/// What readers and the compressor share with the writer.
pub(crate) struct Shared {
    id: ContainerId,
    pub(crate) dir: PathBuf,
    state: Mutex<State>,
    end_tx: watch::Sender<Position>,
    queue: CompressQueue,
    spool: Arc<Spool>,
}

pub(crate) struct State {
    pub(crate) limits: StoreLimits,
    /// Set by [`Shared::remove`]: the directory is gone, nothing may create files in it.
    pub(crate) removed: bool,
    /// Sealed segments still retained, oldest first.
    sealed: VecDeque<Sealed>,
    active: Active,
    /// (number, length) of segments retention deleted, oldest first, so a cursor that finds its
    /// segment gone can say how many bytes it skipped.
    deleted: VecDeque<(u64, Option<u64>)>,
    /// Sealed segments whose data may still be only in the page cache.
    unsynced: Vec<u64>,
    /// Files were created since the last sync: the directory needs an fsync too.
    dir_dirty: bool,
    /// Every segment numbered up to this has its directory entry on disk (0: not known).
    dir_synced_through: u64,
    /// The oldest position a shipper still needs: segments at or after it are kept beyond
    /// max_file as backlog, within the spool budget.
    pin: Option<Position>,
    /// The active segment may be shorter than positions already handed out in it: it was
    /// written by an earlier process (a power loss cuts back what the page cache had not written
    /// out, while the shipper's checkpoint, synced every second, can name a later offset), or
    /// its file system lost data under this one. Appending there would give new records the
    /// positions, and so the document ids, of records Elasticsearch may already hold (answered
    /// 409, dropped as duplicates). So it is never appended to: the next write (or
    /// [`ContainerStore::take_over`]) starts a new segment first.
    retire_active: bool,
}

pub(crate) struct Sealed {
    pub(crate) number: u64,
    /// Uncompressed length; None if it could not be learned at open.
    pub(crate) len: Option<u64>,
    /// Time of the last entry, once known (always for segments sealed by this process).
    pub(crate) last_time: Option<i64>,
    pub(crate) compressed: bool,
    /// Sent to the compressor (once: a failed compression is retried at the next open).
    pub(crate) queued: bool,
    /// Sent to the compressor, which has not finished with it yet.
    compressing: bool,
    /// Charged raw while waiting for the compressor (see `spool`): the charge is settled, at
    /// the size on disk, when the compressor is done with it.
    charged_awaiting: bool,
    /// Entries in it, when known (not for segments found on disk at open).
    entries: Option<u64>,
    /// Bytes charged to the spool: non-zero for a backlog segment (beyond max_file, unshipped),
    /// which `docker logs` no longer shows.
    charged: u64,
}

struct Active {
    number: u64,
    /// None after a failed write: the descriptor is dropped at once, and the file is reopened
    /// by path before the next write. A file system that turned read-only (or filled up) and
    /// was repaired, remounted or grown meanwhile is then written again without a restart, and
    /// a dead descriptor does not keep the old mount busy (an operator cannot unmount a file
    /// system the plugin holds open).
    file: Option<File>,
    path: PathBuf,
    /// Bytes of whole records: the published end.
    len: u64,
    last_time: Option<i64>,
    /// Entries written to it, when known (not for a segment recovered at open).
    entries: Option<u64>,
}

/// Where a position falls, for a cursor.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Located {
    Removed,
    /// In the active segment, which holds whole records up to `end`.
    Active {
        end: u64,
    },
    /// In a sealed segment; `next` is the following retained segment.
    Sealed {
        len: Option<u64>,
        next: u64,
    },
    /// In a segment retention deleted; `next` is the oldest retained segment after it and
    /// `skipped` the bytes lost from the position on (as far as they are remembered).
    Gone {
        next: u64,
        skipped: u64,
    },
    /// After the end (a position from a store that lost a torn tail): read from `end`.
    Beyond {
        end: Position,
    },
}

/// What cursor_since needs to pick a segment.
pub(crate) struct SincePlan {
    /// Sealed segments oldest first, with the time of their last entry if known.
    pub(crate) sealed: Vec<(u64, Option<i64>)>,
    pub(crate) active: u64,
}

impl ContainerStore {
    /// Opens the store in `dir` (which must exist), recovering the active segment. `limits` is
    /// None when the store is opened only to be read: then nothing is queued for compression
    /// until [`ContainerStore::set_limits`] says compression is wanted.
    ///
    /// `written_here` is the active segment this process last appended to in this store (see
    /// [`ContainerStore::written_here`]): only that one may be appended to again; any other
    /// active segment found on disk is retired before the next append, unless
    /// `page_cache_kept` (the host has not restarted since an earlier process wrote it: what
    /// that process wrote is all there, however it ended).
    pub(crate) fn open(
        id: ContainerId,
        dir: PathBuf,
        limits: Option<StoreLimits>,
        queue: CompressQueue,
        spool: Arc<Spool>,
        written_here: Option<u64>,
        page_cache_kept: bool,
    ) -> Result<Self, StoreError> {
        let mut files: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
        for (number, kind, path) in segment::list(&dir)? {
            match kind {
                // Left by a compression cut short; the plain segment is still there.
                Kind::Tmp => segment::remove_if_exists(&path)?,
                Kind::Log => files.entry(number).or_default().0 = true,
                Kind::Gz => files.entry(number).or_default().1 = true,
            }
        }
        // The active segment is the highest plain one; if the highest was already compressed (a
        // crash right after rotation lost the new file), a new active one follows it.
        let (active_number, active_exists) = match files.last_key_value() {
            Some((&number, &(_, false))) => (number, true),
            Some((&number, &(_, true))) => (fresh_segment_number(number), false),
            None => (first_segment_number(), false),
        };
        let mut sealed = VecDeque::new();
        for (&number, &(plain, mut compressed)) in files.range(..active_number) {
            if plain && compressed {
                // The compressor stopped between renaming the .gz into place (after syncing it)
                // and deleting the .log: the .gz is complete, unless the file system lost part
                // of it after all (a torn gzip): then the .log is the copy to keep, and the
                // segment is compressed again.
                if segment::gz_matches_plain(&dir, number) {
                    segment::remove_if_exists(&segment::log_path(&dir, number))?;
                } else {
                    tracing::warn!(segment = number, dir = %dir.display(), "a compressed segment is torn; keeping its uncompressed copy");
                    segment::remove_if_exists(&segment::gz_path(&dir, number))?;
                    compressed = false;
                }
            }
            sealed.push_back(Sealed {
                number,
                len: sealed_len(&dir, number, compressed),
                last_time: None,
                compressed,
                queued: false,
                compressing: false,
                charged_awaiting: false,
                entries: None,
                charged: 0,
            });
        }
        let path = segment::log_path(&dir, active_number);
        let mut retire_active = false;
        let (file, recovered) = if active_exists {
            let file = segment::open_active(&path)?;
            let on_disk = segment::file_len(&file, &path)?;
            let recovered = segment::recover(&file, &path)?;
            // Cut back now, or written by an earlier process: either way it may be shorter
            // than what was handed out from it.
            retire_active = recovered.len < on_disk
                || !(page_cache_kept || written_here == Some(active_number));
            (file, recovered)
        } else {
            // A new segment: its entries are counted from here.
            let file = segment::create_active(&path)?;
            let fresh = segment::Recovered {
                len: 0,
                last_time: None,
            };
            (file, fresh)
        };
        let active = Active {
            number: active_number,
            file: Some(file),
            path,
            len: recovered.len,
            last_time: recovered.last_time,
            entries: (!active_exists).then_some(0),
        };
        let end = Position {
            segment: active.number,
            offset: active.len,
        };
        let state = State {
            limits: StoreLimits {
                compress: false,
                ..StoreLimits::default()
            },
            removed: false,
            sealed,
            active,
            deleted: VecDeque::new(),
            unsynced: Vec::new(),
            dir_dirty: !active_exists,
            // Files found on disk may be in the page cache only (an earlier process killed).
            dir_synced_through: 0,
            pin: None,
            retire_active,
        };
        let store = Self {
            id: id.clone(),
            shared: Arc::new(Shared {
                id,
                dir,
                state: Mutex::new(state),
                end_tx: watch::Sender::new(end),
                queue,
                spool,
            }),
        };
        if let Some(limits) = limits {
            store.set_limits(limits);
        }
        Ok(store)
    }

    pub fn id(&self) -> &ContainerId {
        &self.id
    }

    /// New limits apply from the next append. Turning compression on queues the sealed segments
    /// not yet compressed.
    pub fn set_limits(&self, limits: StoreLimits) {
        let mut state = self.shared.lock();
        state.limits = limits;
        state.queue_compression(&self.shared);
    }

    /// Makes this process the store's writer: an active segment that must not be appended to
    /// (see `State::retire_active`) is sealed now, and a new one started, before any shipper
    /// attaches: a shipper whose checkpoint lies past the old segment's end then starts in the
    /// new one (see [`Cursor`]), so the id of its first new document is new too. A failure is
    /// logged; the next append tries again (and reports it).
    pub(crate) fn take_over(&self) {
        let mut state = self.shared.lock();
        if !state.retire_active || state.removed {
            return;
        }
        // Cut back to its last whole record first, as before any rotation.
        let rotated = match state.reopen_active() {
            Ok(_) => state.rotate(&self.shared.dir),
            Err(error) => Err(error),
        };
        if let Err(error) = rotated {
            tracing::warn!(%error, container = self.id.short(), "cannot start a new segment after a restart; the next append tries again");
            return;
        }
        state.queue_compression(&self.shared);
        let end = state.end();
        drop(state);
        self.publish(end);
    }

    /// The active segment, if this process may append to it again after the store is closed and
    /// opened again (no restart in between can have cut it back).
    pub(crate) fn written_here(&self) -> Option<u64> {
        let state = self.shared.lock();
        (!state.retire_active && !state.removed).then_some(state.active.number)
    }

    /// Appends the whole batch: one `write` per segment touched (rotating between records when
    /// the active segment is at or over max_size before a record), then deletes segments beyond
    /// max_file (oldest first), queues sealed segments for compression, then publishes the new
    /// end position to subscribers. Synchronous (page-cache writes).
    ///
    /// An error means some records were not stored: the first [`AppendError::stored`] are
    /// (written before the failed write, in a segment before it) and are published; the rest
    /// are not. Failures to delete or compress old segments are logged, not returned: the
    /// batch itself is safe.
    pub fn append(&self, batch: &Batch) -> Result<(), AppendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.lock();
        if state.removed {
            return Err(AppendError::none(self.shared.removed_error()));
        }
        if batch.largest_payload() > MAX_PAYLOAD_LEN {
            return Err(AppendError::none(StoreError::TooLarge {
                path: state.active.path.clone(),
                len: batch.largest_payload(),
                max: MAX_PAYLOAD_LEN,
            }));
        }
        let written = state.write(&self.shared.dir, batch);
        // Queued first: a segment that becomes backlog at once is charged as one the compressor
        // will shrink.
        state.queue_compression(&self.shared);
        state.retain(&self.shared);
        let end = state.end();
        drop(state);
        self.publish(end);
        written
    }

    fn publish(&self, end: Position) {
        self.shared.end_tx.send_if_modified(|published| {
            let changed = *published != end;
            *published = end;
            changed
        });
    }

    /// True when closing this store loses nothing that only this instance knows: no cursor or
    /// compression job shares its state, no shipper pins a position, and no backlog is charged
    /// to the spool (the charge is released by the instance that made it). A store opened again
    /// later finds the same files, as after a restart. The caller must hold the only handle.
    pub(crate) fn is_idle(&self) -> bool {
        if Arc::strong_count(&self.shared) > 1 {
            return false;
        }
        let state = self.shared.lock();
        state.pin.is_none() && state.sealed.iter().all(|sealed| sealed.charged == 0)
    }

    /// Makes everything appended so far durable: the active segment, segments sealed since the
    /// last sync, and the directory entries of new segments.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (active, active_path, unsynced, dir_dirty, through) = {
            let mut state = self.shared.lock();
            if state.removed {
                return Err(self.shared.removed_error());
            }
            // Closed after a failed write: synced by path like a sealed segment.
            let active = match &state.active.file {
                Some(file) => Some(file.try_clone().map_err(|source| StoreError::Sync {
                    path: state.active.path.clone(),
                    source,
                })?),
                None => None,
            };
            let active_path = state.active.path.clone();
            let mut unsynced = std::mem::take(&mut state.unsynced);
            if active.is_none() {
                unsynced.push(state.active.number);
            }
            let dir_dirty = std::mem::replace(&mut state.dir_dirty, false);
            (
                active,
                active_path,
                unsynced,
                dir_dirty,
                state.active.number,
            )
        };
        // fsync outside the lock: appends go on meanwhile.
        let result = sync_files(
            &self.shared.dir,
            &unsynced,
            active.as_ref(),
            &active_path,
            dir_dirty,
        );
        if result.is_ok() && dir_dirty {
            let mut state = self.shared.lock();
            state.dir_synced_through = state.dir_synced_through.max(through);
        }
        if result.is_err() {
            // Try again at the next sync.
            let mut state = self.shared.lock();
            let active_number = state.active.number;
            state
                .unsynced
                .extend(unsynced.into_iter().filter(|&n| n != active_number));
            state.dir_dirty |= dir_dirty;
        }
        result
    }

    /// The first record `docker logs` shows (backlog kept only for shipping is not shown).
    pub fn start(&self) -> Position {
        let state = self.shared.lock();
        Position {
            segment: state
                .sealed
                .iter()
                .find(|sealed| sealed.charged == 0)
                .map_or(state.active.number, |sealed| sealed.number),
            offset: 0,
        }
    }

    /// Tells retention what a shipper still needs: segments at or after `pin` outlive
    /// max_file as backlog, within the spool budget; None lets them go. Setting it deletes the
    /// backlog that is no longer needed.
    pub fn set_pin(&self, pin: Option<Position>) {
        let mut state = self.shared.lock();
        if state.pin == pin || state.removed {
            return;
        }
        state.pin = pin;
        state.retain(&self.shared);
    }

    /// Bytes stored after `from` (uncompressed, as far as the lengths are known): what a
    /// shipper at `from` has left to send.
    pub fn bytes_after(&self, from: Position) -> u64 {
        let state = self.shared.lock();
        let end = state.end();
        if from >= end {
            return 0;
        }
        let sealed: u64 = state
            .sealed
            .iter()
            .filter(|sealed| sealed.number >= from.segment)
            .map(|sealed| {
                let len = sealed.len.unwrap_or(0);
                if sealed.number == from.segment {
                    len.saturating_sub(from.offset)
                } else {
                    len
                }
            })
            .sum();
        let active = if from.segment == end.segment {
            end.offset.saturating_sub(from.offset)
        } else {
            end.offset
        };
        sealed + active
    }

    /// Just after the last record.
    pub fn end(&self) -> Position {
        self.shared.lock().end()
    }

    /// The end position, updated after each append.
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.shared.end_tx.subscribe()
    }

    /// The last `n` entries, oldest first; an error if any of them cannot be read. Holds the
    /// `n` entries, not the segments they come from (see `tail`).
    pub fn tail(&self, n: usize) -> Result<Vec<LogEntry>, StoreError> {
        Ok(tail::tail(&self.shared, n)?.0)
    }

    /// Where the last `n` entries start, and the end they were counted up to, without keeping
    /// any of them (see `tail`): `docker logs --tail` reads forward from one to the other, and a
    /// follow goes on from the end, missing nothing and repeating nothing.
    pub fn tail_start(&self, n: usize) -> Result<(Position, Position), StoreError> {
        tail::start(&self.shared, tail::Limit::records(n))
    }

    /// Like [`tail_start`](Self::tail_start), for the last entries whose records (framing
    /// included) add up to at most `bytes`.
    pub fn tail_start_within(&self, bytes: u64) -> Result<(Position, Position), StoreError> {
        tail::start(&self.shared, tail::Limit::bytes(bytes))
    }

    /// A forward reader from `from` (moved to start() if rotation deleted that data).
    pub fn cursor(&self, from: Position) -> Cursor {
        Cursor::new(Arc::clone(&self.shared), from)
    }

    /// A forward reader at the first segment that may hold entries with time_nano >= since
    /// (judged by each sealed segment's last entry time), so `--since` skips whole old files.
    /// The caller still filters the entries it reads.
    pub fn cursor_since(&self, since_nano: i64) -> Result<Cursor, StoreError> {
        cursor::since(Arc::clone(&self.shared), since_nano)
    }

    /// Retires the store before its directory is deleted: it refuses appends and reads from
    /// then on, and its backlog charges go back to the spool. Under the store's lock, so a
    /// compression job in flight finishes before and creates nothing after.
    pub(crate) fn retire(&self) {
        self.shared.retire()
    }

    /// True while a shipper pins a position (see [`set_pin`](Self::set_pin)).
    pub(crate) fn is_pinned(&self) -> bool {
        self.shared.lock().pin.is_some()
    }
}

fn sync_files(
    dir: &Path,
    unsynced: &[u64],
    active: Option<&File>,
    active_path: &Path,
    dir_dirty: bool,
) -> Result<(), StoreError> {
    for &number in unsynced {
        // Any descriptor of the file flushes its data. A missing .log was compressed (the .gz
        // was synced before its rename) or deleted.
        let path = segment::log_path(dir, number);
        match File::open(&path) {
            Ok(file) => file
                .sync_data()
                .map_err(|source| StoreError::Sync { path, source })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Sync { path, source }),
        }
    }
    if let Some(active) = active {
        active.sync_data().map_err(|source| StoreError::Sync {
            path: active_path.to_owned(),
            source,
        })?;
    }
    if dir_dirty {
        segment::sync_dir(dir)?;
    }
    Ok(())
}

/// The uncompressed length of a sealed segment found at open, if it can be learned cheaply.
fn sealed_len(dir: &Path, number: u64, compressed: bool) -> Option<u64> {
    let path = if compressed {
        segment::gz_path(dir, number)
    } else {
        segment::log_path(dir, number)
    };
    let len = File::open(&path)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })
        .and_then(|file| {
            if compressed {
                segment::gz_len(&file, &path)
            } else {
                segment::file_len(&file, &path)
            }
        });
    match len {
        Ok(len) => Some(len),
        Err(error) => {
            // Only the skip shortcuts need it; reading the segment will report the problem.
            tracing::warn!(%error, "cannot learn a sealed segment's length");
            None
        }
    }
}

impl State {
    fn end(&self) -> Position {
        Position {
            segment: self.active.number,
            offset: self.active.len,
        }
    }

    /// The retained sealed segment `number`, if the store is not removed.
    pub(crate) fn sealed_mut(&mut self, number: u64) -> Option<&mut Sealed> {
        if self.removed {
            return None;
        }
        let index = self
            .sealed
            .binary_search_by_key(&number, |sealed| sealed.number)
            .ok()?;
        self.sealed.get_mut(index)
    }

    /// Writes the batch; on failure says how many of its records (the first ones) are stored
    /// all the same, and drops the active segment's descriptor (see [`Active::file`]).
    fn write(&mut self, dir: &Path, batch: &Batch) -> Result<(), AppendError> {
        let mut stored = 0;
        let written = self.write_records(dir, batch, &mut stored);
        written.map_err(|error| {
            self.active.file = None;
            AppendError { stored, error }
        })
    }

    fn write_records(
        &mut self,
        dir: &Path,
        batch: &Batch,
        stored: &mut usize,
    ) -> Result<(), StoreError> {
        let max_size = self.limits.max_size;
        let full = |len: u64| max_size > 0 && len >= max_size;
        let mut first = 0;
        while first < batch.len() {
            // Before a rotation too: a sealed segment must end with its last whole record.
            self.reopen_active()?;
            if self.retire_active || full(self.active.len) {
                self.rotate(dir)?;
            }
            // Take records until the segment reaches max_size: the one that reaches it is
            // still written here, the next one goes to a new segment.
            let mut len = self.active.len;
            let mut next = first;
            while next < batch.len() {
                len += batch.record_len(next);
                next += 1;
                if full(len) {
                    break;
                }
            }
            let mut file = self.reopen_active()?;
            // On failure a part of it may be in the file; `reopen_active` cuts it off.
            file.write_all(batch.encoded(first..next))
                .map_err(|source| StoreError::Write {
                    path: self.active.path.clone(),
                    source,
                })?;
            self.active.len = len;
            self.active.last_time = Some(batch.time_nano(next - 1));
            if let Some(entries) = self.active.entries.as_mut() {
                *entries += (next - first) as u64;
            }
            *stored = next;
            first = next;
        }
        Ok(())
    }

    /// The active segment's descriptor; after a failed write, the file opened again by path and
    /// cut back to its last whole record (a failed write may have left part of a record).
    fn reopen_active(&mut self) -> Result<&File, StoreError> {
        let file = match self.active.file.take() {
            Some(file) => file,
            None => self.reopen_by_path()?,
        };
        Ok(self.active.file.insert(file))
    }

    fn reopen_by_path(&mut self) -> Result<File, StoreError> {
        let path = &self.active.path;
        let file = segment::open_active(path)?;
        let on_disk = segment::file_len(&file, path)?;
        if on_disk >= self.active.len {
            file.set_len(self.active.len)
                .map_err(|source| StoreError::Truncate {
                    path: path.clone(),
                    offset: self.active.len,
                    source,
                })?;
        } else {
            // Shorter than what was written: the file system lost data it had not written out
            // (an emergency read-only remount drops dirty pages). Keep what is whole.
            let recovered = segment::recover(&file, path)?;
            tracing::warn!(path = %path.display(), lost_bytes = self.active.len - recovered.len, "the active segment lost data its file system had not written out");
            self.active.len = recovered.len;
            self.active.last_time = recovered.last_time;
            self.active.entries = None;
            // Positions past the new end were handed out: never again in this segment.
            self.retire_active = true;
        }
        Ok(file)
    }

    fn rotate(&mut self, dir: &Path) -> Result<(), StoreError> {
        let number = if self.retire_active {
            fresh_segment_number(self.active.number)
        } else {
            self.active.number + 1
        };
        let path = segment::log_path(dir, number);
        let file = segment::create_active(&path)?;
        self.retire_active = false;
        let new = Active {
            number,
            file: Some(file),
            path,
            len: 0,
            last_time: None,
            entries: Some(0),
        };
        let old = std::mem::replace(&mut self.active, new);
        self.dir_dirty = true;
        if old.len == 0 {
            // Only a retired segment is sealed empty (rotation otherwise needs max_size bytes):
            // it holds nothing, and a sealed segment is never empty (see `Cursor::read`).
            match segment::remove_if_exists(&old.path) {
                Ok(()) => {
                    self.remember_deleted(old.number, Some(0));
                    return Ok(());
                }
                Err(error) => tracing::warn!(%error, "cannot delete an empty segment; it is kept"),
            }
        }
        self.sealed.push_back(Sealed {
            number: old.number,
            len: Some(old.len),
            last_time: old.last_time,
            compressed: false,
            queued: false,
            compressing: false,
            charged_awaiting: false,
            entries: old.entries,
            charged: 0,
        });
        self.unsynced.push(old.number);
        Ok(())
    }

    /// Deletes the oldest segments beyond max_file, except those a shipper still needs (at or
    /// after the pin): they stay as backlog while the spool budget has room for them. When it
    /// has not, the oldest backlog segment goes, and the loss is counted and logged at ERROR.
    /// A failure to delete is logged and retried after the next append: the records just
    /// written are safe either way.
    fn retain(&mut self, shared: &Shared) {
        if self.removed {
            return;
        }
        let window = (self.limits.max_file.max(1) - 1) as usize;
        loop {
            let beyond = self.sealed.len().saturating_sub(window);
            let Some(oldest) = self.sealed.front() else {
                return;
            };
            if beyond == 0 {
                return;
            }
            let needed = self.pin.is_some_and(|pin| oldest.number >= pin.segment);
            if needed {
                if self.charge_backlog(shared, beyond) {
                    return;
                }
                // Over budget: the oldest unshipped data goes.
                if !self.drop_oldest_backlog(shared) {
                    return;
                }
            } else if !self.delete_oldest(&shared.dir, &shared.spool) {
                return;
            }
        }
    }

    /// After a backlog segment's charge settled over the budget: the oldest backlog goes until
    /// the budget holds again (or this store has no backlog left).
    fn trim_backlog(&mut self, shared: &Shared) {
        while shared.spool.over_budget()
            && self.sealed.front().is_some_and(|oldest| oldest.charged > 0)
        {
            if !self.drop_oldest_backlog(shared) {
                return;
            }
        }
    }

    /// Deletes the oldest sealed segment, which a shipper still needs: a loss, counted and
    /// logged at ERROR. False if it could not be deleted (logged).
    fn drop_oldest_backlog(&mut self, shared: &Shared) -> bool {
        let Some(oldest) = self.sealed.front() else {
            return false;
        };
        let (number, len, entries) = (oldest.number, oldest.len, oldest.entries);
        if !self.delete_oldest(&shared.dir, &shared.spool) {
            return false;
        }
        let bytes = len.unwrap_or(0);
        shared.spool.record_drop(bytes, entries);
        tracing::error!(
            container = shared.id.short(),
            segment = number,
            lost_bytes = bytes,
            lost_entries = ?entries,
            spool_max = shared.spool.max(),
            "the spool budget is full: unshipped log entries deleted before Elasticsearch acknowledged them (raise SPOOL_MAX_SIZE, or bring Elasticsearch back)"
        );
        true
    }

    /// Charges the first `beyond` sealed segments (the backlog) that are not charged yet. False
    /// when one does not fit the budget.
    fn charge_backlog(&mut self, shared: &Shared, beyond: usize) -> bool {
        for sealed in self.sealed.iter_mut().take(beyond) {
            if sealed.charged > 0 {
                continue;
            }
            let size = segment::disk_size(&shared.dir, sealed.number, sealed.compressed)
                .or(sealed.len)
                .unwrap_or(0)
                .max(1);
            let awaiting = sealed.compressing && !sealed.compressed;
            if !shared.spool.try_charge(size, awaiting) {
                return false;
            }
            sealed.charged = size;
            sealed.charged_awaiting = awaiting;
        }
        true
    }

    /// Deletes the oldest sealed segment and gives back its spool charge. False if it could not
    /// be deleted (logged).
    fn delete_oldest(&mut self, dir: &Path, spool: &Spool) -> bool {
        let Some(oldest) = self.sealed.front() else {
            return false;
        };
        let (number, len, charged, awaiting) = (
            oldest.number,
            oldest.len,
            oldest.charged,
            oldest.charged_awaiting,
        );
        // The .tmp too: if the compressor is writing it, it finds the segment gone when it
        // comes to rename, and drops its work.
        let deleted = [
            segment::log_path(dir, number),
            segment::gz_path(dir, number),
            segment::tmp_path(dir, number),
        ]
        .iter()
        .try_for_each(|path| segment::remove_if_exists(path));
        if let Err(error) = deleted {
            tracing::warn!(%error, "cannot delete a segment beyond max-file");
            return false;
        }
        spool.release(charged, awaiting);
        self.sealed.pop_front();
        self.remember_deleted(number, len);
        self.unsynced.retain(|&unsynced| unsynced != number);
        true
    }

    fn remember_deleted(&mut self, number: u64, len: Option<u64>) {
        if self.deleted.len() == DELETED_REMEMBERED {
            self.deleted.pop_front();
        }
        self.deleted.push_back((number, len));
    }

    fn queue_compression(&mut self, shared: &Arc<Shared>) {
        if !self.limits.compress || self.removed {
            return;
        }
        for sealed in self.sealed.iter_mut() {
            if !sealed.compressed && !sealed.queued {
                sealed.queued = shared.queue.send(Arc::clone(shared), sealed.number);
                sealed.compressing = sealed.queued;
            }
        }
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the bookkeeping as consistent as after
        // any failed append; refusing every later append would lose more.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn removed_error(&self) -> StoreError {
        StoreError::Removed {
            path: self.dir.clone(),
        }
    }

    fn retire(&self) {
        let mut state = self.lock();
        state.removed = true;
        for sealed in &state.sealed {
            self.spool.release(sealed.charged, sealed.charged_awaiting);
        }
    }

    pub(crate) fn locate(&self, at: Position) -> Located {
        let state = self.lock();
        if state.removed {
            return Located::Removed;
        }
        let end = state.end();
        if at > end {
            return Located::Beyond { end };
        }
        if at.segment == end.segment {
            return Located::Active { end: end.offset };
        }
        let next_after = |index: usize| {
            state
                .sealed
                .get(index)
                .map_or(end.segment, |sealed| sealed.number)
        };
        match state
            .sealed
            .binary_search_by_key(&at.segment, |sealed| sealed.number)
        {
            Ok(index) => Located::Sealed {
                len: state.sealed[index].len,
                next: next_after(index + 1),
            },
            Err(index) => {
                let next = next_after(index);
                let skipped = state
                    .deleted
                    .iter()
                    .filter(|(number, _)| (at.segment..next).contains(number))
                    .map(|&(number, len)| {
                        let len = len.unwrap_or(0);
                        if number == at.segment {
                            len.saturating_sub(at.offset)
                        } else {
                            len
                        }
                    })
                    .sum();
                Located::Gone { next, skipped }
            }
        }
    }

    /// For tail: the retained segments, newest first, and the end.
    pub(crate) fn tail_plan(&self) -> Result<(Vec<u64>, Position), StoreError> {
        let state = self.lock();
        if state.removed {
            return Err(self.removed_error());
        }
        let mut newest_first = vec![state.active.number];
        newest_first.extend(
            state
                .sealed
                .iter()
                .rev()
                .take_while(|sealed| sealed.charged == 0)
                .map(|sealed| sealed.number),
        );
        Ok((newest_first, state.end()))
    }

    /// For cursor_since: the sealed segments oldest first with their last time if known, and the
    /// active segment's number.
    pub(crate) fn since_plan(&self) -> Result<SincePlan, StoreError> {
        let state = self.lock();
        if state.removed {
            return Err(self.removed_error());
        }
        let sealed = state
            .sealed
            .iter()
            .filter(|sealed| sealed.charged == 0)
            .map(|sealed| (sealed.number, sealed.last_time))
            .collect();
        Ok(SincePlan {
            sealed,
            active: state.active.number,
        })
    }

    /// Makes segment `number`'s directory entry durable before a reader hands out a position
    /// in it (the shipper turns positions into document ids). A power loss that took the entry
    /// would let the next process number a new segment the same (it knows only the numbers on
    /// disk, and the clock it also goes by can be set back at boot, on a host without a
    /// battery-backed clock), and documents of both would share ids. One directory fsync per
    /// new segment, on the reader's thread: appends never wait for it. A failure is logged, not
    /// returned: the records are readable, and the clock still guards the numbers.
    pub(crate) fn make_entry_durable(&self, number: u64) {
        let through = {
            let state = self.lock();
            if number <= state.dir_synced_through || state.removed {
                return;
            }
            state.active.number
        };
        match segment::sync_dir(&self.dir) {
            Ok(()) => {
                let mut state = self.lock();
                state.dir_synced_through = state.dir_synced_through.max(through);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot sync a store's directory; a power loss now could let a new segment reuse this one's number")
            }
        }
    }

    /// The compressor is done with segment `number`, compressed or not: a charge it had while
    /// waiting settles at its size on disk now, and if the budget no longer holds, this
    /// store's oldest backlog goes.
    pub(crate) fn compression_done(&self, number: u64) {
        let mut state = self.lock();
        let dir = &self.dir;
        let Some(sealed) = state.sealed_mut(number) else {
            return;
        };
        sealed.compressing = false;
        if !sealed.charged_awaiting {
            return;
        }
        let size = segment::disk_size(dir, number, sealed.compressed)
            .unwrap_or(sealed.charged)
            .max(1);
        let over = self.spool.settle(sealed.charged, size);
        sealed.charged = size;
        sealed.charged_awaiting = false;
        if over {
            state.trim_backlog(self);
        }
    }

    pub(crate) fn remember_last_time(&self, number: u64, time_nano: i64) {
        if let Some(sealed) = self.lock().sealed_mut(number) {
            sealed.last_time = Some(time_nano);
        }
    }
}
