//! One container's catalog: which segments exist (sealed, deleted, active), where a position
//! falls among them, what shippers still need (the pin) and what that backlog costs the spool,
//! and the end readers follow. Readers ([`Cursor`](super::Cursor), `tail`) and the compressor
//! consult it under the store's mutex; the writer (`writer`) appends and rotates through the
//! same [`State`]. Retention lives here because what it may delete is decided by the readers:
//! the pin and the spool budget.
//!
//! Nothing here writes a record; files are only listed, measured and deleted.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::segment::{self, Kind};
use super::spool::Spool;
use super::{Position, StoreError, StoreLimits};
use crate::container_id::ContainerId;

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
pub(crate) fn fresh_segment_number(highest: u64) -> u64 {
    highest.saturating_add(1).max(first_segment_number())
}

/// How many deleted segments' lengths are remembered for [`Cursor::skipped_bytes`](super::Cursor::skipped_bytes): a cursor
/// further behind than this many rotations counts the older ones as 0 bytes.
const DELETED_REMEMBERED: usize = 1024;

/// What readers and the compressor share with the writer.
pub(crate) struct Shared {
    id: ContainerId,
    pub(crate) dir: PathBuf,
    state: Mutex<State>,
    end_tx: watch::Sender<Position>,
    pub(crate) spool: Arc<Spool>,
}

pub(crate) struct State {
    pub(crate) limits: StoreLimits,
    /// Set by [`Shared::remove`]: the directory is gone, nothing may create files in it.
    pub(crate) removed: bool,
    /// Sealed segments still retained, oldest first.
    pub(crate) sealed: VecDeque<Sealed>,
    pub(crate) active: Active,
    /// (number, length) of segments retention deleted, oldest first, so a cursor that finds its
    /// segment gone can say how many bytes it skipped.
    pub(crate) deleted: VecDeque<(u64, Option<u64>)>,
    /// Sealed segments whose data may still be only in the page cache.
    pub(crate) unsynced: Vec<u64>,
    /// Files were created since the last sync: the directory needs an fsync too.
    pub(crate) dir_dirty: bool,
    /// Every segment numbered up to this has its directory entry on disk (0: not known).
    pub(crate) dir_synced_through: u64,
    /// The oldest position a shipper still needs: segments at or after it are kept beyond
    /// max_file as backlog, within the spool budget.
    pub(crate) pin: Option<Position>,
    /// The active segment may be shorter than positions already handed out in it: it was
    /// written by an earlier process (a power loss cuts back what the page cache had not written
    /// out, while the shipper's checkpoint, synced every second, can name a later offset), or
    /// its file system lost data under this one. Appending there would give new records the
    /// positions, and so the document ids, of records Elasticsearch may already hold (answered
    /// 409, dropped as duplicates). So it is never appended to: the next write (or
    /// [`ContainerStore::take_over`](super::ContainerStore::take_over)) starts a new segment first.
    pub(crate) retire_active: bool,
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
    pub(crate) compressing: bool,
    /// Charged raw while waiting for the compressor (see `spool`): the charge is settled, at
    /// the size on disk, when the compressor is done with it.
    pub(crate) charged_awaiting: bool,
    /// Entries in it, when known (not for segments found on disk at open).
    pub(crate) entries: Option<u64>,
    /// Bytes charged to the spool: non-zero for a backlog segment (beyond max_file, unshipped),
    /// which `docker logs` no longer shows.
    pub(crate) charged: u64,
}

