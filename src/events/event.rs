//! One Docker Engine event: one JSON line of `GET /events`.
//!
//! The fields we read (the engine's `api/types/events.Message`):
//!
//! ```text
//! {"Type":"container","Action":"die","Actor":{"ID":"<64 hex>","Attributes":{"exitCode":"1",...}},
//!  "scope":"local","time":1795320660,"timeNano":1795320660123456789}
//! ```
//!
//! - `timeNano` is the whole time in nanoseconds (not the fraction of `time`); it is what `since`
//!   compares against, so it is required. `time` (seconds) is redundant and only defaulted.
//! - `Actor.Attributes` is a string map; the engine sends `null` or leaves it out for some actors,
//!   both read as empty. A label and an engine extra share the map (a label named `exitCode`
//!   hides the real exit code); nothing here can tell them apart.
//! - The legacy `status`, `id` and `from` are gone from API 1.52 (Docker 29) and are ignored, as
//!   is any field a future engine adds.
//! - Some actions carry a suffix after `": "`: `exec_create: sh -c ls`, `exec_start: ...`,
//!   `health_status: healthy`. [`Event::action_base`] strips it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

/// How much of a bad line an error or a log line quotes: enough to recognise it, not a whole
/// megabyte of garbage in the plugin log.
pub const EXCERPT_BYTES: usize = 200;

/// One event as the engine sent it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `container`, `image`, `network`, `volume`, `plugin`, `daemon`, `service`, ...
    #[serde(rename = "Type")]
    pub kind: String,
    /// The raw action, suffix included (`health_status: healthy`).
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor", default, deserialize_with = "null_as_default")]
    pub actor: Actor,
    /// `local` or `swarm`; empty when an older engine leaves it out.
    #[serde(default, deserialize_with = "null_as_default")]
    pub scope: String,
    /// Seconds; redundant with `time_nano`.
    #[serde(default)]
    pub time: i64,
    /// The event time in unix nanoseconds: ordering, `since`, `@timestamp` and the id.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

/// The object the event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Actor {
    /// Container id, image reference, network id, ...
    #[serde(rename = "ID", default, deserialize_with = "null_as_default")]
    pub id: String,
    /// Sorted, so documents built from it are the same byte for byte every time.
    #[serde(rename = "Attributes", default, deserialize_with = "null_as_default")]
    pub attributes: BTreeMap<String, String>,
}

/// Why a line is not an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event line is not a Docker event ({source}): {excerpt}")]
    Json {
        source: serde_json::Error,
        excerpt: String,
    },
    #[error("event has an empty `{field}`: {excerpt}")]
    Empty {
        field: &'static str,
        excerpt: String,
    },
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The start of `line` as text, for error messages and logs.
pub fn excerpt(line: &[u8]) -> String {
    let cut = line.len().min(EXCERPT_BYTES);
    let mut text = String::from_utf8_lossy(&line[..cut]).into_owned();
    if cut < line.len() {
        text.push_str("...");
    }
    text
}

impl Event {
    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Event, EventError> {
        let event: Event = serde_json::from_slice(line).map_err(|source| EventError::Json {
            source,
            excerpt: excerpt(line),
        })?;
        // Without a type or an action the event can be neither filtered nor shown; the engine
        // never sends one, so such a line is garbage that happened to be JSON.
        for (field, value) in [("Type", &event.kind), ("Action", &event.action)] {
            if value.is_empty() {
                return Err(EventError::Empty {
                    field,
                    excerpt: excerpt(line),
                });
            }
        }
        Ok(event)
    }

    /// The action without its `": ..."` suffix: `health_status: healthy` is `health_status`.
    pub fn action_base(&self) -> &str {
        self.action
            .split_once(':')
            .map_or(self.action.as_str(), |(base, _)| base)
            .trim_end()
    }

