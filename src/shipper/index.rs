//! The `index` log-opt: where a container's documents go.
//!
//! The text is an index or data stream name that may carry placeholders in the Beats
//! format-string syntax users of the Elastic Logging Plugin already write:
//!
//! | placeholder | replaced by |
//! |---|---|
//! | `%{[container.name]}` | the container's name, without the engine's leading `/` |
//! | `%{[container.id]}` | the 64-digit container id |
//! | `%{[container.image.name]}` | the image as the user typed it (`registry:5000/app:1.2`) |
//! | `%{[container.labels.KEY]}` | the value of label KEY; a container without it is refused |
//! | `%{[agent.version]}` | the plugin's version |
//! | `%{+yyyy.MM.dd}`, `%{+yyyy.MM}`, `%{+yyyy}` | the UTC date of each entry's time |
//!
//! Three stages, each catching what it can as early as it can:
//! 1. [`IndexTemplate::parse`] at StartLogging: unknown or unclosed placeholders and static text
//!    that can never be part of an index name are refused, so `docker run` shows the mistake.
//! 2. [`IndexTemplate::resolve`] once per container: container values are substituted. They come
//!    from whoever built the image or started the container, so they are lowercased and every
//!    character an index name cannot hold becomes `_`: a label can never add a `/`, `,`, `*`,
//!    `#`, `?` or space to the target (no path tricks, no multi-target `a,b`, no wildcards). The
//!    whole name is then checked against Elasticsearch's rules.
//! 3. [`ResolvedIndex::name_for`] per entry: only the date is left, and dates are digits and dots,
//!    so every name it produces is valid.
//!
//! Elasticsearch's rules for index names (and data stream names, which follow them): lowercase;
//! none of `\ / * ? " < > | , # :` or space (`:` separates a remote cluster since 7.0); not
//! starting with `-`, `_` or `+`; not `.` or `..`; at most 255 bytes. We also refuse (in static
//! text) or replace (in values) control characters and other whitespace, which Elasticsearch
//! would accept but which make a name nobody can type.

use std::borrow::Cow;
use std::fmt;

use crate::protocol::Info;

/// Elasticsearch's `MAX_INDEX_NAME_BYTES`.
const MAX_NAME_BYTES: usize = 255;

/// The default target: a data stream the built-in `logs-*-*` template of Elasticsearch 8 and 9
/// creates with ILM, one for all days (the Elastic plugin's daily indices made a new data stream
/// every day).
const DEFAULT_TARGET: &str = "logs-docker-default";

/// The data stream types of Elastic's naming scheme (`<type>-<dataset>-<namespace>`).
const DATA_STREAM_TYPES: [&str; 4] = ["logs", "metrics", "traces", "synthetics"];

/// What the error messages list as accepted, so a user can fix the log-opt from the message.
const ACCEPTED: &str = "%{[container.name]}, %{[container.id]}, %{[container.image.name]}, \
    %{[container.labels.KEY]}, %{[agent.version]}, %{+yyyy.MM.dd}, %{+yyyy.MM}, %{+yyyy}";

/// Error messages quote text from outside; this bounds how much of it they repeat.
const SHOWN_CHARS: usize = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error(
        "log-opt index: {text:?} has an unclosed %{{ at byte {at} \
        (placeholders are written %{{[container.name]}})"
    )]
    Unclosed { text: String, at: usize },
    #[error("log-opt index: {text:?} has an unknown placeholder %{{{placeholder}}} (accepted: {ACCEPTED})")]
    UnknownPlaceholder { text: String, placeholder: String },
    #[error(
        "log-opt index: {text:?} holds a Go template ({{{{...}}}}), which this driver does not \
        expand (accepted placeholders: {ACCEPTED})"
    )]
    GoTemplate { text: String },
    #[error("log-opt index: {text:?} is not a valid index name: {problem}")]
    InvalidName { text: String, problem: NameProblem },
    #[error("log-opt index: {text:?} gives {name:?} for this container, which is not a valid index name: {problem}")]
    InvalidResolved {
        text: String,
        name: String,
        problem: NameProblem,
    },
    #[error("log-opt index: {text:?} uses %{{[container.labels.{key}]}} but the container has no label {key:?}")]
    MissingLabel { text: String, key: String },
}

