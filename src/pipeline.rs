//! One logging run: drain a container's FIFO into its store until the engine stops it (or closes
//! the FIFO), without ever stopping to read.
//!
//! Each round peeks the pipe's content (`fifo`), hands whole frames to the decoder, appends the
//! valid entries to the store in one batch, and only then consumes those bytes from the pipe.
//! Whatever fails downstream, the bytes are consumed: a store that cannot write (disk full,
//! read-only) costs the entries of that round, which are counted and logged at ERROR, but the
//! container is never blocked. An incomplete frame stays in the pipe until the rest of it comes.
//!
//! A frame larger than one peek can show (the plugin's pipes are small past the kernel's pipe
//! budget, see `fifo`) is read by consuming instead: once the pipe holds all of it, it is read
//! and stored at once; a frame larger than the FIFO itself is read as it comes and stored when
//! whole. A frame over [`MAX_PAYLOAD`] is skipped as its bytes come and counted as lost.
//!
//! After a plugin crash the round that was stored but not yet consumed is read again; a
//! [`ReplayFilter`] (`replay`) recognises those repeated entries against the end of the store
//! and drops them, so a crash costs neither a line nor a duplicate.
//!
//! A run reopened after a restart may find its container's store unopenable (a read-only or
//! broken state dir): it drains the FIFO all the same, counting what it cannot keep as lost,
//! and tries to open the store again now and then (see [`StoreSlot`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::entry::{self, LogEntry};
use crate::fifo::{page_size, Fifo, Peek, Read, WANTED_PIPE_SIZE};
use crate::frame::{FrameDecoder, MAX_PAYLOAD, PREFIX};
use crate::metrics::{IngestCounts, IngestMetrics};
use crate::replay::ReplayFilter;
use crate::store::{Batch, ContainerStore};

pub(crate) mod slot;
pub use slot::{OpenStore, StoreSlot};

/// A drain that took less than this (a quarter of the default 1 MiB pipe; a quarter of the FIFO
/// when the kernel left it smaller, past its pipe budget) makes the run wait [`SETTLE`] before
/// it looks at the pipe again.
///
/// The engine writes one frame per log line. A reader that wakes for every few frames costs both
/// sides a wakeup per write (the kernel wakes a pipe's reader on each write into an empty pipe)
/// and costs us four syscalls per round (tee, read, write to the store, splice). Letting a
/// millisecond of lines gather turns that into one round per millisecond at any line rate. It
/// cannot block the engine: after a drain under a quarter of the pipe, filling the other
/// three quarters within the pause would take over 700 MB/s, far beyond what the engine's
/// per-line writes reach; and a drain that took more than that never pauses.
const SMALL_DRAIN: u64 = 256 << 10;
const SETTLE: Duration = Duration::from_millis(1);

/// How often a pipe holding an incomplete frame is looked at again without a readiness event
/// (see `Pipeline::run`).
const INCOMPLETE_RECHECK: Duration = Duration::from_millis(20);

/// At shutdown, how long the writer of a frame half read into memory (one larger than the FIFO)
/// gets to finish it: the engine writes a frame in one go, so its rest comes at once unless the
/// engine itself is stuck.
const TAKEN_FRAME_GRACE: Duration = Duration::from_secs(2);

/// A buffer a large frame was read into is kept for the next one up to this size; so is the
/// peek buffer once a burst is over.
const KEEP_TAKEN: usize = 64 << 10;

/// At most one ERROR line per kind of loss in this long, each with the count since the last.
const LOSS_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Counts for one logging run, logged when it ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// Entries appended to the store.
    pub entries: u64,
    /// Bytes of frames read (prefix included).
    pub bytes: u64,
    /// Frames over [`MAX_PAYLOAD`], skipped (each also counted in `lost`).
    pub oversized: u64,
    /// Frames whose payload is not a LogEntry, skipped.
    pub invalid: u64,
    /// Bytes of an incomplete frame left when the run ended.
    pub truncated_bytes: u64,
    /// Entries lost: the store could not write them, or their frame was over [`MAX_PAYLOAD`].
    pub lost: u64,
    /// Entries dropped after a crash because the store already had them.
    pub replayed: u64,
}

