//! Static tags and fields every document of a container carries, so a host or a container can
//! mark its documents without an ingest pipeline (elastic/beats#36421).
//!
//! Options (each also a host-wide `ES_*` setting, see `options`):
//! - `tags=a,b`: a comma list into ECS `tags` (an array of keywords), in the order given,
//!   duplicates and empty items left out.
//! - `fields=env=prod,team=core`: `key=value` pairs at the document's root, and
//!   `fields.<key>=value`, one log-opt per field (a value may then hold commas). A key with dots
//!   is a path: `service.name=api` becomes `{"service":{"name":"api"}}`. Values are strings. A
//!   `fields.<key>` log-opt wins over the same key in `fields`.
//!
//! Refused, with an error naming the key: a key under a field the plugin writes itself
//! ([`OWNED`]: `message`, `container.*`, `tags`...), since the document would say two things at
//! once; an empty key or path segment; and a key that is both a value and an object
//! (`a=1,a.b=2`), which Elasticsearch would refuse for every document.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Top-level fields the plugin writes into log documents (`document.rs`); static fields may not
/// go under them.
pub const OWNED: [&str; 12] = [
    "@timestamp",
    "message",
    "stream",
    "tags",
    "container",
    "host",
    "agent",
    "ecs",
    "data_stream",
    "event",
    // Docker's tag and the env asked for (`attributes.rs`).
    "docker",
    "process",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Statics {
    tags: Vec<String>,
    /// Dotted key -> value.
    fields: BTreeMap<String, String>,
}

impl Statics {
    /// `tags` and `fields` are the options' texts; `dotted` the `fields.<key>` log-opts, as
    /// (`<key>`, value).
    pub fn parse<'a>(
        tags: &str,
        fields: &str,
        dotted: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Statics, FieldError> {
        let mut out = Statics::default();
        for tag in tags.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !out.tags.iter().any(|t| t == tag) {
                out.tags.push(tag.to_owned());
            }
        }
        for pair in fields.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(bad_field(
                    pair,
                    "is not key=value (fields=env=prod,team=core)",
                ));
            };
            out.fields
                .insert(key.trim().to_owned(), value.trim().to_owned());
        }
        for (key, value) in dotted {
            out.fields.insert(key.trim().to_owned(), value.to_owned());
        }
        out.check()?;
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.fields.is_empty()
    }

    fn check(&self) -> Result<(), FieldError> {
        for key in self.fields.keys() {
            if key.split('.').any(str::is_empty) {
                return Err(bad_field(key, "has an empty name or path segment"));
            }
            let root = key.split('.').next().unwrap_or(key);
            if OWNED.contains(&root) {
                return Err(bad_field(
                    key,
                    "is a field the plugin writes itself (@timestamp, message, stream, tags, \
                     container, host, agent, ecs, data_stream, event, docker, process); choose \
                     another name",
                ));
            }
            let prefix = format!("{key}.");
            if self.fields.keys().any(|other| other.starts_with(&prefix)) {
                return Err(bad_field(
                    key,
                    "is both a value and an object of other fields; Elasticsearch would refuse \
                     every document",
                ));
            }
        }
        Ok(())
    }

    /// Adds the tags and fields to a document's top-level members.
    pub fn insert_into(&self, doc: &mut Map<String, Value>) {
        if !self.tags.is_empty() {
            doc.insert(
                "tags".into(),
                Value::Array(self.tags.iter().cloned().map(Value::from).collect()),
            );
        }
        for (key, value) in &self.fields {
            let mut segments = key.split('.').peekable();
            let mut object = &mut *doc;
            while let Some(segment) = segments.next() {
                if segments.peek().is_none() {
                    object.insert(segment.to_owned(), Value::from(value.as_str()));
                    break;
                }
                let entry = object
                    .entry(segment.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                // `check` refused a key that is both a value and an object, so this is one.
                let Value::Object(next) = entry else {
                    break;
                };
                object = next;
            }
        }
    }
}

/// A `fields` key that cannot be added, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("log-opt fields: {key:?} {why}")]
pub struct FieldError {
    pub key: String,
    pub why: &'static str,
}

fn bad_field(key: &str, why: &'static str) -> FieldError {
    FieldError {
        key: key.to_owned(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(tags: &str, fields: &str, dotted: &[(&str, &str)]) -> Result<Statics, FieldError> {
        Statics::parse(tags, fields, dotted.iter().copied())
    }

    fn doc(statics: &Statics) -> Value {
        let mut doc = Map::new();
        statics.insert_into(&mut doc);
        Value::Object(doc)
    }

    #[test]
    fn tags_and_fields_land_at_the_root_with_dotted_keys_nested() {
        let statics = parse(
            " prod, eu ,,prod",
            "env=prod, service.name = api,service.version=1.2",
            &[("team", "core, platform"), ("env", "staging")],
        )
        .unwrap();
        assert_eq!(
            doc(&statics),
            json!({
                "tags": ["prod", "eu"],
                // A `fields.<key>` log-opt wins over `fields`, and keeps its commas.
                "env": "staging",
                "team": "core, platform",
                "service": {"name": "api", "version": "1.2"},
            })
        );
    }

    #[test]
    fn nothing_given_adds_nothing() {
        let statics = parse("", "", &[]).unwrap();
        assert!(statics.is_empty());
        assert_eq!(doc(&statics), json!({}));
    }

    #[test]
    fn keys_the_plugin_owns_or_that_clash_are_refused_by_name() {
        for (fields, dotted, named) in [
            ("message=x", vec![], "message"),
            ("container.name=x", vec![], "container.name"),
            ("", vec![("tags", "x")], "tags"),
            (
                "",
                vec![("data_stream.dataset", "x")],
                "data_stream.dataset",
            ),
            ("a=1,a.b=2", vec![], "\"a\""),
            ("a..b=1", vec![], "a..b"),
            ("=1", vec![], "\"\""),
            ("novalue", vec![], "novalue"),
        ] {
            let err = parse("", fields, &dotted).unwrap_err().to_string();
            assert!(
                err.contains("log-opt fields") && err.contains(named),
                "{fields} {dotted:?}: {err}"
            );
        }
        // Only roots are owned: a field named like a nested one of ours elsewhere is fine.
        assert!(parse("", "service.name=api,labels.env=prod,log.origin=x", &[]).is_ok());
    }
}
