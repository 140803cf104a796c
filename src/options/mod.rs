//! The log-opts a container may set (`--log-opt KEY=VALUE`), validated in StartLogging.
//!
//! Every option of ours is in [`OPTIONS`], with its default and what it accepts: the table is
//! the single source for parsing, error messages and the README. The engine passes more than the
//! user's options in the same map (its own `mode`, `max-buffer-size`, `cache-*` keys and any
//! daemon-wide default log-opts meant for other drivers): those are accepted and ignored. A key
//! that is plainly ours but wrong (a bad value, or a near-miss spelling of one of our names) is
//! refused with a message naming it and what is accepted, so `docker run` fails clearly instead of
//! running with a setting the user did not get.
//!
//! - this file: the table, the store's options and the checks of the whole map;
//! - `es.rs`: the Elasticsearch options, parsed into `shipper::config::EsOptions`;
//! - `lines.rs`: `json.*` and `multiline.*`, what a line means in its document.
//!
//! The shipper's option values (`EsOptions`, `Attributes`, `Statics`) know nothing of this
//! module: it sits above them, and their own errors become an [`OptionError`] here.

mod es;
mod lines;

use std::collections::HashMap;

use crate::shipper::attributes::{AttributeError, Attributes};
use crate::shipper::config::EsOptions;
use crate::shipper::index::IndexError;
use crate::shipper::statics::FieldError;
use crate::store::StoreLimits;

/// One log-opt of ours.
pub struct OptionSpec {
    pub name: &'static str,
    /// The plugin setting (env) that gives a host-wide default; the log-opt overrides it.
    pub setting: Option<&'static str>,
    pub default: &'static str,
    pub accepts: &'static str,
    pub meaning: &'static str,
}

pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "max-size",
        setting: None,
        default: "20m",
        accepts: "a size: a whole number with an optional k, m or g suffix (powers of 1024)",
        meaning: "size at which the local copy rotates to a new file",
    },
    OptionSpec {
        name: "max-file",
        setting: None,
        default: "5",
        accepts: "a whole number from 1 to 1000",
        meaning: "files of the local copy kept for `docker logs` (the active one included)",
    },
    OptionSpec {
        name: "compress",
        setting: None,
        default: "true",
        accepts: "true or false",
        meaning: "gzip rotated files of the local copy",
    },
    es("hosts", "ES_HOSTS", "", "a comma-separated list of URLs or host[:port]; scheme defaults to http, port to 9200", "Elasticsearch nodes; with neither hosts nor cloud_id only the local copy is kept"),
    es("user", "ES_USER", "", "a user name", "basic authentication user"),
    es("password", "ES_PASSWORD", "", "a password", "basic authentication password (prefer the plugin setting: log-opts show in docker inspect)"),
    es("api_key", "ES_API_KEY", "", "id:key, or the base64 encoding of id:key", "API key authentication (instead of user/password)"),
    es("cloud_id", "ES_CLOUD_ID", "", "an Elastic Cloud id (label:base64)", "Elastic Cloud deployment to ship to (instead of hosts)"),
    es("cloud_auth", "ES_CLOUD_AUTH", "", "user:password", "Elastic Cloud basic authentication"),
    es("index", "ES_INDEX", "logs-docker-default", "an index or data stream name; may hold %{[container.name]}, %{[container.id]}, %{[container.image.name]}, %{[container.labels.KEY]}, %{[agent.version]}, %{+yyyy.MM.dd}", "where documents go; logs-<dataset>-<namespace> names are data streams"),
    es("dead_letter_index", "ES_DEAD_LETTER_INDEX", "", "an index or data stream name, without placeholders", "where documents refused for good are also indexed (as text, with the reason), besides the local dead-letter file"),
    es("pipeline", "ES_PIPELINE", "", "an ingest pipeline name", "ingest pipeline applied to every document"),
    es("name", "ES_AGENT_NAME", "", "any text", "agent.name of every document (default: the host name)"),
    es("timeout", "ES_TIMEOUT", "90s", "a duration such as 30s or 2m", "time limit of one bulk request"),
    es("backoff_init", "ES_BACKOFF_INIT", "1s", "a duration such as 500ms or 1s", "first wait before retrying a failed request"),
    es("backoff_max", "ES_BACKOFF_MAX", "60s", "a duration such as 30s or 1m", "longest wait between retries"),
    es("proxy_url", "ES_PROXY_URL", "", "an http(s) or socks5 URL", "proxy for every request to Elasticsearch"),
    es("ssl.certificate_authorities", "ES_SSL_CA", "", "the path of a PEM file (inside the plugin: put it under the state mount)", "CA certificates trusted for Elasticsearch, in addition to the system ones"),
    es("ssl.verification_mode", "ES_SSL_VERIFICATION_MODE", "full", "full or none", "TLS verification: full checks the chain and the host name; none checks nothing"),
    es("ssl.ca_trusted_fingerprint", "ES_SSL_CA_TRUSTED_FINGERPRINT", "", "the SHA-256 of a CA certificate in hex (64 digits, colons allowed)", "trust the CA with this fingerprint in the chain Elasticsearch presents (as Beats do), then verify fully"),
    es("bulk_max_bytes", "ES_BULK_MAX_BYTES", "5m", "a size with k or m (64k to 90m)", "largest bulk request body before compression"),
    es("flush_interval", "ES_FLUSH_INTERVAL", "1s", "a duration from 10ms to 1m", "longest time a line waits for a fuller batch"),
    es("workers", "ES_WORKERS", "2", "a whole number from 1 to 16", "bulk requests in flight at once per destination"),
    es("compression_level", "ES_COMPRESSION_LEVEL", "1", "0 (off) to 9", "gzip level of bulk bodies"),
    es("tags", "ES_TAGS", "", "a comma list such as prod,eu", "ECS tags on every document"),
    es("fields", "ES_FIELDS", "", "key=value pairs such as env=prod,team=core (also one log-opt fields.KEY=value each)", "static fields at the root of every document"),
    es("json", "ES_JSON", "false", "true or false", "decode lines that are JSON objects into fields (README: JSON lines)"),
    es("json.keys_under_root", "ES_JSON_KEYS_UNDER_ROOT", "false", "true or false", "put a JSON line's keys at the document's root instead of under json"),
    es("json.overwrite_keys", "ES_JSON_OVERWRITE_KEYS", "false", "true or false", "with keys at the root, a line's keys replace the document's own (its @timestamp the engine's time)"),
    es("json.message_key", "ES_JSON_MESSAGE_KEY", "", "a key name", "the key whose string value becomes message"),
    es("json.add_error_key", "ES_JSON_ADD_ERROR_KEY", "true", "true or false", "say on the document (error.message) why a line was shipped as text"),
    es("json.ecs", "ES_JSON_ECS", "false", "true or false", "msg or message becomes message, level or log.level becomes log.level"),
    es("multiline.preset", "ES_MULTILINE_PRESET", "", "java, python, go, dotnet or node", "merge the usual stack traces into one document (instead of multiline.pattern)"),
    es("multiline.pattern", "ES_MULTILINE_PATTERN", "", "a regular expression (RE2 syntax, unanchored)", "lines it marks are merged with the line before (match=after) or after (match=before)"),
    es("multiline.negate", "ES_MULTILINE_NEGATE", "false", "true or false", "mark the lines the pattern does not match instead"),
    es("multiline.match", "ES_MULTILINE_MATCH", "after", "after or before", "where marked lines go: after the line before them, or before the next unmarked line"),
    es("multiline.max_lines", "ES_MULTILINE_MAX_LINES", "500", "a whole number from 1 to 100000", "lines in one merged document; more continue in the next document"),
    es("multiline.max_bytes", "ES_MULTILINE_MAX_BYTES", "1m", "a size from 1k to 10m", "bytes in one merged document; more continue in the next document"),
    es("multiline.timeout", "ES_MULTILINE_TIMEOUT", "5s", "a duration from 100ms to 10m", "a merged document whose next line is this late is shipped as it is"),
    // Docker's standard log-opts of shipping drivers (`shipper::attributes`): per container or
    // daemon-wide in daemon.json, as for the engine's own drivers; no plugin setting.
    docker("tag", "{{.ID}}", "text with the placeholders {{.ID}}, {{.FullID}}, {{.Name}}, {{.ImageID}}, {{.ImageFullID}}, {{.ImageName}}, {{.DaemonName}}", "docker.tag of every document, as Docker's drivers render it"),
    docker("labels", "", "a comma list of label keys", "the container labels documents carry (container.labels); with neither labels nor labels-regex, all of them"),
    docker("labels-regex", "", "a regular expression (RE2 syntax, unanchored) over label keys", "also the labels whose key matches"),
    docker("env", "", "a comma list of variable names", "the container's environment variables documents carry (process.env_vars, NAME=value); none by default"),
    docker("env-regex", "", "a regular expression (RE2 syntax, unanchored) over variable names", "also the variables whose name matches"),
];

