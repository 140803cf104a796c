//! JSON log lines into fields: the `json.*` log-opts, with the meanings of Filebeat's `json.*`
//! options where they fit, and the document such a line becomes.
//!
//! Applied to the whole line, after the engine's 16 KiB fragments are rejoined (and after
//! multiline merging, if that is on too). The local copy and `docker logs` keep the line as
//! written; only the document changes:
//!
//! ```text
//! line:     {"level":"warn","msg":"disk low","disk":{"free_mb":512}}
//! document: {"@timestamp":"<engine time>","message":"<the line>","stream":"stdout",
//!            <container fields>,"json":{"level":"warn","msg":"disk low","disk":{"free_mb":512}}}
//! ```
//!
//! - `json.keys_under_root=true` puts the keys at the document's root instead of under `json`.
//!   A key the document already has (`@timestamp`, `message`, `stream`, `container`, ...) is
//!   then left out unless `json.overwrite_keys=true`; left out, it is still in `message` (or,
//!   when `message` is taken from a key, in `event.original`): nothing of the line is lost.
//! - With `json.overwrite_keys=true` (and keys at the root) the line's `@timestamp`, if it is
//!   an RFC 3339 time, replaces the engine's: the line's own time replaces the engine's only
//!   when the options say so.
//! - `json.message_key=K`: the string under `K` becomes `message` (the key is moved there).
//! - `json.ecs=true`: `msg` or `message` becomes `message`, `level` or `log.level` becomes
//!   `log.level` (both moved there).
//! - A line that is not a JSON object, is nested deeper than [`MAX_DEPTH`] or is longer than
//!   [`MAX_BYTES`] is shipped as plain text, never dropped, with `error.type: "json"` and
//!   `error.message` saying why (unless `json.add_error_key=false`).

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;

use super::document::{self, ContainerDoc};
use crate::ecs::timestamp;

/// Deepest nesting of a line's object decoded into fields (Elasticsearch refuses documents
/// deeper than `index.mapping.depth.limit`, 20 by default; the `json` object adds one).
pub const MAX_DEPTH: usize = 16;
/// Longest line decoded into fields; a longer one is shipped as text.
pub const MAX_BYTES: usize = 512 << 10;

/// The `json.*` options of a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonOptions {
    pub keys_under_root: bool,
    pub overwrite_keys: bool,
    pub message_key: Option<String>,
    pub add_error_key: bool,
    pub ecs: bool,
}

/// Why a line was shipped as text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonLineError {
    #[error("the line is not a JSON object")]
    NotAnObject,
    #[error("the line is not valid JSON: {0}")]
    Invalid(String),
    #[error("the line's JSON is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the line is {0} bytes, over the {MAX_BYTES}-byte limit of JSON decoding")]
    TooLarge(usize),
    #[error("the line's @timestamp {0:?} is not an RFC 3339 time; the engine's time is kept")]
    Timestamp(String),
}

