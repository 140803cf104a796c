//! Docker's standard log-opts of shipping drivers, as the built-in ones (fluentd, gelf, splunk,
//! syslog, journald...) read them, mapped onto the document the ECS way:
//!
//! | log-opt | Docker's meaning | in the document |
//! |---|---|---|
//! | `tag` | a template over the container, default `{{.ID}}` | `docker.tag` (ECS has no field for it; `docker.*` is Beats' namespace for Docker's own metadata) |
//! | `labels`, `labels-regex` | the labels named (comma list) or whose key matches (unanchored, RE2 syntax) | `container.labels.*` (dedotted). Neither set: every label, as the Elastic Logging Plugin does |
//! | `env`, `env-regex` | the environment variables named or whose name matches | ECS `process.env_vars`, `["NAME=value", ...]` sorted by name. Neither set: none (they carry secrets) |
//!
//! The tag template takes exactly the placeholders Docker documents: `{{.ID}}` (12 characters),
//! `{{.FullID}}`, `{{.Name}}` (no leading `/`), `{{.ImageID}}` (12 hex digits of the image id,
//! as current engines print it; 20.10 kept the `sha256:` prefix in its 12), `{{.ImageFullID}}`,
//! `{{.ImageName}}`, `{{.DaemonName}}`, with spaces allowed inside the braces. Anything else
//! between `{{` and `}}` (Go template functions, pipelines) is refused with the list, so
//! `docker run` fails instead of shipping a literal `{{...}}`. An empty `tag` means the default,
//! as in Docker.
//!
//! Variables that were not asked for never leave [`Attributes::selected_env`]: the plugin keeps
//! only the selected ones in its run table, and no other part of it sees the environment.

use std::collections::HashMap;

use regex::Regex;

use crate::protocol::Info;

/// What the five options decide for a container's documents. Part of the destination's key
/// (`EsOptions`), like every option, so it compares and hashes by what was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    tag: Vec<Piece>,
    labels: Selection,
    env: Selection,
}

impl Default for Attributes {
    /// No option set: Docker's default tag, every label, no variable.
    fn default() -> Self {
        Attributes {
            tag: vec![Piece::Field(Field::Id)],
            labels: Selection::default(),
            env: Selection::default(),
        }
    }
}

/// Names given by a comma list and/or a pattern; empty selects nothing.
#[derive(Debug, Clone, Default)]
struct Selection {
    names: Vec<String>,
    pattern: Option<Regex>,
}

impl Selection {
    fn key(&self) -> (&[String], Option<&str>) {
        (&self.names, self.pattern.as_ref().map(Regex::as_str))
    }
}

impl PartialEq for Selection {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Selection {}

impl std::hash::Hash for Selection {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Piece {
    Text(String),
    Field(Field),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Id,
    FullId,
    Name,
    ImageId,
    ImageFullId,
    ImageName,
    DaemonName,
}

const FIELDS: [(&str, Field); 7] = [
    ("ID", Field::Id),
    ("FullID", Field::FullId),
    ("Name", Field::Name),
    ("ImageID", Field::ImageId),
    ("ImageFullID", Field::ImageFullId),
    ("ImageName", Field::ImageName),
    ("DaemonName", Field::DaemonName),
];

/// Docker's default tag template.
const DEFAULT_TAG: &str = "{{.ID}}";

/// A `tag`, `labels-regex` or `env-regex` that cannot be used; the message names the option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttributeError {
    #[error("log-opt {option}: {pattern:?} is not a valid regular expression (RE2 syntax, as Docker takes it): {reason}")]
    Regex {
        option: &'static str,
        pattern: String,
        /// The regex crate's reason, its first line.
        reason: String,
    },
    /// `template` is the first 100 characters of the option.
    #[error("log-opt tag: {template:?} {why}; it takes {TAG_ACCEPTS}")]
    Tag { template: String, why: String },
}

/// The tag's accepted form, for error messages.
const TAG_ACCEPTS: &str = "text with the placeholders {{.ID}}, {{.FullID}}, {{.Name}}, \
    {{.ImageID}}, {{.ImageFullID}}, {{.ImageName}}, {{.DaemonName}} (no other template syntax)";

impl Attributes {
    /// Reads `tag`, `labels`, `labels-regex`, `env` and `env-regex` from a container's log-opts
    /// (daemon-wide defaults from daemon.json arrive in the same map).
    pub fn parse(config: &HashMap<String, String>) -> Result<Attributes, AttributeError> {
        let get = |name: &str| config.get(name).map(|v| v.trim()).unwrap_or_default();
        let tag = match get("tag") {
            "" => DEFAULT_TAG,
            template => template,
        };
        Ok(Attributes {
            tag: parse_tag(tag)?,
            labels: Selection::parse(get("labels"), "labels-regex", get("labels-regex"))?,
            env: Selection::parse(get("env"), "env-regex", get("env-regex"))?,
        })
    }