/// Why a name is not a valid index name, in the words of Elasticsearch's own checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    Uppercase(char),
    Forbidden(char),
    BadStart(char),
    Dots,
    TooLong(usize),
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::Uppercase(ch) => write!(f, "{ch:?} is uppercase (index names are lowercase)"),
            Self::Forbidden(ch) => write!(
                f,
                "{ch:?} cannot be in an index name (none of \\ / * ? \" < > | , # : \
                or whitespace or control characters)"
            ),
            Self::BadStart(ch) => write!(f, "it starts with {ch:?} (not allowed: -, _, +)"),
            Self::Dots => f.write_str("\".\" and \"..\" are not index names"),
            Self::TooLong(len) => write!(f, "it is {len} bytes long (at most {MAX_NAME_BYTES})"),
        }
    }
}

/// A parsed `index` log-opt. Part of a destination key, hence `Hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Text(String),
    Field(Field),
    Date(DateFormat),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Field {
    ContainerName,
    ContainerId,
    ImageName,
    Label(String),
    AgentVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DateFormat {
    Year,
    YearMonth,
    YearMonthDay,
}

impl DateFormat {
    fn placeholder(self) -> &'static str {
        match self {
            Self::Year => "%{+yyyy}",
            Self::YearMonth => "%{+yyyy.MM}",
            Self::YearMonthDay => "%{+yyyy.MM.dd}",
        }
    }

    /// A stand-in of the same length as every date it produces: nanosecond times span the
    /// years 1677 to 2262, so the year always has four digits.
    fn sample(self) -> &'static str {
        match self {
            Self::Year => "0000",
            Self::YearMonth => "0000.00",
            Self::YearMonthDay => "0000.00.00",
        }
    }

    fn write(self, time_nano: i64, out: &mut String) {
        // Every i64 nanosecond count lies within time's +-9999-year range, so the fallback is
        // never taken; it only spares a panic path.
        let utc = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_nano))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let (year, month, day) = (utc.year(), u8::from(utc.month()), utc.day());
        let written = match self {
            Self::Year => fmt::write(out, format_args!("{year:04}")),
            Self::YearMonth => fmt::write(out, format_args!("{year:04}.{month:02}")),
            Self::YearMonthDay => fmt::write(out, format_args!("{year:04}.{month:02}.{day:02}")),
        };
        // Writing into a String cannot fail.
        debug_assert!(written.is_ok());
    }
}

