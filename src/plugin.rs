//! The running plugin: the logging runs, the stores, and the rules that tie them together.
//!
//! - StartLogging validates everything before touching anything (container id, log-opts, that
//!   `File` is a FIFO), records the run in the run table, then starts its pipeline.
//! - StopLogging asks the pipeline to drain the pipe and answers as soon as it has: the engine
//!   has written everything by then and closes its end only after our answer.
//! - A run that ends by EOF (engine restart, live-restore) is forgotten the same way.
//! - At start, every run in the table whose FIFO still exists is reopened (crash recovery).
//! - `DESTROY_LOGS_ON_STOP` removes a container's store when its last run stops, except after
//!   the throwaway run the engine opens for `docker logs` on a stopped container (recognised as a
//!   run that received nothing and during which ReadLogs was served).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::container_id::{ContainerId, InvalidContainerId};
use crate::events::service::Parts;
use crate::fifo::{Fifo, FifoError};
use crate::metrics::{Metrics, SpoolFigures, SpoolReport};
use crate::options::{LogOptions, OptionError};
use crate::pipeline::{sync_store, Pipeline, RunEnd, RunStats, StopRequest};
use crate::protocol::{Info, StartLogging};
use crate::replay::ReplayFilter;
use crate::runs::{RunRecord, RunTable, RunsError};
use crate::settings::Settings;
use crate::shipper::config::EsOptions;
use crate::shipper::destination::OnDrained;
use crate::shipper::{ShipError, Shippers};
use crate::store::{ContainerStore, Removal, Spool, StoreError, Stores};

