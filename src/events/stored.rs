//! How engine events are kept in the durable store, and turned into documents from there.
//!
//! The events store holds ordinary `LogEntry` records (the store's format), one per item:
//! - `source: "event"`, `time_nano`: the event's `timeNano`, `line`: the `/events` JSON line as
//!   the engine sent it (parsed again when shipped, so what is stored is what the engine said);
//! - `source: "gap"`, `time_nano`: the first event after the gap, `line`:
//!   `{"after_nano":N,"before_nano":M}`: events in between may be missing.
//!
//! Document ids come from the event (see `Event::id`) or the gap's bounds, never from the store
//! position, so an event stored twice (an inclusive replay after a crash) is one document.
//! [`renderer`] hands that to the shipper, which knows nothing of events.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::sync::Arc;

use super::collector::{CollectorItem, Gap};
use super::document::{event_document, gap_document, gap_id, DataStream, DocumentOptions, Format};
use super::event::{Event, EventError};
use crate::entry::LogEntry;
use crate::shipper::source::Render;
use crate::shipper::Target;

pub const EVENT_SOURCE: &str = "event";
pub const GAP_SOURCE: &str = "gap";

#[derive(Serialize, Deserialize)]
struct StoredGap {
    after_nano: i64,
    before_nano: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("stored event: {0}")]
    Event(#[from] EventError),
    #[error("stored gap marker is not valid: {0}")]
    Gap(serde_json::Error),
    #[error("stored entry of unknown kind {0:?} in the events store")]
    Unknown(String),
}

/// The store entry for one collector item.
pub fn to_entry(item: &CollectorItem) -> LogEntry {
    match item {
        CollectorItem::Event(line) => LogEntry {
            source: EVENT_SOURCE.into(),
            time_nano: line.event.time_nano,
            line: line.raw.clone(),
            ..LogEntry::default()
        },
        CollectorItem::Gap(Gap {
            after_nano,
            before_nano,
        }) => {
            let gap = StoredGap {
                after_nano: *after_nano,
                before_nano: *before_nano,
            };
            LogEntry {
                source: GAP_SOURCE.into(),
                time_nano: *before_nano,
                line: Bytes::from(serde_json::to_vec(&gap).unwrap_or_default()),
                ..LogEntry::default()
            }
        }
    }
}

/// The event a stored entry holds, if it is one.
pub fn event_of(entry: &LogEntry) -> Option<Event> {
    (entry.source == EVENT_SOURCE)
        .then(|| Event::parse(&entry.line).ok())
        .flatten()
}

/// The `_id` and document of a stored entry.
pub fn document(
    entry: &LogEntry,
    options: &DocumentOptions,
) -> Result<(String, Value), StoredError> {
    match entry.source.as_str() {
        EVENT_SOURCE => {
            let event = Event::parse(&entry.line)?;
            Ok((event.id(), event_document(&event, options)))
        }
        GAP_SOURCE => {
            let gap: StoredGap = serde_json::from_slice(&entry.line).map_err(StoredError::Gap)?;
            Ok((
                gap_id(gap.after_nano, gap.before_nano),
                gap_document(gap.after_nano, gap.before_nano, options),
            ))
        }
        other => Err(StoredError::Unknown(other.to_owned())),
    }
}

/// How the shipper turns the events store's records into documents in `format`, for
/// `Shippers::attach_records`.
pub fn renderer(format: Format) -> impl FnOnce(Target<'_>) -> Render {
    move |target| {
        let options = DocumentOptions {
            format,
            host_name: target.host_name.to_owned(),
            agent: target.agent,
            data_stream: target
                .data_stream
                .map(|(kind, dataset, namespace)| DataStream {
                    kind: kind.to_owned(),
                    dataset: dataset.to_owned(),
                    namespace: namespace.to_owned(),
                }),
        };
        Arc::new(move |entry: &LogEntry| Ok(document(entry, &options)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::Agent;
    use crate::events::engine::EventLine;
    use crate::events::Format;

    fn options() -> DocumentOptions {
        DocumentOptions {
            format: Format::Ecs,
            host_name: "host".into(),
            agent: Agent {
                name: "host".into(),
                version: "0".into(),
                id: "a".into(),
            },
            data_stream: None,
        }
    }

    #[test]
    fn events_and_gaps_round_trip_through_the_store_format() {
        let raw = br#"{"Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"1","name":"web","image":"busybox"}},"scope":"local","time":1790000000,"timeNano":1790000000123456789}"#;
        let event = Event::parse(raw).unwrap();
        let item = CollectorItem::Event(EventLine {
            raw: Bytes::from_static(raw),
            event: event.clone(),
        });
        let entry = to_entry(&item);
        assert_eq!(entry.time_nano, 1_790_000_000_123_456_789);
        assert_eq!(event_of(&entry).unwrap().id(), event.id());
        let (id, doc) = document(&entry, &options()).unwrap();
        assert_eq!(id, event.id());
        assert_eq!(doc["event"]["action"], "die");

        let gap = to_entry(&CollectorItem::Gap(Gap {
            after_nano: 5,
            before_nano: 9,
        }));
        assert!(event_of(&gap).is_none());
        let (id, _) = document(&gap, &options()).unwrap();
        assert_eq!(id, gap_id(5, 9));

        let odd = LogEntry {
            source: "stdout".into(),
            ..LogEntry::default()
        };
        assert!(document(&odd, &options())
            .unwrap_err()
            .to_string()
            .contains("unknown kind"));
    }
}