    /// The tag for this container (`docker.tag`).
    pub fn tag(&self, info: &Info) -> String {
        let mut out = String::new();
        for piece in &self.tag {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => out.push_str(&field_value(*field, info)),
            }
        }
        out
    }

    /// The labels documents carry: all of them when neither `labels` nor `labels-regex` is set.
    pub fn selected_labels<'a>(
        &'a self,
        labels: &'a HashMap<String, String>,
    ) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        let all = self.labels.is_empty();
        labels
            .iter()
            .filter(move |(key, _)| all || self.labels.selects(key))
    }

    /// The `NAME=value` entries of the engine's `ContainerEnv` that `env`/`env-regex` select,
    /// sorted by name; a name set twice keeps its last value, as a process sees it.
    pub fn selected_env(&self, env: &[String]) -> Vec<String> {
        if self.env.is_empty() {
            return Vec::new();
        }
        let mut chosen: std::collections::BTreeMap<&str, &str> = Default::default();
        for entry in env {
            if let Some((name, value)) = entry.split_once('=') {
                if self.env.selects(name) {
                    chosen.insert(name, value);
                }
            }
        }
        chosen
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect()
    }
}

impl Selection {
    fn parse(
        names: &str,
        regex_option: &'static str,
        pattern: &str,
    ) -> Result<Self, AttributeError> {
        let pattern = match pattern {
            "" => None,
            pattern => Some(Regex::new(pattern).map_err(|error| AttributeError::Regex {
                option: regex_option,
                pattern: pattern.to_owned(),
                reason: first_line(&error.to_string()).to_owned(),
            })?),
        };
        Ok(Selection {
            names: names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
            pattern,
        })
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.pattern.is_none()
    }

    fn selects(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
            || self.pattern.as_ref().is_some_and(|p| p.is_match(name))
    }
}

/// The regex crate's errors draw the pattern over several lines; a log-opt error is one line.
fn first_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| text.lines().next().unwrap_or(text))
}

fn parse_tag(template: &str) -> Result<Vec<Piece>, AttributeError> {
    let refuse = |why: String| AttributeError::Tag {
        template: template.chars().take(100).collect(),
        why,
    };
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(refuse("has a {{ without its }}".into()));
        };
        let inner = after[..close].trim();
        let field = inner
            .strip_prefix('.')
            .and_then(|name| FIELDS.iter().find(|(n, _)| *n == name))
            .map(|(_, field)| *field)
            .ok_or_else(|| refuse(format!("holds {{{{{inner}}}}}")))?;
        pieces.push(Piece::Field(field));
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return Err(refuse("has a }} without its {{".into()));
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