impl IndexTemplate {
    /// Validates at StartLogging: known placeholders only, static parts valid in an index name.
    pub fn parse(text: &str) -> Result<IndexTemplate, IndexError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut consumed = 0;
        while let Some(start) = rest.find("%{") {
            let inner_start = start + 2;
            let Some(len) = rest[inner_start..].find('}') else {
                return Err(IndexError::Unclosed {
                    text: shown(text),
                    at: consumed + start,
                });
            };
            let inner = &rest[inner_start..inner_start + len];
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            parts.push(
                parse_placeholder(inner).ok_or_else(|| IndexError::UnknownPlaceholder {
                    text: shown(text),
                    placeholder: shown(inner),
                })?,
            );
            consumed += inner_start + len + 1;
            rest = &rest[inner_start + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }

        let invalid = |problem| IndexError::InvalidName {
            text: shown(text),
            problem,
        };
        if parts.is_empty() {
            return Err(invalid(NameProblem::Empty));
        }
        for part in &parts {
            if let Part::Text(static_text) = part {
                // `{{ .Name }}` is what the engine's `tag` option takes; Elasticsearch would take
                // `{{.name}}` as a literal name, so the user would never get what was meant.
                if static_text.contains("{{") {
                    return Err(IndexError::GoTemplate { text: shown(text) });
                }
                static_text
                    .chars()
                    .try_for_each(check_char)
                    .map_err(invalid)?;
            }
        }
        if let Some(Part::Text(first)) = parts.first() {
            check_start(first).map_err(invalid)?;
        }
        // Values may be empty, so the static text and the dates are the least a name can be.
        let least: usize = parts
            .iter()
            .map(|part| match part {
                Part::Text(static_text) => static_text.len(),
                Part::Field(_) => 0,
                Part::Date(format) => format.sample().len(),
            })
            .sum();
        if least > MAX_NAME_BYTES {
            return Err(invalid(NameProblem::TooLong(least)));
        }
        if let [Part::Text(name)] = parts.as_slice() {
            check_whole(name).map_err(invalid)?;
        }
        Ok(IndexTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// `logs-docker-default`, the default target (a data stream).
    pub fn default_target() -> IndexTemplate {
        IndexTemplate {
            text: DEFAULT_TARGET.to_owned(),
            parts: vec![Part::Text(DEFAULT_TARGET.to_owned())],
        }
    }

    /// The log-opt as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Substitutes the container placeholders and checks the result is a valid index name
    /// (lowercase, no `\ / * ? " < > | , # :` or space, not starting with - _ +, not . or ..,
    /// at most 255 bytes). Called once per container, at StartLogging.
    pub fn resolve(&self, info: &Info, agent_version: &str) -> Result<ResolvedIndex, IndexError> {
        let mut parts: Vec<Resolved> = Vec::new();
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(static_text) => text.push_str(static_text),
                Part::Field(field) => {
                    let value = match field {
                        Field::ContainerName => info
                            .container_name
                            .strip_prefix('/')
                            .unwrap_or(&info.container_name),
                        Field::ContainerId => &info.container_id,
                        Field::ImageName => &info.container_image_name,
                        Field::AgentVersion => agent_version,
                        Field::Label(key) => info.container_labels.get(key).ok_or_else(|| {
                            IndexError::MissingLabel {
                                text: shown(&self.text),
                                key: shown(key),
                            }
                        })?,
                    };
                    push_sanitized(&mut text, value);
                }
                Part::Date(format) => {
                    if !text.is_empty() {
                        parts.push(Resolved::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Resolved::Date(*format));
                }
            }
        }
        if !text.is_empty() {
            parts.push(Resolved::Text(text));
        }
        let resolved = ResolvedIndex { parts };

        // Dates are checked through a stand-in of the same length: digits and dots, which can
        // neither start a name badly nor make it "." or "..".
        let sample: String = resolved
            .parts
            .iter()
            .map(|part| match part {
                Resolved::Text(text) => text.as_str(),
                Resolved::Date(format) => format.sample(),
            })
            .collect();
        let checked = check_start(&sample).and_then(|()| check_whole(&sample));
        match checked {
            Ok(()) => Ok(resolved),
            Err(problem) => Err(IndexError::InvalidResolved {
                text: shown(&self.text),
                name: shown(&resolved.to_string()),
                problem,
            }),
        }
    }
}

/// One container's target: its values filled in, dates left for each entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIndex {
    /// Never empty; adjacent texts are merged, so an undated name is a single `Text`.
    parts: Vec<Resolved>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    Text(String),
    Date(DateFormat),
}

impl ResolvedIndex {
    /// The index for an entry with this time: date placeholders (`%{+yyyy.MM.dd}`, also
    /// `+yyyy.MM`, `+yyyy`, in UTC from the entry's time) filled in; borrowed when the name has
    /// none, so the common case costs nothing per entry.
    pub fn name_for(&self, time_nano: i64) -> Cow<'_, str> {
        if let [Resolved::Text(name)] = self.parts.as_slice() {
            return Cow::Borrowed(name);
        }
        let mut name = String::with_capacity(MAX_NAME_BYTES);
        for part in &self.parts {
            match part {
                Resolved::Text(text) => name.push_str(text),
                Resolved::Date(format) => format.write(time_nano, &mut name),
            }
        }
        Cow::Owned(name)
    }

    /// Some((type, dataset, namespace)) when the name is a data stream name of Elastic's scheme:
    /// exactly `<type>-<dataset>-<namespace>` with type one of logs/metrics/traces/synthetics,
    /// dataset and namespace non-empty and without `-`, and no date placeholder (a dated name
    /// would make a new data stream every day). Documents for such a target carry the
    /// `data_stream.*` fields, which must match the name.
    pub fn data_stream(&self) -> Option<(&str, &str, &str)> {
        let [Resolved::Text(name)] = self.parts.as_slice() else {
            return None;
        };
        let mut pieces = name.split('-');
        let (kind, dataset, namespace) = (pieces.next()?, pieces.next()?, pieces.next()?);
        let conforms = pieces.next().is_none()
            && DATA_STREAM_TYPES.contains(&kind)
            && !dataset.is_empty()
            && !namespace.is_empty();
        conforms.then_some((kind, dataset, namespace))
    }
}

