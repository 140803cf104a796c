//! es-logging-plugin: a Docker managed logging plugin that keeps a durable local copy of every
//! container's output (serving `docker logs`) and ships it to Elasticsearch, with the engine's
//! own events beside it.
//!
//! Data flows one way. Logs:
//!
//! ```text
//! dockerd --FIFO--> fifo (tee/splice) --> frame (decode, cap) --> pipeline --> store (segments)
//!                                                                               |
//!                        api (/LogDriver.ReadLogs) <-- readlogs (tail, follow) <--+
//!                                                                               |
//!      Elasticsearch <-- bulk/client <-- retry <-- destination <-- source <------+
//!                          (shipper: documents, checkpoints, dead letters)
//! ```
//!
//! Events:
//!
//! ```text
//! dockerd /events --> events::engine --> events::collector --> events::service --> store
//!                                                                                  |
//!                    Elasticsearch <-- (the same shipper, events::stored renders) <-+
//! ```
//!
//! `plugin` (and `main.rs`) wire the parts together; nothing else does. The layers, lowest
//! first, are checked by `tests/architecture.rs` (no import cycle, no arrow up a layer):
//!
//! 1. floor, shared vocabulary that imports nothing of ours:
//!    - [`entry`]: the LogEntry protobuf schema the engine speaks (generated from `proto/`).
//!    - [`container_id`]: the validated 64-hex container id, the only thing a store path is
//!      built from.
//!    - [`protocol`]: the engine's wire types (StartLogging, ReadLogs, Info): JSON shapes, key
//!      for key.
//!    - [`ecs`]: the ECS vocabulary log and event documents share: agent, version,
//!      timestamps, image, dedot.
//!    - [`fsutil`]: file helpers for the plugin's state: a private directory, atomic
//!      whole-file writes.
//!    - [`backoff`]: the one retry pause: capped exponential backoff with jitter, raced
//!      against shutdown.
//! 2. core, formats and files:
//!    - [`metrics`]: counters everybody reports into, and the Prometheus text endpoint.
//!    - [`frame`]: length-prefixed frame decoding with a size cap, and encoding for ReadLogs.
//!    - [`fifo`]: the FIFO itself: open, pipe size, non-consuming reads (tee) and consumption.
//!    - [`store`]: the per-container segment files: the writer (append, rotation), the
//!      catalog (segments, readers' pins, retention), compression, cursors, tail, follow; the
//!      spool budget shared by all stores.
//! 3. flow, moving bytes:
//!    - [`pipeline`]: one task per logging run: drain a FIFO into the container's store, never
//!      stop.
//!    - [`replay`]: after a crash, recognising the round a FIFO holds that the store has
//!      already.
//!    - [`readlogs`]: `/LogDriver.ReadLogs`: tail, since/until and follow over the store.
//!    - [`runs`]: the persisted table of open logging runs (File -> Info), reopened after a
//!      crash.
//!    - [`retention`]: removal of local copies of containers not seen for a long time.
//! 4. shipping:
//!    - [`shipper`]: following the stores into Elasticsearch: `source` (follow a store,
//!      rejoin fragments, merge lines with `multiline`, decode JSON lines with `json_lines`),
//!      `document`, `bulk` and `client` (the request), `retry` (what a bulk
//!      answer means for each document), `deadletter`, `checkpoint`, and `destination`, the loop
//!      that runs them. It knows nothing of where a store's records come from.
//! 5. sources and settings:
//!    - [`events`]: the engine's events: read the events API, filter, store, and render them
//!      for the shipper.
//!    - [`options`]: the log-opt table: names, defaults, validation with actionable messages;
//!      builds the shipper's options.
//!    - [`settings`]: plugin-wide settings from the environment (`docker plugin set`).
//! 6. wiring: [`plugin`], the running plugin: ties runs, stores, shippers and events together;
//!    shutdown order.
//! 7. [`api`]: the plugin's HTTP API on its unix socket: routing and answers.

pub mod api;
pub mod backoff;
pub mod container_id;
pub mod ecs;
pub mod entry;
pub mod events;
pub mod fifo;
pub mod frame;
pub mod fsutil;
pub mod metrics;
pub mod options;
pub mod pipeline;
pub mod plugin;
pub mod protocol;
pub mod readlogs;
pub mod replay;
pub mod retention;
pub mod runs;
pub mod settings;
pub mod shipper;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
