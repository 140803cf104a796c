//! Docker events as Elasticsearch documents, in two formats.
//!
//! [`Format::Ecs`] (the default), nested objects as ECS documents them:
//!
//! ```text
//! {"@timestamp":"2026-11-22T04:11:00.123456789Z",
//!  "event":{"kind":"event","action":"die","category":["process"],"type":["end"],
//!           "outcome":"failure","dataset":"docker.events"},
//!  "container":{"id":"...","name":"web-1","image":{"name":"nginx","tag":"1.27"},"labels":{"com_docker_compose_project":"shop"}},
//!  "process":{"exit_code":137},
//!  "docker":{"event":{"type":"container","action":"die","scope":"local",
//!            "actor":{"id":"...","attributes":{"exitCode":"137","com_docker_compose_project":"shop",...}}}},
//!  "host":{"name":"..."},"agent":{...},"ecs":{"version":"8.11.0"},
//!  "data_stream":{"type":"logs","dataset":"docker.events","namespace":"default"}}
//! ```
//!
//! - `@timestamp` has all nine fraction digits of `timeNano`, as log documents do.
//! - `event.action` is the action without its suffix; `docker.event.action` is the raw one.
//! - `event.category`/`event.type` only where ECS has a value (the table in [`ecs_category`]);
//!   `event.outcome` only for `die`: `failure` for a non-zero exit code, `success` for 0.
//! - `container.*` only for container events; `container.labels` are the attributes other than
//!   the engine's own extras ([`ENGINE_EXTRAS`]). `container.image.name`/`.tag` are split as in
//!   log documents, so one query finds a container's logs and its events.
//! - Label keys are dedotted as for logs (see `dedot`); so are the keys of
//!   `docker.event.actor.attributes`, for the same reason: `a.b` and `a.b.c` would make `a.b`
//!   both a leaf and an object in the mapping and Elasticsearch would refuse the document.
//! - `data_stream.*` and `event.dataset` only when the target is a data stream.
//!
//! [`Format::Logtail`], what Alibaba Logtail's `service_docker_event` writes, so its queries and
//! alerts keep working: `@timestamp`, `_type_`, `_action_` (raw), `_id_` (actor id),
//! `_time_nano_` (a string) and every attribute flat under its own key. An attribute named like
//! one of those five keys is written as `_attr_<key>` instead (and `_attr__attr_<key>` if that
//! too is taken, and so on), so a label can never overwrite the fixed keys, which Logtail allows.
//!
//! The gap marker ([`gap_document`]) says that events between two times may be missing because
//! the engine's buffer (its last 256 events) no longer covered the time we were disconnected.
//! It is an event of its own: `event.kind: event`, `event.action: events-gap`,
//! `event.start`/`event.end` (the last event delivered before, the first after), `message`; in
//! Logtail format `_type_: collector`, `_action_: events-gap`, `_id_: ""`, `_time_nano_` of the
//! first event after the gap, and `gap_after_nano`/`gap_before_nano`.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use super::event::Event;
use crate::ecs::{dedot, split_image, timestamp, Agent, ECS_VERSION};

/// Attributes the engine adds to container events itself; every other attribute is a label.
pub const ENGINE_EXTRAS: [&str; 7] = [
    "name",
    "image",
    "exitCode",
    "execDuration",
    "signal",
    "execID",
    "oldName",
];

/// The Logtail keys an attribute must not overwrite.
const LOGTAIL_FIXED: [&str; 5] = ["@timestamp", "_type_", "_action_", "_id_", "_time_nano_"];

/// What a colliding attribute key is prefixed with in Logtail format.
pub const LOGTAIL_COLLISION_PREFIX: &str = "_attr_";

/// `event.action` of a gap marker.
pub const GAP_ACTION: &str = "events-gap";

/// The document layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Ecs,
    Logtail,
}

#[derive(Debug, thiserror::Error)]
#[error("events format {given:?} is not known (use \"ecs\" or \"logtail\")")]
pub struct FormatError {
    pub given: String,
}

impl FromStr for Format {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<Format, FormatError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "ecs" => Ok(Format::Ecs),
            "logtail" => Ok(Format::Logtail),
            _ => Err(FormatError {
                given: text.to_owned(),
            }),
        }
    }
}