impl RunStats {
    /// The counts added since `earlier` (a snapshot of the same run).
    fn since(&self, earlier: &RunStats) -> RunStats {
        RunStats {
            entries: self.entries - earlier.entries,
            bytes: self.bytes - earlier.bytes,
            oversized: self.oversized - earlier.oversized,
            invalid: self.invalid - earlier.invalid,
            truncated_bytes: self.truncated_bytes.saturating_sub(earlier.truncated_bytes),
            lost: self.lost - earlier.lost,
            replayed: self.replayed - earlier.replayed,
        }
    }

    /// What the metrics endpoint counts of these.
    fn ingest_counts(&self) -> IngestCounts {
        IngestCounts {
            entries: self.entries,
            bytes: self.bytes,
            frames_skipped: self.oversized + self.invalid,
            lost: self.lost,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// StopLogging: the engine is done with this FIFO.
    Stopped,
    /// The engine closed the FIFO without StopLogging (live-restore, engine restart).
    Eof,
    /// The plugin is shutting down; the engine still holds the FIFO and the run resumes at the
    /// next start.
    Shutdown,
    /// Reading the FIFO failed in a way retrying cannot fix.
    Failed,
}

/// A request to stop, answered with the run's counts once the pipe is drained.
pub type StopRequest = oneshot::Sender<RunStats>;

/// What one drain pass left in the pipe.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    Empty,
    /// Only the start of a frame is there: this many bytes of it in the pipe (and perhaps more
    /// already taken out, see [`Drainer::taken`]).
    Incomplete(usize),
    Eof,
}

/// Where reading a frame by consuming it stands.
enum Taking {
    /// Stored (or handed to the decoder to skip); nothing is taken any more.
    Done,
    /// The rest has not come yet.
    Waiting,
    /// The writer is gone before the rest came.
    Eof,
}

/// Rate limit for the ERROR lines of one kind of loss.
#[derive(Debug, Default)]
struct LossLog {
    last: Option<Instant>,
    /// Lost since the last line.
    pending: u64,
}

impl LossLog {
    /// Adds `n` lost entries; returns the count to log now if a line is due.
    fn add(&mut self, n: u64) -> Option<u64> {
        self.pending += n;
        let due = self.last.is_none_or(|at| at.elapsed() >= LOSS_REPORT_EVERY);
        if !due || self.pending == 0 {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.pending))
    }
}

struct Drainer {
    store: StoreSlot,
    decoder: FrameDecoder,
    peeked: Vec<u8>,
    batch: Batch,
    stats: RunStats,
    replay: Option<ReplayFilter>,
    /// A frame being read by consuming it (see `fifo`): its bytes so far, prefix first. Empty
    /// when no frame is being taken.
    taken: Vec<u8>,
    store_losses: LossLog,
    oversized_losses: LossLog,
    /// A drain that took less than this makes the next wait settle (see [`SMALL_DRAIN`]).
    small_drain: u64,
    /// The last drain was small: let lines gather before the next (see [`SMALL_DRAIN`]).
    settle: bool,
    /// Where the counts go as they grow (the metrics endpoint), and what was added so far.
    metrics: Option<Arc<IngestMetrics>>,
    published: RunStats,
}

pub struct Pipeline {
    fifo: Fifo,
    drainer: Drainer,
    /// Bytes were drained before `run` ([`Pipeline::drain_replayed`]): `run` looks at the pipe
    /// before it waits for an edge.
    drained_before: bool,
}

impl Pipeline {
    pub fn new(fifo: Fifo, store: Arc<ContainerStore>, replay: Option<ReplayFilter>) -> Self {
        Self::with_slot(fifo, StoreSlot::Open(store), replay)
    }

    /// A run whose store could not be opened: it drains all the same (see [`StoreSlot`]).
    pub fn without_store(fifo: Fifo, open: OpenStore) -> Self {
        Self::with_slot(fifo, StoreSlot::missing(open), None)
    }

