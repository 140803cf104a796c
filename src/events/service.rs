//! The events service: the collector's items appended to the events store, which the shipper
//! follows like a container's store (its own destination, checkpoint and spool budget).
//!
//! ```text
//! engine /events --> Collector --unbounded channel--> writer --> events store --> shipper
//! ```
//!
//! The channel is unbounded on purpose: the collector must read the engine promptly (the
//! engine drops events for a subscriber that lags 100 ms), and the writer only appends to a
//! local file, so the queue stays short; nothing is ever dropped on our side.
//!
//! Resuming: at start the newest stored event gives `since=`; the engine replays from there
//! inclusively, and replayed events whose ids are among the last stored ones are not stored
//! again. The events store is keyed by a hash of the engine socket's path, under
//! `<state>/events/`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::collector::{Collector, CollectorItem, CollectorStats, Stopped};
use super::engine::EngineClient;
use super::stored;
use crate::container_id::ContainerId;
use crate::metrics::{EventsFigures, EventsReport, Metrics};
use crate::options::{LogOptions, OptionError};
use crate::settings::EventsSettings;
use crate::shipper::config::EsOptions;
use crate::shipper::{ShipError, Shippers};
use crate::store::{Batch, ContainerStore, Spool, StoreError, StoreLimits, Stores};

/// Stored events looked at on start to resume: more than the engine's 256-event buffer.
const RESUME_WINDOW: usize = 1024;

/// What the service uses of the process it runs in (the plugin, or the standalone `events`
/// command), handed over by whoever wires it.
pub struct Parts {
    /// The budget of unshipped data the events store is charged to.
    pub spool: Arc<Spool>,
    /// Who follows the events store into Elasticsearch.
    pub shippers: Arc<Shippers>,
    /// Where the collector's counters show.
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events store: {0}")]
    Store(#[from] StoreError),
    #[error("events shipping: {0}")]
    Ship(#[from] ShipError),
    #[error("events: the Elasticsearch options are not valid: {0}")]
    Options(#[from] OptionError),
    #[error("events: no Elasticsearch destination: set ES_HOSTS (or ES_CLOUD_ID), or --hosts")]
    NoDestination,
    #[error("events: the engine socket {} has refused every connection for {} after serving events: the engine listens on a new socket (an engine restarted with --live-restore); the plugin exits so that the engine restarts it with the new socket mounted", socket.display(), humantime::format_duration(*refused_for))]
    SocketStale {
        socket: PathBuf,
        refused_for: Duration,
    },
}

/// How long the plugin's view of the engine socket may refuse connections, after having served
/// events, before the socket is taken for stale (see `collector`): an engine restart takes
/// seconds, so this leaves a slow one ample time.
pub const STALE_SOCKET_LIMIT: Duration = Duration::from_secs(30);

/// The store id of an engine: a hash of its socket path, so two engines never share a store.
pub fn store_id(socket: &Path) -> ContainerId {
    let digest = Sha256::digest(socket.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    // 64 hex digits always parse.
    ContainerId::parse(&hex).unwrap_or_else(|_| unreachable!("a sha256 is 64 hex digits"))
}

/// Opens the events store under `root` and starts shipping it with the given shippers,
/// then collects until shutdown. With `stale_socket_limit` (a plugin, whose socket is a bind
/// mount) a socket that went stale ends it with [`EventsError::SocketStale`].
pub async fn run(
    settings: EventsSettings,
    es: EsOptions,
    root: PathBuf,
    parts: Parts,
    shutdown: CancellationToken,
    stale_socket_limit: Option<Duration>,
) -> Result<(), EventsError> {
    let Parts {
        spool,
        shippers,
        metrics,
    } = parts;
    let stores = Stores::open(root, spool)?;
    let id = store_id(&settings.socket);
    let store = stores.open_container(&id, StoreLimits::default())?;
    shippers.attach_records(
        &es,
        &id,
        Arc::clone(&store),
        stored::renderer(settings.format),
    )?;
    let (since, seen) = resume_point(&store);
    tracing::info!(socket = %settings.socket.display(), index = %settings.index, since = ?since, "collecting the engine's events");
    let mut collector = Collector::new(
        EngineClient::new(&settings.socket),
        settings.filters.clone(),
    );
    if let Some(limit) = stale_socket_limit {
        collector = collector.with_stale_socket_limit(limit);
    }
    metrics.set_events(collector.stats());
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write(store, rx, seen));
    let stopped = collector.run(since, tx, shutdown).await;
    // The sender is dropped with the collector: the writer stores what is queued and ends.
    let _ = writer.await;
    match (stopped, stale_socket_limit) {
        (Stopped::SocketStale, Some(refused_for)) => Err(EventsError::SocketStale {
            socket: settings.socket,
            refused_for,
        }),
        _ => Ok(()),
    }
}

/// The `since` to resume from and the ids already stored near it.
fn resume_point(store: &ContainerStore) -> (Option<i64>, HashSet<String>) {
    let recent = store.tail(RESUME_WINDOW).unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read the end of the events store; resuming from now");
        Vec::new()
    });
    let events: Vec<_> = recent.iter().filter_map(stored::event_of).collect();
    let since = events.iter().map(|e| e.time_nano).max();
    (since, events.iter().map(|e| e.id()).collect())
}

/// Appends items as they come, several per write when they queue up.
async fn write(
    store: Arc<ContainerStore>,
    mut rx: mpsc::UnboundedReceiver<CollectorItem>,
    mut seen: HashSet<String>,
) {
    let mut batch = Batch::default();
    let mut items = Vec::new();
    while rx.recv_many(&mut items, 4096).await > 0 {
        batch.clear();
        for item in items.drain(..) {
            if let CollectorItem::Event(line) = &item {
                // The inclusive replay after a restart: already stored.
                if !seen.is_empty() && seen.remove(&line.event.id()) {
                    continue;
                }
            }
            let entry = stored::to_entry(&item);
            batch.push(&entry.encode_to_vec(), entry.time_nano);
        }
        let result = tokio::task::block_in_place(|| store.append(&batch));
        if let Err(failed) = result {
            let lost = batch.len() - failed.stored;
            tracing::error!(error = %failed, events = lost, "cannot write the events store: these events are lost");
        }
    }
    if let Err(error) = store.sync() {
        tracing::warn!(%error, "cannot sync the events store");
    }
}

/// The events destination: the connection options of `defaults` (the ES_* settings, or the
/// command line) with the events index.
pub fn destination(
    defaults: &std::collections::HashMap<String, String>,
    index: &str,
) -> Result<EsOptions, EventsError> {
    let mut config = defaults.clone();
    config.insert("index".into(), index.to_owned());
    let parsed = LogOptions::parse(Some(&config), &Default::default())?;
    parsed.es.ok_or(EventsError::NoDestination)
}

/// The collector's counters, as the metrics endpoint shows them.
impl EventsReport for CollectorStats {
    fn events_figures(&self) -> EventsFigures {
        let get = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        EventsFigures {
            events: get(&self.events),
            duplicates: get(&self.duplicates),
            gaps: get(&self.gaps),
            connects: get(&self.connects),
        }
    }
}
