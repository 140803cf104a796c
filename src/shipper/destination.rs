//! One destination: a set of Elasticsearch hosts with one set of options, shared by every
//! container whose options are equal. Its task runs the loop: it follows each attached store
//! ([`Source`]), keeps up to `workers` bulk requests in flight, and takes the answers in the
//! order the requests were made, so a checkpoint only ever moves past what Elasticsearch
//! accepted (written, 409 duplicate, or dead-lettered); a request is retried until that is true
//! for every document in it. What an answer means for each document is decided by
//! [`retry::judge`]; this module carries it out (metrics, the dead-letter file, episode reports,
//! the pause). A document the destination is not ready for (privileges, a write block, no index,
//! a missing pipeline) or whose answer is unknown is held and retried, never dead-lettered: the
//! destination's requests wait behind it, as for a whole-request 401, and the store keeps
//! everything meanwhile. Nothing here can slow a container: the store is the spool, and the
//! disk work that waits for a sync (checkpoint writes, dead-letter records, a container's
//! release) runs on the blocking pool, never on the runtime's threads that drain the FIFOs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::bulk;
use super::checkpoint::{self, Checkpoint, Save};
use super::client::Client;
use super::config::EsOptions;
use super::deadletter::{self, DeadLetters};
use super::fragments::Resume;
use super::not_ready::{Episodes, Hold, Report};
use super::pause::Pause;
use super::retry::{self, Answer, Held, Step};
use super::source::{Batch, Saving, Source, SourceSpec, FRAGMENT_WAIT};
use crate::backoff::Cancelled;
use crate::container_id::ContainerId;
use crate::metrics::DestinationMetrics;

pub enum Command {
    Attach(Box<SourceSpec>),
    /// The container has no logging run any more: ship what is left, then let it go.
    Stopped(ContainerId),
    /// It logs again.
    Started(ContainerId),
}

/// Called with a container whose store is fully shipped after its logging stopped.
pub type OnDrained = Arc<dyn Fn(&ContainerId) + Send + Sync>;

/// What a finished request acknowledges: per container, the position just after its last
/// document in the request.
type Acks = Vec<(ContainerId, Resume)>;

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
    dead_letters: Arc<DeadLetters>,
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
    /// Where the destination's helper tasks run (the store watchers, the dead-letter index).
    tracker: TaskTracker,
}

