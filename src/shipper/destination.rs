//! One destination: a set of Elasticsearch hosts with one set of options, shared by every
//! container whose options are equal. One task follows each attached container's store from its
//! checkpoint, turns entries into documents (rejoining split lines), and keeps up to `workers`
//! bulk requests in flight. Answers are taken in the order the requests were made, so a
//! checkpoint only ever moves past what Elasticsearch accepted (written, 409 duplicate, or
//! dead-lettered); a request is retried until that is true for every document in it. A
//! document the destination is not ready for (privileges, a write block, no index, a missing
//! pipeline) or whose answer is unknown is held and retried, never dead-lettered: the
//! destination's requests wait behind it, as for a whole-request 401, and the store keeps
//! everything meanwhile. Nothing here can slow a container: the store is the spool, and the
//! disk work that waits for a sync (checkpoint writes, dead-letter records, a container's
//! release) runs on the blocking pool, never on the runtime's threads that drain the FIFOs.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::bulk::{self, ItemVerdict, RequestVerdict};
use super::checkpoint::{self, Checkpoint, Save};
use super::client::Client;
use super::config::EsOptions;
use super::deadletter::{DeadLetters, Recorded, Refused};
use super::document::{self, ContainerDoc};
use super::fragments::{Fragments, Line};
use super::index::{IndexTemplate, ResolvedIndex};
use super::not_ready::{Episodes, Hold, Report};
use crate::container_id::ContainerId;
use crate::entry::LogEntry;
use crate::events::DocumentOptions;
use crate::metrics::DestinationMetrics;
use crate::store::{ContainerStore, Cursor, Position};

/// A split line is rejoined up to this size; longer, it continues in another document.
pub const MAX_MESSAGE: usize = 1 << 20;
/// A line whose last fragment never came (the process died mid-line) is shipped as it is after
/// this long.
pub const FRAGMENT_WAIT: Duration = Duration::from_secs(5);
/// Bytes of records read from a store per step.
const READ_STEP: usize = 256 << 10;

/// A container to ship.
pub struct SourceSpec {
    pub id: ContainerId,
    pub store: Arc<ContainerStore>,
    pub documents: Documents,
    pub index: ResolvedIndex,
}

/// What the entries of a store become.
pub enum Documents {
    /// A container's log lines (split lines rejoined), with its fields.
    Logs(ContainerDoc),
    /// The engine's events store: one document per event, its id from the event.
    Events(DocumentOptions),
}

pub enum Command {
    Attach(Box<SourceSpec>),
    /// The container has no logging run any more: ship what is left, then let it go.
    Stopped(ContainerId),
    /// It logs again.
    Started(ContainerId),
}

/// Called with a container whose store is fully shipped after its logging stopped.
pub type OnDrained = Arc<dyn Fn(&ContainerId) + Send + Sync>;

struct Source {
    id: ContainerId,
    store: Arc<ContainerStore>,
    documents: Documents,
    index: ResolvedIndex,
    cursor: Cursor,
    /// Just after the last entry read.
    read_to: Position,
    /// The split lines being rejoined, one per stream (log sources only).
    fragments: Fragments,
    checkpoint: Checkpoint,
    /// Where a replay would start now: every document before it is acknowledged.
    acked: Position,
    /// The checkpoint write under way, if any (one at a time: see [`Destination::saves`]).
    saving: Saving,
    /// A split point could not be recorded (logged once until one is).
    split_unrecorded: bool,
    /// After a failed write of split points, the next try waits until then.
    split_retry: Option<Instant>,
    stopped: bool,
    skipped_reported: u64,
    wake_task: CancellationToken,
}

/// One document of a batch: its NDJSON bytes and where a replay may start once it and every
/// document before it are acknowledged (`Fragments::resume` when it was made).
struct Item {
    range: Range<usize>,
    source: ContainerId,
    end: Position,
}

#[derive(Default)]
struct Batch {
    ndjson: Vec<u8>,
    items: Vec<Item>,
    data_stream: bool,
}

/// What a finished request acknowledges: per container, the position just after its last
/// document in the request.
type Acks = Vec<(ContainerId, Position)>;

/// A source's checkpoint write under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Saving {
    Idle,
    /// An acknowledged position: nothing waits for it.
    Position,
    /// Split points: the source is not read, and the lines they cut are not sent, until they
    /// are on disk (see `checkpoint`).
    Splits,
}

