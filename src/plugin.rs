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

use crate::api::types::{Info, StartLogging};
use crate::container_id::{ContainerId, InvalidContainerId};
use crate::fifo::{Fifo, FifoError};
use crate::metrics::Metrics;
use crate::options::{LogOptions, OptionError};
use crate::pipeline::{Pipeline, ReplayFilter, RunEnd, RunStats, StopRequest};
use crate::runs::{RunRecord, RunTable, RunsError};
use crate::settings::Settings;
use crate::shipper::config::EsOptions;
use crate::shipper::{ShipError, Shippers};
use crate::store::{ContainerStore, Spool, StoreError, Stores};

/// How long StopLogging waits for the final drain before answering anyway: the engine must
/// never hang on us, and the drain of a full 1 MiB pipe takes milliseconds.
const STOP_DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Entries read back from the store to recognise a replayed round after a crash: more than one
/// round (a pipe's content) can hold.
const REPLAY_WINDOW: usize = 1 << 16;

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

pub struct Plugin {
    settings: Settings,
    stores: Stores,
    table: Arc<RunTable>,
    shippers: Shippers,
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
        let stores = Stores::open(state_dir.join("containers"), Arc::clone(&spool))?;
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
        let metrics = Arc::new(Metrics::new(spool));
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<Plugin>| {
            let me = me.clone();
            let on_drained = Arc::new(move |id: &ContainerId| {
                if let Some(plugin) = me.upgrade() {
                    // Called on a destination's task: the run table's sync and the store's close
                    // must not hold a runtime thread that drains pipes. block_in_place (not a
                    // spawned task) keeps the release in order with the destination's work.
                    tokio::task::block_in_place(|| plugin.drained(id));
                }
            });
            Self {
                shippers: Shippers::new(
                    state_dir.to_owned(),
                    Arc::clone(&metrics),
                    shutdown.clone(),
                    tracker.clone(),
                    on_drained,
                ),
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

    pub fn shippers(&self) -> &Shippers {
        &self.shippers
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Everything a container's logging run shipped: release its ended runs, and its local copy
    /// when DESTROY_LOGS_ON_STOP says so and it has not started again.
    fn drained(&self, id: &ContainerId) {
        if let Err(error) = self.table.remove_stopped(id.as_str()) {
            log_table_error(&error);
        }
        self.stores.close_idle();
        if self.settings.destroy_logs_on_stop && !self.is_active(id) {
            match self.stores.remove(id) {
                Ok(()) => tracing::info!(
                    container = id.short(),
                    "local copy removed after shipping (DESTROY_LOGS_ON_STOP)"
                ),
                Err(error) => tracing::warn!(%error, "cannot remove the local copy"),
            }
        }
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Reopens every FIFO of the run table that still exists, and resumes shipping for
    /// containers whose lines were not all shipped.
    pub fn recover(self: &Arc<Self>) {
        let mut resumed = std::collections::HashSet::new();
        for record in self.table.all().into_iter().filter(|r| r.stopped) {
            if resumed.insert(record.info.container_id.clone()) {
                if let Err(error) = self.resume_shipping(&record) {
                    tracing::warn!(%error, container = %record.info.container_id, "cannot resume shipping of a stopped container");
                }
            }
        }
        for record in self.table.all().into_iter().filter(|r| !r.stopped) {
            let result = self.reopen(&record);
            if let Err(error) = result {
                // Gone when its container stopped while we were down, but also after
                // `docker plugin upgrade`, which replaces the rootfs where the engine keeps the
                // FIFOs: the operator must then restart that container for it to log again.
                tracing::warn!(%error, container = %record.info.container_id.get(..12).unwrap_or_default(), file = %record.file, "cannot reopen a FIFO from before the restart; forgetting it. If its container is still running (after docker plugin upgrade), restart it: until then its lines reach no logging plugin");
                self.forget_record(&record.file);
            }
        }
    }

    fn resume_shipping(&self, record: &RunRecord) -> Result<(), StartError> {
        let id = ContainerId::parse(&record.info.container_id)?;
        let options = LogOptions::parse(Some(&record.info.config), &self.settings.option_defaults)?;
        let Some(es) = options.es else {
            self.drained(&id);
            return Ok(());
        };
        let store = self.stores.open_container(&id, options.store)?;
        self.shippers.attach(&es, &record.info, &id, store)?;
        self.shippers.stopped(&es, &id);
        Ok(())
    }

    fn reopen(self: &Arc<Self>, record: &RunRecord) -> Result<(), StartError> {
        let id = ContainerId::parse(&record.info.container_id)?;
        let options = LogOptions::parse(Some(&record.info.config), &self.settings.option_defaults)?;
        let fifo = Fifo::open(Path::new(&record.file))?;
        let store = self.stores.open_container(&id, options.store)?;
        self.count_run_and_attach(options.es.as_ref(), &record.info, &id, &store)?;
        let recent = store.tail(REPLAY_WINDOW).unwrap_or_else(|error| {
            tracing::warn!(%error, container = id.short(), "cannot read the end of the local copy; a crash-time round may be stored twice");
            Vec::new()
        });
        tracing::info!(container = id.short(), file = %record.file, "reopened FIFO after restart");
        self.launch(
            record.file.clone(),
            id,
            fifo,
            store,
            Some(ReplayFilter::new(recent)),
            options.es,
        );
        Ok(())
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
            info: strip_secrets(request.info),
            stopped: false,
        };
        if let Err(error) = self.table.insert(record) {
            log_table_error(&error);
        }
        tracing::info!(container = id.short(), file = %request.file, "logging started");
        self.launch(request.file, id, fifo, store, None, options.es);
        Ok(())
    }

    fn launch(
        self: &Arc<Self>,
        file: String,
        id: ContainerId,
        fifo: Fifo,
        store: Arc<ContainerStore>,
        replay: Option<ReplayFilter>,
        es: Option<EsOptions>,
    ) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.lock_active().insert(
            file.clone(),
            ActiveRun {
                id: id.clone(),
                stop: Some(stop_tx),
                read_logs_served: Arc::new(AtomicBool::new(false)),
                es,
            },
        );
        let plugin = Arc::clone(self);
        let shutdown = self.shutdown.child_token();
        let metrics = Arc::clone(&self.metrics);
        let span = tracing::info_span!("run", container = id.short());
        self.tracker.spawn(
            async move {
                let (end, stats) = Pipeline::new(fifo, store, replay)
                    .with_metrics(Arc::clone(&metrics.ingest))
                    .run(stop_rx, shutdown)
                    .await;
                // Off the runtime's threads, which drain every other container's pipe: the run
                // table is synced and idle stores are synced as they close.
                let span = tracing::Span::current();
                let ended = tokio::task::spawn_blocking(move || {
                    span.in_scope(|| {
                        plugin.run_ended(&file, end, stats);
                        // The pipeline's handle is gone: the store closes unless shipping or a
                        // reader still needs it.
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
        if end == RunEnd::Stopped && now_idle && self.settings.destroy_logs_on_stop && !throwaway {
            match self.stores.remove(&run.id) {
                Ok(()) => tracing::info!(
                    container = run.id.short(),
                    "local copy removed (DESTROY_LOGS_ON_STOP)"
                ),
                Err(error) => tracing::warn!(%error, "cannot remove the local copy"),
            }
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
        let mut activity = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        let entry = activity.entry(id.clone()).or_insert_with(|| Activity {
            runs: watch::channel(0).0,
        });
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

    /// The active-run count of a container, for a follow stream to watch; marks the active runs
    /// as having served ReadLogs.
    pub fn watch_runs(&self, id: &ContainerId) -> watch::Receiver<usize> {
        for run in self.lock_active().values().filter(|r| &r.id == id) {
            run.read_logs_served.store(true, Ordering::Relaxed);
        }
        let mut activity = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        activity
            .entry(id.clone())
            .or_insert_with(|| Activity {
                runs: watch::channel(0).0,
            })
            .runs
            .subscribe()
    }

    /// True when the container has a logging run now (its store must stay).
    pub fn is_active(&self, id: &ContainerId) -> bool {
        self.lock_active().values().any(|r| &r.id == id)
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for every run to finish its final drain after the shutdown token fired.
    pub async fn wind_down(&self, limit: Duration) {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within {limit:?} of shutdown");
        }
    }
}

fn strip_secrets(mut info: Info) -> Info {
    info.container_env = Vec::new();
    info
}

fn log_table_error(error: &RunsError) {
    tracing::error!(%error, "cannot update the run table; after a plugin crash these FIFOs would not be reopened");
}
