//! One logging run: drain a container's FIFO into its store until the engine stops it (or closes
//! the FIFO), without ever stopping to read.
//!
//! Each round peeks the pipe's whole content (`fifo`), hands whole frames to the decoder, appends
//! the valid entries to the store in one batch, and only then consumes those bytes from the pipe.
//! Whatever fails downstream, the bytes are consumed: a store that cannot write (disk full,
//! read-only) costs the entries of that round, which are counted and logged at ERROR, but the
//! container is never blocked. An incomplete frame stays in the pipe until the rest of it comes.
//!
//! After a plugin crash the round that was stored but not yet consumed is read again; a
//! [`ReplayFilter`] built from the end of the store drops those repeated entries, so a crash
//! costs neither a line nor a duplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::entry::{self, LogEntry};
use crate::fifo::{Fifo, Peek};
use crate::frame::{FrameDecoder, PREFIX};
use crate::metrics::IngestMetrics;
use crate::store::{Batch, ContainerStore};

/// A drain that took less than this (a quarter of the default 1 MiB pipe) makes the run wait
/// [`SETTLE`] before it looks at the pipe again.
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

/// Counts for one logging run, logged when it ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// Entries appended to the store.
    pub entries: u64,
    /// Bytes of frames read (prefix included).
    pub bytes: u64,
    /// Frames over the cap, skipped.
    pub oversized: u64,
    /// Frames whose payload is not a LogEntry, skipped.
    pub invalid: u64,
    /// Bytes of an incomplete frame left when the run ended.
    pub truncated_bytes: u64,
    /// Entries read but lost because the store could not write them.
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

/// Drops the entries a crashed plugin had stored but not yet consumed from the FIFO: the first
/// entries of the reopened FIFO that equal, one after another, entries at the end of the store.
/// Two distinct entries are never equal (each has the engine's nanosecond timestamp, and the
/// fragments of one line differ in ordinal), so this never drops a new line.
#[derive(Debug)]
pub struct ReplayFilter {
    recent: Vec<LogEntry>,
    next: Option<usize>,
}

impl ReplayFilter {
    pub fn new(recent: Vec<LogEntry>) -> Self {
        Self { recent, next: None }
    }

    /// True when `entry` repeats the store; false ends the filter for good.
    fn is_replay(&mut self, entry: &LogEntry) -> bool {
        let at = match self.next {
            None => self.recent.iter().rposition(|e| e == entry),
            Some(i) => (self.recent.get(i) == Some(entry)).then_some(i),
        };
        match at {
            Some(i) => {
                self.next = Some(i + 1);
                true
            }
            None => {
                self.recent = Vec::new();
                false
            }
        }
    }

    fn is_done(&self) -> bool {
        self.recent.is_empty()
    }
}

/// What one drain pass left in the pipe.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    Empty,
    /// Only the start of a frame is there.
    Incomplete(usize),
    Eof,
}

struct Drainer {
    store: Arc<ContainerStore>,
    decoder: FrameDecoder,
    peeked: Vec<u8>,
    batch: Batch,
    stats: RunStats,
    replay: Option<ReplayFilter>,
    last_loss_report: Option<Instant>,
    lost_reported: u64,
    /// The last drain was small: let lines gather before the next (see [`SMALL_DRAIN`]).
    settle: bool,
    /// Where the counts go as they grow (the metrics endpoint), and what was added so far.
    metrics: Option<Arc<IngestMetrics>>,
    published: RunStats,
}

pub struct Pipeline {
    fifo: Fifo,
    drainer: Drainer,
}

