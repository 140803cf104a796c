//! One log line as an Elasticsearch `_bulk` item, in ECS.
//!
//! Each entry becomes two NDJSON lines, each ending in `\n`:
//!
//! ```text
//! {"create":{"_index":"logs-docker-default","_id":"<container id>-<segment hex>-<offset hex>"}}
//! {"@timestamp":"2026-11-22T04:11:00.123456789Z","message":"...","stream":"stdout",<container part>}
//! ```
//!
//! - `create`, never `index`: data streams take only `create`, and with our deterministic `_id`
//!   a replay after a crash or an ambiguous failure gets 409 instead of a second copy.
//! - `@timestamp` is RFC 3339 in UTC with exactly nine fractional digits: the `logs@*` templates
//!   map it as `date_nanos`, and a fixed width keeps the engine's nanoseconds.
//! - `message` is the line as lossy UTF-8 (each invalid sequence becomes U+FFFD, exactly as
//!   `String::from_utf8_lossy`), everything else kept; the engine already took the newline off.
//! - The container part is the same for every document of a container, so [`ContainerDoc`]
//!   serialises it once: `container.{id,name,image.name,image.tag,labels.*}`, `host.name`,
//!   `agent.{type,name,version,id}`, `ecs.version`, `docker.tag`, `process.env_vars` when the
//!   `env` log-opts select any (`attributes.rs`), for data stream targets
//!   `data_stream.{type,dataset,namespace}` and `event.dataset`, and the static `tags` and
//!   fields (`statics.rs`). Fields are nested objects, as ECS documents them.
//!
//! This is the hot path of shipping: [`append_action`] and [`append_source`] write straight
//! into the batch buffer, build no `serde_json::Value` and allocate nothing per document
//! (`json_lines` writes the source line instead when JSON decoding is on).

use serde_json::{Map, Value};

use crate::ecs::{dedot, format_timestamp, split_image, Agent, ECS_VERSION};
use crate::protocol::Info;
use crate::shipper::attributes::Attributes;
use crate::shipper::statics::Statics;

/// Everything about a container that is the same for all its documents, serialised once as a
/// JSON fragment (`,"agent":{...},...`) appended to every document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDoc {
    /// Starts with `,` and holds the members of the document object after `stream`.
    fields: String,
    /// The same members as values, for documents built as values (`json_lines`).
    members: Map<String, Value>,
}

impl ContainerDoc {
    pub fn new(
        info: &Info,
        host_name: &str,
        agent: &Agent,
        data_stream: Option<(&str, &str, &str)>,
        statics: &Statics,
        attributes: &Attributes,
    ) -> ContainerDoc {
        let mut container = Map::new();
        container.insert("id".into(), info.container_id.as_str().into());
        let name = info
            .container_name
            .strip_prefix('/')
            .unwrap_or(&info.container_name);
        container.insert("name".into(), name.into());
        if !info.container_image_name.is_empty() {
            let (image_name, tag) = split_image(&info.container_image_name);
            let mut image = Map::new();
            image.insert("name".into(), image_name.into());
            if let Some(tag) = tag {
                image.insert("tag".into(), tag.into());
            }
            container.insert("image".into(), image.into());
        }
        // Dots in label keys become `_`, as Beats do: `com.example.team` and `com.example`
        // would otherwise be both an object and a leaf in the mapping (`dedot` says which value
        // wins when two keys become one, the same rule as for event documents).
        let labels = dedot(attributes.selected_labels(&info.container_labels));
        if !labels.is_empty() {
            container.insert("labels".into(), labels.into());
        }

        let mut doc = Map::new();
        doc.insert("agent".into(), agent.to_json());
        doc.insert("container".into(), container.into());
        doc.insert("ecs".into(), object([("version", ECS_VERSION)]));
        doc.insert("host".into(), object([("name", host_name)]));
        doc.insert("docker".into(), object([("tag", &attributes.tag(info))]));
        let env = attributes.selected_env(&info.container_env);
        if !env.is_empty() {
            let mut process = Map::new();
            process.insert("env_vars".into(), env.into());
            doc.insert("process".into(), process.into());
        }
        if let Some((kind, dataset, namespace)) = data_stream {
            doc.insert(
                "data_stream".into(),
                object([
                    ("type", kind),
                    ("dataset", dataset),
                    ("namespace", namespace),
                ]),
            );
            doc.insert("event".into(), object([("dataset", dataset)]));
        }
        statics.insert_into(&mut doc);
        Self::from_members(doc)
    }