    fn with_slot(fifo: Fifo, store: StoreSlot, replay: Option<ReplayFilter>) -> Self {
        // The settling pause assumes a drain under a quarter of the pipe: with a FIFO the kernel
        // would not raise (past the pipe budget), a quarter of what it has.
        let fifo_size = fifo.pipe_size().unwrap_or(WANTED_PIPE_SIZE);
        if fifo_size < WANTED_PIPE_SIZE {
            tracing::info!(
                fifo_bytes = fifo_size,
                "the FIFO keeps {fifo_size} bytes, the kernel refused more: root's pipe budget \
                 (fs.pipe-user-pages-soft) is used up on this host; lines are read whole anyway"
            );
        }
        Self {
            fifo,
            drained_before: false,
            drainer: Drainer {
                store,
                decoder: FrameDecoder::new(MAX_PAYLOAD),
                peeked: Vec::new(),
                batch: Batch::default(),
                stats: RunStats::default(),
                replay: replay.filter(|r| !r.is_done()),
                taken: Vec::new(),
                store_losses: LossLog::default(),
                oversized_losses: LossLog::default(),
                small_drain: SMALL_DRAIN.min(fifo_size as u64 / 4),
                settle: false,
                metrics: None,
                published: RunStats::default(),
            },
        }
    }

    /// Publishes the run's counts to `metrics` as they grow, not only when the run ends.
    pub fn with_metrics(mut self, metrics: Arc<IngestMetrics>) -> Self {
        self.drainer.metrics = Some(metrics);
        self
    }

    /// Drains, on the caller's thread, what a reopened FIFO holds while its replay filter is
    /// still deciding: finding a crash's round in the store's end may decompress a whole gzip
    /// segment, which must not hold a runtime thread (a hundred reopened FIFOs did, and the API
    /// went unanswered for 8 s). Called on the blocking pool before [`Self::run`]; drains until
    /// the pipe is empty (or holds a frame's start), and `run` looks again first thing.
    pub fn drain_replayed(&mut self) {
        if self.drainer.replay.is_none() {
            return;
        }
        self.drained_before = true;
        if let Err(error) = self.drainer.drain(&self.fifo) {
            tracing::warn!(%error, file = %self.fifo.path().display(), "reading the reopened FIFO failed; the run goes on reading it");
        }
    }