/// The name with its date placeholders as written, e.g. `logs-web-%{+yyyy.MM.dd}`, for logs.
impl fmt::Display for ResolvedIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Resolved::Text(text) => f.write_str(text)?,
                Resolved::Date(format) => f.write_str(format.placeholder())?,
            }
        }
        Ok(())
    }
}

fn parse_placeholder(inner: &str) -> Option<Part> {
    let date = match inner {
        "+yyyy" => Some(DateFormat::Year),
        "+yyyy.MM" => Some(DateFormat::YearMonth),
        "+yyyy.MM.dd" => Some(DateFormat::YearMonthDay),
        _ => None,
    };
    if let Some(format) = date {
        return Some(Part::Date(format));
    }
    let field = match inner.strip_prefix('[')?.strip_suffix(']')? {
        "container.name" => Field::ContainerName,
        "container.id" => Field::ContainerId,
        "container.image.name" => Field::ImageName,
        "agent.version" => Field::AgentVersion,
        other => {
            let key = other.strip_prefix("container.labels.")?;
            if key.is_empty() {
                return None;
            }
            Field::Label(key.to_owned())
        }
    };
    Some(Part::Field(field))
}

/// Characters Elasticsearch refuses in index names (`Strings.INVALID_FILENAME_CHARS`, plus `#`
/// and `:`), and whitespace and control characters, which it accepts but nobody can type.
fn forbidden(ch: char) -> bool {
    matches!(
        ch,
        '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
    ) || ch.is_whitespace()
        || ch.is_control()
}

/// Elasticsearch compares the name with its lowercase form, so a character is uppercase exactly
/// when lowercasing changes it.
fn is_uppercase(ch: char) -> bool {
    let mut lower = ch.to_lowercase();
    !(lower.next() == Some(ch) && lower.next().is_none())
}

fn check_char(ch: char) -> Result<(), NameProblem> {
    if forbidden(ch) {
        Err(NameProblem::Forbidden(ch))
    } else if is_uppercase(ch) {
        Err(NameProblem::Uppercase(ch))
    } else {
        Ok(())
    }
}

fn check_start(name: &str) -> Result<(), NameProblem> {
    match name.chars().next() {
        Some(ch @ ('-' | '_' | '+')) => Err(NameProblem::BadStart(ch)),
        _ => Ok(()),
    }
}

/// The rules that need the whole name (characters and start are checked where they arise).
fn check_whole(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        Err(NameProblem::Empty)
    } else if name == "." || name == ".." {
        Err(NameProblem::Dots)
    } else if name.len() > MAX_NAME_BYTES {
        Err(NameProblem::TooLong(name.len()))
    } else {
        Ok(())
    }
}

/// Appends a value from the container lowercased, with every character an index name cannot
/// hold replaced by `_`.
fn push_sanitized(out: &mut String, value: &str) {
    for ch in value.chars().flat_map(char::to_lowercase) {
        out.push(if forbidden(ch) { '_' } else { ch });
    }
}