impl Destination {
    // Each is a separate part handed over by `Shippers` (its own lifetime or owner): bundling
    // them in a struct would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        options: EsOptions,
        client: Client,
        dead_letters: DeadLetters,
        metrics: Arc<DestinationMetrics>,
        checkpoints_dir: PathBuf,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        on_drained: OnDrained,
    ) -> Self {
        let label = options.label();
        Self {
            shared: Arc::new(Shared {
                options,
                label,
                client,
                dead_letters: Arc::new(dead_letters),
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
            tracker,
        }
    }

    /// Ships until shutdown. On shutdown requests in flight are dropped unacknowledged: they are
    /// sent again after the restart, and their ids make that harmless.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let workers = self.shared.options.workers;
        let tick = self.shared.options.flush_interval.min(FRAGMENT_WAIT);
        let mut in_flight = FuturesOrdered::new();
        if let Some(index) = self.shared.options.dead_letter_index.clone() {
            let shared = Arc::clone(&self.shared);
            let to_index = async move {
                let Shared {
                    dead_letters,
                    client,
                    options,
                    label,
                    shutdown,
                    ..
                } = &*shared;
                // Raced as a whole: a request under way must not hold the wind-down up.
                tokio::select! {
                    () = deadletter::to_index(dead_letters, client, options, label, shutdown, &index) => {}
                    () = shutdown.cancelled() => {}
                }
            };
            self.tracker
                .spawn(to_index.instrument(tracing::Span::current()));
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
        let wake_task = CancellationToken::new();
        let mut changes = spec.store.subscribe();
        let wake = Arc::clone(&self.wake);
        let cancel = wake_task.clone();
        let watch = async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
                wake.notify_one();
            }
        };
        self.tracker
            .spawn(watch.instrument(tracing::Span::current()));
        tracing::info!(container = spec.id.short(), destination = %self.shared.label, from = ?from, "shipping attached");
        self.order.push(spec.id.clone());
        self.sources.insert(
            spec.id.clone(),
            Source::new(spec, cursor, checkpoint, wake_task),
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
            let shared = &self.shared;
            if let Some(save) = source.fill(&mut batch, max, &shared.metrics, &shared.label) {
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
            source.acked = std::mem::take(&mut source.acked).later(end);
            // Retention may now delete the backlog shipped past.
            source.store.set_pin(Some(source.acked.at));
            if source.saving != Saving::Idle {
                // Written with the next write.
                source.checkpoint.hold(source.acked.clone());
                continue;
            }
            if let Some(save) = source.checkpoint.save_for(source.acked.clone(), false) {
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
            .map(|source| source.store.bytes_after(source.acked.at))
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
            .filter(|s| s.stopped && s.drained())
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
            let last = source.checkpoint.save_for(source.acked.clone(), true);
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

/// Sends a batch until every document in it is written, a duplicate, or dead-lettered. `None`
/// when shutdown came first.
async fn deliver(shared: Arc<Shared>, batch: Batch) -> Option<Acks> {
    let options = &shared.options;
    // Chunks still to deliver, last one first; a 413 splits a chunk into two.
    let mut chunks: Vec<Vec<usize>> = vec![(0..batch.items.len()).collect()];
    let mut pause = Pause::new(options.backoff_init, options.backoff_max);
    while let Some(mut todo) = chunks.pop() {
        while !todo.is_empty() {
            if shared.shutdown.is_cancelled() {
                return None;
            }
            let mut ndjson =
                Vec::with_capacity(todo.iter().map(|&i| batch.items[i].range.len()).sum());
            for &i in &todo {
                ndjson.extend_from_slice(batch.item(i));
            }
            let body = match bulk::encode_body(&ndjson, options.compression_level) {
                Ok(body) => body,
                Err(error) => {
                    // Compressing into memory fails only if memory does: the batch is given up
                    // unacknowledged (its documents are sent again after a restart).
                    tracing::error!(%error, "cannot compress a bulk body; the batch is sent again after a restart");
                    return None;
                }
            };
            shared.metrics.add_request(body.len() as u64);
            let (node, answer) = match shared.client.bulk(body, batch.data_stream, true).await {
                Ok(answer) => {
                    let verdict = bulk::classify(answer.status, &answer.body, todo.len());
                    let node = answer.node;
                    (node.clone(), Answer::Judged { node, verdict })
                }
                Err(error) => (String::new(), Answer::Failed(error.to_string())),
            };
            let step = retry::judge(todo, answer);
            todo = carry_out(&shared, &batch, step, &node, &mut pause, &mut chunks)
                .await
                .ok()?;
        }
    }
    let mut acks: Acks = Vec::new();
    for item in &batch.items {
        match acks.iter_mut().find(|(id, _)| id == &item.source) {
            Some((_, end)) => *end = std::mem::take(end).later(item.end.clone()),
            None => acks.push((item.source.clone(), item.end.clone())),
        }
    }
    Some(acks)
}

/// Does what one answer's [`Step`] says: counts, ends or reports episodes, dead-letters,
/// queues a split-off half, and pauses. Returns what goes again in this chunk.
async fn carry_out(
    shared: &Arc<Shared>,
    batch: &Batch,
    step: Step,
    node: &str,
    pause: &mut Pause,
    chunks: &mut Vec<Vec<usize>>,
) -> Result<Vec<usize>, Cancelled> {
    let written = step.accepted.len() - step.duplicates;
    shared.metrics.add_acked(written as u64);
    shared.metrics.add_duplicate(step.duplicates as u64);
    end_episodes(shared, batch, &step.accepted);
    deadletter::dead_letter(
        &shared.dead_letters,
        &shared.metrics,
        batch,
        &step.refused,
        node,
    )
    .await;
    if step.progress {
        pause.reset();
    }
    if !step.held.is_empty() {
        report_held(shared, batch, &step.held, node);
    }
    let retried = step.retried();
    if let Some(second) = step.split_off {
        let documents = step.again.len() + second.len();
        tracing::info!(documents, %node, "bulk request too large for the server (413); splitting");
        chunks.push(second);
    }
    if retried > 0 {
        shared.metrics.add_retry(retried as u64);
    }
    pause
        .wait(&step.wait, &shared.label, &shared.shutdown)
        .await?;
    Ok(step.again)
}

/// Counts held documents and logs each index's episode: at ERROR when it starts and as a
/// reminder, never once per retry.
fn report_held(shared: &Shared, batch: &Batch, held: &[Held], node: &str) {
    // One report per index and reason in this answer, with its first status and reason.
    let mut by_index: Vec<(String, Hold, u16, &str, u64)> = Vec::new();
    for Held {
        item,
        hold,
        status,
        reason,
    } in held
    {
        match hold {
            Hold::NotReady => shared.metrics.add_held(1),
            Hold::Unknown => shared.metrics.add_unknown_answers(1),
        }
        let index =
            bulk::action_index(batch.item(*item)).unwrap_or_else(|| "(unknown index)".into());
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
        let Some(index) = bulk::action_index(batch.item(i)) else {
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

#[cfg(test)]
mod tests;