    /// Drains until stopped, shut down, or the engine closes the FIFO.
    pub async fn run(
        mut self,
        mut stop: oneshot::Receiver<StopRequest>,
        shutdown: CancellationToken,
    ) -> (RunEnd, RunStats) {
        // True while the start of a frame waits in the pipe for the rest of it. After
        // `drain_replayed` the pipe may still hold a frame's start (or its writer be gone), and
        // readiness is edge-triggered: look once before waiting. (Not for a new FIFO: until the
        // engine's writer has it open, a read says EOF.)
        let mut incomplete = false;
        if self.drained_before {
            match self.drainer.drain(&self.fifo) {
                Ok(Drained::Eof) => return (RunEnd::Eof, self.drainer.stats),
                Ok(Drained::Incomplete(_)) => incomplete = true,
                Ok(Drained::Empty) => {}
                Err(error) => {
                    tracing::warn!(%error, file = %self.fifo.path().display(), "reading the FIFO failed; retrying")
                }
            }
        }
        loop {
            let settle = std::mem::take(&mut self.drainer.settle);
            let fifo = &self.fifo;
            let readable = async move {
                if settle {
                    tokio::time::sleep(SETTLE).await;
                }
                fifo.readable().await
            };
            let ready = tokio::select! {
                biased;
                request = &mut stop => {
                    // Everything the engine will write is in the pipe by now: take it all.
                    self.final_drain();
                    if let Ok(reply) = request {
                        let _ = reply.send(self.drainer.stats);
                    }
                    // No fsync here: the engine waits for StopLogging (a container stop waits
                    // for it, and containers stopping together wait in line), and flushing a
                    // large dirty segment takes what the disk takes. The bytes are in the page
                    // cache already, so a plugin crash loses nothing meanwhile; the owner of the
                    // run syncs the store off the runtime's threads (`sync_store`) after this.
                    return (RunEnd::Stopped, self.drainer.stats);
                }
                _ = shutdown.cancelled() => {
                    self.final_drain();
                    self.finish_taken_frame().await;
                    // The process is about to exit: durable before it does.
                    if let Some(store) = self.drainer.store.opened() {
                        sync_store(store);
                    }
                    // An incomplete frame stays in the pipe for the next start: not truncated.
                    // One half taken out of it (larger than the FIFO) is lost.
                    self.drainer.stats.truncated_bytes = self.drainer.taken.len() as u64;
                    return (RunEnd::Shutdown, self.drainer.stats);
                }
                ready = readable => ready,
                // Readiness is edge-triggered, and a blocking writer whose one write() is larger
                // than the free space appends and sleeps without waking a reader when the pipe
                // was not empty (it always holds the frame start here): both would wait
                // forever. So while a frame is incomplete, look again now and then.
                _ = tokio::time::sleep(INCOMPLETE_RECHECK), if incomplete => {
                    match self.drainer.drain(&self.fifo) {
                        Ok(Drained::Incomplete(_)) => {}
                        Ok(Drained::Empty) => incomplete = false,
                        Ok(Drained::Eof) => return (RunEnd::Eof, self.drainer.stats),
                        Err(error) => tracing::warn!(%error, file = %self.fifo.path().display(), "reading the FIFO failed; retrying"),
                    }
                    continue;
                }
            };
            let mut guard = match ready {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::error!(%error, file = %self.fifo.path().display(), "cannot wait on the FIFO; this run ends");
                    return (RunEnd::Failed, self.drainer.stats);
                }
            };
            match self.drainer.drain(&self.fifo) {
                Ok(Drained::Empty) => {
                    incomplete = false;
                    guard.clear_ready();
                }
                Ok(Drained::Incomplete(left)) => {
                    incomplete = true;
                    if guard.ready().is_read_closed() {
                        // The writer is gone: the rest of that frame will never come.
                        self.drainer.discard_incomplete(&self.fifo, left);
                        return (RunEnd::Eof, self.drainer.stats);
                    }
                    guard.clear_ready();
                }
                Ok(Drained::Eof) => return (RunEnd::Eof, self.drainer.stats),
                Err(error) => {
                    // Not seen in practice; retrying after a pause keeps the container's
                    // pipe drained if the cause passes.
                    tracing::warn!(%error, file = %self.fifo.path().display(), "reading the FIFO failed; retrying");
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn final_drain(&mut self) {
        match self.drainer.drain(&self.fifo) {
            Ok(Drained::Incomplete(left)) => {
                self.drainer.stats.truncated_bytes = (left + self.drainer.taken.len()) as u64
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, file = %self.fifo.path().display(), "final read of the FIFO failed")
            }
        }
    }
}

impl Pipeline {
    /// At shutdown, a frame half read into memory (only one larger than the FIFO is) would be
    /// lost, and the next start would read the FIFO from its middle: give its writer a moment
    /// to finish it.
    async fn finish_taken_frame(&mut self) {
        let deadline = Instant::now() + TAKEN_FRAME_GRACE;
        while !self.drainer.taken.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let Err(error) = self.drainer.drain(&self.fifo) {
                tracing::warn!(%error, file = %self.fifo.path().display(), "final read of the FIFO failed");
                break;
            }
        }
        if !self.drainer.taken.is_empty() {
            tracing::error!(
                bytes = self.drainer.taken.len(),
                "shutting down in the middle of a frame larger than the FIFO: that entry is lost, \
                 and the next start reads the rest of it as frames (skipped)"
            );
        }
    }
}

/// Flushes the store to disk; a store removed meanwhile (DESTROY_LOGS_ON_STOP) has nothing left
/// to flush.
pub fn sync_store(store: &ContainerStore) {
    match store.sync() {
        Ok(()) | Err(crate::store::StoreError::Removed { .. }) => {}
        Err(error) => tracing::warn!(%error, "cannot sync the local copy"),
    }
}

impl Drainer {
    /// Stores and consumes everything whole in the pipe, round after round, until it is empty or
    /// holds only the start of a frame.
    fn drain(&mut self, fifo: &Fifo) -> std::io::Result<Drained> {
        let before = self.stats.bytes;
        let drained = self.drain_rounds(fifo);
        let taken = self.stats.bytes - before;
        self.settle = taken > 0 && taken < self.small_drain;
        // A burst grew the peek buffer to a pipe's size; an idle container keeps no more than
        // it uses once the burst is over (a host of idle containers would hold 1 MiB each).
        let kept = self.peeked.capacity();
        if kept > KEEP_TAKEN && (taken as usize) < kept / 4 {
            self.peeked.clear();
            self.peeked.shrink_to(KEEP_TAKEN.max(2 * taken as usize));
        }
        self.publish();
        drained
    }

