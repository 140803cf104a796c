//! One store followed for shipping: reading it from the checkpoint on, rejoining split lines
//! ([`Fragments`]) and appending the documents to a [`Batch`] (NDJSON, one `create` action and
//! one source line per document), with, for each document, where a replay may start once it
//! and every document before it are acknowledged.
//!
//! What a store's records become is the caller's choice ([`Documents`]): a container's log
//! lines with its fields, or records the caller renders itself (the events store, whose format
//! the shipper does not know).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, Save};
use super::document::{self, ContainerDoc};
use super::fragments::{Fragments, Line, Resume};
use super::index::ResolvedIndex;
use super::json_lines::{self, JsonOptions};
use super::multiline::MultilineOptions;
use crate::container_id::ContainerId;
use crate::entry::LogEntry;
use crate::metrics::DestinationMetrics;
use crate::store::{ContainerStore, Cursor, Position};

/// A split line is rejoined up to this size; longer, it continues in another document.
pub const MAX_MESSAGE: usize = 1 << 20;
/// A line whose last fragment never came (the process died mid-line) is shipped as it is after
/// this long.
pub const FRAGMENT_WAIT: Duration = Duration::from_secs(5);
/// Bytes of records read from a store per step.
const READ_STEP: usize = 256 << 10;

/// A store to ship.
pub struct SourceSpec {
    pub id: ContainerId,
    pub store: Arc<ContainerStore>,
    pub documents: Documents,
    pub index: ResolvedIndex,
}

/// Why a record could not be rendered: the renderer's own error, shown to the operator.
pub type RenderError = Box<dyn std::error::Error + Send + Sync>;

/// How a stored record becomes one document with its own `_id` (the id must come from the
/// record, so a record stored twice is one document).
pub type Render =
    Arc<dyn Fn(&LogEntry) -> Result<(String, serde_json::Value), RenderError> + Send + Sync>;

/// A container's log lines (split lines rejoined), with its fields, and what its options make
/// of them.
pub struct LogDocs {
    pub doc: ContainerDoc,
    /// Lines that are JSON objects decoded into fields (`json_lines`).
    pub json: Option<JsonOptions>,
    /// Lines merged into one document (`multiline`).
    pub multiline: Option<MultilineOptions>,
}

/// What the entries of a store become.
pub enum Documents {
    Logs(LogDocs),
    /// One document per record, rendered by the caller (the engine's events store).
    Records(Render),
}

/// One document of a batch: its NDJSON bytes and where a replay may start once it and every
/// document before it are acknowledged (`Fragments::resume` when it was made).
pub struct Item {
    pub range: Range<usize>,
    pub source: ContainerId,
    pub end: Resume,
}

#[derive(Default)]
pub struct Batch {
    pub ndjson: Vec<u8>,
    pub items: Vec<Item>,
    pub data_stream: bool,
}

impl Batch {
    /// The NDJSON item (action and source lines) of document `i`.
    pub fn item(&self, i: usize) -> &[u8] {
        &self.ndjson[self.items[i].range.clone()]
    }
}

/// A source's checkpoint write under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saving {
    Idle,
    /// An acknowledged position: nothing waits for it.
    Position,
    /// Split points: the source is not read, and the lines they cut are not sent, until they
    /// are on disk (see `checkpoint`).
    Splits,
}

pub struct Source {
    pub id: ContainerId,
    pub store: Arc<ContainerStore>,
    documents: Documents,
    index: ResolvedIndex,
    cursor: Cursor,
    /// Just after the last entry read.
    pub read_to: Position,
    /// The split lines being rejoined, one per stream (log sources only).
    pub fragments: Fragments,
    /// The documents one step hands out, before they go into the batch (kept to reuse).
    done: Vec<Line>,
    pub checkpoint: Checkpoint,
    /// Where a replay would start now: every document before it is acknowledged.
    pub acked: Resume,
    /// The checkpoint write under way, if any (one at a time: see `Destination::saves`).
    pub saving: Saving,
    /// A split point could not be recorded (logged once until one is).
    pub split_unrecorded: bool,
    /// After a failed write of split points, the next try waits until then.
    pub split_retry: Option<Instant>,
    pub stopped: bool,
    skipped_reported: u64,
    /// Ends the task that wakes the destination when this store grows.
    pub wake_task: CancellationToken,
}