/// A data stream target's name parts: `<type>-<dataset>-<namespace>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataStream {
    pub kind: String,
    pub dataset: String,
    pub namespace: String,
}

impl DataStream {
    /// The default target, `logs-docker.events-default`.
    pub fn docker_events() -> DataStream {
        DataStream {
            kind: "logs".into(),
            dataset: "docker.events".into(),
            namespace: "default".into(),
        }
    }
}

/// Everything a document needs besides the event: the same for every document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentOptions {
    pub format: Format,
    pub host_name: String,
    pub agent: Agent,
    /// Some when the target is a data stream: adds `data_stream.*` and `event.dataset`.
    pub data_stream: Option<DataStream>,
}

/// `event.category` and `event.type` for the events ECS has a value for.
pub fn ecs_category(kind: &str, action_base: &str) -> Option<(&'static str, &'static str)> {
    let pair = match (kind, action_base) {
        ("container", "create") => ("process", "creation"),
        ("container", "destroy") => ("process", "deletion"),
        ("container", "start" | "restart" | "unpause") => ("process", "start"),
        ("container", "die" | "stop" | "kill" | "oom" | "pause") => ("process", "end"),
        ("image", "pull") => ("package", "installation"),
        ("image", "delete") => ("package", "deletion"),
        ("network", "connect") => ("network", "connection"),
        ("network", "disconnect") => ("network", "end"),
        _ => return None,
    };
    Some(pair)
}

/// The members every ECS document shares: `host`, `agent`, `ecs`, `data_stream`.
fn common_ecs(
    doc: &mut Map<String, Value>,
    event: &mut Map<String, Value>,
    options: &DocumentOptions,
) {
    doc.insert("host".into(), json!({ "name": options.host_name }));
    doc.insert("agent".into(), options.agent.to_json());
    doc.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    if let Some(stream) = &options.data_stream {
        doc.insert(
            "data_stream".into(),
            json!({ "type": stream.kind, "dataset": stream.dataset, "namespace": stream.namespace }),
        );
        event.insert("dataset".into(), stream.dataset.as_str().into());
    }
}

/// The document for `event` in the chosen format.
pub fn event_document(event: &Event, options: &DocumentOptions) -> Value {
    match options.format {
        Format::Ecs => ecs_document(event, options),
        Format::Logtail => logtail_document(event),
    }
}

fn ecs_document(event: &Event, options: &DocumentOptions) -> Value {
    let attributes = &event.actor.attributes;
    let base = event.action_base();
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), timestamp(event.time_nano).into());

    let mut ecs_event = Map::new();
    ecs_event.insert("kind".into(), "event".into());
    ecs_event.insert("action".into(), base.into());
    if let Some((category, kind)) = ecs_category(&event.kind, base) {
        ecs_event.insert("category".into(), json!([category]));
        ecs_event.insert("type".into(), json!([kind]));
    }

    let is_container = event.kind == "container";
    // A label named exitCode hides the real one and may not be a number: then there is no exit
    // code to report, rather than a wrong one.
    let exit_code = attributes
        .get("exitCode")
        .and_then(|code| code.trim().parse::<i64>().ok())
        .filter(|_| is_container && base == "die");
    if let Some(code) = exit_code {
        let outcome = if code == 0 { "success" } else { "failure" };
        ecs_event.insert("outcome".into(), outcome.into());
        doc.insert("process".into(), json!({ "exit_code": code }));
    }

    if is_container {
        let mut container = Map::new();
        container.insert("id".into(), event.actor.id.as_str().into());
        if let Some(name) = attributes.get("name") {
            container.insert("name".into(), name.as_str().into());
        }
        if let Some(image) = attributes.get("image") {
            // Split as in log documents, so one query finds a container's logs and events.
            let (name, tag) = split_image(image);
            let mut fields = Map::new();
            fields.insert("name".into(), name.into());
            if let Some(tag) = tag {
                fields.insert("tag".into(), tag.into());
            }
            container.insert("image".into(), Value::Object(fields));
        }
        let labels = dedot(
            attributes
                .iter()
                .filter(|(key, _)| !ENGINE_EXTRAS.contains(&key.as_str())),
        );
        if !labels.is_empty() {
            container.insert("labels".into(), labels.into());
        }
        doc.insert("container".into(), container.into());
    }

    let mut actor = Map::new();
    actor.insert("id".into(), event.actor.id.as_str().into());
    if !attributes.is_empty() {
        actor.insert("attributes".into(), dedot(attributes).into());
    }
    let mut docker_event = Map::new();
    docker_event.insert("type".into(), event.kind.as_str().into());
    docker_event.insert("action".into(), event.action.as_str().into());
    docker_event.insert("actor".into(), actor.into());
    if !event.scope.is_empty() {
        docker_event.insert("scope".into(), event.scope.as_str().into());
    }
    doc.insert("docker".into(), json!({ "event": docker_event }));

    common_ecs(&mut doc, &mut ecs_event, options);
    doc.insert("event".into(), ecs_event.into());
    doc.into()
}