/// An option without a plugin setting (`es` adds one).
const fn docker(
    name: &'static str,
    default: &'static str,
    accepts: &'static str,
    meaning: &'static str,
) -> OptionSpec {
    OptionSpec {
        name,
        setting: None,
        default,
        accepts,
        meaning,
    }
}

/// `fields.<key>=value` log-opts: one static field each (see `shipper::statics`).
pub const FIELD_PREFIX: &str = "fields.";

const fn es(
    name: &'static str,
    setting: &'static str,
    default: &'static str,
    accepts: &'static str,
    meaning: &'static str,
) -> OptionSpec {
    OptionSpec {
        setting: Some(setting),
        ..docker(name, default, accepts, meaning)
    }
}

/// Keys the engine itself puts into the map; never ours to judge.
const ENGINE_KEYS: &[&str] = &["mode", "max-buffer-size"];
const ENGINE_PREFIXES: &[&str] = &["cache-"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("log-opt {name}: {value:?} is not valid; it takes {accepts}")]
    BadValue {
        name: &'static str,
        value: String,
        accepts: &'static str,
    },
    #[error("log-opt {given:?} is not an option of this driver; did you mean {suggestion:?}? (options: {all})")]
    Misspelled {
        given: String,
        suggestion: &'static str,
        all: String,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("log-opt dead_letter_index: {0:?} has a placeholder; it takes one fixed index or data stream name")]
    DeadLetterIndexPlaceholder(String),
    #[error("log-opt dead_letter_index: {0}")]
    DeadLetterIndex(IndexError),
    #[error("log-opt compress=true needs max-file of 2 or more (a single file is never rotated into a compressed one)")]
    CompressSingleFile,
    /// Credentials that conflict or are incomplete (the message names them).
    #[error("{0}")]
    Credentials(&'static str),
    /// A static field that cannot be added (the message names it).
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A bad `tag`, `labels-regex` or `env-regex` (the message names the option).
    #[error(transparent)]
    Attribute(#[from] AttributeError),
    #[error("log-opt multiline.pattern: {pattern:?} is not a valid regular expression (RE2 syntax): {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("log-opt multiline.preset and multiline.pattern are both set; set one of them")]
    PresetAndPattern,
    #[error("log-opt {name} has no effect without {switch}; set that too, or remove {name}")]
    NeedsSwitch {
        name: &'static str,
        switch: &'static str,
    },
}

/// The options that authenticate to Elasticsearch, taken as one group (see [`LogOptions::parse`]).
const CREDENTIALS: [&str; 4] = ["user", "password", "api_key", "cloud_auth"];

/// Everything the log-opts of one container decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    pub store: StoreLimits,
    /// Where to ship; `None` keeps the local copy only.
    pub es: Option<EsOptions>,
    /// Keys neither ours nor the engine's: kept to say in the log that they were ignored.
    pub ignored: Vec<String>,
}