/// How long StopLogging waits for the final drain before answering anyway: the engine must
/// never hang on us, and the drain of a full 1 MiB pipe takes milliseconds.
const STOP_DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How often a destination that could not be set up for a reopened run is tried again.
const ATTACH_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    ContainerId(#[from] InvalidContainerId),
    #[error("{0}")]
    Option(#[from] OptionError),
    #[error("{0}")]
    Fifo(#[from] FifoError),
    #[error("cannot open the local copy: {0}")]
    Store(#[from] StoreError),
    #[error("StartLogging has no File")]
    NoFile,
    #[error("{0}")]
    Ship(#[from] ShipError),
}

struct ActiveRun {
    id: ContainerId,
    stop: Option<oneshot::Sender<StopRequest>>,
    /// Set when ReadLogs is served for this container while this run is active.
    read_logs_served: Arc<AtomicBool>,
    /// Where its lines are shipped, if anywhere.
    es: Option<EsOptions>,
}

/// Per container: how many runs are active, watched by follow streams.
struct Activity {
    runs: watch::Sender<usize>,
}

impl Activity {
    /// The container's entry, created with no runs counted: a follow stream may watch a
    /// container before its first run, and a run's count starts there.
    fn of<'a>(activity: &'a mut HashMap<ContainerId, Activity>, id: &ContainerId) -> &'a mut Self {
        activity.entry(id.clone()).or_insert_with(|| Activity {
            runs: watch::channel(0).0,
        })
    }
}

pub struct Plugin {
    settings: Settings,
    stores: Stores,
    table: Arc<RunTable>,
    shippers: Arc<Shippers>,
    metrics: Arc<Metrics>,
    active: Mutex<HashMap<String, ActiveRun>>,
    activity: Mutex<HashMap<ContainerId, Activity>>,
    /// See [`Plugin::lock_ship_order`].
    ship_order: Mutex<()>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Plugin {
    /// Opens the state dir: `<state>/containers` for stores, `<state>/runs.json` for the table.
    /// A run table that cannot be read is moved aside (and logged), never a reason not to start:
    /// the engine disables a plugin that does not bind its socket within seconds.
    pub fn open(
        settings: Settings,
        state_dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let spool = Arc::new(Spool::new(settings.spool_max_size));
        let checkpoints = crate::shipper::checkpoint::dir(state_dir);
        let stores =
            Stores::open_after_boot_check(state_dir.join("containers"), Arc::clone(&spool))?
                .on_removed(move |id| crate::shipper::checkpoint::delete(&checkpoints, id));
        let table = match RunTable::load(state_dir) {
            Ok(table) => table,
            Err(error) => {
                let aside = state_dir.join("runs.json.unreadable");
                tracing::error!(%error, moved_to = %aside.display(), "run table unreadable; FIFOs open before the restart cannot be reopened");
                let _ = std::fs::rename(state_dir.join("runs.json"), &aside);
                RunTable::empty(state_dir)
            }
        };
        let table = Arc::new(table);
        let tracker = TaskTracker::new();
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<Plugin>| {
            let me = me.clone();
            let on_drained = Arc::new(move |id: &ContainerId| {
                if let Some(plugin) = me.upgrade() {
                    // Called on the blocking pool, awaited by the destination's task (see
                    // `Destination::release_drained`): the run table's sync and the store's
                    // close never hold a runtime thread that drains pipes, and the release
                    // stays in order with the destination's work.
                    plugin.drained(id);
                }
            });
            let Parts {
                shippers, metrics, ..
            } = shipping(spool, &settings, state_dir, &shutdown, &tracker, on_drained);
            Self {
                shippers,
                metrics,
                settings,
                stores,
                table,
                active: Mutex::new(HashMap::new()),
                activity: Mutex::new(HashMap::new()),
                ship_order: Mutex::new(()),
                tracker,
                shutdown,
            }
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub fn shippers(&self) -> &Arc<Shippers> {
        &self.shippers
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Everything a container's logging run shipped: release its ended runs, the shipper's pin
    /// on its store, and its local copy when DESTROY_LOGS_ON_STOP says so.
    fn drained(&self, id: &ContainerId) {
        if let Err(error) = self.table.remove_stopped(id.as_str()) {
            log_table_error(&error);
        }
        {
            // Under the order lock a new run takes to count itself and pin its backlog: a
            // container that started again keeps the pin its new run set.
            let _order = self.lock_ship_order();
            if self.runs_counted(id) == 0 {
                if let Some(store) = self.stores.get_open(id) {
                    store.set_pin(None);
                }
            }
        }
        self.stores.close_idle();
        self.destroy_local_copy(id, "after shipping");
    }

    /// DESTROY_LOGS_ON_STOP, when set: removes the container's local copy unless something uses
    /// it (a new run of a container that restarted at once, a reader, a shipper).
    fn destroy_local_copy(&self, id: &ContainerId, when: &str) {
        if !self.settings.destroy_logs_on_stop {
            return;
        }
        match self.stores.remove_unused(id) {
            Ok(Removal::Removed) => tracing::info!(
                container = id.short(),
                "local copy removed {when} (DESTROY_LOGS_ON_STOP)"
            ),
            Ok(Removal::InUse) => tracing::info!(
                container = id.short(),
                "local copy kept despite DESTROY_LOGS_ON_STOP: the container logs again or is being read"
            ),
            Err(error) => tracing::warn!(%error, "cannot remove the local copy"),
        }
    }

    /// The containers the run table names (running, being reopened, or with lines to ship).
    pub fn recorded_containers(&self) -> std::collections::HashSet<String> {
        self.table
            .all()
            .into_iter()
            .map(|record| record.info.container_id)
            .collect()
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Reopens every FIFO of the run table that still exists, and resumes shipping for
    /// containers whose lines were not all shipped. Returns at once: each FIFO is recovered by
    /// its own task, so the API serves while stores open, and no FIFO waits for another's.
    pub fn recover(self: &Arc<Self>) {
        // A container with a FIFO to reopen ships its whole backlog through that run (attaching
        // resumes from the checkpoint): resuming it apart as well would race the reopen's
        // attach with a "stopped" the destination must not get while the run is alive.
        let mut resumed: std::collections::HashSet<String> = self
            .table
            .all()
            .into_iter()
            .filter(|r| !r.stopped)
            .map(|r| r.info.container_id)
            .collect();
        for record in self.table.all().into_iter().filter(|r| r.stopped) {
            if resumed.insert(record.info.container_id.clone()) {
                let plugin = Arc::clone(self);
                self.tracker.spawn_blocking(move || {
                    if let Err(error) = plugin.resume_shipping(&record) {
                        tracing::warn!(%error, container = %record.info.container_id, "cannot resume shipping of a stopped container");
                    }
                });
            }
        }
        for record in self.table.all().into_iter().filter(|r| !r.stopped) {
            self.reopen(record);
        }
    }

    fn resume_shipping(self: &Arc<Self>, record: &RunRecord) -> Result<(), StartError> {
        let id = ContainerId::parse(&record.info.container_id)?;
        let options = LogOptions::parse(Some(&record.info.config), &self.settings.option_defaults)?;
        let Some(es) = options.es else {
            self.drained(&id);
            return Ok(());
        };
        let store = self.stores.open_container(&id, options.store)?;
        let _order = self.lock_ship_order();
        // A new run of the container (StartLogging meanwhile) keeps it going.
        if self.attach_or_retry(&es, &record.info, &id, &store) && self.runs_counted(&id) == 0 {
            self.shippers.stopped(&es, &id);
        }
        Ok(())
    }

    /// Reopens a FIFO of the run table in a task of its own. Its run is registered at once, so
    /// a StopLogging that comes meanwhile waits for its drain. Only a FIFO that is gone (its
    /// container stopped while the plugin was down) or a record that cannot be read is
    /// forgotten; a store or destination that fails to open never stops the FIFO being drained.
    fn reopen(self: &Arc<Self>, record: RunRecord) {
        let parsed = ContainerId::parse(&record.info.container_id)
            .map_err(StartError::from)
            .and_then(|id| {
                let options =
                    LogOptions::parse(Some(&record.info.config), &self.settings.option_defaults)?;
                Ok((id, options))
            });
        let (id, options) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return self.cannot_reopen(&record, &error),
        };
        let stop = self.register(&record.file, &id, options.es.clone());
        let plugin = Arc::clone(self);
        let file = record.file.clone();
        let run_id = id.clone();
        let pipeline = async move {
            let opening = Arc::clone(&plugin);
            let opened =
                tokio::task::spawn_blocking(move || opening.open_reopened(&record, &id, options))
                    .await;
            opened.unwrap_or_else(|error| {
                tracing::error!(%error, "reopening a FIFO failed");
                None
            })
        };
        self.spawn_run(file, run_id, stop, pipeline);
    }

    /// The blocking part of [`Self::reopen`]: the FIFO, the store, the shipper. None when the
    /// FIFO is gone: the run is unlisted and forgotten.
    fn open_reopened(
        self: &Arc<Self>,
        record: &RunRecord,
        id: &ContainerId,
        options: LogOptions,
    ) -> Option<Pipeline> {
        let fifo = match Fifo::open(Path::new(&record.file)) {
            Ok(fifo) => fifo,
            Err(error) => {
                self.lock_active().remove(&record.file);
                self.cannot_reopen(record, &error.into());
                return None;
            }
        };
        let es = options.es;
        let store = self.stores.open_container(id, options.store);
        {
            let _order = self.lock_ship_order();
            self.add_run(id, 1);
            if let (Some(es), Ok(store)) = (&es, &store) {
                self.attach_or_retry(es, &record.info, id, store);
            }
        }
        tracing::info!(container = id.short(), file = %record.file, "reopened FIFO after restart");
        let store = match store {
            Ok(store) => store,
            Err(error) => {
                tracing::error!(%error, container = id.short(), file = %record.file, "cannot open the local copy of a container whose FIFO was reopened: its lines are drained and lost until it opens (retried, backing off to {:?})", crate::pipeline::slot::LAST_RETRY);
                let plugin = Arc::clone(self);
                let (id, info, limits) = (id.clone(), record.info.clone(), options.store);
                return Some(Pipeline::without_store(
                    fifo,
                    Box::new(move || {
                        let store = plugin.stores.open_container(&id, limits)?;
                        if let Some(es) = &es {
                            let _order = plugin.lock_ship_order();
                            plugin.attach_or_retry(es, &info, &id, &store);
                        }
                        Ok(store)
                    }),
                ));
            }
        };
        // Only a FIFO holding bytes can start with the round a crash left stored but not
        // consumed (see `replay`).
        let replay = match fifo.available() {
            Ok(0) => None,
            _ => Some(ReplayFilter::new(Arc::clone(&store))),
        };
        let mut pipeline = Pipeline::new(fifo, store, replay);
        // Here, on the blocking pool: the replay check reads (and may decompress) the store.
        pipeline.drain_replayed();
        Some(pipeline)
    }

    fn cannot_reopen(&self, record: &RunRecord, error: &StartError) {
        // Gone when its container stopped while we were down, but also after `docker plugin
        // upgrade`, which replaces the rootfs where the engine keeps the FIFOs: the operator
        // must then restart that container for it to log again.
        tracing::warn!(%error, container = %record.info.container_id.get(..12).unwrap_or_default(), file = %record.file, "cannot reopen a FIFO from before the restart; forgetting it. If its container is still running (after docker plugin upgrade), restart it: until then its lines reach no logging plugin");
        self.forget_record(&record.file);
    }

    /// Hands a store to its destination; one that cannot be set up now (an unreadable CA file,
    /// say) is tried again in the background while the local copy keeps every line. Called
    /// under [`Self::lock_ship_order`]. True when attached now.
    fn attach_or_retry(
        self: &Arc<Self>,
        es: &EsOptions,
        info: &Info,
        id: &ContainerId,
        store: &Arc<ContainerStore>,
    ) -> bool {
        let Err(error) = self.shippers.attach(es, info, id, Arc::clone(store)) else {
            return true;
        };
        tracing::error!(%error, container = id.short(), "cannot ship this container's lines: its destination cannot be set up. The local copy keeps them; retrying every {ATTACH_RETRY:?}");
        let plugin = Arc::clone(self);
        let (es, info, id, store) = (es.clone(), info.clone(), id.clone(), Arc::clone(store));
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ATTACH_RETRY) => {}
                }
                let plugin = Arc::clone(&plugin);
                let (es, info, id, store) = (es.clone(), info.clone(), id.clone(), Arc::clone(&store));
                let attached = tokio::task::spawn_blocking(move || {
                    let _order = plugin.lock_ship_order();
                    match plugin.shippers.attach(&es, &info, &id, store) {
                        Ok(()) => {
                            tracing::warn!(container = id.short(), "shipping this container's lines again: its destination is set up");
                            // Its runs ended meanwhile: the destination releases it once shipped.
                            if plugin.runs_counted(&id) == 0 {
                                plugin.shippers.stopped(&es, &id);
                            }
                            true
                        }
                        Err(error) => {
                            tracing::error!(%error, container = id.short(), "still cannot set up this container's destination; its lines wait in the local copy");
                            false
                        }
                    }
                })
                .await;
                if attached.unwrap_or(true) {
                    return;
                }
            }
        });
        false
    }

    pub fn start_logging(self: &Arc<Self>, request: StartLogging) -> Result<(), StartError> {
        if request.file.is_empty() {
            return Err(StartError::NoFile);
        }
        let id = ContainerId::parse(&request.info.container_id)?;
        let options =
            LogOptions::parse(Some(&request.info.config), &self.settings.option_defaults)?;
        if let Some(es) = &options.es {
            self.shippers.validate(es, &request.info)?;
        }
        let fifo = Fifo::open(Path::new(&request.file))?;
        let store = self.stores.open_container(&id, options.store)?;
        self.count_run_and_attach(options.es.as_ref(), &request.info, &id, &store)?;
        if !options.ignored.is_empty() {
            tracing::debug!(container = id.short(), ignored = ?options.ignored, "log-opts for other drivers ignored");
        }
        // The engine never reuses a FIFO path, but if it did the old run must not leak.
        if let Some(old) = self.lock_active().remove(&request.file) {
            if let Some(stop) = old.stop {
                let (reply, _) = oneshot::channel();
                let _ = stop.send(reply);
            }
        }
        let record = RunRecord {
            file: request.file.clone(),
            info: strip_secrets(request.info, options.es.as_ref()),
            stopped: false,
        };
        if let Err(error) = self.table.insert(record) {
            log_table_error(&error);
        }
        tracing::info!(container = id.short(), file = %request.file, "logging started");
        self.launch(request.file, id, fifo, store, options.es);
        Ok(())
    }

    fn launch(
        self: &Arc<Self>,
        file: String,
        id: ContainerId,
        fifo: Fifo,
        store: Arc<ContainerStore>,
        es: Option<EsOptions>,
    ) {
        let stop = self.register(&file, &id, es);
        let pipeline = Pipeline::new(fifo, store, None);
        self.spawn_run(file, id, stop, std::future::ready(Some(pipeline)));
    }

    /// Lists a run as active: from now on StopLogging for `file` reaches it.
    fn register(
        &self,
        file: &str,
        id: &ContainerId,
        es: Option<EsOptions>,
    ) -> oneshot::Receiver<StopRequest> {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.lock_active().insert(
            file.to_owned(),
            ActiveRun {
                id: id.clone(),
                stop: Some(stop_tx),
                read_logs_served: Arc::new(AtomicBool::new(false)),
                es,
            },
        );
        stop_rx
    }

    /// Runs the pipeline `pipeline` gives (none: the run could not start, and is unlisted)
    /// until it ends, then ends the run.
    fn spawn_run(
        self: &Arc<Self>,
        file: String,
        id: ContainerId,
        stop: oneshot::Receiver<StopRequest>,
        pipeline: impl std::future::Future<Output = Option<Pipeline>> + Send + 'static,
    ) {
        let plugin = Arc::clone(self);
        let shutdown = self.shutdown.child_token();
        let metrics = Arc::clone(&self.metrics);
        let span = tracing::info_span!("run", container = id.short());
        self.tracker.spawn(
            async move {
                let Some(pipeline) = pipeline.await else {
                    return;
                };
                let (end, stats) = pipeline
                    .with_metrics(Arc::clone(&metrics.ingest))
                    .run(stop, shutdown)
                    .await;
                // Off the runtime's threads, which drain every other container's pipe: the
                // store is synced after StopLogging was answered (a host crash would lose what
                // is only in the page cache), the run table is synced, and idle stores are
                // synced as they close.
                let span = tracing::Span::current();
                let ended = tokio::task::spawn_blocking(move || {
                    span.in_scope(|| {
                        if end == RunEnd::Stopped {
                            if let Some(store) = plugin.stores.get_open(&id) {
                                sync_store(&store);
                            }
                        }
                        // The pipeline let go of the store: the run's end decides whether
                        // anything still uses it (DESTROY_LOGS_ON_STOP).
                        plugin.run_ended(&file, end, stats);
                        // The store closes unless shipping or a reader still needs it.
                        plugin.stores.close_idle();
                    })
                });
                if let Err(error) = ended.await {
                    tracing::error!(%error, "ending a logging run failed");
                }
            }
            .instrument(span),
        );
    }

    /// Drains and closes the run of `file`. Never fails: a failing StopLogging leaks the FIFO
    /// in the engine.
    pub async fn stop_logging(&self, file: &str) {
        let stop = self
            .lock_active()
            .get_mut(file)
            .and_then(|run| run.stop.take());
        let Some(stop) = stop else {
            tracing::debug!(file, "StopLogging for a FIFO with no active run");
            return;
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if stop.send(reply_tx).is_err() {
            return;
        }
        match tokio::time::timeout(STOP_DRAIN_LIMIT, reply_rx).await {
            Ok(Ok(_stats)) => {}
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!(
                file,
                "the final drain took over {STOP_DRAIN_LIMIT:?}; answering StopLogging anyway"
            ),
        }
    }

    /// Called by a run's task when its pipeline returns.
    fn run_ended(&self, file: &str, end: RunEnd, stats: RunStats) {
        let run = self.lock_active().remove(file);
        let Some(run) = run else { return };
        // ERROR when entries or bytes of entries were lost, WARN when frames that were no
        // entries were skipped: a run that lost something never ends at INFO.
        macro_rules! run_ended {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    file,
                    ?end,
                    entries = stats.entries,
                    bytes = stats.bytes,
                    oversized = stats.oversized,
                    invalid = stats.invalid,
                    truncated_bytes = stats.truncated_bytes,
                    lost = stats.lost,
                    replayed = stats.replayed,
                    "logging run ended"
                )
            };
        }
        if stats.lost > 0 || stats.truncated_bytes > 0 {
            run_ended!(tracing::Level::ERROR);
        } else if stats.invalid > 0 {
            run_ended!(tracing::Level::WARN);
        } else {
            run_ended!(tracing::Level::INFO);
        }
        if end == RunEnd::Shutdown {
            // Still open in the engine: the table keeps it for the next start.
            self.add_run(&run.id, -1);
            return;
        }
        let order = self.lock_ship_order();
        let now_idle = self.add_run(&run.id, -1) == 0;
        if let Some(es) = &run.es {
            // Kept in the table until shipped, so a restart resumes shipping; the destination
            // releases it (and applies DESTROY_LOGS_ON_STOP) once everything is acknowledged.
            if let Err(error) = self.table.mark_stopped(file) {
                log_table_error(&error);
            }
            if now_idle {
                self.shippers.stopped(es, &run.id);
            }
            return;
        }
        drop(order);
        self.forget_record(file);
        let throwaway = stats.entries == 0 && run.read_logs_served.load(Ordering::Relaxed);
        if end == RunEnd::Stopped && now_idle && !throwaway {
            self.destroy_local_copy(&run.id, "at stop");
        }
    }

    fn forget_record(&self, file: &str) {
        if let Err(error) = self.table.remove(file) {
            log_table_error(&error);
        }
    }

    /// Counts a new run of `id` and, when it ships, hands its store to the shipper, in the order
    /// a run's end undoes them (see [`Self::lock_ship_order`]).
    fn count_run_and_attach(
        &self,
        es: Option<&EsOptions>,
        info: &Info,
        id: &ContainerId,
        store: &Arc<ContainerStore>,
    ) -> Result<(), StartError> {
        let _order = self.lock_ship_order();
        self.add_run(id, 1);
        if let Some(es) = es {
            if let Err(error) = self.shippers.attach(es, info, id, Arc::clone(store)) {
                self.add_run(id, -1);
                return Err(error.into());
            }
        }
        Ok(())
    }

    /// Held while a run is counted and attached to its destination, and while a run's end
    /// counts down and tells the destination the container stopped. Without it, a container
    /// restarting at once (StopLogging, then StartLogging right away) could have its old run's
    /// Stopped reach the destination after the new run's Attach: the destination would then
    /// take the container for stopped, release it once what it had read was shipped, and never
    /// ship the new run's lines.
    fn lock_ship_order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ship_order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the active-run count of a container and returns the new count.
    fn add_run(&self, id: &ContainerId, delta: isize) -> usize {
        let mut activity = self.lock_activity();
        let entry = Activity::of(&mut activity, id);
        let mut now = 0;
        entry.runs.send_modify(|n| {
            *n = n.saturating_add_signed(delta);
            now = *n;
        });
        if now == 0 && entry.runs.receiver_count() == 0 {
            activity.remove(id);
        }
        now
    }

    /// How many runs of the container are counted now (started, not yet ended).
    fn runs_counted(&self, id: &ContainerId) -> usize {
        self.lock_activity().get(id).map_or(0, |a| *a.runs.borrow())
    }

    /// The active-run count of a container, for a follow stream to watch; marks the active runs
    /// as having served ReadLogs.
    pub fn watch_runs(&self, id: &ContainerId) -> watch::Receiver<usize> {
        for run in self.lock_active().values().filter(|r| &r.id == id) {
            run.read_logs_served.store(true, Ordering::Relaxed);
        }
        Activity::of(&mut self.lock_activity(), id).runs.subscribe()
    }

    fn lock_activity(&self) -> std::sync::MutexGuard<'_, HashMap<ContainerId, Activity>> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for every run to finish its final drain after the shutdown token fired.
    pub async fn wind_down(&self, limit: Duration) {
        wind_down(&self.tracker, limit).await;
    }
}