/// `key`, or `_attr_<key>` (repeated) until it names no member yet.
fn free_key(doc: &Map<String, Value>, key: &str) -> String {
    let mut key = key.to_owned();
    while doc.contains_key(&key) {
        key.insert_str(0, LOGTAIL_COLLISION_PREFIX);
    }
    key
}

fn logtail_document(event: &Event) -> Value {
    logtail_with(
        event.time_nano,
        &event.kind,
        &event.action,
        &event.actor.id,
        &event.actor.attributes,
    )
}

fn logtail_with(
    time_nano: i64,
    kind: &str,
    action: &str,
    id: &str,
    attributes: &BTreeMap<String, String>,
) -> Value {
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), timestamp(time_nano).into());
    doc.insert("_type_".into(), kind.into());
    doc.insert("_action_".into(), action.into());
    doc.insert("_id_".into(), id.into());
    doc.insert("_time_nano_".into(), time_nano.to_string().into());
    // Plain attributes first, so a real `_attr__id_` keeps its name and the renamed `_id_`
    // attribute moves further out rather than the other way round depending on sort order.
    let (colliding, plain): (Vec<_>, Vec<_>) = attributes
        .iter()
        .filter(|(key, _)| !key.is_empty())
        .partition(|(key, _)| LOGTAIL_FIXED.contains(&key.as_str()));
    for (key, value) in plain.into_iter().chain(colliding) {
        let key = free_key(&doc, key);
        doc.insert(key, value.as_str().into());
    }
    doc.into()
}

/// A marker saying events after `after_nano` and before `before_nano` may be missing.
pub fn gap_document(after_nano: i64, before_nano: i64, options: &DocumentOptions) -> Value {
    let message = format!(
        "Docker events between {} and {} may be missing: the engine's buffer of its last 256 \
         events no longer covered the time the collector was disconnected",
        timestamp(after_nano),
        timestamp(before_nano)
    );
    match options.format {
        Format::Ecs => {
            let mut doc = Map::new();
            doc.insert("@timestamp".into(), timestamp(before_nano).into());
            doc.insert("message".into(), message.into());
            let mut event = Map::new();
            event.insert("kind".into(), "event".into());
            event.insert("action".into(), GAP_ACTION.into());
            event.insert("start".into(), timestamp(after_nano).into());
            event.insert("end".into(), timestamp(before_nano).into());
            common_ecs(&mut doc, &mut event, options);
            doc.insert("event".into(), event.into());
            doc.into()
        }
        Format::Logtail => {
            let attributes = BTreeMap::from([
                ("gap_after_nano".to_owned(), after_nano.to_string()),
                ("gap_before_nano".to_owned(), before_nano.to_string()),
                ("message".to_owned(), message),
            ]);
            logtail_with(before_nano, "collector", GAP_ACTION, "", &attributes)
        }
    }
}