    fn publish(&mut self) {
        if let Some(metrics) = &self.metrics {
            metrics.record(self.stats.since(&self.published).ingest_counts());
            self.published = self.stats;
        }
    }

    fn drain_rounds(&mut self, fifo: &Fifo) -> std::io::Result<Drained> {
        loop {
            if !self.taken.is_empty() {
                match self.take_frame(fifo)? {
                    Taking::Done => continue,
                    Taking::Waiting => return Ok(Drained::Incomplete(0)),
                    Taking::Eof => {
                        self.stats.truncated_bytes += self.taken.len() as u64;
                        self.taken.clear();
                        return Ok(Drained::Eof);
                    }
                }
            }
            let n = match fifo.peek(&mut self.peeked)? {
                Peek::Empty => return Ok(Drained::Empty),
                Peek::Eof => return Ok(Drained::Eof),
                Peek::Data(n) => n,
            };
            let consumed = self.store_frames();
            if consumed > 0 {
                fifo.consume(consumed)?;
            } else if !self.start_taking(fifo, n)? {
                return Ok(Drained::Incomplete(n));
            }
        }
    }

    /// The frame at the front of the pipe is not whole in the `n` bytes a peek showed. Starts
    /// reading it by consuming (see `fifo`) when no later peek could show it whole: the pipe
    /// holds all of it and a scratch pipe is too small to show it (read and stored at once), or
    /// the FIFO cannot hold all of it (read as it comes). Otherwise the rest is still to come and
    /// the frame waits in the pipe. Returns whether it started.
    fn start_taking(&mut self, fifo: &Fifo, n: usize) -> std::io::Result<bool> {
        let available = fifo.available()?;
        let first_read = match self.peeked.first_chunk::<PREFIX>() {
            Some(prefix) => {
                let need = PREFIX + u32::from_be_bytes(*prefix) as usize;
                // A write's first bytes may share a page with the frame before (the kernel
                // merges small writes), so a frame is sure to fit whole only a page short of
                // the pipe's size.
                let fits = need <= fifo.pipe_size()?.saturating_sub(page_size());
                if available < need && fits {
                    return Ok(false);
                }
                need
            }
            // Not even the length prefix showed, yet more is there: only a scratch pipe of a
            // couple of tiny buffers does that. Take the prefix, then go on as above.
            None if available > n => PREFIX,
            None => return Ok(false),
        };
        fifo.read_into(&mut self.taken, first_read)?;
        Ok(!self.taken.is_empty())
    }

    /// Reads more of the frame being taken, and stores it once whole: through the same decoder
    /// and batch as peeked frames, right after the read that completed it.
    fn take_frame(&mut self, fifo: &Fifo) -> std::io::Result<Taking> {
        loop {
            let want = match self.taken.first_chunk::<PREFIX>() {
                None => PREFIX - self.taken.len(),
                Some(prefix) => {
                    let len = u32::from_be_bytes(*prefix) as usize;
                    if len > self.decoder.cap() {
                        // The decoder skips the rest as it comes, and counts the loss.
                        0
                    } else {
                        PREFIX + len - self.taken.len()
                    }
                }
            };
            if want == 0 {
                break;
            }
            match fifo.read_into(&mut self.taken, want)? {
                Read::Data(_) => {}
                Read::Empty => return Ok(Taking::Waiting),
                Read::Eof => return Ok(Taking::Eof),
            }
        }
        std::mem::swap(&mut self.peeked, &mut self.taken);
        self.store_frames();
        std::mem::swap(&mut self.peeked, &mut self.taken);
        if self.taken.capacity() > KEEP_TAKEN {
            self.taken = Vec::new();
        } else {
            self.taken.clear();
        }
        Ok(Taking::Done)
    }