/// A checkpoint write that finished, on a blocking thread.
struct Saved {
    id: ContainerId,
    kind: Saving,
    result: std::io::Result<Save>,
}

struct Shared {
    options: EsOptions,
    label: String,
    client: Client,
    dead_letters: DeadLetters,
    /// Indices holding documents back, logged once per episode.
    episodes: Episodes,
    metrics: Arc<DestinationMetrics>,
    shutdown: CancellationToken,
}

pub struct Destination {
    shared: Arc<Shared>,
    sources: HashMap<ContainerId, Source>,
    order: Vec<ContainerId>,
    next_source: usize,
    checkpoints_dir: PathBuf,
    /// Checkpoint writes under way. A write syncs the file and its folder, which on a slow or
    /// busy disk takes as long as the disk likes: it runs on the blocking pool, never on the
    /// runtime's threads, which drain every container's FIFO. This task goes on shipping
    /// meanwhile; what must wait for a write (the lines a split point cuts, a container's
    /// release) waits for its completion here.
    saves: FuturesUnordered<BoxFuture<'static, Saved>>,
    wake: Arc<Notify>,
    on_drained: OnDrained,
}

impl Destination {
    pub fn new(
        options: EsOptions,
        client: Client,
        dead_letters: DeadLetters,
        metrics: Arc<DestinationMetrics>,
        checkpoints_dir: PathBuf,
        shutdown: CancellationToken,
        on_drained: OnDrained,
    ) -> Self {
        let label = options.label();
        Self {
            shared: Arc::new(Shared {
                options,
                label,
                client,
                dead_letters,
                episodes: Episodes::default(),
                metrics,
                shutdown,
            }),
            sources: HashMap::new(),
            order: Vec::new(),
            next_source: 0,
            checkpoints_dir,
            saves: FuturesUnordered::new(),
            wake: Arc::new(Notify::new()),
            on_drained,
        }
    }

