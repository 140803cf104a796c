//! Shipping the local copies to Elasticsearch.
//!
//! - [`config`]: the Elasticsearch log-opts as one typed, hashable value (a destination key).
//! - [`index`]: the `index` option: placeholders, data stream names, validation.
//! - [`document`]: one log line as an ECS document in a bulk body; deterministic ids.
//! - [`bulk`]: bulk bodies and the meaning of every answer (a pure classification).
//! - [`client`]: the nodes of a destination: failover, resting failed nodes, flavor.
//! - [`checkpoint`]: how far each container's store is shipped, across restarts.
//! - [`deadletter`]: documents refused for good, in a file bounded by `DEAD_LETTER_MAX_SIZE`,
//!   and the task that indexes them into the dead-letter index.
//! - [`not_ready`]: episodes of documents held back (a destination not ready for them), logged
//!   once each.
//! - [`fingerprint`]: `ssl.ca_trusted_fingerprint`, the CA pin.
//! - [`fragments`]: split lines rejoined into one message, with a byte cap; with multiline
//!   merging, whole lines grouped into documents ([`multiline`]); crash-safe cuts for both.
//! - [`line`]: what both grouping stages hand out.
//! - [`multiline`]: the `multiline.*` options, the presets and the grouping rule.
//! - [`json_lines`]: the `json.*` options and the document of a JSON line.
//! - [`source`]: one store followed: read from the checkpoint, lines rejoined, documents made.
//! - [`retry`]: what an answer means for each document of a request (a pure function).
//! - [`pause`]: the pause before a retry, and what the operator is told about it.
//! - [`destination`]: the task that runs the loop: sources in, bulk requests in flight,
//!   answers carried out, checkpoints moved.
//!
//! [`Shippers`] holds one destination per distinct set of options; containers with equal
//! options share it.