    /// The members every document of the container carries.
    pub fn members(&self) -> &Map<String, Value> {
        &self.members
    }

    /// The same, serialised: `,"agent":{...},...` (empty when there are none).
    pub fn fields(&self) -> &str {
        &self.fields
    }

    #[cfg(test)]
    pub fn for_tests(members: Value) -> Self {
        match members {
            Value::Object(m) => Self::from_members(m),
            _ => Self::from_members(Map::new()),
        }
    }

    fn from_members(doc: Map<String, Value>) -> Self {
        let json = Value::Object(doc.clone()).to_string();
        // The object is never empty, so `{...}` becomes `,...`: the members, ready to follow
        // `stream`.
        let members = json
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or_default();
        let fields = if members.is_empty() {
            String::new()
        } else {
            format!(",{members}")
        };
        ContainerDoc {
            fields,
            members: doc,
        }
    }
}

fn object<const N: usize>(members: [(&str, &str); N]) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(key, value)| (key.to_owned(), Value::from(value)))
            .collect(),
    )
}

/// Appends one bulk item, two lines each ending in '\n':
/// `{"create":{"_index":"<index>","_id":"<id>"}}` and
/// `{"@timestamp":"...","message":"...","stream":"stdout",<the ContainerDoc fields>}`.
#[cfg(test)]
pub fn append_create(
    out: &mut Vec<u8>,
    index: &str,
    id: &str,
    doc: &ContainerDoc,
    time_nano: i64,
    stream: &str,
    message: &[u8],
) {
    append_action(out, index, id);
    append_source(out, doc, time_nano, stream, message);
}