pub(crate) struct Active {
    pub(crate) number: u64,
    /// None after a failed write: the descriptor is dropped at once, and the file is reopened
    /// by path before the next write. A file system that turned read-only (or filled up) and
    /// was repaired, remounted or grown meanwhile is then written again without a restart, and
    /// a dead descriptor does not keep the old mount busy (an operator cannot unmount a file
    /// system the plugin holds open).
    pub(crate) file: Option<File>,
    pub(crate) path: PathBuf,
    /// Bytes of whole records: the published end.
    pub(crate) len: u64,
    pub(crate) last_time: Option<i64>,
    /// Entries written to it, when known (not for a segment recovered at open).
    pub(crate) entries: Option<u64>,
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

/// The segments found in a store's directory at open.
pub(crate) struct Found {
    /// Sealed segments, oldest first.
    pub(crate) sealed: VecDeque<Sealed>,
    /// The active segment's number.
    pub(crate) active: u64,
    /// False when the active segment is a new one, still to be created.
    pub(crate) active_exists: bool,
}

/// Lists the segments in `dir`, settling what an interrupted compression left: a `.tmp` is
/// deleted, and a segment with both a `.log` and a `.log.gz` keeps one of them.
pub(crate) fn find(dir: &Path) -> Result<Found, StoreError> {
    let mut files: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    for (number, kind, path) in segment::list(dir)? {
        match kind {
            // Left by a compression cut short; the plain segment is still there.
            Kind::Tmp => segment::remove_if_exists(&path)?,
            Kind::Log => files.entry(number).or_default().0 = true,
            Kind::Gz => files.entry(number).or_default().1 = true,
        }
    }
    // The active segment is the highest plain one; if the highest was already compressed (a
    // crash right after rotation lost the new file), a new active one follows it.
    let (active, active_exists) = match files.last_key_value() {
        Some((&number, &(_, false))) => (number, true),
        Some((&number, &(_, true))) => (fresh_segment_number(number), false),
        None => (first_segment_number(), false),
    };
    let mut sealed = VecDeque::new();
    for (&number, &(plain, mut compressed)) in files.range(..active) {
        if plain && compressed {
            // The compressor stopped between renaming the .gz into place (after syncing it)
            // and deleting the .log: the .gz is complete, unless the file system lost part
            // of it after all (a torn gzip): then the .log is the copy to keep, and the
            // segment is compressed again.
            if segment::gz_matches_plain(dir, number) {
                segment::remove_if_exists(&segment::log_path(dir, number))?;
            } else {
                tracing::warn!(segment = number, dir = %dir.display(), "a compressed segment is torn; keeping its uncompressed copy");
                segment::remove_if_exists(&segment::gz_path(dir, number))?;
                compressed = false;
            }
        }
        sealed.push_back(Sealed {
            number,
            len: sealed_len(dir, number, compressed),
            last_time: None,
            compressed,
            queued: false,
            compressing: false,
            charged_awaiting: false,
            entries: None,
            charged: 0,
        });
    }
    Ok(Found {
        sealed,
        active,
        active_exists,
    })
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
    /// A store's bookkeeping as opened: the segments found, and the active one (`exists`:
    /// found on disk rather than created now). Compression stays off until the limits say.
    pub(crate) fn new(
        sealed: VecDeque<Sealed>,
        active: Active,
        exists: bool,
        retire_active: bool,
    ) -> Self {
        Self {
            limits: StoreLimits {
                compress: false,
                ..StoreLimits::default()
            },
            removed: false,
            sealed,
            active,
            deleted: VecDeque::new(),
            unsynced: Vec::new(),
            dir_dirty: !exists,
            // Files found on disk may be in the page cache only (an earlier process killed).
            dir_synced_through: 0,
            pin: None,
            retire_active,
        }
    }

    /// Just after the last record.
    pub(crate) fn end(&self) -> Position {
        Position {
            segment: self.active.number,
            offset: self.active.len,
        }
    }

    /// The first record `docker logs` shows (backlog kept only for shipping is not shown).
    pub(crate) fn start(&self) -> Position {
        Position {
            segment: self
                .sealed
                .iter()
                .find(|sealed| sealed.charged == 0)
                .map_or(self.active.number, |sealed| sealed.number),
            offset: 0,
        }
    }

    /// Bytes stored after `from` (uncompressed, as far as the lengths are known).
    pub(crate) fn bytes_after(&self, from: Position) -> u64 {
        let end = self.end();
        if from >= end {
            return 0;
        }
        let sealed: u64 = self
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

    /// No shipper pins a position and no backlog is charged to the spool.
    pub(crate) fn is_unpinned_and_uncharged(&self) -> bool {
        self.pin.is_none() && self.sealed.iter().all(|sealed| sealed.charged == 0)
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

    /// Deletes the oldest segments beyond max_file, except those a shipper still needs (at or
    /// after the pin): they stay as backlog while the spool budget has room for them. When it
    /// has not, the oldest backlog segment goes, and the loss is counted and logged at ERROR.
    /// A failure to delete is logged and retried after the next append: the records just
    /// written are safe either way.
    pub(crate) fn retain(&mut self, shared: &Shared) {
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

    pub(crate) fn remember_deleted(&mut self, number: u64, len: Option<u64>) {
        if self.deleted.len() == DELETED_REMEMBERED {
            self.deleted.pop_front();
        }
        self.deleted.push_back((number, len));
    }
}

impl Shared {
    pub(crate) fn new(id: ContainerId, dir: PathBuf, state: State, spool: Arc<Spool>) -> Self {
        let end = state.end();
        Self {
            id,
            dir,
            state: Mutex::new(state),
            end_tx: watch::Sender::new(end),
            spool,
        }
    }

    /// Tells subscribers the new end, if it moved.
    pub(crate) fn publish(&self, end: Position) {
        self.end_tx.send_if_modified(|published| {
            let changed = *published != end;
            *published = end;
            changed
        });
    }

    /// The end position, updated after each append.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Position> {
        self.end_tx.subscribe()
    }

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

    pub(crate) fn retire(&self) {
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
