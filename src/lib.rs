//! es-logging-plugin: a Docker managed logging plugin that keeps a durable local copy of every
//! container's output (serving `docker logs`) and ships it to Elasticsearch.
//!
//! Data flows one way:
//!
//! ```text
//! dockerd --FIFO--> fifo (tee/splice) --> frame (decode, cap) --> pipeline --> store
//!                                                                      |        |
//!                                                        readlogs (docker logs) +--> (shipper)
//! ```
//!
//! Modules, one job each:
//! - [`entry`]: the LogEntry protobuf schema the engine speaks (generated from `proto/`).
//! - [`container_id`]: the validated 64-hex container id, the only thing a store path is built from.
//! - [`protocol`]: the engine's wire types (StartLogging, ReadLogs, Info): JSON shapes, key for key.
//! - [`ecs`]: the ECS vocabulary log and event documents share: agent, version, timestamps, image, dedot.
//! - [`fsutil`]: file helpers for the plugin's state: a private directory, atomic whole-file writes.
//! - [`frame`]: length-prefixed frame decoding with a size cap, and encoding for ReadLogs.
//! - [`fifo`]: the FIFO itself: open, pipe size, non-consuming reads (tee) and consumption.
//! - [`pipeline`]: one task per logging run: drain a FIFO into the container's store, never stop.
//! - [`replay`]: after a crash, recognising the round a FIFO holds that the store has already.
//! - [`runs`]: the persisted table of open logging runs (File -> Info), reopened after a crash.
//! - [`options`]: the log-opt table: names, defaults, validation with actionable messages.
//! - [`settings`]: plugin-wide settings from the environment (`docker plugin set`).
//! - [`store`]: the per-container segment files: append, rotation, compression, tail, follow.
//! - [`readlogs`]: `/LogDriver.ReadLogs`: tail, since/until and follow over the store.
//! - [`retention`]: removal of local copies of containers not seen for a long time.
//! - [`shipper`]: following the stores into Elasticsearch: documents, bulk, retries, checkpoints.
//! - [`backoff`]: the one retry pause: capped exponential backoff with jitter, raced against
//!   shutdown.
//! - [`metrics`]: counters and the Prometheus text endpoint.
//! - [`api`]: the plugin's HTTP API on its unix socket: routing and answers.
//! - [`plugin`]: the running plugin: ties runs, stores and the API together; shutdown order.

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