fn shown(text: &str) -> String {
    text.chars().take(SHOWN_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// 2026-11-22T04:11:00.123456789Z
    const NOV_22_2026: i64 = 1_795_320_660_123_456_789;

    fn info(labels: &[(&str, &str)]) -> Info {
        Info {
            container_id: ID.to_owned(),
            container_name: "/Web-1".to_owned(),
            container_image_name: "registry:5000/Team/App:1.2".to_owned(),
            container_labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Info::default()
        }
    }

    fn resolve(template: &str, labels: &[(&str, &str)]) -> Result<ResolvedIndex, IndexError> {
        IndexTemplate::parse(template)?.resolve(&info(labels), "1.4.0")
    }

    fn name(template: &str, labels: &[(&str, &str)]) -> String {
        resolve(template, labels)
            .unwrap()
            .name_for(NOV_22_2026)
            .into_owned()
    }

    #[test]
    fn default_target_is_the_logs_docker_default_data_stream() {
        let target = IndexTemplate::default_target();
        assert_eq!(target, IndexTemplate::parse("logs-docker-default").unwrap());
        let resolved = target.resolve(&Info::default(), "1.0.0").unwrap();
        assert_eq!(resolved.name_for(0), "logs-docker-default");
        assert!(matches!(resolved.name_for(0), Cow::Borrowed(_)));
        assert_eq!(resolved.data_stream(), Some(("logs", "docker", "default")));
    }

    #[test]
    fn container_placeholders_are_substituted() {
        assert_eq!(
            name("logs-%{[container.name]}-prod", &[]),
            "logs-web-1-prod",
            "leading / removed, lowercased"
        );
        assert_eq!(name("c-%{[container.id]}", &[]), format!("c-{ID}"));
        assert_eq!(
            name("img-%{[container.image.name]}", &[]),
            "img-registry_5000_team_app_1.2"
        );
        assert_eq!(name("agent-%{[agent.version]}", &[]), "agent-1.4.0");
        assert_eq!(
            name(
                "logs-%{[container.labels.com.example.team]}-x",
                &[("com.example.team", "Payments")]
            ),
            "logs-payments-x"
        );
    }

    #[test]
    fn missing_label_is_refused_at_resolve_naming_it() {
        let err = resolve("logs-%{[container.labels.team]}-x", &[("other", "a")]).unwrap_err();
        assert_eq!(
            err,
            IndexError::MissingLabel {
                text: "logs-%{[container.labels.team]}-x".into(),
                key: "team".into()
            }
        );
        let message = err.to_string();
        assert!(message.starts_with("log-opt index: "), "{message}");
        assert!(message.contains("no label \"team\""), "{message}");
    }

    #[test]
    fn label_values_cannot_inject_into_the_target() {
        for hostile in [
            "../../_all,*",
            "a/b",
            "x,y",
            "*",
            "a b",
            "#frag",
            "q?x=1",
            "a\\b",
            "\"quoted\"",
            "<tag>|pipe",
            "remote:index",
            "tab\there",
            "new\nline",
            "nbsp\u{a0}x",
            "UPPER",
        ] {
            let name = name("logs-%{[container.labels.x]}", &[("x", hostile)]);
            for ch in name.chars() {
                assert!(check_char(ch).is_ok(), "{hostile:?} gave {name:?}");
            }
            assert!(name.starts_with("logs-"), "{name}");
        }
        assert_eq!(
            name("logs-%{[container.labels.x]}", &[("x", "../../_all,*")]),
            "logs-.._..__all__"
        );
    }

    #[test]
    fn values_that_make_an_invalid_whole_name_are_refused_at_resolve() {
        for (value, problem) in [
            ("_all", NameProblem::BadStart('_')),
            ("-x", NameProblem::BadStart('-')),
            ("+x", NameProblem::BadStart('+')),
            (".", NameProblem::Dots),
            ("..", NameProblem::Dots),
            ("", NameProblem::Empty),
            ("/", NameProblem::BadStart('_')),
        ] {
            let err = resolve("%{[container.labels.x]}", &[("x", value)]).unwrap_err();
            match &err {
                IndexError::InvalidResolved { problem: got, .. } => {
                    assert_eq!(got, &problem, "{value:?}")
                }
                other => panic!("{value:?}: {other:?}"),
            }
            assert!(err.to_string().starts_with("log-opt index: "));
        }
        let long = "a".repeat(251);
        let err = resolve("logs-%{[container.labels.x]}", &[("x", &long)]).unwrap_err();
        assert!(matches!(
            err,
            IndexError::InvalidResolved {
                problem: NameProblem::TooLong(256..),
                ..
            }
        ));
        let fits = "a".repeat(250 - 5);
        assert_eq!(
            name("logs-%{[container.labels.x]}", &[("x", &fits)]).len(),
            250
        );
    }

    #[test]
    fn date_placeholders_use_the_entry_time_in_utc() {
        let resolved = resolve("logs-%{[container.name]}-%{+yyyy.MM.dd}", &[]).unwrap();
        assert_eq!(resolved.name_for(NOV_22_2026), "logs-web-1-2026.11.22");
        assert_eq!(resolved.name_for(0), "logs-web-1-1970.01.01");
        assert_eq!(resolved.name_for(-1), "logs-web-1-1969.12.31");
        assert_eq!(resolved.name_for(i64::MIN), "logs-web-1-1677.09.21");
        assert_eq!(resolved.name_for(i64::MAX), "logs-web-1-2262.04.11");
        assert_eq!(resolved.to_string(), "logs-web-1-%{+yyyy.MM.dd}");
        assert_eq!(resolved.data_stream(), None);
        assert_eq!(name("m-%{+yyyy.MM}", &[]), "m-2026.11");
        assert_eq!(name("%{+yyyy}-y", &[]), "2026-y");
        assert_eq!(
            name("a%{+yyyy}b%{+yyyy.MM}c%{+yyyy.MM.dd}", &[]),
            "a2026b2026.11c2026.11.22"
        );
    }

    #[test]
    fn data_stream_names_follow_the_elastic_scheme() {
        for (template, expected) in [
            ("logs-docker-default", Some(("logs", "docker", "default"))),
            ("logs-myapp-prod", Some(("logs", "myapp", "prod"))),
            ("metrics-a-b", Some(("metrics", "a", "b"))),
            ("traces-a-b", Some(("traces", "a", "b"))),
            ("synthetics-a-b", Some(("synthetics", "a", "b"))),
            ("myindex", None),
            ("logs-a-b-c", None),
            ("logs-a", None),
            ("logs--b", None),
            ("logs-a-", None),
            ("events-a-b", None),
            ("logs-docker-%{+yyyy.MM.dd}", None),
        ] {
            let resolved = resolve(template, &[]).unwrap();
            assert_eq!(resolved.data_stream(), expected, "{template}");
        }
        let resolved = resolve("logs-%{[container.labels.app]}-prod", &[("app", "Shop")]).unwrap();
        assert_eq!(resolved.data_stream(), Some(("logs", "shop", "prod")));
        // A value with a dash makes it a plain name, not a data stream of another dataset.
        let resolved = resolve("logs-%{[container.labels.app]}-prod", &[("app", "a-b")]).unwrap();
        assert_eq!(resolved.data_stream(), None);
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_refused_at_parse() {
        for text in [
            "logs-%{[container.nam]}",
            "logs-%{container.name}",
            "logs-%{[container.labels.]}",
            "logs-%{+yyyy-MM-dd}",
            "logs-%{+YYYY.MM.dd}",
            "logs-%{}",
            "logs-%{[host.name]}",
            "logs-%{[container.env.PASSWORD]}",
        ] {
            let err = IndexTemplate::parse(text).unwrap_err();
            assert!(
                matches!(err, IndexError::UnknownPlaceholder { .. }),
                "{text}: {err:?}"
            );
            let message = err.to_string();
            assert!(message.starts_with("log-opt index: "), "{message}");
            assert!(message.contains("%{[container.labels.KEY]}"), "{message}");
        }
        assert_eq!(
            IndexTemplate::parse("logs-%{[container.name]").unwrap_err(),
            IndexError::Unclosed {
                text: "logs-%{[container.name]".into(),
                at: 5
            }
        );
        assert_eq!(
            IndexTemplate::parse("a-%{+yyyy}-%{+yyyy").unwrap_err(),
            IndexError::Unclosed {
                text: "a-%{+yyyy}-%{+yyyy".into(),
                at: 11
            }
        );
    }

    /// Regression: `logs-{{.name}}` (the engine's `tag` syntax) was taken as a literal index
    /// name, so a user expecting one index per container got one index for all.
    #[test]
    fn go_templates_are_refused_pointing_to_the_placeholders() {
        for text in ["logs-{{.name}}", "logs-{{ .Name }}", "{{.ID}}", "x-{{"] {
            let err = IndexTemplate::parse(text).unwrap_err();
            assert_eq!(err, IndexError::GoTemplate { text: text.into() });
            let message = err.to_string();
            assert!(
                message.contains("Go template ({{...}})")
                    && message.contains("%{[container.name]}"),
                "{message}"
            );
        }
        assert!(
            IndexTemplate::parse("logs-{x}").is_ok(),
            "single braces are valid names"
        );
    }

    #[test]
    fn invalid_static_names_are_refused_at_parse() {
        for (text, problem) in [
            ("", NameProblem::Empty),
            ("Logs", NameProblem::Uppercase('L')),
            ("logs-%{[container.name]}-Prod", NameProblem::Uppercase('P')),
            ("a/b", NameProblem::Forbidden('/')),
            ("a,b", NameProblem::Forbidden(',')),
            ("a*", NameProblem::Forbidden('*')),
            ("a b", NameProblem::Forbidden(' ')),
            ("a#b", NameProblem::Forbidden('#')),
            ("a?b", NameProblem::Forbidden('?')),
            ("a\\b", NameProblem::Forbidden('\\')),
            ("a\"b", NameProblem::Forbidden('"')),
            ("a<b", NameProblem::Forbidden('<')),
            ("a>b", NameProblem::Forbidden('>')),
            ("a|b", NameProblem::Forbidden('|')),
            ("remote:logs", NameProblem::Forbidden(':')),
            ("-logs", NameProblem::BadStart('-')),
            ("_logs", NameProblem::BadStart('_')),
            ("+logs-%{+yyyy}", NameProblem::BadStart('+')),
            (".", NameProblem::Dots),
            ("..", NameProblem::Dots),
        ] {
            let err = IndexTemplate::parse(text).unwrap_err();
            assert_eq!(
                err,
                IndexError::InvalidName {
                    text: text.into(),
                    problem
                },
                "{text:?}"
            );
            assert!(err.to_string().starts_with("log-opt index: "));
        }
        let long = "a".repeat(256);
        assert!(matches!(
            IndexTemplate::parse(&long),
            Err(IndexError::InvalidName {
                problem: NameProblem::TooLong(256),
                ..
            })
        ));
        assert!(IndexTemplate::parse(&"a".repeat(255)).is_ok());
        // Dates count at their full width.
        let dated = format!("{}%{{+yyyy.MM.dd}}", "a".repeat(246));
        assert!(matches!(
            IndexTemplate::parse(&dated),
            Err(IndexError::InvalidName {
                problem: NameProblem::TooLong(256),
                ..
            })
        ));
    }

    #[test]
    fn valid_names_are_accepted() {
        for text in [
            "myindex",
            ".hidden-ok",
            "logs-app.v2-prod",
            "100%-done",
            "naïve-ünïcode",
            "%{[container.name]}",
            "%{+yyyy.MM.dd}",
        ] {
            let template = IndexTemplate::parse(text).unwrap();
            assert_eq!(template.as_str(), text);
        }
    }

    #[test]
    fn error_messages_bound_the_text_they_quote() {
        let huge = format!("A{}", "a".repeat(10_000));
        let message = IndexTemplate::parse(&huge).unwrap_err().to_string();
        assert!(message.len() < 1_000, "{}", message.len());
    }

    #[test]
    fn templates_with_the_same_text_are_one_destination_key() {
        use std::collections::HashSet;
        let keys: HashSet<IndexTemplate> = ["logs-a-b", "logs-a-b", "logs-%{[container.name]}-b"]
            .into_iter()
            .map(|text| IndexTemplate::parse(text).unwrap())
            .collect();
        assert_eq!(keys.len(), 2);
    }
}