impl LogOptions {
    /// Parses the `Config` map of StartLogging (`None` when the engine sent null) over the
    /// host-wide defaults of the plugin settings (keyed by option name).
    pub fn parse(
        config: Option<&HashMap<String, String>>,
        defaults: &HashMap<String, String>,
    ) -> Result<Self, OptionError> {
        let empty = HashMap::new();
        let config = config.unwrap_or(&empty);
        // Credentials are one group: a container that brings any of its own uses only its own
        // (an `api_key` log-opt replaces the host's ES_USER/ES_PASSWORD rather than conflicting
        // with them); otherwise the host's apply. Within a group conflicts are refused.
        let own_credentials = CREDENTIALS
            .iter()
            .any(|name| config.get(*name).is_some_and(|v| !v.trim().is_empty()));
        let value = |name: &'static str| -> &str {
            let host_wide = if own_credentials && CREDENTIALS.contains(&name) {
                None
            } else {
                defaults.get(name)
            };
            config
                .get(name)
                .or(host_wide)
                .map(String::as_str)
                .unwrap_or_else(|| spec(name).default)
        };
        let max_size =
            parse_size(value("max-size")).ok_or_else(|| bad("max-size", value("max-size")))?;
        let max_file = value("max-file")
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad("max-file", value("max-file")))?;
        let compress =
            parse_bool(value("compress")).ok_or_else(|| bad("compress", value("compress")))?;
        // The engine refuses compress with one file only when the user asked for compress; our
        // default is compress=true, so only an explicit compress=true with max-file=1 is an error.
        if compress && max_file == 1 && config.contains_key("compress") {
            return Err(OptionError::CompressSingleFile);
        }
        let dotted = config
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(FIELD_PREFIX)?, value.as_str())));
        // Checked with or without a destination, so a bad template fails `docker run` at once.
        let attributes = Attributes::parse(config)?;
        let json = lines::json(&value)?;
        let multiline = lines::multiline(&value)?;
        let es = EsOptions::parse(&value, dotted)?.map(|es| EsOptions {
            attributes,
            json,
            multiline,
            ..es
        });
        let mut ignored = Vec::new();
        let mut keys: Vec<&String> = config.keys().collect();
        keys.sort();
        for key in keys {
            if OPTIONS.iter().any(|o| o.name == key)
                || key.starts_with(FIELD_PREFIX)
                || is_engine_key(key)
            {
                continue;
            }
            if let Some(suggestion) = near_miss(key) {
                return Err(OptionError::Misspelled {
                    given: key.clone(),
                    suggestion,
                    all: OPTIONS
                        .iter()
                        .map(|o| o.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            ignored.push(key.clone());
        }
        Ok(Self {
            es,
            store: StoreLimits {
                max_size,
                max_file,
                compress: compress && max_file > 1,
            },
            ignored,
        })
    }
}

/// An option's value as it may be shown (a Debug of the settings, a log line): credentials
/// redacted, URLs without their `user:password@`.
pub fn shown_value(name: &str, value: &str) -> String {
    match name {
        "password" | "api_key" | "cloud_auth" => "<redacted>".to_owned(),
        "hosts" | "proxy_url" => value
            .split(',')
            .map(es::strip_credentials)
            .collect::<Vec<_>>()
            .join(","),
        _ => value.to_owned(),
    }
}

pub(crate) fn spec(name: &str) -> &'static OptionSpec {
    OPTIONS
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("option {name} missing from OPTIONS"))
}

pub(crate) fn bad(name: &'static str, value: &str) -> OptionError {
    OptionError::BadValue {
        name: spec(name).name,
        value: value.chars().take(100).collect(),
        accepts: spec(name).accepts,
    }
}