    /// Decodes the whole frames in `peeked`, appends the valid entries, and returns the bytes done
    /// with (stored, skipped, or lost to a failing store).
    fn store_frames(&mut self) -> usize {
        self.batch.clear();
        let Self {
            decoder,
            peeked,
            batch,
            stats,
            replay,
            ..
        } = self;
        let done = decoder.decode(peeked, |payload| {
            // The engine always sets source and time: an empty payload is no entry, and the
            // store relies on never holding one (zeros must not read as records).
            if payload.is_empty() {
                stats.invalid += 1;
                return;
            }
            let time = match replay.as_mut() {
                // Only in the first rounds after a crash: the whole entry is compared.
                Some(filter) => match LogEntry::decode(payload) {
                    Ok(entry) if filter.is_replay(&entry) => {
                        stats.replayed += 1;
                        return;
                    }
                    Ok(entry) => {
                        *replay = None;
                        Some(entry.time_nano)
                    }
                    Err(_) => None,
                },
                // Only the time is needed; a payload the quick read cannot take is judged by
                // the full decode, which alone decides what is invalid.
                None => entry::time_of(payload)
                    .or_else(|| LogEntry::decode(payload).ok().map(|entry| entry.time_nano)),
            };
            match time {
                Some(time) => batch.push(payload, time),
                None => stats.invalid += 1,
            }
        });
        stats.oversized += done.oversized;
        stats.lost += done.oversized;
        stats.bytes += done.consumed as u64;
        if let Some(lost) = self.oversized_losses.add(done.oversized) {
            tracing::error!(
                lost,
                lost_total = self.stats.lost,
                max_bytes = MAX_PAYLOAD,
                "frames longer than the cap were skipped: these log entries are lost (the engine \
                 splits lines at 16 KiB, so whatever wrote them was not the engine)"
            );
        }
        if !self.batch.is_empty() {
            let store = match self.store.get() {
                Ok(Some(store)) => store,
                Ok(None) => {
                    self.lose_batch(None);
                    return done.consumed;
                }
                Err(error) => {
                    self.lose_batch(Some(&error));
                    return done.consumed;
                }
            };
            match store.append(&self.batch) {
                Ok(()) => self.stats.entries += self.batch.len() as u64,
                Err(failed) => {
                    // The records before the failure are stored: counting the whole batch as
                    // lost would break stored + lost = read.
                    self.stats.entries += failed.stored as u64;
                    let lost = (self.batch.len() - failed.stored) as u64;
                    self.stats.lost += lost;
                    if let Some(lost) = self.store_losses.add(lost) {
                        tracing::error!(
                            error = %failed.error,
                            lost,
                            lost_total = self.stats.lost,
                            "cannot write the local copy: these log entries are lost (the FIFO \
                             keeps being drained)"
                        );
                    }
                }
            }
        }
        done.consumed
    }

    /// The batch has no store to go to (see [`StoreSlot`]): its entries are lost, and said so.
    fn lose_batch(&mut self, failed_open: Option<&crate::store::StoreError>) {
        let lost = self.batch.len() as u64;
        self.stats.lost += lost;
        if let Some(lost) = self.store_losses.add(lost) {
            tracing::error!(
                error = failed_open.map(tracing::field::display),
                lost,
                lost_total = self.stats.lost,
                "the local copy cannot be opened: these log entries are lost (the FIFO keeps \
                 being drained, and opening the local copy is retried)"
            );
        }
    }