/// Waits, at most `limit`, for the tasks of `tracker` to end after the shutdown token fired:
/// the plugin's, or the standalone `events` command's.
pub async fn wind_down(tracker: &TaskTracker, limit: Duration) {
    tracker.close();
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!("some tasks did not finish within {limit:?} of shutdown");
    }
}

/// What the run table may keep of a container: of its environment (secrets, often) only the
/// variables its `env`/`env-regex` log-opts select, which its documents carry anyway and need
/// again after a restart.
fn strip_secrets(mut info: Info, es: Option<&EsOptions>) -> Info {
    info.container_env = es.map_or_else(Vec::new, |es| {
        es.attributes.selected_env(&info.container_env)
    });
    info
}

/// The shipping side of a process, the plugin's or the standalone `events` command's: the
/// spool budget (`SPOOL_MAX_SIZE`), the metrics that show it, and the shippers, which call
/// `on_drained` once a stopped container is shipped.
pub fn shipping(
    spool: Arc<Spool>,
    settings: &Settings,
    state_dir: &Path,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    on_drained: OnDrained,
) -> Parts {
    let metrics = Arc::new(Metrics::new(Arc::clone(&spool) as _));
    let shippers = Shippers::new(
        state_dir.to_owned(),
        Arc::clone(&metrics),
        shutdown.clone(),
        tracker.clone(),
        on_drained,
        settings.dead_letter_max_size,
    );
    Parts {
        spool,
        shippers: Arc::new(shippers),
        metrics,
    }
}

