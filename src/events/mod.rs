//! The Docker events collector: the engine's own events (container create/start/die/oom/destroy,
//! image pull/delete, network, volume, plugin, daemon, swarm objects) as documents.
//!
//! ```text
//! engine /events --lines--> event (parse) --> collector (resume, dedup, gaps) --> sink
//!                                                                                   |
//!                                                 document (ECS or Logtail) <-------+
//! ```
//!
//! - [`event`]: one `/events` JSON line: parsing, the action without its suffix, the
//!   deterministic id.
//! - [`lines`]: reassembly of the stream into lines, whatever the chunk boundaries.
//! - [`filters`]: the `EVENTS_FILTERS` setting and the engine's `filters` JSON.
//! - [`engine`]: the client on the engine's unix socket: `/_ping` version negotiation and the
//!   `/events` stream.
//! - [`collector`]: the reconnect loop with `since=`, replay deduplication and gap detection.
//! - [`document`]: the Elasticsearch documents: ECS (default) or Logtail's field names, and the
//!   gap marker.
//! - [`stored`]: events and gap markers as entries of the durable store, and back.
//! - [`service`]: collector -> events store -> shipper, with resume from the store.
//!
//! The rules it follows (docs/events.md): the engine keeps its last 256 events and
//! replays those at or after `since` (inclusive); so the collector resumes every connection
//! with the newest `timeNano` it delivered, drops the replayed events it already delivered
//! (same id), and when the first event of a resumed connection is newer than that time the
//! buffer no longer covered the disconnection: it reports a gap instead of pretending nothing
//! was missed. Every event has a deterministic id so a replay after a restart of the plugin is
//! a 409 in Elasticsearch, not a second document.

pub mod collector;
pub mod document;
pub mod engine;
pub mod event;
pub mod filters;
pub mod lines;
pub mod service;
pub mod stored;

pub use collector::{Collector, CollectorItem, CollectorStats, Gap, Stopped};
pub use document::{
    event_document, gap_document, gap_id, DataStream, DocumentOptions, Format, FormatError,
};
pub use engine::{ApiVersion, EngineClient, EngineError, EventLine, EventStream};
pub use event::{Event, EventError};
pub use filters::{FilterError, Filters};