    fn discard_incomplete(&mut self, fifo: &Fifo, left: usize) {
        self.stats.truncated_bytes += (left + self.taken.len()) as u64;
        self.taken.clear();
        self.publish();
        if let Err(error) = fifo.consume(left) {
            tracing::debug!(%error, "cannot discard the incomplete frame");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container_id::ContainerId;
    use crate::store::{Spool, StoreLimits, Stores};
    use std::io::Write;
    use std::path::Path;

    use crate::testing::{engine_fifo, frame as framed, line as entry};

    /// A reopened FIFO's crash round is recognised before the run starts (off the runtime's
    /// threads); the frame whose start was in the pipe then is stored whole when the rest comes,
    /// and the round is not stored twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_half_in_the_pipe_after_the_replay_drain_is_stored_once_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut writer) = engine_fifo(dir.path(), "fifo");
        let stores = Stores::open(dir.path().join("root"), Arc::new(Spool::new(1 << 30))).unwrap();
        let id = ContainerId::parse(&"ab".repeat(32)).unwrap();
        let store = stores.open_container(&id, StoreLimits::default()).unwrap();
        let round: Vec<LogEntry> = (1..=5).map(|t| entry(t, "stored, not consumed")).collect();
        let mut batch = crate::store::Batch::default();
        for e in &round {
            batch.push(&e.encode_to_vec(), e.time_nano);
        }
        store.append(&batch).unwrap();
        // The crash round, a new line, and the first half of another.
        let new = entry(6, "new");
        let split = framed(&entry(7, "split across two writes"));
        for e in round.iter().chain([&new]) {
            writer.write_all(&framed(e)).unwrap();
        }
        writer.write_all(&split[..10]).unwrap();

        let fifo = Fifo::open(&path).unwrap();
        let filter = ReplayFilter::new(Arc::clone(&store));
        let mut pipeline = Pipeline::new(fifo, Arc::clone(&store), Some(filter));
        pipeline.drain_replayed();
        assert_eq!(pipeline.drainer.stats.replayed, 5);
        assert_eq!(
            store.tail(usize::MAX).unwrap().len(),
            6,
            "the round once, then `new`"
        );

        let (stop_tx, stop_rx) = oneshot::channel();
        let run = tokio::spawn(pipeline.run(stop_rx, CancellationToken::new()));
        writer.write_all(&split[10..]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.tail(usize::MAX).unwrap().len() < 7 {
            assert!(
                Instant::now() < deadline,
                "the split frame was never stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        stop_tx.send(reply_tx).unwrap();
        let stats = reply_rx.await.unwrap();
        assert_eq!(run.await.unwrap().0, RunEnd::Stopped);
        assert_eq!(stats.entries, 2);
        let stored = store.tail(usize::MAX).unwrap();
        assert_eq!(stored[5..], [new, entry(7, "split across two writes")]);
    }

    /// Regression (issue 12, "bookkeeping that grows"): the peek buffer grew to a pipe's size in
    /// a burst and kept it for the life of the run.
    #[tokio::test]
    async fn the_peek_buffer_shrinks_once_a_burst_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut writer) = engine_fifo(dir.path(), "fifo");
        let fifo = Fifo::open(&path).unwrap();
        let stores = Stores::open(dir.path().join("root"), Arc::new(Spool::new(1 << 30))).unwrap();
        let id = ContainerId::parse(&"ab".repeat(32)).unwrap();
        let store = stores.open_container(&id, StoreLimits::default()).unwrap();
        let mut pipeline = Pipeline::new(fifo, store, None);
        let burst: Vec<u8> = (0..500)
            .flat_map(|t| framed(&entry(t, &"b".repeat(1000))))
            .collect();
        writer.write_all(&burst).unwrap();
        pipeline.drainer.drain(&pipeline.fifo).unwrap();
        assert!(pipeline.drainer.peeked.capacity() >= burst.len());
        writer.write_all(&framed(&entry(1000, "after"))).unwrap();
        pipeline.drainer.drain(&pipeline.fifo).unwrap();
        assert!(
            pipeline.drainer.peeked.capacity() <= KEEP_TAKEN,
            "{} bytes kept after the burst",
            pipeline.drainer.peeked.capacity()
        );
        assert_eq!(pipeline.drainer.stats.entries, 501);
    }

    fn fragments(t: i64, len: usize, id: &str) -> Vec<LogEntry> {
        let text: Vec<u8> = (0..len).map(|k| b'a' + (k % 26) as u8).collect();
        let chunks: Vec<&[u8]> = text.chunks(16 << 10).collect();
        let n = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| LogEntry {
                source: "stdout".into(),
                time_nano: t,
                line: chunk.to_vec().into(),
                partial: true,
                partial_log_metadata: Some(entry::PartialLogEntryMetadata {
                    last: i + 1 == n,
                    id: id.into(),
                    ordinal: i as i32 + 1,
                }),
            })
            .collect()
    }

    /// Runs a pipeline on a FIFO of `fifo_size` bytes read through private pipes of
    /// `scratch_size` bytes; a writer thread writes `frames` with one blocking write each, as
    /// the engine does; then StopLogging. Returns the run's counts and what the store holds.
    async fn run_through_pipes(
        fifo_size: usize,
        scratch_size: usize,
        frames: Vec<Vec<u8>>,
    ) -> (RunStats, Vec<LogEntry>) {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut writer) = engine_fifo(dir.path(), "fifo");
        let fifo = Fifo::open_with_pipe_sizes(Path::new(&path), fifo_size, scratch_size).unwrap();
        let stores = Stores::open(dir.path().join("root"), Arc::new(Spool::new(1 << 30))).unwrap();
        let id = ContainerId::parse(&"ab".repeat(32)).unwrap();
        let store = stores.open_container(&id, StoreLimits::default()).unwrap();
        let (stop_tx, stop_rx) = oneshot::channel();
        let run = tokio::spawn(
            Pipeline::new(fifo, Arc::clone(&store), None).run(stop_rx, CancellationToken::new()),
        );
        let written = tokio::task::spawn_blocking(move || {
            for f in &frames {
                writer.write_all(f).unwrap();
            }
            writer
        });
        let writer = tokio::time::timeout(Duration::from_secs(30), written)
            .await
            .expect("the writer was blocked: the FIFO stopped being drained")
            .unwrap();
        let (reply_tx, reply_rx) = oneshot::channel();
        stop_tx.send(reply_tx).unwrap();
        let stats = reply_rx.await.unwrap();
        let (end, _) = run.await.unwrap();
        assert_eq!(end, RunEnd::Stopped);
        drop(writer);
        let stored = store.tail(usize::MAX).unwrap();
        (stats, stored)
    }