/// The spool reports into metrics from here, where the parts are wired, so that neither the
/// store nor metrics names the other.
impl SpoolReport for Spool {
    fn spool_figures(&self) -> SpoolFigures {
        SpoolFigures {
            used: self.used(),
            max: self.max(),
            dropped_bytes: self.dropped_bytes(),
            dropped_entries: self.dropped_entries(),
        }
    }
}

fn log_table_error(error: &RunsError) {
    tracing::error!(%error, "cannot update the run table; after a plugin crash these FIFOs would not be reopened");
}

/// The age sweep works on the plugin's stores and keeps what its run table names.
impl crate::retention::Local for Plugin {
    fn stores(&self) -> &Stores {
        &self.stores
    }

    fn recorded_containers(&self) -> std::collections::HashSet<String> {
        Plugin::recorded_containers(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::LogEntry;
    use crate::store::{Batch, StoreLimits};
    use prost::Message;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn plugin(dir: &Path) -> Arc<Plugin> {
        let settings = Settings {
            destroy_logs_on_stop: true,
            ..Settings::default()
        };
        Plugin::open(settings, dir, CancellationToken::new()).unwrap()
    }

    fn one_line(time: i64) -> Batch {
        let entry = LogEntry {
            source: "stdout".into(),
            time_nano: time,
            line: b"a new run's line".to_vec().into(),
            ..LogEntry::default()
        };
        let mut batch = Batch::default();
        batch.push(&entry.encode_to_vec(), time);
        batch
    }

    /// The run table keeps of a container's environment only what its documents carry, and
    /// that is enough: the document a restarted plugin builds from the record is the one the
    /// StartLogging built (a secret not asked for is never written; one asked for survives).
    #[test]
    fn the_run_record_keeps_only_the_env_asked_for_and_documents_stay_the_same() {
        let config: HashMap<String, String> = [
            ("hosts", "http://127.0.0.1:9"),
            ("env", "DEPLOY"),
            ("tag", "{{.Name}}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let options = LogOptions::parse(Some(&config), &HashMap::new()).unwrap();
        let es = options.es.unwrap();
        let info = Info {
            container_id: ID.into(),
            container_name: "/web".into(),
            container_env: vec!["SECRET=hunter2".into(), "DEPLOY=blue".into()],
            config,
            ..Info::default()
        };
        let kept = strip_secrets(info.clone(), Some(&es));
        assert_eq!(kept.container_env, ["DEPLOY=blue"]);
        assert!(!serde_json::to_string(&kept).unwrap().contains("hunter2"));
        let agent = crate::ecs::Agent {
            name: "h".into(),
            version: "v".into(),
            id: "a".into(),
        };
        let doc = |info: &Info| {
            crate::shipper::document::ContainerDoc::new(
                info,
                "h",
                &agent,
                None,
                &es.statics,
                &es.attributes,
            )
        };
        assert_eq!(doc(&kept), doc(&info));
        assert!(strip_secrets(info, None).container_env.is_empty());
    }

    /// What a StartLogging of a container that restarts at once holds first: its store, before
    /// its run is counted or listed as active.
    fn new_run_store(plugin: &Plugin) -> Arc<ContainerStore> {
        let id = ContainerId::parse(ID).unwrap();
        plugin
            .stores()
            .open_container(&id, StoreLimits::default())
            .unwrap()
    }

    /// Regression: the release after shipping (DESTROY_LOGS_ON_STOP) decided the container was
    /// idle from the active-run list, which a restarting container's StartLogging joins only
    /// after it opened its store: the store was removed under the new run, whose every line was
    /// then counted as lost.
    #[test]
    fn a_container_restarting_while_its_copy_is_destroyed_keeps_its_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = plugin(dir.path());
        let store = new_run_store(&plugin);
        plugin.drained(&ContainerId::parse(ID).unwrap());
        store
            .append(&one_line(1))
            .expect("the new run's line goes into a store that still exists");
        assert_eq!(store.tail(10).unwrap().len(), 1);
        drop(store);
        // Once nothing uses it, DESTROY_LOGS_ON_STOP applies.
        plugin.drained(&ContainerId::parse(ID).unwrap());
        assert!(!dir.path().join("containers").join(ID).exists());
    }

    /// Regression: the age sweep checked for an active run, then removed the directory; a run
    /// starting in between wrote into a removed store.
    #[test]
    fn the_age_sweep_never_removes_a_store_a_new_run_holds() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = plugin(dir.path());
        let store = new_run_store(&plugin);
        store.append(&one_line(1)).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(crate::retention::sweep(&plugin, Duration::ZERO, later), 0);
        store
            .append(&one_line(2))
            .expect("the store the run holds was not removed");
        drop(store);
        assert_eq!(crate::retention::sweep(&plugin, Duration::ZERO, later), 1);
        assert!(!dir.path().join("containers").join(ID).exists());
    }

    fn frame(time: i64, text: &str) -> Vec<u8> {
        crate::testing::frame(&crate::testing::line(time, text))
    }

    /// Writes `lines` lines of 1000 bytes into `writer` from a thread of its own, and gives the
    /// writer back once they are all in the pipe. A writer still blocked after 20 s (nobody
    /// drains the FIFO) fails the test instead of hanging the runtime's shutdown.
    async fn write_lines_unblocked(mut writer: std::fs::File, lines: i64) -> std::fs::File {
        use std::io::Write;
        let (done, written) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for n in 0..lines {
                writer.write_all(&frame(n + 1, &"x".repeat(1000))).unwrap();
            }
            let _ = done.send(writer);
        });
        tokio::task::spawn_blocking(move || {
            written
                .recv_timeout(Duration::from_secs(20))
                .expect("the container blocked: nobody drains its FIFO")
        })
        .await
        .unwrap()
    }

