//! Plugin-wide settings, read once from the environment at start. In a managed plugin they are
//! the `env` entries of config.json, changed with `docker plugin set NAME KEY=VALUE` while the
//! plugin is disabled. Each has a default that works out of the box.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LOG_DRIVER_LEVEL` | `info` | the plugin's own log level: error, warn, info, debug, trace |
//! | `DESTROY_LOGS_ON_STOP` | `false` | remove a container's local copy when its logging stops for good |
//! | `LOCAL_LOGS_MAX_AGE` | `7d` | remove local copies of containers that logged nothing for this long; `0` keeps them |
//! | `SPOOL_MAX_SIZE` | `1g` | unshipped data kept beyond max-file while Elasticsearch is away, plugin-wide |
//! | `DEAD_LETTER_MAX_SIZE` | `256m` | the most each destination's dead-letter file holds; refused documents beyond it are a counted, logged loss |
//! | `METRICS_ADDR` | (off) | `host:port` for the Prometheus text endpoint `/metrics` |
//! | `EVENTS` | `false` | collect the engine's own events into Elasticsearch (see `events`) |
//! | `EVENTS_SOCKET` | `/var/run/docker.sock` | the engine's API socket (mounted into the plugin) |
//! | `EVENTS_INDEX` | `logs-docker.events-default` | where event documents go |
//! | `EVENTS_FILTERS` | (all) | engine-side filters, e.g. `type=container,event=die,label=tier=core` |
//! | `EVENTS_FORMAT` | `ecs` | `ecs`, or `logtail` for Logtail's `_type_`/`_action_`/`_id_`/`_time_nano_` |
//! | `ES_*` | (unset) | host-wide defaults of the Elasticsearch log-opts (`options::OPTIONS` names each) |

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::events::document::Format;
use crate::events::filters::Filters;
use crate::options::{parse_bool, parse_size, shown_value, OPTIONS};
use crate::shipper::index::IndexTemplate;

/// Debug is written out below: `option_defaults` holds the ES_* credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub log_level: String,
    pub destroy_logs_on_stop: bool,
    /// `None`: never remove local copies for age.
    pub local_logs_max_age: Option<Duration>,
    /// Bytes of unshipped segments kept beyond max-file, summed over all containers.
    pub spool_max_size: u64,
    /// Bytes each destination's dead-letter file may hold.
    pub dead_letter_max_size: u64,
    pub metrics_addr: Option<SocketAddr>,
    /// Set when EVENTS is on.
    pub events: Option<EventsSettings>,
    /// Log-opt defaults from `ES_*` settings, keyed by log-opt name. May hold credentials.
    pub option_defaults: HashMap<String, String>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let defaults: BTreeMap<&str, String> = self
            .option_defaults
            .iter()
            .map(|(name, value)| (name.as_str(), shown_value(name, value)))
            .collect();
        f.debug_struct("Settings")
            .field("log_level", &self.log_level)
            .field("destroy_logs_on_stop", &self.destroy_logs_on_stop)
            .field("local_logs_max_age", &self.local_logs_max_age)
            .field("spool_max_size", &self.spool_max_size)
            .field("dead_letter_max_size", &self.dead_letter_max_size)
            .field("metrics_addr", &self.metrics_addr)
            .field("events", &self.events)
            .field("option_defaults", &defaults)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            destroy_logs_on_stop: false,
            local_logs_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            spool_max_size: 1 << 30,
            dead_letter_max_size: crate::shipper::deadletter::DEFAULT_MAX_FILE,
            metrics_addr: None,
            events: None,
            option_defaults: HashMap::new(),
        }
    }
}

/// What the `EVENTS*` settings say (see `events::service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsSettings {
    /// The engine's API socket.
    pub socket: PathBuf,
    /// Where event documents go (`index` of the events destination).
    pub index: String,
    pub filters: Filters,
    pub format: Format,
}