/// Appends the source line of a bulk item and its '\n':
/// `{"@timestamp":"...","message":"...","stream":"stdout",<the ContainerDoc fields>}`.
pub fn append_source(
    out: &mut Vec<u8>,
    doc: &ContainerDoc,
    time_nano: i64,
    stream: &str,
    message: &[u8],
) {
    out.extend_from_slice(b"{\"@timestamp\":\"");
    format_timestamp(time_nano, out);
    out.extend_from_slice(b"\",\"message\":\"");
    // utf8_chunks is what String::from_utf8_lossy is built on, so the text is the same, but
    // nothing is allocated, valid or not.
    for chunk in message.utf8_chunks() {
        escape_str(chunk.valid(), out);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.extend_from_slice(b"\",\"stream\":\"");
    escape_str(stream, out);
    out.push(b'"');
    out.extend_from_slice(doc.fields.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Appends the action line `{"create":{"_index":"<index>","_id":"<id>"}}` and its '\n'.
pub fn append_action(out: &mut Vec<u8>, index: &str, id: &str) {
    out.extend_from_slice(b"{\"create\":{\"_index\":\"");
    escape_str(index, out);
    out.extend_from_slice(b"\",\"_id\":\"");
    escape_str(id, out);
    out.extend_from_slice(b"\"}}\n");
}

/// The deterministic `_id` of the document whose entry starts at (segment, offset) in the
/// container's store: `<container id>-<segment hex>-<offset hex>`, e.g.
/// `0123...cdef-1a-3f80`. A replay after a crash produces the same id, so Elasticsearch answers
/// 409 instead of storing the line twice.
///
/// The whole container id is kept (not a prefix or a hash) so ids are unique, not just likely
/// unique, and the container's documents share a prefix, which Lucene's terms dictionary
/// compresses well. The two hex fields hold no `-`, so the id splits back unambiguously from the
/// right whatever the container id is. For the engine's 64-digit ids it is at most
/// 64 + 2 * 17 = 98 bytes (Elasticsearch allows 512), and only `[0-9a-f-]`, so URL-safe.
pub fn document_id(container_id: &str, segment: u64, offset: u64) -> String {
    format!("{container_id}-{segment:x}-{offset:x}")
}

/// What each byte becomes inside a JSON string: 0 for itself, `u` for `\u00XX`, else the letter
/// after the backslash. Only `"`, `\` and the control characters below 0x20 must be escaped
/// (RFC 8259); bytes of multi-byte UTF-8 sequences are all 0x80 or above and pass through.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Writes `text` as the inside of a JSON string, copying the runs that need no escape whole.
fn escape_str(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut run_start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..at]);
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        run_start = at + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// 2026-11-22T04:11:00.123456789Z
    const NOV_22_2026: i64 = 1_795_320_660_123_456_789;

    fn agent() -> Agent {
        Agent {
            name: "shop-logs".into(),
            version: "1.4.0".into(),
            id: "7c1f0a52-5d2e-4c39-9a51-0f4b2f7d9e11".into(),
        }
    }

    fn info(image: &str, labels: &[(&str, &str)]) -> Info {
        Info {
            container_id: ID.into(),
            container_name: "/web-1".into(),
            container_image_name: image.into(),
            container_labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Info::default()
        }
    }

    /// The two lines of one item, parsed.
    fn item(doc: &ContainerDoc, time_nano: i64, stream: &str, message: &[u8]) -> (Value, Value) {
        let mut out = Vec::new();
        append_create(
            &mut out,
            "logs-docker-default",
            "the-id",
            doc,
            time_nano,
            stream,
            message,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&out).unwrap();
        let lines: Vec<&str> = text.strip_suffix('\n').unwrap().split('\n').collect();
        assert_eq!(lines.len(), 2, "{text}");
        (
            serde_json::from_str(lines[0]).unwrap(),
            serde_json::from_str(lines[1]).unwrap(),
        )
    }

    /// `info`'s part on host `h`: no data stream, no static fields, Docker's default options.
    fn plain_doc(info: &Info) -> ContainerDoc {
        ContainerDoc::new(
            info,
            "h",
            &agent(),
            None,
            &Statics::default(),
            &Attributes::default(),
        )
    }

    /// A plain `busybox` container's part, no data stream, no static fields.
    fn busybox_doc() -> ContainerDoc {
        plain_doc(&info("busybox", &[]))
    }

    #[test]
    fn output_is_two_json_lines_with_the_exact_fields() {
        let doc = ContainerDoc::new(
            &info("registry:5000/shop/web:1.2", &[("com.example.team", "pay")]),
            "node-7",
            &agent(),
            Some(("logs", "docker", "default")),
            &Statics::default(),
            &Attributes::default(),
        );
        let (action, source) = item(&doc, NOV_22_2026, "stdout", b"hello world");
        assert_eq!(
            action,
            json!({"create": {"_index": "logs-docker-default", "_id": "the-id"}})
        );
        assert_eq!(
            source,
            json!({
                "@timestamp": "2026-11-22T04:11:00.123456789Z",
                "message": "hello world",
                "stream": "stdout",
                "container": {
                    "id": ID,
                    "name": "web-1",
                    "image": {"name": "registry:5000/shop/web", "tag": "1.2"},
                    "labels": {"com_example_team": "pay"},
                },
                "host": {"name": "node-7"},
                "agent": {
                    "type": "es-logging-plugin",
                    "name": "shop-logs",
                    "version": "1.4.0",
                    "id": "7c1f0a52-5d2e-4c39-9a51-0f4b2f7d9e11",
                },
                "ecs": {"version": "8.11.0"},
                "docker": {"tag": &ID[..12]},
                "data_stream": {"type": "logs", "dataset": "docker", "namespace": "default"},
                "event": {"dataset": "docker"},
            })
        );
    }

    /// `tags` and `fields` are in every document of the container, beside the fields the
    /// plugin writes (which they cannot replace: `statics` refuses those keys).
    #[test]
    fn static_tags_and_fields_are_in_every_document() {
        let statics = Statics::parse("prod,eu", "env=prod,service.name=api", []).unwrap();
        let doc = ContainerDoc::new(
            &info("busybox", &[]),
            "h",
            &agent(),
            None,
            &statics,
            &Attributes::default(),
        );
        for line in [&b"one"[..], b"two"] {
            let (_, source) = item(&doc, 0, "stdout", line);
            assert_eq!(source["tags"], json!(["prod", "eu"]));
            assert_eq!(source["env"], "prod");
            assert_eq!(source["service"], json!({"name": "api"}));
            assert_eq!(source["message"], std::str::from_utf8(line).unwrap());
            assert_eq!(source["container"]["name"], "web-1");
        }
    }

    #[test]
    fn data_stream_fields_only_for_data_streams() {
        let doc = busybox_doc();
        let (_, source) = item(&doc, 0, "stderr", b"x");
        let fields = source.as_object().unwrap();
        assert!(!fields.contains_key("data_stream"));
        assert!(!fields.contains_key("event"));
        assert_eq!(source["stream"], "stderr");
        // No labels, no empty labels object.
        assert!(!source["container"]
            .as_object()
            .unwrap()
            .contains_key("labels"));
    }

    #[test]
    fn leading_slash_is_removed_from_the_name() {
        let mut container = info("busybox", &[]);
        let doc = plain_doc(&container);
        assert_eq!(item(&doc, 0, "stdout", b"").1["container"]["name"], "web-1");
        container.container_name = "no-slash".into();
        let doc = plain_doc(&container);
        assert_eq!(
            item(&doc, 0, "stdout", b"").1["container"]["name"],
            "no-slash"
        );
    }

    #[test]
    fn image_name_and_tag_are_split() {
        for (image, name, tag) in [
            ("busybox", "busybox", None),
            ("busybox:1.36", "busybox", Some("1.36")),
            ("registry:5000/app", "registry:5000/app", None),
            ("registry:5000/app:1.2", "registry:5000/app", Some("1.2")),
            ("app@sha256:abc", "app", None),
            (
                "ghcr.io/o/app:v1@sha256:0123456789abcdef",
                "ghcr.io/o/app",
                Some("v1"),
            ),
            ("localhost:5000/a/b@sha256:ff", "localhost:5000/a/b", None),
            ("app:", "app", None),
            ("sha256:0123456789abcdef", "sha256:0123456789abcdef", None),
        ] {
            assert_eq!(split_image(image), (name, tag), "{image}");
            let doc = plain_doc(&info(image, &[]));
            let (_, source) = item(&doc, 0, "stdout", b"");
            let mut expected = json!({"name": name});
            if let Some(tag) = tag {
                expected["tag"] = tag.into();
            }
            assert_eq!(source["container"]["image"], expected, "{image}");
        }
        // The engine always names the image, but an empty one is left out rather than sent
        // as an empty name.
        let doc = plain_doc(&info("", &[]));
        let (_, source) = item(&doc, 0, "stdout", b"");
        assert!(!source["container"]
            .as_object()
            .unwrap()
            .contains_key("image"));
    }

    #[test]
    fn label_keys_are_dedotted_and_collisions_resolved_the_same_way_every_time() {
        let labels = [
            ("com.docker.compose.service", "web"),
            ("a.b", "dotted"),
            ("a_b", "plain"),
            ("x.y", "first"),
            ("x_y.", "other"),
            ("c.d", "1"),
            ("c..d", "2"),
            ("", "empty key"),
            ("quote\"key", "line\nbreak"),
        ];
        let doc = plain_doc(&info("busybox", &labels));
        let (_, source) = item(&doc, 0, "stdout", b"");
        assert_eq!(
            source["container"]["labels"],
            json!({
                "com_docker_compose_service": "web",
                "a_b": "plain",
                "x_y": "first",
                "x_y_": "other",
                "c_d": "1",
                "c__d": "2",
                "quote\"key": "line\nbreak",
            })
        );
        // HashMap order must not matter.
        for _ in 0..20 {
            let again = plain_doc(&info("busybox", &labels));
            assert_eq!(again, doc);
        }
    }

    #[test]
    fn messages_with_quotes_control_bytes_and_invalid_utf8() {
        let doc = busybox_doc();
        for (line, expected) in [
            (&b"say \"hi\" \\ back"[..], "say \"hi\" \\ back"),
            (b"tab\there\r", "tab\there\r"),
            (
                b"\x00\x01\x1b[31mred\x1b[0m\x7f",
                "\u{0}\u{1}\u{1b}[31mred\u{1b}[0m\u{7f}",
            ),
            (b"caf\xc3\xa9 \xe2\x9c\x93", "café ✓"),
            (b"bad \xff\xfe end", "bad \u{FFFD}\u{FFFD} end"),
            (b"cut \xe2\x9c", "cut \u{FFFD}"),
            (b"", ""),
        ] {
            let (_, source) = item(&doc, 0, "stdout", line);
            assert_eq!(source["message"], expected, "{line:?}");
            assert_eq!(expected, String::from_utf8_lossy(line));
        }
        // The raw output escapes control characters rather than embedding them.
        let mut out = Vec::new();
        append_create(&mut out, "i", "d", &doc, 0, "stdout", b"a\nb\x01\x1f");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""message":"a\nb\u0001\u001f""#), "{text}");
        assert_eq!(text.matches('\n').count(), 2);
    }

    #[test]
    fn document_ids_are_deterministic_unique_and_short() {
        assert_eq!(document_id(ID, 0, 0), format!("{ID}-0-0"));
        assert_eq!(document_id(ID, 26, 16_256), format!("{ID}-1a-3f80"));
        assert_eq!(document_id(ID, 3, 5), document_id(ID, 3, 5));
        let longest = document_id(ID, u64::MAX, u64::MAX);
        assert_eq!(longest.len(), 98);
        assert!(longest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'));
        let other = "f".repeat(64);
        let ids: std::collections::HashSet<String> = [
            document_id(ID, 1, 0),
            document_id(ID, 0, 1),
            document_id(ID, 0x10, 0),
            document_id(ID, 1, 0x10),
            document_id(&other, 1, 0),
            // Ids that are not the engine's still cannot meet: the last two fields have no '-'.
            document_id("a-1", 2, 3),
            document_id("a", 0x12, 3),
        ]
        .into_iter()
        .collect();
        assert_eq!(ids.len(), 7);
    }

    #[test]
    fn index_and_id_are_escaped_in_the_action_line() {
        let doc = busybox_doc();
        let mut out = Vec::new();
        append_create(&mut out, "we\"ird", "i\\d", &doc, 0, "stdout", b"m");
        let first = out.split(|&b| b == b'\n').next().unwrap();
        let action: Value = serde_json::from_slice(first).unwrap();
        assert_eq!(action["create"]["_index"], "we\"ird");
        assert_eq!(action["create"]["_id"], "i\\d");
    }

    #[test]
    fn items_append_to_a_batch() {
        let doc = busybox_doc();
        let mut out = Vec::new();
        for n in 0..3u64 {
            let id = document_id(ID, 0, n);
            append_create(&mut out, "logs-a-b", &id, &doc, 0, "stdout", b"line");
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        for line in lines {
            serde_json::from_str::<Value>(line).unwrap();
        }
    }

    proptest! {
        #[test]
        fn any_message_bytes_give_valid_json_with_the_lossy_text(
            message in proptest::collection::vec(any::<u8>(), 0..300),
            time_nano in any::<i64>(),
        ) {
            let doc = plain_doc(&info("busybox:1", &[("l.k", "v")]));
            let (_, source) = item(&doc, time_nano, "stdout", &message);
            let lossy = String::from_utf8_lossy(&message);
            prop_assert_eq!(source["message"].as_str(), Some(lossy.as_ref()));
            let stamp = source["@timestamp"].as_str().unwrap();
            let parsed = time::OffsetDateTime::parse(
                stamp,
                &time::format_description::well_known::Rfc3339,
            ).unwrap();
            prop_assert_eq!(parsed.unix_timestamp_nanos(), i128::from(time_nano));
        }

        #[test]
        fn any_text_escapes_like_serde_json(text in any::<String>()) {
            let mut out = Vec::new();
            escape_str(&text, &mut out);
            let quoted = format!("\"{}\"", String::from_utf8(out).unwrap());
            prop_assert_eq!(serde_json::from_str::<String>(&quoted).unwrap(), text);
        }
    }
}