impl Source {
    /// Follows `spec.store` from `cursor`, with what `checkpoint` recorded: the documents handed
    /// out by then and the split points.
    pub fn new(
        spec: SourceSpec,
        cursor: Cursor,
        checkpoint: Checkpoint,
        wake_task: CancellationToken,
    ) -> Self {
        let mut resume = checkpoint.resume();
        if resume.at != cursor.position() || spec.store.end() < resume.skip_to {
            // The store lost what the checkpoint says was read (a power loss cut it back) or
            // shipping starts elsewhere: positions past it may hold new entries, to ship.
            resume = Resume::from(cursor.position());
        }
        // Lines cut early before a crash are cut at the same place again (see `fragments`).
        let merging = match &spec.documents {
            Documents::Logs(logs) => logs.multiline.clone(),
            Documents::Records(_) => None,
        };
        let fragments = Fragments::new(MAX_MESSAGE)
            .merging(merging)
            .with_splits(checkpoint.splits())
            .resuming(resume.clone());
        Source {
            read_to: cursor.position(),
            acked: resume,
            id: spec.id,
            store: spec.store,
            documents: spec.documents,
            index: spec.index,
            cursor,
            fragments,
            done: Vec::new(),
            checkpoint,
            saving: Saving::Idle,
            split_unrecorded: false,
            split_retry: None,
            stopped: false,
            skipped_reported: 0,
            wake_task,
        }
    }

    /// Everything read is acknowledged and there is nothing more to read.
    pub fn drained(&self) -> bool {
        self.saving == Saving::Idle
            && self.fragments.is_empty()
            && self.acked.at == self.read_to
            && self.read_to >= self.store.end()
    }

