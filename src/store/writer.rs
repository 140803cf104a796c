//! One container's write path: appending a batch to the active segment, rotating, reopening
//! the active segment after a failed write, creating or recovering it at open, and making what
//! was written durable. It works on the catalog's [`State`] under the store's mutex (except the
//! fsyncs, done outside it); which segments exist and what may be deleted is the catalog's.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::catalog::{fresh_segment_number, Active, Sealed, Shared, State};
use super::record::Batch;
use super::segment;
use super::{AppendError, StoreError};

/// Opens the active segment `number` found at open (`exists`), recovering a torn end, or
/// creates it. Also says whether it must be retired before the next append (see
/// `State::retire_active`): it was cut back now, or written by an earlier process, unless
/// `page_cache_kept` or it is `written_here` (see [`ContainerStore::open`](super::ContainerStore)).
pub(crate) fn open_active(
    dir: &Path,
    number: u64,
    exists: bool,
    written_here: Option<u64>,
    page_cache_kept: bool,
) -> Result<(Active, bool), StoreError> {
    let path = segment::log_path(dir, number);
    let mut retire_active = false;
    let (file, recovered) = if exists {
        let file = segment::open_active(&path)?;
        let on_disk = segment::file_len(&file, &path)?;
        let recovered = segment::recover(&file, &path)?;
        // Cut back now, or written by an earlier process: either way it may be shorter
        // than what was handed out from it.
        retire_active =
            recovered.len < on_disk || !(page_cache_kept || written_here == Some(number));
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
        number,
        file: Some(file),
        path,
        len: recovered.len,
        last_time: recovered.last_time,
        entries: (!exists).then_some(0),
    };
    Ok((active, retire_active))
}

impl State {
    /// Writes the batch; on failure says how many of its records (the first ones) are stored
    /// all the same, and drops the active segment's descriptor (see [`Active::file`]).
    pub(crate) fn write(&mut self, dir: &Path, batch: &Batch) -> Result<(), AppendError> {
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
    pub(crate) fn reopen_active(&mut self) -> Result<&File, StoreError> {
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

    pub(crate) fn rotate(&mut self, dir: &Path) -> Result<(), StoreError> {
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
}

/// Makes everything appended so far durable: the active segment, segments sealed since the
/// last sync, and the directory entries of new segments.
pub(crate) fn sync(shared: &Shared) -> Result<(), StoreError> {
    let (active, active_path, unsynced, dir_dirty, through) = {
        let mut state = shared.lock();
        if state.removed {
            return Err(shared.removed_error());
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
        &shared.dir,
        &unsynced,
        active.as_ref(),
        &active_path,
        dir_dirty,
    );
    if result.is_ok() && dir_dirty {
        let mut state = shared.lock();
        state.dir_synced_through = state.dir_synced_through.max(through);
    }
    if result.is_err() {
        // Try again at the next sync.
        let mut state = shared.lock();
        let active_number = state.active.number;
        state
            .unsynced
            .extend(unsynced.into_iter().filter(|&n| n != active_number));
        state.dir_dirty |= dir_dirty;
    }
    result
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