/// The deterministic `_id` of a gap marker: replaying the same reconnect cannot write it twice.
pub fn gap_id(after_nano: i64, before_nano: i64) -> String {
    format!("{GAP_ACTION}-{after_nano}-{before_nano}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::AGENT_TYPE;

    fn options(format: Format, data_stream: bool) -> DocumentOptions {
        DocumentOptions {
            format,
            host_name: "node-1".into(),
            agent: Agent {
                name: "events".into(),
                version: "1.0.0".into(),
                id: "agent-id".into(),
            },
            data_stream: data_stream.then(DataStream::docker_events),
        }
    }

    fn event(kind: &str, action: &str, attributes: &[(&str, &str)]) -> Event {
        let attributes: Map<String, Value> = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let line = json!({
            "Type": kind, "Action": action,
            "Actor": {"ID": "c0ffee", "Attributes": attributes},
            "scope": "local", "time": 1_795_320_660, "timeNano": 1_795_320_660_123_456_789_i64,
        });
        Event::parse(line.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn formats_parse_by_name_and_errors_list_the_accepted_ones() {
        assert_eq!("ecs".parse::<Format>().unwrap(), Format::Ecs);
        assert_eq!(" Logtail ".parse::<Format>().unwrap(), Format::Logtail);
        assert_eq!(Format::default(), Format::Ecs);
        let message = "json".parse::<Format>().unwrap_err().to_string();
        assert_eq!(
            message,
            r#"events format "json" is not known (use "ecs" or "logtail")"#
        );
    }

    #[test]
    fn a_container_die_in_ecs() {
        let die = event(
            "container",
            "die",
            &[
                ("name", "web-1"),
                ("image", "nginx:1.27"),
                ("exitCode", "137"),
                ("execDuration", "12"),
                ("com.docker.compose.project", "shop"),
            ],
        );
        let doc = event_document(&die, &options(Format::Ecs, true));
        assert_eq!(
            doc,
            json!({
                "@timestamp": "2026-11-22T04:11:00.123456789Z",
                "event": {
                    "kind": "event", "action": "die", "category": ["process"], "type": ["end"],
                    "outcome": "failure", "dataset": "docker.events",
                },
                "container": {
                    "id": "c0ffee", "name": "web-1", "image": {"name": "nginx", "tag": "1.27"},
                    "labels": {"com_docker_compose_project": "shop"},
                },
                "process": {"exit_code": 137},
                "docker": {"event": {
                    "type": "container", "action": "die", "scope": "local",
                    "actor": {"id": "c0ffee", "attributes": {
                        "name": "web-1", "image": "nginx:1.27", "exitCode": "137",
                        "execDuration": "12", "com_docker_compose_project": "shop",
                    }},
                }},
                "host": {"name": "node-1"},
                "agent": {"type": AGENT_TYPE, "name": "events", "version": "1.0.0", "id": "agent-id"},
                "ecs": {"version": ECS_VERSION},
                "data_stream": {"type": "logs", "dataset": "docker.events", "namespace": "default"},
            })
        );
    }

    #[test]
    fn die_outcome_follows_the_exit_code() {
        let opts = options(Format::Ecs, false);
        let clean = event_document(&event("container", "die", &[("exitCode", "0")]), &opts);
        assert_eq!(clean["event"]["outcome"], "success");
        assert_eq!(clean["process"]["exit_code"], 0);
        // A label named exitCode that is no number: no outcome, no exit code, nothing invented.
        let hidden = event_document(&event("container", "die", &[("exitCode", "oops")]), &opts);
        assert!(hidden["event"].get("outcome").is_none());
        assert!(hidden.get("process").is_none());
        // Only die reports exit codes.
        let kill = event_document(&event("container", "kill", &[("exitCode", "1")]), &opts);
        assert!(kill["event"].get("outcome").is_none());
        assert!(kill.get("process").is_none());
        assert!(clean.get("data_stream").is_none());
        assert!(clean["event"].get("dataset").is_none());
    }

    #[test]
    fn the_ecs_category_table() {
        let opts = options(Format::Ecs, false);
        for (kind, action, expected) in [
            ("container", "create", Some(("process", "creation"))),
            ("container", "destroy", Some(("process", "deletion"))),
            ("container", "start", Some(("process", "start"))),
            ("container", "restart", Some(("process", "start"))),
            ("container", "unpause", Some(("process", "start"))),
            ("container", "die", Some(("process", "end"))),
            ("container", "stop", Some(("process", "end"))),
            ("container", "kill", Some(("process", "end"))),
            ("container", "oom", Some(("process", "end"))),
            ("container", "pause", Some(("process", "end"))),
            ("image", "pull", Some(("package", "installation"))),
            ("image", "delete", Some(("package", "deletion"))),
            ("network", "connect", Some(("network", "connection"))),
            ("network", "disconnect", Some(("network", "end"))),
            ("container", "health_status: healthy", None),
            ("image", "tag", None),
            ("volume", "create", None),
            ("daemon", "reload", None),
        ] {
            let doc = event_document(&event(kind, action, &[]), &opts);
            let got = doc["event"]
                .get("category")
                .map(|category| (category.clone(), doc["event"]["type"].clone()));
            let want = expected.map(|(c, t)| (json!([c]), json!([t])));
            assert_eq!(got, want, "{kind} {action}");
        }
    }

    #[test]
    fn suffixed_actions_and_non_container_events() {
        let opts = options(Format::Ecs, false);
        let health = event_document(
            &event("container", "health_status: healthy", &[("name", "web")]),
            &opts,
        );
        assert_eq!(health["event"]["action"], "health_status");
        assert_eq!(
            health["docker"]["event"]["action"],
            "health_status: healthy"
        );
        let pull = event_document(&event("image", "pull", &[("name", "nginx")]), &opts);
        assert!(pull.get("container").is_none());
        assert_eq!(
            pull["docker"]["event"]["actor"]["attributes"]["name"],
            "nginx"
        );
        let bare = event_document(&event("daemon", "reload", &[]), &opts);
        assert!(bare["docker"]["event"]["actor"].get("attributes").is_none());
    }

    #[test]
    fn label_keys_are_dedotted_like_log_labels() {
        let doc = event_document(
            &event(
                "container",
                "start",
                &[
                    ("a.b", "dotted"),
                    ("a_b", "plain"),
                    ("x.y", "1"),
                    ("x.y.z", "2"),
                    ("", "e"),
                ],
            ),
            &options(Format::Ecs, false),
        );
        let expected = json!({"a_b": "plain", "x_y": "1", "x_y_z": "2"});
        assert_eq!(doc["container"]["labels"], expected);
        assert_eq!(doc["docker"]["event"]["actor"]["attributes"], expected);
    }

    #[test]
    fn logtail_keeps_its_fixed_keys_and_copies_attributes_flat() {
        let die = event(
            "container",
            "die",
            &[
                ("exitCode", "1"),
                ("io.kubernetes.pod.name", "web-0"),
                ("_id_", "label"),
                ("_type_", "label type"),
                ("@timestamp", "label time"),
                ("_attr__type_", "real"),
            ],
        );
        let doc = event_document(&die, &options(Format::Logtail, true));
        assert_eq!(
            doc,
            json!({
                "@timestamp": "2026-11-22T04:11:00.123456789Z",
                "_type_": "container",
                "_action_": "die",
                "_id_": "c0ffee",
                "_time_nano_": "1795320660123456789",
                "exitCode": "1",
                "io.kubernetes.pod.name": "web-0",
                "_attr__id_": "label",
                "_attr__attr__type_": "label type",
                "_attr__type_": "real",
                "_attr_@timestamp": "label time",
            })
        );
    }

    #[test]
    fn gap_markers_in_both_formats() {
        let after = 1_795_320_660_000_000_001;
        let before = 1_795_320_670_000_000_002;
        let ecs = gap_document(after, before, &options(Format::Ecs, true));
        assert_eq!(ecs["@timestamp"], "2026-11-22T04:11:10.000000002Z");
        assert_eq!(ecs["event"]["kind"], "event");
        assert_eq!(ecs["event"]["action"], GAP_ACTION);
        assert_eq!(ecs["event"]["start"], "2026-11-22T04:11:00.000000001Z");
        assert_eq!(ecs["event"]["end"], "2026-11-22T04:11:10.000000002Z");
        assert_eq!(ecs["event"]["dataset"], "docker.events");
        assert_eq!(ecs["host"]["name"], "node-1");
        assert!(ecs["message"].as_str().unwrap().contains("may be missing"));
        let logtail = gap_document(after, before, &options(Format::Logtail, false));
        assert_eq!(logtail["_type_"], "collector");
        assert_eq!(logtail["_action_"], GAP_ACTION);
        assert_eq!(logtail["_time_nano_"], before.to_string());
        assert_eq!(logtail["gap_after_nano"], after.to_string());
        assert_eq!(gap_id(after, before), gap_id(after, before));
        assert_ne!(gap_id(after, before), gap_id(after, before + 1));
    }
}