    /// The event's deterministic document id: 32 lowercase hex digits, the first 128 bits of
    /// SHA-256 over `timeNano` (8 bytes, big-endian two's complement), then the type, the full
    /// action and the actor id, each as its length (8 bytes, big-endian) and its UTF-8 bytes.
    ///
    /// The length prefixes make the encoding unambiguous (`a`+`bc` and `ab`+`c` differ), so two
    /// events share an id only when all four fields are equal, and such events are the same
    /// event as far as anyone can tell. A replay after a reconnect or a restart gives the same
    /// id, so a `create` answers 409 instead of storing it twice. 128 bits keep collisions out
    /// of reach for any number of events a cluster can hold, in a third less space than 256.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.time_nano.to_be_bytes());
        for field in [&self.kind, &self.action, &self.actor.id] {
            // usize -> u64 never loses bits on the platforms Rust supports.
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field.as_bytes());
        }
        let digest = hash.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER: &str = "4f2a6ec7c1d3b0b5e1f6a9e1f2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0";

    /// An API 1.52 (Docker 29) `die`: no `status`, `id` or `from`.
    const DIE_1_52: &str = r#"{"Type":"container","Action":"die","Actor":{"ID":"4f2a6ec7c1d3b0b5e1f6a9e1f2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0","Attributes":{"com.docker.compose.project":"shop","execDuration":"12","exitCode":"137","image":"nginx:1.27","name":"web-1"}},"scope":"local","time":1795320660,"timeNano":1795320660123456789}"#;

    #[test]
    fn an_api_1_52_line_without_legacy_fields() {
        let event = Event::parse(DIE_1_52.as_bytes()).unwrap();
        assert_eq!(event.kind, "container");
        assert_eq!(event.action, "die");
        assert_eq!(event.action_base(), "die");
        assert_eq!(event.actor.id, CONTAINER);
        assert_eq!(event.actor.attributes["exitCode"], "137");
        assert_eq!(event.actor.attributes["com.docker.compose.project"], "shop");
        assert_eq!(event.scope, "local");
        assert_eq!(event.time, 1_795_320_660);
        assert_eq!(event.time_nano, 1_795_320_660_123_456_789);
    }

    #[test]
    fn legacy_fields_and_unknown_fields_are_ignored() {
        let line = r#"{"status":"start","id":"abc","from":"busybox","Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"image":"busybox","name":"x"}},"scope":"local","time":1,"timeNano":1000000001,"future":{"x":[1]}}"#;
        let event = Event::parse(line.as_bytes()).unwrap();
        assert_eq!(event.action, "start");
        assert_eq!(event.actor.id, "abc");
        assert_eq!(event.time_nano, 1_000_000_001);
    }

    #[test]
    fn suffixed_actions_keep_the_raw_action_and_give_the_base() {
        for (action, base) in [
            ("health_status: healthy", "health_status"),
            ("health_status: unhealthy", "health_status"),
            ("exec_create: sh -c echo a:b", "exec_create"),
            ("exec_start: /bin/true", "exec_start"),
            ("exec_die", "exec_die"),
        ] {
            let line = format!(
                r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"c","Attributes":{{"execID":"e1"}}}},"scope":"local","time":1,"timeNano":1}}"#
            );
            let event = Event::parse(line.as_bytes()).unwrap();
            assert_eq!(event.action, action);
            assert_eq!(event.action_base(), base, "{action}");
        }
    }

    #[test]
    fn a_label_named_exit_code_is_just_an_attribute() {
        // The engine copies labels over its extras: the map holds one `exitCode`, the label's.
        let line = r#"{"Type":"container","Action":"die","Actor":{"ID":"c","Attributes":{"exitCode":"not a number","name":"n","image":"i"}},"scope":"local","time":1,"timeNano":5}"#;
        let event = Event::parse(line.as_bytes()).unwrap();
        assert_eq!(event.actor.attributes["exitCode"], "not a number");
    }

    #[test]
    fn null_or_missing_attributes_actor_and_scope_are_empty() {
        for line in [
            r#"{"Type":"daemon","Action":"reload","Actor":{"ID":"d","Attributes":null},"scope":"local","time":1,"timeNano":7}"#,
            r#"{"Type":"daemon","Action":"reload","Actor":{"ID":"d"},"time":1,"timeNano":7}"#,
            r#"{"Type":"daemon","Action":"reload","Actor":{"ID":"d","Attributes":{}},"scope":null,"timeNano":7}"#,
        ] {
            let event = Event::parse(line.as_bytes()).unwrap();
            assert!(event.actor.attributes.is_empty(), "{line}");
            assert_eq!(event.actor.id, "d");
            assert_eq!(event.time_nano, 7);
        }
        let bare =
            Event::parse(br#"{"Type":"daemon","Action":"reload","Actor":null,"timeNano":7}"#)
                .unwrap();
        assert_eq!(bare.actor, Actor::default());
    }

    #[test]
    fn errors_name_what_is_wrong_and_quote_the_line() {
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "expected ident"),
            (
                br#"{"Type":"container","Action":"die"}"#,
                "missing field `timeNano`",
            ),
            (
                br#"{"Type":"container","Action":"die","timeNano":"1"}"#,
                "invalid type",
            ),
            (
                br#"{"Type":"","Action":"die","timeNano":1}"#,
                "empty `Type`",
            ),
            (
                br#"{"Type":"x","Action":"","timeNano":1}"#,
                "empty `Action`",
            ),
        ];
        for (line, expected) in cases {
            let message = Event::parse(line).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains(&excerpt(line)), "{message}");
        }
        let attributes_not_strings =
            br#"{"Type":"x","Action":"y","Actor":{"ID":"a","Attributes":{"k":1}},"timeNano":1}"#;
        assert!(Event::parse(attributes_not_strings).is_err());
        let long = vec![b'x'; 5000];
        let message = Event::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 400, "{message}");
        assert!(message.ends_with("..."), "{message}");
    }

    #[test]
    fn ids_are_fixed_by_the_algorithm_and_differ_per_field() {
        let event = Event::parse(DIE_1_52.as_bytes()).unwrap();
        // Fixed (and checked against Python's hashlib with the same encoding): a change of
        // algorithm would break deduplication against ids already stored.
        assert_eq!(event.id(), "a81741cfdd5ab849e0a9f5fccb7c10e5");
        assert_eq!(event.id(), event.clone().id());
        let mut ids = std::collections::HashSet::new();
        ids.insert(event.id());
        let mut other = event.clone();
        other.time_nano += 1;
        ids.insert(other.id());
        let mut other = event.clone();
        other.kind = "image".into();
        ids.insert(other.id());
        let mut other = event.clone();
        other.action = "die: x".into();
        ids.insert(other.id());
        let mut other = event.clone();
        other.actor.id.push('0');
        ids.insert(other.id());
        // Moving a byte from one field to the next is a different id.
        let mut shifted = event.clone();
        shifted.kind = "containerd".into();
        shifted.action = "ie".into();
        ids.insert(shifted.id());
        assert_eq!(ids.len(), 6);
        // Attributes and scope are not part of the id: they never differ for one event.
        let mut other = event.clone();
        other.actor.attributes.clear();
        other.scope = "swarm".into();
        assert_eq!(other.id(), event.id());
    }

    proptest::proptest! {
        /// Whatever the engine (or something pretending to be it) sends, parsing answers.
        #[test]
        fn any_bytes_parse_or_fail_without_panic(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(event) = Event::parse(&line) {
                proptest::prop_assert_eq!(event.id().len(), 32);
            }
        }
    }
}
