//! The `EVENTS_FILTERS` setting and the engine's `filters` parameter it becomes.
//!
//! Setting syntax: `key=value` items separated by commas, the value being everything after the
//! first `=` (so `label=com.example.team=web` is the label filter `com.example.team=web`):
//!
//! ```text
//! EVENTS_FILTERS=type=container,type=image,event=die,event=oom,label=com.example.alert=1
//! ```
//!
//! - keys are the engine's filter keys ([`FILTER_KEYS`]); anything else is an error naming them;
//! - `type` values are the engine's event types ([`EVENT_TYPES`]) and `scope` values `local` or
//!   `swarm`: the engine would take any other value and silently match nothing;
//! - spaces around items are ignored; an empty setting means no filter (every event);
//! - values cannot contain a comma (no engine name, id or event does).
//!
//! The engine's semantics, which the engine applies, not us: values of one key are ORed,
//! different keys ANDed, several `label` values ANDed; `event=health_status` (or `exec_create`,
//! `exec_start`) also matches the suffixed actions; `container`, `image` and the other name
//! filters match ids and names.
//!
//! On the wire: URL-encoded JSON `{"event":["die","oom"],"type":["container","image"]}`, keys
//! sorted, values in the order given, repeats removed.

use std::collections::BTreeMap;
use std::str::FromStr;

/// The name of the setting, for error messages.
pub const SETTING: &str = "EVENTS_FILTERS";

/// The engine's `/events` filter keys.
pub const FILTER_KEYS: [&str; 14] = [
    "type",
    "event",
    "container",
    "image",
    "label",
    "daemon",
    "network",
    "volume",
    "plugin",
    "node",
    "scope",
    "config",
    "secret",
    "service",
];

/// The engine's event types (`events.Type`).
pub const EVENT_TYPES: [&str; 10] = [
    "builder",
    "config",
    "container",
    "daemon",
    "image",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
];

const SCOPES: [&str; 2] = ["local", "swarm"];

/// Parsed filters: key -> values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    by_key: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("{SETTING}: {item:?} is not key=value (example: type=container,event=die)")]
    NotKeyValue { item: String },
    #[error("{SETTING}: {key:?} is not an engine event filter (use {})", FILTER_KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("{SETTING}: {key}= has no value")]
    EmptyValue { key: String },
    #[error("{SETTING}: {value:?} is not a {key} the engine knows (use {})", accepted.join(", "))]
    UnknownValue {
        key: String,
        value: String,
        accepted: &'static [&'static str],
    },
}

impl FromStr for Filters {
    type Err = FilterError;

    fn from_str(setting: &str) -> Result<Filters, FilterError> {
        let mut filters = Filters::default();
        for item in setting
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let Some((key, value)) = item.split_once('=') else {
                return Err(FilterError::NotKeyValue { item: item.into() });
            };
            let (key, value) = (key.trim(), value.trim());
            filters.add(key, value)?;
        }
        Ok(filters)
    }
}

impl Filters {
    /// Adds one `key=value`, checked as the setting is.
    pub fn add(&mut self, key: &str, value: &str) -> Result<(), FilterError> {
        if !FILTER_KEYS.contains(&key) {
            return Err(FilterError::UnknownKey { key: key.into() });
        }
        if value.is_empty() {
            return Err(FilterError::EmptyValue { key: key.into() });
        }
        let accepted: Option<&'static [&'static str]> = match key {
            "type" => Some(&EVENT_TYPES),
            "scope" => Some(&SCOPES),
            _ => None,
        };
        if let Some(accepted) = accepted.filter(|accepted| !accepted.contains(&value)) {
            return Err(FilterError::UnknownValue {
                key: key.into(),
                value: value.into(),
                accepted,
            });
        }
        let values = self.by_key.entry(key.into()).or_default();
        if !values.iter().any(|known| known == value) {
            values.push(value.into());
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The values given for `key`, in order.
    pub fn values(&self, key: &str) -> &[String] {
        self.by_key.get(key).map_or(&[], Vec::as_slice)
    }

    /// The engine's JSON form: `{"type":["container"],"event":["die"]}` (keys sorted).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.by_key).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_becomes_the_engines_json() {
        let filters: Filters =
            " type=container, type=image ,event=die,label=com.example.team=web,label=alert,type=container"
                .parse()
                .unwrap();
        assert_eq!(
            filters.to_json(),
            r#"{"event":["die"],"label":["com.example.team=web","alert"],"type":["container","image"]}"#
        );
        assert_eq!(filters.values("type"), ["container", "image"]);
        assert!(filters.values("network").is_empty());
        let none: Filters = "".parse().unwrap();
        assert!(none.is_empty());
        assert_eq!(none.to_json(), "{}");
        assert!(" , ".parse::<Filters>().unwrap().is_empty());
    }

    #[test]
    fn every_engine_key_is_accepted() {
        for key in FILTER_KEYS {
            let value = match key {
                "type" => "container",
                "scope" => "local",
                _ => "x",
            };
            let filters: Filters = format!("{key}={value}").parse().unwrap();
            assert_eq!(filters.values(key), [value]);
        }
    }

    #[test]
    fn errors_name_the_item_and_what_is_accepted() {
        let cases = [
            (
                "type",
                "EVENTS_FILTERS: \"type\" is not key=value (example: type=container,event=die)",
            ),
            ("type=", "EVENTS_FILTERS: type= has no value"),
            (
                "kind=container",
                "EVENTS_FILTERS: \"kind\" is not an engine event filter (use type, event, \
                 container, image, label, daemon, network, volume, plugin, node, scope, config, \
                 secret, service)",
            ),
            (
                "type=containers",
                "EVENTS_FILTERS: \"containers\" is not a type the engine knows (use builder, \
                 config, container, daemon, image, network, node, plugin, secret, service)",
            ),
            (
                "scope=global",
                "EVENTS_FILTERS: \"global\" is not a scope the engine knows (use local, swarm)",
            ),
        ];
        for (setting, message) in cases {
            let error = setting.parse::<Filters>().unwrap_err();
            assert_eq!(error.to_string(), message, "{setting}");
        }
    }
}