impl Pipeline {
    pub fn new(fifo: Fifo, store: Arc<ContainerStore>, replay: Option<ReplayFilter>) -> Self {
        // A frame must fit in the pipe to be seen whole (see `fifo`).
        let cap = fifo.capacity().saturating_sub(PREFIX);
        Self {
            fifo,
            drainer: Drainer {
                store,
                decoder: FrameDecoder::new(cap),
                peeked: Vec::new(),
                batch: Batch::default(),
                stats: RunStats::default(),
                replay: replay.filter(|r| !r.is_done()),
                last_loss_report: None,
                lost_reported: 0,
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

    /// Drains until stopped, shut down, or the engine closes the FIFO.
    pub async fn run(
        mut self,
        mut stop: oneshot::Receiver<StopRequest>,
        shutdown: CancellationToken,
    ) -> (RunEnd, RunStats) {
        // True while the start of a frame waits in the pipe for the rest of it.
        let mut incomplete = false;
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
                    // The process is about to exit: durable before it does.
                    sync_store(&self.drainer.store);
                    // An incomplete frame stays in the pipe for the next start: not truncated.
                    self.drainer.stats.truncated_bytes = 0;
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
            Ok(Drained::Incomplete(left)) => self.drainer.stats.truncated_bytes = left as u64,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, file = %self.fifo.path().display(), "final read of the FIFO failed")
            }
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
        self.settle = taken > 0 && taken < SMALL_DRAIN;
        self.publish();
        drained
    }

    fn publish(&mut self) {
        if let Some(metrics) = &self.metrics {
            metrics.record(&self.stats.since(&self.published));
            self.published = self.stats;
        }
    }

    fn drain_rounds(&mut self, fifo: &Fifo) -> std::io::Result<Drained> {
        loop {
            let n = match fifo.peek(&mut self.peeked)? {
                Peek::Empty => return Ok(Drained::Empty),
                Peek::Eof => return Ok(Drained::Eof),
                Peek::Data(n) => n,
            };
            let consumed = self.store_frames();
            if consumed == 0 {
                return Ok(Drained::Incomplete(n));
            }
            fifo.consume(consumed)?;
        }
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
        stats.bytes += done.consumed as u64;
        if !self.batch.is_empty() {
            match self.store.append(&self.batch) {
                Ok(()) => self.stats.entries += self.batch.len() as u64,
                Err(failed) => {
                    // The records before the failure are stored: counting the whole batch as
                    // lost would break stored + lost = read.
                    self.stats.entries += failed.stored as u64;
                    self.stats.lost += (self.batch.len() - failed.stored) as u64;
                    self.report_loss(&failed.error);
                }
            }
        }
        done.consumed
    }

    /// An ERROR line for lost entries, at most every 10 s, with the count since the last one.
    fn report_loss(&mut self, error: &crate::store::StoreError) {
        let due = self
            .last_loss_report
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::error!(
                %error,
                lost = self.stats.lost - self.lost_reported,
                lost_total = self.stats.lost,
                "cannot write the local copy: these log entries are lost (the FIFO keeps being drained)"
            );
            self.lost_reported = self.stats.lost;
            self.last_loss_report = Some(Instant::now());
        }
    }

    fn discard_incomplete(&mut self, fifo: &Fifo, left: usize) {
        self.stats.truncated_bytes += left as u64;
        self.publish();
        if let Err(error) = fifo.consume(left) {
            tracing::debug!(%error, "cannot discard the incomplete frame");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: i64, line: &str) -> LogEntry {
        LogEntry {
            source: "stdout".into(),
            time_nano: t,
            line: line.as_bytes().to_vec().into(),
            ..LogEntry::default()
        }
    }

    #[test]
    fn replay_filter_drops_only_the_repeated_run() {
        let stored = vec![entry(1, "a"), entry(2, "b"), entry(3, "c")];
        let mut filter = ReplayFilter::new(stored);
        assert!(filter.is_replay(&entry(2, "b")));
        assert!(filter.is_replay(&entry(3, "c")));
        assert!(!filter.is_replay(&entry(4, "d")));
        assert!(filter.is_done());
    }

    #[test]
    fn replay_filter_passes_a_new_first_entry() {
        let mut filter = ReplayFilter::new(vec![entry(1, "a")]);
        assert!(!filter.is_replay(&entry(1, "a-but-different")));
        assert!(filter.is_done());
    }
}