pub mod attributes;
pub mod bulk;
pub mod checkpoint;
pub mod client;
pub mod config;
pub mod deadletter;
pub mod destination;
pub mod document;
pub mod fingerprint;
pub mod fragments;
pub mod index;
pub mod json_lines;
pub mod line;
pub mod multiline;
pub mod not_ready;
pub mod pause;
pub mod retry;
pub mod source;
pub mod statics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::container_id::ContainerId;
use crate::ecs::Agent;
use crate::metrics::Metrics;
use crate::protocol::Info;
use crate::store::ContainerStore;
use checkpoint::Checkpoint;
use config::EsOptions;
use destination::{Command, Destination, OnDrained};
use document::ContainerDoc;
use index::ResolvedIndex;
use source::{Documents, LogDocs, Render, SourceSpec};

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{0}")]
    Index(#[from] index::IndexError),
    #[error("{0}")]
    Client(#[from] client::ClientError),
}

/// Where the documents of a rendered store go, for its renderer.
pub struct Target<'a> {
    /// The Docker host's name (`host.name`).
    pub host_name: &'a str,
    /// This plugin as the shipping agent (`agent.*`).
    pub agent: Agent,
    /// `(type, dataset, namespace)` when the target is a data stream.
    pub data_stream: Option<(&'a str, &'a str, &'a str)>,
}

pub struct Shippers {
    state_dir: PathBuf,
    host_name: String,
    agent_id: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    on_drained: OnDrained,
    /// `DEAD_LETTER_MAX_SIZE`: the most each destination's dead-letter file holds.
    dead_letter_max_size: u64,
    destinations: Mutex<HashMap<EsOptions, mpsc::UnboundedSender<Command>>>,
}

impl Shippers {
    pub fn new(
        state_dir: PathBuf,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        on_drained: OnDrained,
        dead_letter_max_size: u64,
    ) -> Self {
        let agent_id = agent_id(&state_dir);
        Self {
            state_dir,
            host_name: host_name(),
            agent_id,
            metrics,
            shutdown,
            tracker,
            on_drained,
            dead_letter_max_size,
            destinations: Mutex::new(HashMap::new()),
        }
    }

    fn agent(&self, options: &EsOptions) -> Agent {
        Agent {
            name: options
                .agent_name
                .clone()
                .unwrap_or_else(|| self.host_name.clone()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            id: self.agent_id.clone(),
        }
    }

    /// Checks what StartLogging must refuse (an index that does not resolve for this
    /// container, an unreadable CA file) without starting anything.
    pub fn validate(&self, options: &EsOptions, info: &Info) -> Result<(), ShipError> {
        options.index.resolve(info, env!("CARGO_PKG_VERSION"))?;
        if !self.lock().contains_key(options) {
            client::Client::new(options)?;
        }
        Ok(())
    }

    /// Starts (or resumes) shipping a container's store.
    pub fn attach(
        &self,
        options: &EsOptions,
        info: &Info,
        id: &ContainerId,
        store: Arc<ContainerStore>,
    ) -> Result<(), ShipError> {
        let agent = self.agent(options);
        let index: ResolvedIndex = options.index.resolve(info, &agent.version)?;
        let doc = ContainerDoc::new(
            info,
            &self.host_name,
            &agent,
            index.data_stream(),
            &options.statics,
            &options.attributes,
        );
        let logs = LogDocs {
            doc,
            json: options.json.clone(),
            multiline: options.multiline.clone(),
        };
        self.start_source(options, id, store, Documents::Logs(logs), index)
    }

    /// Marks where the store's shipping starts and hands it to its destination's task.
    fn start_source(
        &self,
        options: &EsOptions,
        id: &ContainerId,
        store: Arc<ContainerStore>,
        documents: Documents,
        index: ResolvedIndex,
    ) -> Result<(), ShipError> {
        let sender = self.destination(options)?;
        self.mark_start(options, id, &store);
        let _ = sender.send(Command::Attach(Box::new(SourceSpec {
            id: id.clone(),
            store,
            documents,
            index,
        })));
        Ok(())
    }

    /// A store new to shipping ships what is written from now on: the checkpoint is written
    /// here, synchronously, before the FIFO is read, so no line of this run is skipped however
    /// late the destination task gets to it, and a crash before the first acknowledgement keeps
    /// the start. A store with a checkpoint resumes from it, whatever host list wrote it (see
    /// `checkpoint`); the file is rewritten for this one, so the change is logged once.
    fn mark_start(&self, options: &EsOptions, id: &ContainerId, store: &ContainerStore) {
        let dir = checkpoint::dir(&self.state_dir);
        let (mut checkpoint, saved) = Checkpoint::load(&dir, id, &options.label());
        let from = match saved {
            Some(saved) => {
                if checkpoint.is_for_another_destination() {
                    if let Err(error) = checkpoint.advance(saved, true) {
                        tracing::warn!(%error, container = id.short(), "cannot rewrite the shipping checkpoint for the new destination; it is rewritten at the next acknowledgement");
                    }
                }
                saved
            }
            None => {
                let end = store.end();
                if let Err(error) = checkpoint.advance(end, true) {
                    tracing::warn!(%error, container = id.short(), "cannot write the shipping checkpoint; shipping starts where the store ends when the shipper attaches");
                }
                end
            }
        };
        // Before the FIFO is read: nothing still to ship may be deleted by rotation meanwhile.
        store.set_pin(Some(from));
    }

    /// Starts shipping a store whose records are not a container's log lines (the engine's
    /// events store): `render` is given where the documents go and returns how each record
    /// becomes a document with its own id. The target has no container placeholders (checked
    /// by the caller).
    pub fn attach_records(
        &self,
        options: &EsOptions,
        id: &ContainerId,
        store: Arc<ContainerStore>,
        render: impl FnOnce(Target<'_>) -> Render,
    ) -> Result<(), ShipError> {
        let agent = self.agent(options);
        let index: ResolvedIndex = options.index.resolve(&Info::default(), &agent.version)?;
        let render = render(Target {
            host_name: &self.host_name,
            agent,
            data_stream: index.data_stream(),
        });
        self.start_source(options, id, store, Documents::Records(render), index)
    }

    /// The container's logging stopped: ship what is left, then release it.
    pub fn stopped(&self, options: &EsOptions, id: &ContainerId) {
        if let Some(sender) = self.lock().get(options) {
            let _ = sender.send(Command::Stopped(id.clone()));
        }
    }

    fn destination(
        &self,
        options: &EsOptions,
    ) -> Result<mpsc::UnboundedSender<Command>, ShipError> {
        let mut map = self.lock();
        if let Some(sender) = map.get(options) {
            return Ok(sender.clone());
        }
        let label = options.label();
        let client = client::Client::new(options)?;
        let destination = Destination::new(
            options.clone(),
            client,
            deadletter::DeadLetters::new(
                self.state_dir.join("dead-letter"),
                &label,
                options.dead_letter_index.is_some(),
                self.dead_letter_max_size,
            ),
            self.metrics.destination(&label),
            checkpoint::dir(&self.state_dir),
            self.shutdown.clone(),
            self.tracker.clone(),
            Arc::clone(&self.on_drained),
        );
        let _ = crate::fsutil::create_private_dir(&checkpoint::dir(&self.state_dir));
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::info_span!("ship", destination = %label);
        self.tracker.spawn(destination.run(rx).instrument(span));
        tracing::info!(destination = %label, "shipping destination started");
        map.insert(options.clone(), tx.clone());
        Ok(tx)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<EsOptions, mpsc::UnboundedSender<Command>>> {
        self.destinations.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The Docker host's name for `host.name`: the plugin runs in the host's network namespace,
/// whose UTS name is the host's.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

/// A stable id for this plugin installation (`agent.id`), kept in the state dir.
fn agent_id(state_dir: &std::path::Path) -> String {
    let path = state_dir.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return id.to_owned();
        }
    }
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_le_bytes();
    }
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let _ = crate::fsutil::write_atomically(&path, id.as_bytes());
    id
}
