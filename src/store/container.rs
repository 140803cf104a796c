//! One container's store, composed: the catalog of its segments (`catalog`, shared with readers
//! and the compressor), the write path (`writer`) and the compressor's queue. Its methods take
//! the store's mutex and hand each job to the part that owns it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::catalog::{self, Shared, State};
use super::compress::CompressQueue;
use super::cursor::{self, Cursor};
use super::record::Batch;
use super::spool::Spool;
use super::{tail, writer, AppendError, Position, StoreError, StoreLimits, MAX_PAYLOAD_LEN};
use crate::container_id::ContainerId;
use crate::entry::LogEntry;

pub struct ContainerStore {
    id: ContainerId,
    shared: Arc<Shared>,
    queue: CompressQueue,
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
        let found = catalog::find(&dir)?;
        let (active, retire_active) = writer::open_active(
            &dir,
            found.active,
            found.active_exists,
            written_here,
            page_cache_kept,
        )?;
        let state = State::new(found.sealed, active, found.active_exists, retire_active);
        let store = Self {
            id: id.clone(),
            shared: Arc::new(Shared::new(id, dir, state, spool)),
            queue,
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
        self.queue.queue_sealed(&self.shared, &mut state);
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
        self.queue.queue_sealed(&self.shared, &mut state);
        let end = state.end();
        drop(state);
        self.shared.publish(end);
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
        self.queue.queue_sealed(&self.shared, &mut state);
        state.retain(&self.shared);
        let end = state.end();
        drop(state);
        self.shared.publish(end);
        written
    }

    /// True when closing this store loses nothing that only this instance knows: no cursor or
    /// compression job shares its state, no shipper pins a position, and no backlog is charged
    /// to the spool (the charge is released by the instance that made it). A store opened again
    /// later finds the same files, as after a restart. The caller must hold the only handle.
    pub(crate) fn is_idle(&self) -> bool {
        if Arc::strong_count(&self.shared) > 1 {
            return false;
        }
        self.shared.lock().is_unpinned_and_uncharged()
    }

    /// Makes everything appended so far durable: the active segment, segments sealed since the
    /// last sync, and the directory entries of new segments.
    pub fn sync(&self) -> Result<(), StoreError> {
        writer::sync(&self.shared)
    }

    /// The first record `docker logs` shows (backlog kept only for shipping is not shown).
    pub fn start(&self) -> Position {
        self.shared.lock().start()
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
        self.shared.lock().bytes_after(from)
    }

    /// Just after the last record.
    pub fn end(&self) -> Position {
        self.shared.lock().end()
    }

    /// The end position, updated after each append.
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.shared.subscribe()
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