/// Appends the source line of a bulk item and its '\n': with `options`, the line decoded (see
/// the module doc), else as `document::append_source` writes it.
pub fn append_source(
    out: &mut Vec<u8>,
    doc: &ContainerDoc,
    time_nano: i64,
    stream: &str,
    message: &[u8],
    options: Option<&JsonOptions>,
) {
    let Some(options) = options else {
        return document::append_source(out, doc, time_nano, stream, message);
    };
    let raw = String::from_utf8_lossy(message);
    let ours = doc.members();
    // The members the line sets or changes; the container's own are written from their
    // serialised form unless the line replaced or extended one of them.
    let mut fields = Map::new();
    fields.insert("@timestamp".into(), timestamp(time_nano).into());
    fields.insert("message".into(), Value::from(raw.as_ref()));
    fields.insert("stream".into(), stream.into());
    let error = match decode(message) {
        Ok(object) => merge(&mut fields, ours, object, options, &raw).err(),
        Err(error) => Some(error),
    };
    if let (Some(error), true) = (error, options.add_error_key) {
        if let Some(e) = object_member(&mut fields, ours, "error") {
            e.insert("type".into(), "json".into());
            e.insert("message".into(), error.to_string().into());
        }
    }
    // Serialising strings and values into a Vec cannot fail.
    let mut first = true;
    for (key, value) in &fields {
        out.push(if first { b'{' } else { b',' });
        first = false;
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value);
    }
    if ours.keys().any(|k| fields.contains_key(k)) {
        for (key, value) in ours.iter().filter(|(k, _)| !fields.contains_key(*k)) {
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, value);
        }
    } else {
        out.extend_from_slice(doc.fields().as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

/// The object member `key` of the document for the line to add to: the container's own (copied
/// into `fields`, which then replaces it) or a new one; `None` when the line made it a scalar.
fn object_member<'a>(
    fields: &'a mut Map<String, Value>,
    ours: &Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = fields.entry(key).or_insert_with(|| match ours.get(key) {
        Some(Value::Object(theirs)) => Value::Object(theirs.clone()),
        _ => Value::Object(Map::new()),
    });
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// The line as a JSON object, within the limits.
pub fn decode(message: &[u8]) -> Result<Map<String, Value>, JsonLineError> {
    if message.len() > MAX_BYTES {
        return Err(JsonLineError::TooLarge(message.len()));
    }
    // Plain text is the common case when JSON is on for a mixed output: say so without a parse.
    if message.trim_ascii_start().first() != Some(&b'{') {
        return Err(JsonLineError::NotAnObject);
    }
    let value: Value = serde_json::from_slice(message.trim_ascii())
        .map_err(|e| JsonLineError::Invalid(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(JsonLineError::NotAnObject);
    };
    if object.values().any(|v| depth(v) >= MAX_DEPTH) {
        return Err(JsonLineError::TooDeep);
    }
    Ok(object)
}

/// Levels of objects and arrays in `value` (a scalar is 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Puts the line's keys into the document. An error is a part that could not be used (the rest
/// is used).
fn merge(
    fields: &mut Map<String, Value>,
    ours: &Map<String, Value>,
    mut object: Map<String, Value>,
    options: &JsonOptions,
    raw: &str,
) -> Result<(), JsonLineError> {
    let mut message = None;
    let mut level = None;
    if let Some(key) = &options.message_key {
        if object.get(key).is_some_and(Value::is_string) {
            message = object.remove(key);
        }
    }
    if options.ecs {
        for key in ["message", "msg"] {
            if message.is_none() && object.get(key).is_some_and(Value::is_string) {
                message = object.remove(key);
            }
        }
        for key in ["log.level", "level"] {
            if level.is_none() && object.get(key).is_some_and(Value::is_string) {
                level = object.remove(key);
            }
        }
    }
    let mut result = Ok(());
    let mut left_out = false;
    if options.keys_under_root {
        if options.overwrite_keys {
            if let Some(Value::String(text)) = object.get("@timestamp") {
                match time::OffsetDateTime::parse(text, &Rfc3339) {
                    Ok(t) => {
                        let nanos = i64::try_from(t.unix_timestamp_nanos()).unwrap_or(0);
                        object.insert("@timestamp".into(), timestamp(nanos).into());
                    }
                    Err(_) => {
                        result = Err(JsonLineError::Timestamp(text.chars().take(64).collect()));
                        object.remove("@timestamp");
                        left_out = true;
                    }
                }
            }
        }
        for (key, value) in object {
            if options.overwrite_keys || !(fields.contains_key(&key) || ours.contains_key(&key)) {
                fields.insert(key, value);
            } else {
                left_out = true;
            }
        }
    } else if options.overwrite_keys || !(fields.contains_key("json") || ours.contains_key("json"))
    {
        fields.insert("json".into(), Value::Object(object));
    } else {
        left_out = true;
    }
    if let Some(message) = message {
        fields.insert("message".into(), message);
        if left_out {
            // What was left out is still in the line: keep it beside the message taken.
            if let Some(event) = object_member(fields, ours, "event") {
                event.insert("original".into(), raw.into());
            }
        }
    }
    if let Some(level) = level {
        if let Some(log) = object_member(fields, ours, "log") {
            log.insert("level".into(), level);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn options() -> JsonOptions {
        JsonOptions {
            keys_under_root: false,
            overwrite_keys: false,
            message_key: None,
            add_error_key: true,
            ecs: false,
        }
    }

    /// The top-level keys of a JSON object, refusing one given twice (Elasticsearch refuses a
    /// document with a duplicate key; `serde_json::Value` would keep the last silently).
    struct UniqueKeys;

    impl<'de> serde::de::Visitor<'de> for UniqueKeys {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("duplicate key {key}")));
                }
            }
            Ok(())
        }
    }

    /// The source line of the item for a container with a data stream's fields, parsed; a
    /// key given twice fails.
    fn document(line: &str, options: &JsonOptions) -> Value {
        let doc = ContainerDoc::for_tests(json!({
            "container": {"id": "c1"},
            "ecs": {"version": "8"},
            "event": {"dataset": "docker"}
        }));
        let mut out = Vec::new();
        append_source(
            &mut out,
            &doc,
            1_000_000_000,
            "stdout",
            line.as_bytes(),
            Some(options),
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let mut keys = serde_json::Deserializer::from_str(text);
        serde::Deserializer::deserialize_map(&mut keys, UniqueKeys)
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        serde_json::from_str(text).unwrap()
    }

    /// The line's `event.original` joins the container's own `event` (a data stream's
    /// `event.dataset`) instead of a second `event` key.
    #[test]
    fn fields_the_line_adds_to_the_containers_objects_are_merged_into_them() {
        let line = r#"{"msg":"hi","event":"login","level":"info"}"#;
        let o = JsonOptions {
            keys_under_root: true,
            ecs: true,
            ..options()
        };
        let d = document(line, &o);
        assert_eq!(d["message"], "hi");
        assert_eq!(d["event"]["dataset"], "docker");
        assert_eq!(d["event"]["original"], line);
        assert_eq!(d["log"]["level"], "info");
        let over = JsonOptions {
            overwrite_keys: true,
            ..o
        };
        let d = document(line, &over);
        assert_eq!(d["event"], "login");
        assert_eq!(d["container"]["id"], "c1");
    }

    #[test]
    fn an_object_goes_under_json_and_the_line_stays_in_message() {
        let line = r#"{"level":"warn","msg":"disk low","disk":{"free_mb":512}}"#;
        let d = document(line, &options());
        assert_eq!(d["json"]["disk"]["free_mb"], 512);
        assert_eq!(d["message"], line);
        assert_eq!(d["@timestamp"], "1970-01-01T00:00:01.000000000Z");
        assert_eq!(d["container"]["id"], "c1");
        assert!(d.get("error").is_none());
    }

    #[test]
    fn ecs_moves_msg_and_level_and_the_engine_time_is_kept() {
        let line = r#"{"level":"warn","msg":"disk low","@timestamp":"2020-01-01T00:00:00Z"}"#;
        let o = JsonOptions {
            ecs: true,
            keys_under_root: true,
            ..options()
        };
        let d = document(line, &o);
        assert_eq!(d["message"], "disk low");
        assert_eq!(d["log"]["level"], "warn");
        assert!(d.get("msg").is_none() && d.get("level").is_none());
        // The line's time is not ours to take without overwrite_keys; it was left out, so the
        // line is kept whole in event.original.
        assert_eq!(d["@timestamp"], "1970-01-01T00:00:01.000000000Z");
        assert_eq!(d["event"]["original"], line);
    }

    #[test]
    fn overwrite_keys_takes_the_lines_time_and_keys() {
        let line = r#"{"@timestamp":"2020-01-01T00:00:00.5+01:00","container":"mine","x":1}"#;
        let o = JsonOptions {
            keys_under_root: true,
            overwrite_keys: true,
            ..options()
        };
        let d = document(line, &o);
        assert_eq!(d["@timestamp"], "2019-12-31T23:00:00.500000000Z");
        assert_eq!(d["container"], "mine");
        assert_eq!(d["x"], 1);
    }

    #[test]
    fn a_bad_timestamp_keeps_the_engines_and_says_why() {
        let o = JsonOptions {
            keys_under_root: true,
            overwrite_keys: true,
            ..options()
        };
        let d = document(r#"{"@timestamp":"yesterday","x":1}"#, &o);
        assert_eq!(d["@timestamp"], "1970-01-01T00:00:01.000000000Z");
        assert_eq!(d["x"], 1);
        assert_eq!(d["error"]["type"], "json");
        assert!(d["error"]["message"]
            .as_str()
            .unwrap()
            .contains("yesterday"));
    }

    #[test]
    fn lines_that_are_not_objects_ship_as_text_with_the_reason() {
        for (line, why) in [
            ("plain text", "not a JSON object"),
            ("[1,2]", "not a JSON object"),
            ("{\"a\":", "not valid JSON"),
        ] {
            let d = document(line, &options());
            assert_eq!(d["message"], line);
            assert!(d.get("json").is_none());
            assert!(
                d["error"]["message"].as_str().unwrap().contains(why),
                "{line}: {d}"
            );
        }
        let quiet = JsonOptions {
            add_error_key: false,
            ..options()
        };
        assert!(document("plain", &quiet).get("error").is_none());
    }

    #[test]
    fn too_deep_and_too_large_lines_ship_as_text() {
        let deep = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        let d = document(&deep, &options());
        assert_eq!(d["message"], deep.as_str());
        assert!(d["error"]["message"].as_str().unwrap().contains("deeper"));
        let large = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_BYTES));
        let d = document(&large, &options());
        assert!(d["error"]["message"].as_str().unwrap().contains("limit"));
    }

    proptest! {
        /// Whatever the line, the document is valid JSON and keeps the line.
        #[test]
        fn every_line_becomes_a_document_that_keeps_it(line in ".{0,200}", root: bool, overwrite: bool, ecs: bool) {
            let o = JsonOptions { keys_under_root: root, overwrite_keys: overwrite, ecs, ..options() };
            let d = document(&line, &o);
            let kept = d["message"] == line.as_str()
                || d["event"]["original"] == line.as_str()
                || d.get("json").is_some()
                || (root && d.get("error").is_none());
            prop_assert!(kept, "{} -> {}", line, d);
        }
    }
}