impl EventsSettings {
    pub const DEFAULT_SOCKET: &'static str = "/var/run/docker.sock";
    pub const DEFAULT_INDEX: &'static str = "logs-docker.events-default";
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("plugin setting {name}: {value:?} is not valid; it takes {accepts}")]
pub struct SettingError {
    pub name: &'static str,
    pub value: String,
    pub accepts: &'static str,
}

const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl Settings {
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every setting through `lookup`; an empty value means unset (config.json entries
    /// without a value are not set at all, but `docker plugin set X=` leaves them empty).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut settings = Self::default();
        if let Some(level) = get("LOG_DRIVER_LEVEL") {
            let level = level.trim().to_ascii_lowercase();
            if !LEVELS.contains(&level.as_str()) {
                return Err(SettingError {
                    name: "LOG_DRIVER_LEVEL",
                    value: level,
                    accepts: "one of error, warn, info, debug, trace",
                });
            }
            settings.log_level = level;
        }
        if let Some(value) = get("DESTROY_LOGS_ON_STOP") {
            settings.destroy_logs_on_stop = parse_bool(value.trim()).ok_or(SettingError {
                name: "DESTROY_LOGS_ON_STOP",
                value,
                accepts: "true or false",
            })?;
        }
        if let Some(value) = get("LOCAL_LOGS_MAX_AGE") {
            settings.local_logs_max_age = parse_age(&value).ok_or(SettingError {
                name: "LOCAL_LOGS_MAX_AGE",
                value,
                accepts: "a duration such as 12h, 7d or 30d, or 0 to keep local copies forever",
            })?;
        }
        if let Some(value) = get("SPOOL_MAX_SIZE") {
            settings.spool_max_size = parse_size(&value).ok_or(SettingError {
                name: "SPOOL_MAX_SIZE",
                value,
                accepts: "a size such as 512m or 4g",
            })?;
        }
        if let Some(value) = get("DEAD_LETTER_MAX_SIZE") {
            settings.dead_letter_max_size = parse_size(&value).ok_or(SettingError {
                name: "DEAD_LETTER_MAX_SIZE",
                value,
                accepts: "a size above 0 such as 256m or 1g",
            })?;
        }
        if let Some(value) = get("METRICS_ADDR") {
            // `host:port` as the README says (`localhost:9876` too), resolved once at start:
            // the first address the name resolves to is the one listened on.
            let resolved = std::net::ToSocketAddrs::to_socket_addrs(value.trim())
                .ok()
                .and_then(|mut addrs| addrs.next());
            settings.metrics_addr = Some(resolved.ok_or(SettingError {
                name: "METRICS_ADDR",
                value,
                accepts: "a host and port such as 127.0.0.1:9876 or localhost:9876",
            })?);
        }
        let events_on = match get("EVENTS") {
            Some(value) => parse_bool(value.trim()).ok_or(SettingError {
                name: "EVENTS",
                value,
                accepts: "true or false",
            })?,
            None => false,
        };
        if events_on {
            settings.events = Some(events_settings(&get)?);
        }
        for option in OPTIONS {
            if let Some(value) = option.setting.and_then(&get) {
                settings
                    .option_defaults
                    .insert(option.name.to_owned(), value);
            }
        }
        Ok(settings)
    }
}

fn events_settings(get: &impl Fn(&str) -> Option<String>) -> Result<EventsSettings, SettingError> {
    let filters = match get("EVENTS_FILTERS") {
        Some(value) => value.parse::<Filters>().map_err(|error| SettingError {
            name: "EVENTS_FILTERS",
            value: format!("{value}: {error}"),
            accepts: "comma-separated key=value filters of the engine's /events (type, event, label, container, image, ...)",
        })?,
        None => Filters::default(),
    };
    let format = match get("EVENTS_FORMAT") {
        Some(value) => value.trim().parse::<Format>().map_err(|_| SettingError {
            name: "EVENTS_FORMAT",
            value,
            accepts: "ecs or logtail",
        })?,
        None => Format::default(),
    };
    let index = get("EVENTS_INDEX").unwrap_or_else(|| EventsSettings::DEFAULT_INDEX.into());
    if index.contains("%{") || IndexTemplate::parse(index.trim()).is_err() {
        return Err(SettingError {
            name: "EVENTS_INDEX",
            value: index,
            accepts: "an index or data stream name without placeholders",
        });
    }
    Ok(EventsSettings {
        socket: get("EVENTS_SOCKET")
            .unwrap_or_else(|| EventsSettings::DEFAULT_SOCKET.into())
            .trim()
            .into(),
        index: index.trim().to_owned(),
        filters,
        format,
    })
}