    /// Ships until shutdown. On shutdown requests in flight are dropped unacknowledged: they are
    /// sent again after the restart, and their ids make that harmless.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let workers = self.shared.options.workers;
        let tick = self.shared.options.flush_interval.min(FRAGMENT_WAIT);
        let mut in_flight = FuturesOrdered::new();
        if let Some(index) = self.shared.options.dead_letter_index.clone() {
            tokio::spawn(dead_letters_to_index(Arc::clone(&self.shared), index));
        }
        loop {
            if in_flight.len() < workers {
                let batch = self.fill();
                if !batch.items.is_empty() {
                    in_flight.push_back(deliver(Arc::clone(&self.shared), batch));
                    continue;
                }
            }
            if in_flight.is_empty() {
                self.release_drained().await;
            }
            tokio::select! {
                Some(acks) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(acks) = acks {
                        self.acknowledge(acks);
                        self.measure_backlog();
                    }
                }
                Some(saved) = self.saves.next(), if !self.saves.is_empty() => self.saved(saved),
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                _ = self.wake.notified(), if in_flight.len() < workers => {}
                _ = tokio::time::sleep(tick) => self.measure_backlog(),
                _ = self.shared.shutdown.cancelled() => break,
            }
        }
        // A write under way shares its temporary file with the last one.
        while let Some(saved) = self.saves.next().await {
            self.saved(saved);
        }
        let last: Vec<Save> = self
            .sources
            .values_mut()
            .filter_map(|source| {
                source.wake_task.cancel();
                source.checkpoint.save_pending()
            })
            .collect();
        let written = tokio::task::spawn_blocking(move || {
            for save in last {
                if let Err(error) = save.run() {
                    tracing::warn!(%error, "cannot write the shipping checkpoint at shutdown; the restart resends more");
                }
            }
        });
        let _ = written.await;
    }

    /// Runs a checkpoint write of `id` on the blocking pool (see [`Destination::saves`]).
    fn start_save(&mut self, id: ContainerId, kind: Saving, save: Save) {
        let span = tracing::Span::current();
        self.saves.push(
            async move {
                let written = tokio::task::spawn_blocking(move || {
                    span.in_scope(|| save.run().map(|()| save))
                })
                .await;
                Saved {
                    id,
                    kind,
                    result: written.unwrap_or_else(|error| Err(std::io::Error::other(error))),
                }
            }
            .boxed(),
        );
    }

    /// A checkpoint write finished.
    fn saved(&mut self, saved: Saved) {
        let Some(source) = self.sources.get_mut(&saved.id) else {
            return;
        };
        source.saving = Saving::Idle;
        match (saved.result, saved.kind) {
            (Ok(save), kind) => {
                source.checkpoint.saved_as(save);
                if kind == Saving::Splits {
                    source.split_unrecorded = false;
                    source.split_retry = None;
                }
            }
            (Err(error), Saving::Splits) => {
                source.split_retry = Some(Instant::now() + checkpoint::MIN_INTERVAL);
                if !source.split_unrecorded {
                    source.split_unrecorded = true;
                    tracing::warn!(%error, container = saved.id.short(), "cannot write the shipping checkpoint; a split line whose rest is late is held until its rest comes or the container stops");
                }
            }
            (Err(error), _) => {
                tracing::warn!(%error, container = saved.id.short(), "cannot write the shipping checkpoint; a restart would resend more");
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Attach(spec) => self.attach(*spec),
            Command::Stopped(id) => {
                if let Some(source) = self.sources.get_mut(&id) {
                    source.stopped = true;
                }
            }
            Command::Started(id) => {
                if let Some(source) = self.sources.get_mut(&id) {
                    source.stopped = false;
                }
            }
        }
    }

    fn attach(&mut self, spec: SourceSpec) {
        if let Some(source) = self.sources.get_mut(&spec.id) {
            source.stopped = false;
            return;
        }
        let (checkpoint, saved) =
            Checkpoint::load(&self.checkpoints_dir, &spec.id, &self.shared.label);
        // Shippers::attach writes a checkpoint at StartLogging, before the FIFO is read; without
        // one (that write failed) the store's end now is the best start left.
        let from = saved.unwrap_or_else(|| spec.store.end());
        let cursor = spec.store.cursor(from);
        // Lines cut early before a crash are cut at the same place again (see `fragments`).
        let fragments = Fragments::new(MAX_MESSAGE).with_splits(checkpoint.splits());
        let wake_task = CancellationToken::new();
        let mut changes = spec.store.subscribe();
        let wake = Arc::clone(&self.wake);
        let cancel = wake_task.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
                wake.notify_one();
            }
        });
        tracing::info!(container = spec.id.short(), destination = %self.shared.label, from = ?from, "shipping attached");
        self.order.push(spec.id.clone());
        self.sources.insert(
            spec.id.clone(),
            Source {
                read_to: cursor.position(),
                acked: cursor.position(),
                id: spec.id,
                store: spec.store,
                documents: spec.documents,
                index: spec.index,
                cursor,
                fragments,
                checkpoint,
                saving: Saving::Idle,
                split_unrecorded: false,
                split_retry: None,
                stopped: false,
                skipped_reported: 0,
                wake_task,
            },
        );
        self.wake.notify_one();
    }

    /// Reads from the sources, round-robin, into a batch of about bulk_max_bytes.
    fn fill(&mut self) -> Batch {
        let max = self.shared.options.bulk_max_bytes;
        let mut batch = Batch::default();
        let n = self.order.len();
        let mut splits = Vec::new();
        for k in 0..n {
            if batch.ndjson.len() >= max {
                break;
            }
            let id = &self.order[(self.next_source + k) % n];
            let Some(source) = self.sources.get_mut(id) else {
                continue;
            };
            if let Some(save) = source.fill(&mut batch, max, &self.shared) {
                splits.push((id.clone(), save));
            }
        }
        if n > 0 {
            self.next_source = (self.next_source + 1) % n;
        }
        for (id, save) in splits {
            self.start_save(id, Saving::Splits, save);
        }
        batch
    }

    fn acknowledge(&mut self, acks: Acks) {
        for (id, end) in acks {
            let Some(source) = self.sources.get_mut(&id) else {
                continue;
            };
            source.acked = source.acked.max(end);
            // Retention may now delete the backlog shipped past.
            source.store.set_pin(Some(source.acked));
            if source.saving != Saving::Idle {
                // Written with the next write.
                source.checkpoint.hold(source.acked);
                continue;
            }
            if let Some(save) = source.checkpoint.save_for(source.acked, false) {
                source.saving = Saving::Position;
                self.start_save(id, Saving::Position, save);
            }
        }
    }

    /// The backlog gauge: what is stored but not acknowledged, over every container.
    fn measure_backlog(&self) {
        let backlog = self
            .sources
            .values()
            .map(|source| source.store.bytes_after(source.acked))
            .sum();
        self.shared.metrics.set_backlog_bytes(backlog);
    }

    /// Lets go of stopped containers whose every line is acknowledged (and whose checkpoint
    /// is not being written: the last write must come after it).
    ///
    /// The last checkpoint write and `on_drained` (the run table's sync, the store's close or
    /// removal) block on the disk: they run on the blocking pool, awaited here, so a container
    /// attached again afterwards finds its final checkpoint, and its release is done first.
    async fn release_drained(&mut self) {
        let done: Vec<ContainerId> = self
            .sources
            .values()
            .filter(|s| {
                s.stopped
                    && s.saving == Saving::Idle
                    && s.fragments.is_empty()
                    && s.acked == s.read_to
                    && s.read_to >= s.store.end()
            })
            .map(|s| s.id.clone())
            .collect();
        for id in done {
            let Some(mut source) = self.sources.remove(&id) else {
                continue;
            };
            source.wake_task.cancel();
            self.order.retain(|o| o != &id);
            tracing::info!(container = id.short(), destination = %self.shared.label, "everything shipped; container released");
            // The pin stays: the owner of the runs lifts it (on_drained) unless the container
            // started again meanwhile, whose new run pinned its backlog already.
            let last = source.checkpoint.save_for(source.acked, true);
            let on_drained = Arc::clone(&self.on_drained);
            let span = tracing::Span::current();
            let released = tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    if let Some(Err(error)) = last.map(|save| save.run()) {
                        tracing::warn!(%error, container = id.short(), "cannot write the shipping checkpoint; a restart would resend more");
                    }
                    // Its store handle goes first, so the store can close (or be removed) now.
                    drop(source);
                    on_drained(&id);
                })
            });
            if let Err(error) = released.await {
                tracing::error!(%error, "releasing a shipped container failed");
            }
        }
    }
}