    /// A FIFO held open by "the engine" (read-write, so it never reads EOF), and the run table a
    /// crashed plugin left naming it.
    fn crashed_run(dir: &Path, state: &Path) -> (String, std::fs::File) {
        crashed_run_with(dir, state, HashMap::new())
    }

    fn crashed_run_with(
        dir: &Path,
        state: &Path,
        config: HashMap<String, String>,
    ) -> (String, std::fs::File) {
        let (path, writer) = crate::testing::engine_fifo(dir, "fifo");
        let file = path.to_string_lossy().into_owned();
        std::fs::create_dir_all(state).unwrap();
        RunTable::empty(state)
            .insert(RunRecord {
                file: file.clone(),
                info: Info {
                    container_id: ID.into(),
                    config,
                    ..Info::default()
                },
                stopped: false,
            })
            .unwrap();
        (file, writer)
    }

    /// Regression (issue 12, "a FIFO is never abandoned"): at restart a FIFO whose store could
    /// not be opened was closed and forgotten, so its container blocked as soon as the pipe was
    /// full. Now it is drained, what cannot be kept is counted lost, and the store is tried again
    /// until it opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopened_fifo_whose_store_cannot_open_keeps_being_drained() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (file, writer) = crashed_run(dir.path(), &state);
        // The container's store cannot be created: a file stands where its directory goes.
        let blocked = state.join("containers").join(ID);
        std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
        std::fs::write(&blocked, b"not a directory").unwrap();
        let plugin = plugin(&state);
        plugin.recover();