fn field_value(field: Field, info: &Info) -> String {
    let short = |id: &str| id.chars().take(12).collect::<String>();
    match field {
        Field::Id => short(&info.container_id),
        Field::FullId => info.container_id.clone(),
        Field::Name => info
            .container_name
            .strip_prefix('/')
            .unwrap_or(&info.container_name)
            .to_owned(),
        // `sha256:<hex>`: the short form is the hex's first 12 digits (stringid.TruncateID).
        Field::ImageId => short(
            info.container_image_id
                .split_once(':')
                .map_or(info.container_image_id.as_str(), |(_, hex)| hex),
        ),
        Field::ImageFullId => info.container_image_id.clone(),
        Field::ImageName => info.container_image_name.clone(),
        Field::DaemonName => info.daemon_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn info() -> Info {
        Info {
            container_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            container_name: "/web-1".into(),
            container_image_id:
                "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210".into(),
            container_image_name: "registry:5000/team/web:1.2".into(),
            daemon_name: "docker".into(),
            container_labels: [("team", "core"), ("com.example.tier", "front"), ("x", "y")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            container_env: vec![
                "DEPLOY=blue".into(),
                "APP_MODE=fast".into(),
                "APP_SECRET=hunter2".into(),
                "PATH=/bin".into(),
                "DEPLOY=green".into(),
            ],
            ..Info::default()
        }
    }

    fn tag(template: &str) -> Result<String, AttributeError> {
        Ok(Attributes::parse(&config(&[("tag", template)]))?.tag(&info()))
    }

    /// Each placeholder Docker documents, rendered as Docker renders it.
    #[test]
    fn the_tag_renders_every_placeholder_docker_documents() {
        assert_eq!(tag("{{.ID}}").unwrap(), "0123456789ab");
        assert_eq!(
            tag("").unwrap(),
            "0123456789ab",
            "empty is Docker's default"
        );
        assert_eq!(tag("{{.FullID}}").unwrap(), info().container_id);
        assert_eq!(tag("{{.Name}}").unwrap(), "web-1");
        assert_eq!(tag("{{.ImageID}}").unwrap(), "fedcba987654");
        assert_eq!(tag("{{.ImageFullID}}").unwrap(), info().container_image_id);
        assert_eq!(tag("{{.ImageName}}").unwrap(), "registry:5000/team/web:1.2");
        assert_eq!(tag("{{.DaemonName}}").unwrap(), "docker");
        assert_eq!(
            tag("app/{{ .Name }}/{{.ID}} x").unwrap(),
            "app/web-1/0123456789ab x"
        );
        assert_eq!(tag("plain").unwrap(), "plain");
    }

    /// Template syntax beyond the placeholders is refused with the accepted list, never shipped
    /// literally.
    #[test]
    fn a_tag_with_other_template_syntax_is_refused_with_the_placeholders() {
        for bad in [
            "{{.Bogus}}",
            "{{.Name | upper}}",
            "{{ printf \"%s\" .ID }}",
            "{{.ID",
            "x}}",
            "{{}}",
            "{{ID}}",
        ] {
            let error = tag(bad).unwrap_err().to_string();
            assert!(error.starts_with("log-opt tag: "), "{bad}: {error}");
            assert!(error.contains("{{.ImageName}}"), "{bad}: {error}");
        }
    }

    #[test]
    fn all_labels_unless_labels_or_labels_regex_choose() {
        let pick = |pairs: &[(&str, &str)]| {
            let a = Attributes::parse(&config(pairs)).unwrap();
            let i = info();
            let mut keys: Vec<String> = a
                .selected_labels(&i.container_labels)
                .map(|(k, _)| k.clone())
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(pick(&[]), ["com.example.tier", "team", "x"]);
        assert_eq!(pick(&[("labels", "team, missing")]), ["team"]);
        assert_eq!(
            pick(&[("labels-regex", "^com\\.example\\.")]),
            ["com.example.tier"]
        );
        // Docker's match is unanchored; both options add up.
        assert_eq!(
            pick(&[("labels", "x"), ("labels-regex", "ea")]),
            ["team", "x"]
        );
    }

    /// The environment carries secrets: nothing unless asked for, and only what was asked for.
    #[test]
    fn env_is_shipped_only_as_named_or_matched() {
        let pick = |pairs: &[(&str, &str)]| {
            Attributes::parse(&config(pairs))
                .unwrap()
                .selected_env(&info().container_env)
        };
        assert!(pick(&[]).is_empty());
        assert_eq!(pick(&[("env", "DEPLOY,NOPE")]), ["DEPLOY=green"]);
        assert_eq!(pick(&[("env-regex", "^APP_M")]), ["APP_MODE=fast"]);
        assert_eq!(
            pick(&[("env", "PATH"), ("env-regex", "^DEP")]),
            ["DEPLOY=green", "PATH=/bin"]
        );
    }

    #[test]
    fn a_bad_regex_is_refused_naming_its_option() {
        for option in ["labels-regex", "env-regex"] {
            let error = Attributes::parse(&config(&[(option, "a(")]))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("log-opt {option}: \"a(\"")),
                "{error}"
            );
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