impl Source {
    /// Reads entries into `batch`; returns a write of split points to run first, when lines
    /// whose rest is late are due to be sent cut (see [`Source::flush_overdue`]).
    fn fill(&mut self, batch: &mut Batch, max: usize, shared: &Shared) -> Option<Save> {
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
            self.report_skipped(shared);
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
            for line in self.fragments.flush() {
                self.emit(batch, line);
            }
            return None;
        }
        let overdue: Vec<Position> = self
            .fragments
            .waiting_since()
            .filter(|(_, since)| since.elapsed() >= FRAGMENT_WAIT)
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
            if let Some(line) = self.fragments.flush_at(end) {
                self.emit(batch, line);
            }
        }
        let retry_later = self.split_retry.is_some_and(|at| Instant::now() < at);
        if unrecorded.is_empty() || self.saving != Saving::Idle || retry_later {
            return None;
        }
        self.saving = Saving::Splits;
        Some(self.checkpoint.save_splits(&unrecorded))
    }

    /// Rejoins fragments of one line into one document; emits complete documents.
    fn take(&mut self, entry: LogEntry, after: Position, batch: &mut Batch) {
        if let Documents::Events(options) = &self.documents {
            self.read_to = after;
            match crate::events::stored::document(&entry, options) {
                Ok((id, doc)) => self.emit_event(batch, &id, &doc, entry.time_nano, after),
                Err(error) => {
                    tracing::warn!(%error, "skipping an entry of the events store that is not an event")
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
        for line in self
            .fragments
            .push(entry, start, after)
            .into_iter()
            .flatten()
        {
            self.emit(batch, line);
        }
    }

    /// An engine event: one document, its id from the event itself.
    fn emit_event(
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
            end: after,
        });
    }

    fn emit(&mut self, batch: &mut Batch, line: Line) {
        let Documents::Logs(doc) = &self.documents else {
            return;
        };
        let begin = batch.ndjson.len();
        let id = document::document_id(self.id.as_str(), line.start.segment, line.start.offset);
        let index = self.index.name_for(line.time_nano);
        document::append_create(
            &mut batch.ndjson,
            &index,
            &id,
            doc,
            line.time_nano,
            &line.stream,
            &line.message,
        );
        batch.data_stream = batch.data_stream || self.index.data_stream().is_some();
        batch.items.push(Item {
            range: begin..batch.ndjson.len(),
            source: self.id.clone(),
            // After the whole push that handed this line out: a push's lines go into one batch,
            // and a batch is acknowledged whole.
            end: self.fragments.resume(self.read_to),
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

    fn report_skipped(&mut self, shared: &Shared) {
        let skipped = self.cursor.skipped_bytes();
        if skipped > self.skipped_reported {
            let lost = skipped - self.skipped_reported;
            self.skipped_reported = skipped;
            shared.metrics.add_dropped_bytes(lost);
            // The store logged the deletion at ERROR, with its entry count; this says which
            // destination it cost.
            tracing::warn!(container = self.id.short(), lost_bytes = lost, destination = %shared.label, "skipped unshipped log data deleted before it could be shipped (raise SPOOL_MAX_SIZE)");
        }
    }
}

/// Sends a batch until every document in it is written, a duplicate, or dead-lettered. `None`
/// when shutdown came first.
async fn deliver(shared: Arc<Shared>, batch: Batch) -> Option<Acks> {
    let options = &shared.options;
    // Chunks still to deliver, last one first; a 413 splits a chunk into two.
    let mut chunks: Vec<Vec<usize>> = vec![(0..batch.items.len()).collect()];
    let mut backoff = Backoff::new(options.backoff_init, options.backoff_max);
    while let Some(mut todo) = chunks.pop() {
        while !todo.is_empty() {
            if shared.shutdown.is_cancelled() {
                return None;
            }
            let mut ndjson =
                Vec::with_capacity(todo.iter().map(|&i| batch.items[i].range.len()).sum());
            for &i in &todo {
                ndjson.extend_from_slice(&batch.ndjson[batch.items[i].range.clone()]);
            }
            let body = match bulk::encode_body(&ndjson, options.compression_level) {
                Ok(body) => body,
                Err(error) => {
                    tracing::error!(%error, "cannot compress a bulk body; sending it plain next time");
                    return None;
                }
            };
            shared.metrics.add_request(body.len() as u64);
            let answer = match shared.client.bulk(body, batch.data_stream, true).await {
                Ok(answer) => answer,
                Err(error) => {
                    shared.metrics.add_retry(todo.len() as u64);
                    backoff
                        .warn_and_wait(
                            &shared,
                            &format!("bulk request failed: {error}"),
                            tracing::Level::WARN,
                        )
                        .await?;
                    continue;
                }
            };
            match bulk::classify(answer.status, &answer.body, todo.len()) {
                RequestVerdict::Items(verdicts) => {
                    let mut again = Vec::new();
                    let mut accepted = Vec::new();
                    let mut held: Vec<(usize, Hold, u16, String)> = Vec::new();
                    let mut refused: Vec<(usize, u16, String)> = Vec::new();
                    for (&i, verdict) in todo.iter().zip(verdicts) {
                        match verdict {
                            ItemVerdict::Written => {
                                shared.metrics.add_acked(1);
                                accepted.push(i);
                            }
                            ItemVerdict::Duplicate => {
                                shared.metrics.add_duplicate(1);
                                accepted.push(i);
                            }
                            ItemVerdict::Retry { .. } => again.push(i),
                            ItemVerdict::NotReady { status, reason } => {
                                held.push((i, Hold::NotReady, status, reason));
                                again.push(i);
                            }
                            ItemVerdict::Unknown { status, reason } => {
                                held.push((i, Hold::Unknown, status, reason));
                                again.push(i);
                            }
                            ItemVerdict::Reject { status, reason } => {
                                refused.push((i, status, reason))
                            }
                        }
                    }
                    let progress = !accepted.is_empty() || !refused.is_empty();
                    end_episodes(&shared, &batch, &accepted);
                    dead_letter(&shared, &batch, &refused, &answer.node).await;
                    if progress {
                        backoff.reset();
                    }
                    todo = again;
                    if !held.is_empty() {
                        report_held(&shared, &batch, &held, &answer.node);
                        shared.metrics.add_retry(todo.len() as u64);
                        // Unknown answers wait the longest; a destination not ready backs off
                        // from the first wait, so a cluster fixed early in an episode is used
                        // again soon and a long episode costs one request per backoff_max.
                        if held.iter().any(|h| h.1 == Hold::Unknown) {
                            backoff.next = backoff.max;
                        }
                        backoff.wait(&shared).await?;
                    } else if !todo.is_empty() {
                        shared.metrics.add_retry(todo.len() as u64);
                        backoff.wait(&shared).await?;
                    }
                }
                RequestVerdict::TooLarge if todo.len() > 1 => {
                    let second = todo.split_off(todo.len() / 2);
                    tracing::info!(documents = todo.len() + second.len(), node = %answer.node, "bulk request too large for the server (413); splitting");
                    chunks.push(second);
                }
                RequestVerdict::TooLarge => {
                    let refused = [(
                        todo[0],
                        413,
                        "document alone is larger than the server accepts".to_owned(),
                    )];
                    dead_letter(&shared, &batch, &refused, &answer.node).await;
                    todo.clear();
                }
                RequestVerdict::RetryAll { reason } => {
                    shared.metrics.add_retry(todo.len() as u64);
                    backoff
                        .warn_and_wait(
                            &shared,
                            &format!("{} answered: {reason}", answer.node),
                            tracing::Level::WARN,
                        )
                        .await?;
                }
                RequestVerdict::Unauthorized { status, reason } => {
                    shared.metrics.add_retry(todo.len() as u64);
                    let message = format!("{} refused our credentials (HTTP {status}: {reason}); check user/password or api_key (ES_USER, ES_PASSWORD, ES_API_KEY). Logs are kept locally and shipping resumes once they are accepted", answer.node);
                    backoff.slow_wait(&shared, &message).await?;
                }
                RequestVerdict::Refused { status, reason } => {
                    shared.metrics.add_retry(todo.len() as u64);
                    let message = format!("{} refused the bulk request (HTTP {status}: {reason}); check the index and pipeline options. Logs are kept locally and retried", answer.node);
                    backoff.slow_wait(&shared, &message).await?;
                }
            }
        }
    }
    let mut acks: Acks = Vec::new();
    for item in &batch.items {
        match acks.iter_mut().find(|(id, _)| id == &item.source) {
            Some((_, end)) => *end = (*end).max(item.end),
            None => acks.push((item.source.clone(), item.end)),
        }
    }
    Some(acks)
}

/// Writes documents refused for good to the dead-letter file (synced before they count as
/// acknowledged) and counts them; what the file cannot keep is counted as lost (and logged at
/// ERROR by the file).
async fn dead_letter(
    shared: &Arc<Shared>,
    batch: &Batch,
    refused: &[(usize, u16, String)],
    node: &str,
) {
    if refused.is_empty() {
        return;
    }
    // An fdatasync per answer: on the blocking pool, off the threads that drain FIFOs. It gets
    // copies of the refused documents (document faults: few, and each copied once).
    let copies: Vec<(Vec<u8>, u16, String)> = refused
        .iter()
        .map(|(i, status, reason)| {
            let item = batch.ndjson[batch.items[*i].range.clone()].to_vec();
            (item, *status, reason.clone())
        })
        .collect();
    let container = batch.items[refused[0].0].source.short().to_owned();
    let node = node.to_owned();
    let writer = Arc::clone(shared);
    let span = tracing::Span::current();
    let recorded = tokio::task::spawn_blocking(move || {
        span.in_scope(|| record_refused(&writer, &copies, &container, &node))
    })
    .await;
    if let Err(error) = recorded {
        // They count as acknowledged all the same: a loss, said as one.
        tracing::error!(%error, documents = refused.len(), "writing refused documents to the dead-letter file failed; they are lost");
        shared.metrics.add_dead_letter_lost(refused.len() as u64);
    }
}

/// [`dead_letter`]'s blocking part: the write and sync, the counts, and the line that says so
/// (logged as soon as they are on disk).
fn record_refused(shared: &Shared, copies: &[(Vec<u8>, u16, String)], container: &str, node: &str) {
    let records: Vec<Refused<'_>> = copies
        .iter()
        .map(|(item, status, reason)| Refused {
            item,
            status: *status,
            reason,
        })
        .collect();
    let Recorded { kept, lost } = shared.dead_letters.record(&records);
    shared.metrics.add_dead_lettered(kept as u64);
    shared.metrics.add_dead_letter_lost(lost as u64);
    // One line per answer, not per document: a mapping conflict can refuse every document.
    let (_, status, reason) = &copies[0];
    tracing::warn!(documents = copies.len(), kept, lost, %container, status, %reason, %node, path = %shared.dead_letters.path().display(), "documents refused for good by Elasticsearch (the first one's container and reason shown), kept in the dead-letter file");
}

/// Counts held documents and logs each index's episode: at ERROR when it starts and as a
/// reminder, never once per retry.
fn report_held(shared: &Shared, batch: &Batch, held: &[(usize, Hold, u16, String)], node: &str) {
    // One report per index and reason in this answer, with its first status and reason.
    let mut by_index: Vec<(String, Hold, u16, &str, u64)> = Vec::new();
    for (i, hold, status, reason) in held {
        match hold {
            Hold::NotReady => shared.metrics.add_held(1),
            Hold::Unknown => shared.metrics.add_unknown_answers(1),
        }
        let index = bulk::action_index(&batch.ndjson[batch.items[*i].range.clone()])
            .unwrap_or_else(|| "(unknown index)".into());
        match by_index
            .iter_mut()
            .find(|(x, h, ..)| *x == index && h == hold)
        {
            Some(entry) => entry.4 += 1,
            None => by_index.push((index, *hold, *status, reason, 1)),
        }
    }
    let now = Instant::now();
    for (index, hold, status, reason, documents) in by_index {
        let report = shared.episodes.held(&index, hold, documents, now);
        let (since, total) = match report {
            Report::Quiet => continue,
            Report::Started => (Duration::ZERO, documents),
            Report::Reminder { since, held } => (since, held),
        };
        let still = if since.is_zero() { "" } else { "still " };
        let since = humantime::format_duration(Duration::from_secs(since.as_secs()));
        // The span names the destination and the message holds the reason whole.
        match hold {
            Hold::NotReady => {
                tracing::error!(%index, status, %node, held = total, since = %since, "Elasticsearch is {still}not ready for documents to {index} (HTTP {status}: {reason}); check the role or API key privileges (create_doc, auto_configure), write blocks, that the index or its template exists and the ingest pipeline. Logs are kept locally and retried with backoff; nothing is dead-lettered")
            }
            Hold::Unknown => {
                tracing::error!(%index, status, %node, held = total, since = %since, "Elasticsearch {still}answers documents to {index} with HTTP {status} ({reason}), an answer this plugin does not know; they are kept locally and retried slowly, not dead-lettered")
            }
        }
    }
    shared.metrics.set_not_ready(shared.episodes.not_ready());
}

/// Documents went in: the episodes of their indices are over.
fn end_episodes(shared: &Shared, batch: &Batch, accepted: &[usize]) {
    if shared.episodes.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    for &i in accepted {
        let Some(index) = bulk::action_index(&batch.ndjson[batch.items[i].range.clone()]) else {
            continue;
        };
        if seen.contains(&index) {
            continue;
        }
        if let Some(ended) = shared.episodes.accepted(&index, now) {
            let lasted = humantime::format_duration(Duration::from_secs(ended.lasted.as_secs()));
            tracing::warn!(destination = %shared.label, %index, held = ended.held, lasted = %lasted, "Elasticsearch accepts documents to {index} again; the held ones are being sent");
        }
        seen.push(index);
    }
    shared.metrics.set_not_ready(shared.episodes.not_ready());
}

/// Indexes refused documents into the dead-letter index as they come, until shutdown. Best
/// effort beside the file: a whole-request failure keeps them queued and retries with backoff;
/// a document the dead-letter index refuses too stays in the file only.
async fn dead_letters_to_index(shared: Arc<Shared>, index: String) {
    let options = &shared.options;
    let data_stream = IndexTemplate::parse(&index)
        .ok()
        .and_then(|t| t.resolve(&Default::default(), "").ok())
        .is_some_and(|r| r.data_stream().is_some());
    let mut backoff = Backoff::new(options.backoff_init, options.backoff_max);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(options.flush_interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let documents = shared.dead_letters.take(1_000, options.bulk_max_bytes);
        if documents.is_empty() {
            continue;
        }
        let action = serde_json::json!({"create": {"_index": index}}).to_string();
        let mut ndjson = Vec::new();
        for document in &documents {
            ndjson.extend_from_slice(action.as_bytes());
            ndjson.push(b'\n');
            ndjson.extend_from_slice(document);
            ndjson.push(b'\n');
        }
        let sent = match bulk::encode_body(&ndjson, options.compression_level) {
            Ok(body) => shared.client.bulk(body, data_stream, false).await,
            Err(error) => Err(error.to_string()),
        };
        let verdict =
            sent.map(|answer| bulk::classify(answer.status, &answer.body, documents.len()));
        // Why some documents wait for the next round, if any do.
        let held = match verdict {
            Ok(RequestVerdict::Items(items)) => {
                let refused = items
                    .iter()
                    .filter(|v| matches!(v, ItemVerdict::Reject { .. }))
                    .count();
                let first_held = items
                    .iter()
                    .find(|v| {
                        matches!(
                            v,
                            ItemVerdict::Retry { .. }
                                | ItemVerdict::NotReady { .. }
                                | ItemVerdict::Unknown { .. }
                        )
                    })
                    .map(ToString::to_string);
                let retry: Vec<Vec<u8>> = items
                    .iter()
                    .zip(documents)
                    .filter(|(v, _)| {
                        !matches!(
                            v,
                            ItemVerdict::Written
                                | ItemVerdict::Duplicate
                                | ItemVerdict::Reject { .. }
                        )
                    })
                    .map(|(_, d)| d)
                    .collect();
                if refused > 0 {
                    tracing::warn!(refused, %index, "the dead-letter index refused documents too; they are in the dead-letter file");
                }
                shared.dead_letters.put_back(retry);
                first_held
            }
            other => {
                shared.dead_letters.put_back(documents);
                Some(match other {
                    Err(error) => error,
                    Ok(verdict) => verdict.to_string(),
                })
            }
        };
        match held {
            None => backoff.reset(),
            Some(reason) => {
                let message = format!("cannot index refused documents into the dead-letter index {index}: {reason}; they stay in the dead-letter file and are retried");
                if backoff
                    .warn_and_wait(&shared, &message, tracing::Level::WARN)
                    .await
                    .is_none()
                {
                    return;
                }
            }
        }
    }
}

/// Capped exponential backoff with full jitter, reset after progress; every wait is raced
/// against shutdown (`None` then).
struct Backoff {
    init: Duration,
    max: Duration,
    next: Duration,
    last_warning: Option<Instant>,
}

impl Backoff {
    fn new(init: Duration, max: Duration) -> Self {
        Self {
            init,
            max,
            next: init,
            last_warning: None,
        }
    }

    fn reset(&mut self) {
        self.next = self.init;
    }

    fn step(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        // Full jitter between half and all of the ceiling: spreads retries of many
        // destinations without ever retrying at once in a tight loop.
        let jitter = jitter_fraction();
        ceiling.mul_f64(0.5 + 0.5 * jitter)
    }

    async fn wait(&mut self, shared: &Shared) -> Option<()> {
        let pause = self.step();
        sleep_or_shutdown(pause, &shared.shutdown).await
    }

    async fn warn_and_wait(
        &mut self,
        shared: &Shared,
        message: &str,
        _level: tracing::Level,
    ) -> Option<()> {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            tracing::warn!(destination = %shared.label, "{message}; retrying with backoff (logs are kept locally)");
            self.last_warning = Some(Instant::now());
        }
        self.wait(shared).await
    }

    async fn slow_wait(&mut self, shared: &Shared, message: &str) -> Option<()> {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::error!(destination = %shared.label, "{message}");
            self.last_warning = Some(Instant::now());
        }
        self.next = self.max;
        self.wait(shared).await
    }
}

async fn sleep_or_shutdown(pause: Duration, shutdown: &CancellationToken) -> Option<()> {
    tokio::select! {
        _ = tokio::time::sleep(pause) => Some(()),
        _ = shutdown.cancelled() => None,
    }
}

/// A number in [0, 1) that differs between calls; jitter needs no cryptographic randomness.
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