    /// Lines of 12 KB, 16 KiB fragments of a long line, and 100 KB frames, between short lines.
    fn large_frames() -> Vec<LogEntry> {
        let mut entries = Vec::new();
        let mut t = 1_000;
        let mut next = |entries: &mut Vec<LogEntry>, text: Vec<u8>| {
            t += 1;
            entries.push(entry(t, "x"));
            entries.last_mut().unwrap().line = text.into();
        };
        for i in 0..20 {
            next(&mut entries, format!("short {i}").into_bytes());
            next(&mut entries, vec![b'0' + (i % 10) as u8; 12_000]);
        }
        entries.extend(fragments(5_000, 200 << 10, "long"));
        for i in 0..5 {
            next(&mut entries, vec![b'A' + i as u8; 100_000]);
            next(&mut entries, format!("after {i}").into_bytes());
        }
        entries
    }

    fn assert_stored_whole(stats: RunStats, stored: &[LogEntry], sent: &[LogEntry]) {
        assert_eq!(
            (stats.oversized, stats.lost, stats.truncated_bytes),
            (0, 0, 0),
            "nothing skipped: {stats:?}"
        );
        assert_eq!(stats.entries, sent.len() as u64, "{stats:?}");
        assert_eq!(stored.len(), sent.len(), "entries in the store");
        for (i, (got, want)) in stored.iter().zip(sent).enumerate() {
            assert!(
                got == want,
                "entry {i} differs ({} bytes sent)",
                want.line.len()
            );
        }
    }

    /// Regression: past the pipe budget (`fs.pipe-user-pages-soft`) the kernel gives the private
    /// pipe 2 slots; the frame cap followed the smallest pipe, and every frame over ~8 KiB was
    /// skipped as oversized.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_larger_than_a_small_scratch_pipe_arrive_whole() {
        let sent = large_frames();
        let frames = sent.iter().map(framed).collect();
        let (stats, stored) = run_through_pipes(1 << 20, 8 << 10, frames).await;
        assert_stored_whole(stats, &stored, &sent);
    }

    /// A FIFO that holds less than a frame (the engine's default 64 KiB, when the plugin may not
    /// raise it): the frame is read as it comes and stored whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_larger_than_the_fifo_arrive_whole() {
        let mut sent = large_frames();
        sent.push(entry(9_000, &"m".repeat(1_000_000)));
        sent.push(entry(9_001, "after a million"));
        let frames = sent.iter().map(framed).collect();
        let (stats, stored) = run_through_pipes(64 << 10, 8 << 10, frames).await;
        assert_stored_whole(stats, &stored, &sent);
    }

    /// A frame over the 1 MiB cap is a protocol violation the engine never commits: skipped as
    /// its bytes come, and counted as a loss, not only as "oversized".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_over_the_cap_is_skipped_and_counted_lost() {
        let before = entry(1, "before");
        let after = entry(3, "after");
        let mut huge = (2u32 << 20).to_be_bytes().to_vec();
        huge.extend(std::iter::repeat_n(b'z', 2 << 20));
        let frames = vec![framed(&before), huge, framed(&after)];
        let (stats, stored) = run_through_pipes(1 << 20, 1 << 20, frames).await;
        assert_eq!(stored, vec![before, after]);
        assert_eq!((stats.oversized, stats.lost), (1, 1), "{stats:?}");
    }
}