    /// Reads entries into `batch`, up to `max` bytes of NDJSON; returns a write of split points
    /// to run first, when lines whose rest is late are due to be sent cut (see
    /// [`Source::flush_overdue`]). Data the store deleted before it was shipped is counted in
    /// `metrics` and logged naming `destination`.
    pub fn fill(
        &mut self,
        batch: &mut Batch,
        max: usize,
        metrics: &DestinationMetrics,
        destination: &str,
    ) -> Option<Save> {
        if self.saving == Saving::Splits {
            // Nothing is read until the cut is on disk: a line's rest read meanwhile would
            // join a line the checkpoint already says is cut.
            return None;
        }
        while batch.ndjson.len() < max {
            let read = tokio::task::block_in_place(|| self.cursor.read(READ_STEP.min(max)));
            let entries = match read {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::error!(%error, container = self.id.short(), "cannot read the local copy for shipping; skipping to what follows");
                    self.skip_unreadable();
                    break;
                }
            };
            self.report_skipped(metrics, destination);
            if entries.is_empty() {
                break;
            }
            for (entry, after) in entries {
                self.take(entry, after, batch);
            }
        }
        if self.fragments.is_empty() || self.read_to < self.store.end() {
            return None;
        }
        if self.stopped {
            // No more of these lines can come: the cut needs no record.
            self.done = self.fragments.flush();
            self.emit_done(batch);
            return None;
        }
        let wait = self.fragments.wait(FRAGMENT_WAIT);
        let overdue: Vec<Position> = self
            .fragments
            .waiting_since()
            .filter(|(_, since)| since.elapsed() >= wait)
            .map(|(end, _)| end)
            .collect();
        if overdue.is_empty() {
            return None;
        }
        self.flush_overdue(batch, &overdue)
    }

    /// Ships lines whose rest is late as they are, once the cut is recorded: a replay after a
    /// crash must cut them at the same place (see `fragments`). Lines whose cut is on disk go
    /// into the batch; for the others this returns the write that records it, and they wait for
    /// it (the next fill sends them). If it cannot be recorded they wait for their rest or the
    /// container's stop instead; nothing is lost either way.
    fn flush_overdue(&mut self, batch: &mut Batch, ends: &[Position]) -> Option<Save> {
        let (recorded, unrecorded): (Vec<Position>, Vec<Position>) =
            ends.iter().partition(|&&end| self.checkpoint.is_split(end));
        for end in recorded {
            self.fragments.flush_at(end, &mut self.done);
        }
        self.emit_done(batch);
        let retry_later = self.split_retry.is_some_and(|at| Instant::now() < at);
        if unrecorded.is_empty() || self.saving != Saving::Idle || retry_later {
            return None;
        }
        self.saving = Saving::Splits;
        Some(self.checkpoint.save_splits(&unrecorded))
    }

    /// Rejoins fragments of one line into one document; emits complete documents.
    fn take(&mut self, entry: LogEntry, after: Position, batch: &mut Batch) {
        if let Documents::Records(render) = &self.documents {
            self.read_to = after;
            match render(&entry) {
                Ok((id, doc)) => self.emit_record(batch, &id, &doc, entry.time_nano, after),
                Err(error) => {
                    tracing::warn!(%error, container = self.id.short(), "skipping a stored record that does not render as a document")
                }
            }
            return;
        }
        let mut start = std::mem::replace(&mut self.read_to, after);
        // A record never spans segments: the first one read in a segment starts at its offset
        // 0. "Just after the last record read" would name the end of the segment before, which
        // after a power loss cut it back is the id of a line indexed before the loss.
        if start.segment != after.segment {
            start = Position {
                segment: after.segment,
                offset: 0,
            };
        }
        self.fragments.push(entry, start, after, &mut self.done);
        self.emit_done(batch);
    }

    /// A rendered record: one document, its id from the record itself.
    fn emit_record(
        &self,
        batch: &mut Batch,
        id: &str,
        doc: &serde_json::Value,
        time_nano: i64,
        after: Position,
    ) {
        let begin = batch.ndjson.len();
        let index = self.index.name_for(time_nano);
        let action = serde_json::json!({"create": {"_index": index, "_id": id}});
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut batch.ndjson, &action);
        batch.ndjson.push(b'\n');
        let _ = serde_json::to_writer(&mut batch.ndjson, doc);
        batch.ndjson.push(b'\n');
        batch.data_stream = batch.data_stream || self.index.data_stream().is_some();
        batch.items.push(Item {
            range: begin..batch.ndjson.len(),
            source: self.id.clone(),
            end: Resume::from(after),
        });
    }

    /// The documents of one step into the batch, each with where a replay may start once it is
    /// acknowledged: after the whole step (a step's documents go into one batch, and a batch is
    /// acknowledged whole).
    fn emit_done(&mut self, batch: &mut Batch) {
        if self.done.is_empty() {
            return;
        }
        let end = self.fragments.resume(self.read_to);
        let mut done = std::mem::take(&mut self.done);
        for line in done.drain(..) {
            self.emit(batch, line, end.clone());
        }
        self.done = done;
    }

    fn emit(&self, batch: &mut Batch, line: Line, end: Resume) {
        let Documents::Logs(logs) = &self.documents else {
            return;
        };
        let begin = batch.ndjson.len();
        let id = document::document_id(self.id.as_str(), line.start.segment, line.start.offset);
        let index = self.index.name_for(line.time_nano);
        document::append_action(&mut batch.ndjson, &index, &id);
        json_lines::append_source(
            &mut batch.ndjson,
            &logs.doc,
            line.time_nano,
            &line.stream,
            &line.message,
            logs.json.as_ref(),
        );
        batch.data_stream = batch.data_stream || self.index.data_stream().is_some();
        batch.items.push(Item {
            range: begin..batch.ndjson.len(),
            source: self.id.clone(),
            end,
        });
    }

    /// After a read error: move past the unreadable segment so one bad file cannot stop shipping.
    fn skip_unreadable(&mut self) {
        let next = Position {
            segment: self.cursor.position().segment + 1,
            offset: 0,
        };
        if next <= self.store.end() {
            self.cursor = self.store.cursor(next);
            self.read_to = self.cursor.position();
        }
    }

    fn report_skipped(&mut self, metrics: &DestinationMetrics, destination: &str) {
        let skipped = self.cursor.skipped_bytes();
        if skipped > self.skipped_reported {
            let lost = skipped - self.skipped_reported;
            self.skipped_reported = skipped;
            metrics.add_dropped_bytes(lost);
            // The store logged the deletion at ERROR, with its entry count; this says which
            // destination it cost.
            tracing::warn!(container = self.id.short(), lost_bytes = lost, %destination, "skipped unshipped log data deleted before it could be shipped (raise SPOOL_MAX_SIZE)");
        }
    }
}