        // 4 MiB: far more than any pipe holds. Nobody draining means this never ends.
        let lines = 4096;
        let mut writer = write_lines_unblocked(writer, lines).await;
        let lost = || plugin.metrics().ingest.lost.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lost() < lines as u64 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lost(), lines as u64, "every line drained is counted lost");

        // The directory is usable again: the next lines are stored.
        std::fs::remove_file(&blocked).unwrap();
        let id = ContainerId::parse(ID).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut time = 10_000;
        loop {
            time += 1;
            writer.write_all(&frame(time, "after")).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stored = plugin
                .stores()
                .get_open(&id)
                .map(|store| store.tail(usize::MAX).unwrap().len())
                .unwrap_or(0);
            if stored > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the store was never opened again"
            );
        }
        plugin.stop_logging(&file).await;
    }

    /// Regression (issue 12, "a FIFO is never abandoned"): at restart a FIFO whose destination
    /// could not be set up (here its CA file is gone) was closed and forgotten. Now its lines go
    /// on into the local copy while the destination is tried again in the background.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopened_fifo_whose_destination_cannot_be_set_up_keeps_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = HashMap::from([
            ("hosts".to_owned(), "https://127.0.0.1:9".to_owned()),
            (
                "ssl.certificate_authorities".to_owned(),
                dir.path().join("gone.pem").to_string_lossy().into_owned(),
            ),
        ]);
        let (file, writer) = crashed_run_with(dir.path(), &state, config);
        let plugin = plugin(&state);
        plugin.recover();
        let lines = 2048;
        let _writer = write_lines_unblocked(writer, lines).await;
        let id = ContainerId::parse(ID).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stored = plugin
                .stores()
                .get_open(&id)
                .map(|store| store.tail(usize::MAX).unwrap().len())
                .unwrap_or(0);
            if stored == lines as usize {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "stored {stored}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        plugin.stop_logging(&file).await;
    }

    /// Regression (issue 12, "restart memory"): a reopened FIFO's replay check read the last
    /// 65,536 entries of its store into memory, whatever their size, for every FIFO, before the
    /// API served. Now a FIFO that is empty at reopen gets no check, and what a FIFO holds at
    /// reopen is matched against the store's end only (see `replay`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_round_left_in_the_fifo_is_stored_once_and_new_lines_after_it() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (file, mut writer) = crashed_run(dir.path(), &state);
        // What the dead plugin stored: 100 lines, the last 30 of them still in the FIFO.
        {
            let plugin = plugin(&state);
            let store = new_run_store(&plugin);
            let mut batch = Batch::default();
            for n in 1..=100 {
                let entry = LogEntry {
                    source: "stdout".into(),
                    time_nano: n,
                    line: format!("line {n}").into_bytes().into(),
                    ..LogEntry::default()
                };
                batch.push(&entry.encode_to_vec(), n);
            }
            store.append(&batch).unwrap();
        }
        for n in 71..=100 {
            writer.write_all(&frame(n, &format!("line {n}"))).unwrap();
        }
        for n in 101..=110 {
            writer.write_all(&frame(n, &format!("line {n}"))).unwrap();
        }
        let plugin = plugin(&state);
        plugin.recover();
        let id = ContainerId::parse(ID).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stored = plugin
                .stores()
                .get_open(&id)
                .map(|store| store.tail(usize::MAX).unwrap())
                .unwrap_or_default();
            if stored.len() >= 110 {
                let times: Vec<i64> = stored.iter().map(|e| e.time_nano).collect();
                assert_eq!(times, (1..=110).collect::<Vec<_>>());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stored {}",
                stored.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        plugin.stop_logging(&file).await;
    }

    /// Recovery opens stores in tasks of their own, after the age sweep may have started: a
    /// container whose run is in the run table is never swept, however old its last line.
    #[test]
    fn the_age_sweep_spares_a_container_the_run_table_names() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = plugin(dir.path());
        let store = new_run_store(&plugin);
        store.append(&one_line(1)).unwrap();
        drop(store);
        plugin.stores().close_idle();
        plugin
            .table
            .insert(RunRecord {
                file: "/run/fifo".into(),
                info: Info {
                    container_id: ID.into(),
                    ..Info::default()
                },
                stopped: false,
            })
            .unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(crate::retention::sweep(&plugin, Duration::ZERO, later), 0);
        plugin.forget_record("/run/fifo");
        assert_eq!(crate::retention::sweep(&plugin, Duration::ZERO, later), 1);
    }

    /// A restarted container's new run pins its backlog (StartLogging, under the order lock);
    /// the release of its previous run must not lift that pin, or retention could delete what
    /// the new run's shipper has not sent.
    #[test]
    fn the_release_of_an_old_run_keeps_the_pin_of_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = plugin(dir.path());
        let id = ContainerId::parse(ID).unwrap();
        let store = new_run_store(&plugin);
        store.append(&one_line(1)).unwrap();
        {
            let _order = plugin.lock_ship_order();
            plugin.add_run(&id, 1);
            store.set_pin(Some(store.end()));
        }
        drop(store);
        plugin.drained(&id);
        let store = plugin.stores().get_open(&id).expect("still open: pinned");
        assert!(!store.is_idle(), "the new run's pin was lifted");
        plugin.add_run(&id, -1);
        drop(store);
        plugin.drained(&id);
        assert!(plugin.stores().get_open(&id).is_none());
    }
}