/// `0` means "never"; anything else is a humantime duration.
fn parse_age(text: &str) -> Option<Option<Duration>> {
    let text = text.trim();
    if text == "0" {
        return Some(None);
    }
    humantime::parse_duration(text)
        .ok()
        .filter(|d| !d.is_zero())
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn defaults_work_out_of_the_box() {
        assert_eq!(settings(&[]).unwrap(), Settings::default());
        assert_eq!(
            settings(&[("DESTROY_LOGS_ON_STOP", "")]).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn values_are_parsed() {
        let s = settings(&[
            ("LOG_DRIVER_LEVEL", "DEBUG"),
            ("DESTROY_LOGS_ON_STOP", "true"),
            ("LOCAL_LOGS_MAX_AGE", "12h"),
        ])
        .unwrap();
        assert_eq!(s.log_level, "debug");
        assert!(s.destroy_logs_on_stop);
        assert_eq!(s.local_logs_max_age, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(
            settings(&[("LOCAL_LOGS_MAX_AGE", "0")])
                .unwrap()
                .local_logs_max_age,
            None
        );
    }

    /// Regression: `METRICS_ADDR=localhost:9876` was refused (read as a socket address only),
    /// though the README documents `host:port`.
    #[test]
    fn metrics_addr_takes_a_host_name_and_port() {
        let local = settings(&[("METRICS_ADDR", "localhost:9876")])
            .unwrap()
            .metrics_addr
            .unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9876, "{local}");
        let ip = settings(&[("METRICS_ADDR", "127.0.0.1:9877")])
            .unwrap()
            .metrics_addr;
        assert_eq!(ip, Some(([127, 0, 0, 1], 9877).into()));
        for bad in ["localhost", "127.0.0.1:notaport", ":9876x"] {
            let err = settings(&[("METRICS_ADDR", bad)]).unwrap_err().to_string();
            assert!(
                err.contains("METRICS_ADDR") && err.contains("localhost:9876"),
                "{err}"
            );
        }
    }

    /// Regression: Settings derived Debug, and its option defaults hold ES_PASSWORD & co.
    #[test]
    fn credentials_do_not_show_in_debug() {
        let s = settings(&[
            ("ES_HOSTS", "https://elastic:pw-in-url@es:9243"),
            ("ES_USER", "elastic"),
            ("ES_PASSWORD", "hunter2"),
            ("ES_API_KEY", "id:api-secret"),
            ("ES_CLOUD_AUTH", "elastic:cloud-secret"),
            ("ES_PROXY_URL", "http://proxy:proxy-secret@proxy:3128"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        for secret in [
            "pw-in-url",
            "hunter2",
            "api-secret",
            "cloud-secret",
            "proxy-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("https://es:9243") && shown.contains("\"user\": \"elastic\""),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = settings(&[("LOCAL_LOGS_MAX_AGE", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LOCAL_LOGS_MAX_AGE") && err.contains("7d"),
            "{err}"
        );
        let err = settings(&[("LOG_DRIVER_LEVEL", "loud")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LOG_DRIVER_LEVEL"), "{err}");
        for bad in ["lots", "0", "-1m"] {
            let err = settings(&[("DEAD_LETTER_MAX_SIZE", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("DEAD_LETTER_MAX_SIZE") && err.contains("256m"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_dead_letter_budget_is_a_size() {
        assert_eq!(Settings::default().dead_letter_max_size, 256 << 20);
        assert_eq!(
            settings(&[("DEAD_LETTER_MAX_SIZE", "1g")])
                .unwrap()
                .dead_letter_max_size,
            1 << 30
        );
    }
}