fn is_engine_key(key: &str) -> bool {
    ENGINE_KEYS.contains(&key) || ENGINE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// One of our names within two edits of `key` (case and `_`/`-` ignored): a typo of ours rather
/// than another driver's option.
fn near_miss(key: &str) -> Option<&'static str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let key = norm(key);
    OPTIONS
        .iter()
        .map(|o| (o.name, edit_distance(&key, &norm(o.name))))
        .filter(|&(name, d)| d <= 2 && d < name.len() / 2 + 1)
        .min_by_key(|&(_, d)| d)
        .map(|(name, _)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Sizes as the engine's drivers take them: a whole number with an optional k, m or g suffix
/// (optionally followed by b), powers of 1024. Zero is refused: a store must hold a record.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => t.split_at(at),
        None => (t, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return None,
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&n| n > 0)
}

/// Booleans as Go's strconv.ParseBool takes them, which is what users of the engine's drivers
/// write.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression guard: a setting added here but not to config.json cannot be set with
    /// `docker plugin set` (the engine refuses unknown env names).
    #[test]
    fn every_setting_is_declared_in_the_plugin_config() {
        let config: serde_json::Value =
            serde_json::from_str(include_str!("../../plugin/config.json")).unwrap();
        let declared: Vec<&str> = config["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        for setting in OPTIONS.iter().filter_map(|o| o.setting) {
            assert!(
                declared.contains(&setting),
                "{setting} is missing from plugin/config.json"
            );
        }
    }

    fn opts(pairs: &[(&str, &str)]) -> Result<LogOptions, OptionError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LogOptions::parse(Some(&map), &HashMap::new())
    }

    /// A container's own credentials replace the host's as a group: an `api_key` log-opt over
    /// host-wide ES_USER/ES_PASSWORD is the container's key, not a conflict; without any of its
    /// own the host's apply; and a conflict within one group is refused.
    #[test]
    fn a_containers_credentials_replace_the_hosts_as_a_group() {
        use crate::shipper::config::Auth;
        let host: HashMap<String, String> = [("hosts", "es"), ("user", "host"), ("password", "pw")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let with = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            LogOptions::parse(Some(&map), &host).map(|o| o.es.unwrap().auth)
        };
        assert!(matches!(with(&[]).unwrap(), Auth::Basic { user, .. } if user == "host"));
        assert!(matches!(
            with(&[("api_key", "id:key")]).unwrap(),
            Auth::ApiKey(_)
        ));
        assert!(matches!(
            with(&[("user", "mine"), ("password", "x")]).unwrap(),
            Auth::Basic { user, .. } if user == "mine"
        ));
        // Its own password without its own user is incomplete, whatever the host has.
        assert!(with(&[("password", "x")]).is_err());
        assert!(with(&[("api_key", "id:key"), ("user", "mine")]).is_err());
    }

    #[test]
    fn defaults_are_the_local_drivers() {
        let o = LogOptions::parse(None, &HashMap::new()).unwrap();
        assert_eq!(
            o.store,
            StoreLimits {
                max_size: 20 << 20,
                max_file: 5,
                compress: true
            }
        );
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("10MB"), Some(10 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("123"), Some(123));
        for bad in ["", "12q", "-1", "0", "1.5m", "m", "99999999999g"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_value_names_the_option_and_what_it_accepts() {
        let err = opts(&[("max-size", "12q")]).unwrap_err().to_string();
        assert!(
            err.contains("max-size") && err.contains("12q") && err.contains("k, m or g"),
            "{err}"
        );
        let err = opts(&[("max-file", "0")]).unwrap_err().to_string();
        assert!(
            err.contains("max-file") && err.contains("1 to 1000"),
            "{err}"
        );
        let err = opts(&[("compress", "yes")]).unwrap_err().to_string();
        assert!(
            err.contains("compress") && err.contains("true or false"),
            "{err}"
        );
    }

    #[test]
    fn misspelled_option_of_ours_is_refused_with_a_suggestion() {
        let err = opts(&[("max-sise", "1m")]).unwrap_err().to_string();
        assert!(
            err.contains("max-sise") && err.contains("max-size"),
            "{err}"
        );
        assert!(opts(&[("max_file", "2")]).is_err());
    }

    #[test]
    fn engine_keys_and_other_drivers_options_are_ignored() {
        let o = opts(&[
            ("mode", "non-blocking"),
            ("max-buffer-size", "4m"),
            ("cache-disabled", "true"),
            ("cache-max-size", "1m"),
            ("syslog-address", "udp://x"),
        ])
        .unwrap();
        assert_eq!(o.ignored, vec!["syslog-address"]);
    }

    /// Docker's standard options are ours now, honoured with or without a destination: a bad
    /// one fails `docker run` naming the option (it was accepted and ignored).
    #[test]
    fn dockers_standard_log_opts_are_ours_and_checked_even_without_hosts() {
        let o = opts(&[
            ("tag", "{{.Name}}"),
            ("labels", "a,b"),
            ("labels-regex", "^com\\."),
            ("env", "X"),
            ("env-regex", "^APP_"),
        ])
        .unwrap();
        assert!(o.ignored.is_empty(), "{:?}", o.ignored);
        let err = opts(&[("tag", "{{.Nmae}}")]).unwrap_err().to_string();
        assert!(err.starts_with("log-opt tag:"), "{err}");
        let err = opts(&[("env-regex", "(")]).unwrap_err().to_string();
        assert!(err.starts_with("log-opt env-regex:"), "{err}");
        // A typo of one of them is caught like a typo of ours.
        assert!(matches!(
            opts(&[("lables", "a")]),
            Err(OptionError::Misspelled {
                suggestion: "labels",
                ..
            })
        ));
    }

    /// `tags`, `fields` and `fields.<key>` are ours; Docker's standard `tag` is its own option,
    /// not a typo of `tags`.
    #[test]
    fn tags_and_fields_are_ours_and_docker_tag_is_no_typo_of_tags() {
        let o = opts(&[
            ("hosts", "es"),
            ("tags", "a,b"),
            ("fields", "env=prod"),
            ("fields.team", "core, platform"),
            ("tag", "{{.Name}}"),
        ])
        .unwrap();
        assert!(o.ignored.is_empty(), "{:?}", o.ignored);
        let mut doc = serde_json::Map::new();
        o.es.unwrap().statics.insert_into(&mut doc);
        assert_eq!(
            serde_json::Value::Object(doc),
            serde_json::json!({"tags": ["a", "b"], "env": "prod", "team": "core, platform"})
        );
        let err = opts(&[("hosts", "es"), ("fields.message", "x")]).unwrap_err();
        assert!(err.to_string().contains("\"message\""), "{err}");
        // A typo of ours is still caught.
        assert!(matches!(
            opts(&[("hosts", "es"), ("field", "a=b")]),
            Err(OptionError::Misspelled {
                suggestion: "fields",
                ..
            })
        ));
    }

    #[test]
    fn every_option_of_ours_is_known_and_near_misses_are_caught() {
        for o in OPTIONS {
            assert_eq!(near_miss(o.name), Some(o.name));
        }
        assert_eq!(near_miss("host"), Some("hosts"));
        assert_eq!(near_miss("api-key"), Some("api_key"));
    }

    #[test]
    fn compress_with_a_single_file_is_an_error_only_when_asked_for() {
        assert_eq!(
            opts(&[("max-file", "1"), ("compress", "true")]),
            Err(OptionError::CompressSingleFile)
        );
        let o = opts(&[("max-file", "1")]).unwrap();
        assert!(!o.store.compress);
    }

    #[test]
    fn json_and_multiline_are_off_by_default_and_parsed_when_switched_on() {
        let o = opts(&[("hosts", "es")]).unwrap().es.unwrap();
        assert!(o.json.is_none() && o.multiline.is_none());
        let o = opts(&[
            ("hosts", "es"),
            ("json", "true"),
            ("json.keys_under_root", "true"),
            ("json.message_key", "msg"),
            ("multiline.preset", "java"),
            ("multiline.max_lines", "50"),
        ])
        .unwrap()
        .es
        .unwrap();
        let json = o.json.unwrap();
        assert!(json.keys_under_root && json.add_error_key && !json.overwrite_keys);
        assert_eq!(json.message_key.as_deref(), Some("msg"));
        let m = o.multiline.unwrap();
        assert_eq!((m.max_lines, m.max_bytes), (50, 1 << 20));
        assert!(m.pattern.is_match(b"\tat a.B.c(B.java:1)"));
    }

    #[test]
    fn bad_json_and_multiline_options_are_refused_naming_the_option() {
        let message = |pairs: &[(&str, &str)]| opts(pairs).unwrap_err().to_string();
        let m = message(&[("json", "yes please")]);
        assert!(
            m.contains("log-opt json:") && m.contains("true or false"),
            "{m}"
        );
        let m = message(&[("json.keys_under_root", "true")]);
        assert!(
            m.contains("json.keys_under_root") && m.contains("json=true"),
            "{m}"
        );
        let m = message(&[("multiline.max_lines", "5")]);
        assert!(
            m.contains("multiline.max_lines")
                && m.contains("multiline.pattern or multiline.preset"),
            "{m}"
        );
        let m = message(&[("multiline.preset", "cobol")]);
        assert!(
            m.contains("multiline.preset") && m.contains("java, python, go, dotnet or node"),
            "{m}"
        );
        let m = message(&[("multiline.pattern", "(unclosed")]);
        assert!(
            m.contains("multiline.pattern") && m.contains("not a valid regular expression"),
            "{m}"
        );
        let m = message(&[("multiline.pattern", "^x"), ("multiline.preset", "go")]);
        assert!(m.contains("both set"), "{m}");
        let m = message(&[("multiline.pattern", "^x"), ("multiline.match", "around")]);
        assert!(m.contains("after or before"), "{m}");
        let m = message(&[("multiline.pattern", "^x"), ("multiline.timeout", "0s")]);
        assert!(m.contains("multiline.timeout"), "{m}");
        // Checked without hosts too: a bad option fails docker run at once.
        assert!(opts(&[("multiline.max_bytes", "2m")]).is_err());
        assert!(opts(&[("multiline.preset", "python")]).is_ok());
    }
}
