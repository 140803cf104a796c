//! The engine's wire types: the JSON the engine sends and expects on the plugin socket, key for
//! key (docs/protocol.md). The HTTP layer (`api`) parses into them; the run table, ReadLogs and
//! the shipper read them. They import nothing of ours, so every layer may use them.
//!
//! Shapes (keys are exact PascalCase):
//!
//! ```text
//! StartLogging  {"File": "<FIFO path>", "Info": Info}
//! StopLogging   {"File": "<FIFO path>"}
//! ReadLogs      {"Info": Info, "Config": {"Since", "Until", "Tail", "Follow"}}
//! Info          {"Config": {log-opt: value}, "ContainerID", "ContainerName",
//!                "ContainerEntrypoint", "ContainerArgs": [..], "ContainerImageID",
//!                "ContainerImageName", "ContainerCreated", "ContainerEnv": ["K=V", ..],
//!                "ContainerLabels": {..}, "LogPath", "DaemonName"}
//! answer        {"Err": ""} on success, {"Err": "<why>"} on failure
//! ```
//!
//! Go encodes empty maps and lists as `null`, so every map and list accepts `null`; a missing
//! field is its empty value; unknown fields are ignored, never refused. `Since`/`Until` are
//! RFC 3339 (the zero time `0001-01-01T00:00:00Z` or empty means unset); `Tail` is -1 for all,
//! 0 for none, N for the last N entries.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};

/// `null` and a missing field both mean the empty value.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The container as the engine describes it in StartLogging and ReadLogs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Info {
    /// The log-opts, plus the engine's own keys.
    #[serde(rename = "Config", deserialize_with = "null_as_default")]
    pub config: HashMap<String, String>,
    #[serde(rename = "ContainerID", deserialize_with = "null_as_default")]
    pub container_id: String,
    #[serde(rename = "ContainerName", deserialize_with = "null_as_default")]
    pub container_name: String,
    #[serde(rename = "ContainerEntrypoint", deserialize_with = "null_as_default")]
    pub container_entrypoint: String,
    #[serde(rename = "ContainerArgs", deserialize_with = "null_as_default")]
    pub container_args: Vec<String>,
    #[serde(rename = "ContainerImageID", deserialize_with = "null_as_default")]
    pub container_image_id: String,
    #[serde(rename = "ContainerImageName", deserialize_with = "null_as_default")]
    pub container_image_name: String,
    #[serde(rename = "ContainerCreated", deserialize_with = "null_as_default")]
    pub container_created: String,
    /// May hold secrets. StartLogging keeps only the variables the container's `env` and
    /// `env-regex` log-opts select (they go into every document anyway) before the run table
    /// writes it; never logged.
    #[serde(
        rename = "ContainerEnv",
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub container_env: Vec<String>,
    #[serde(rename = "ContainerLabels", deserialize_with = "null_as_default")]
    pub container_labels: HashMap<String, String>,
    #[serde(rename = "LogPath", deserialize_with = "null_as_default")]
    pub log_path: String,
    #[serde(rename = "DaemonName", deserialize_with = "null_as_default")]
    pub daemon_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StartLogging {
    #[serde(rename = "File", deserialize_with = "null_as_default")]
    pub file: String,
    #[serde(rename = "Info", deserialize_with = "null_as_default")]
    pub info: Info,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StopLogging {
    #[serde(rename = "File", deserialize_with = "null_as_default")]
    pub file: String,
}

/// `docker logs` flags the plugin applies (docs/protocol.md: the key is `Config`, and `Until` exists).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ReadConfig {
    /// RFC 3339; the zero time `0001-01-01T00:00:00Z` or empty means unset.
    #[serde(rename = "Since", deserialize_with = "null_as_default")]
    pub since: String,
    #[serde(rename = "Until", deserialize_with = "null_as_default")]
    pub until: String,
    /// -1 all, 0 none, N the last N entries.
    #[serde(rename = "Tail", deserialize_with = "null_as_default")]
    pub tail: i64,
    #[serde(rename = "Follow", deserialize_with = "null_as_default")]
    pub follow: bool,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            since: String::new(),
            until: String::new(),
            tail: -1,
            follow: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReadLogs {
    #[serde(rename = "Info", deserialize_with = "null_as_default")]
    pub info: Info,
    #[serde(rename = "Config", deserialize_with = "null_as_default")]
    pub config: ReadConfig,
}

/// The answer of every endpoint but ReadLogs and Capabilities: empty `Err` is success.
#[derive(Debug, Serialize)]
pub struct ErrAnswer<'a> {
    #[serde(rename = "Err")]
    pub err: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_nulls_and_unknown_fields_are_accepted() {
        let body = r#"{"File":"/run/docker/logging/abc","Info":{"Config":null,"ContainerID":"x",
            "ContainerArgs":null,"ContainerEnv":null,"ContainerLabels":null,"NewField":{"a":1}},"Extra":1}"#;
        let req: StartLogging = serde_json::from_str(body).unwrap();
        assert_eq!(req.file, "/run/docker/logging/abc");
        assert!(req.info.config.is_empty() && req.info.container_labels.is_empty());
    }

    #[test]
    fn read_logs_defaults_to_everything_without_follow() {
        let req: ReadLogs = serde_json::from_str(r#"{"Info":null}"#).unwrap();
        assert_eq!(req.config, ReadConfig::default());
        let req: ReadLogs = serde_json::from_str(
            r#"{"Config":{"Since":"0001-01-01T00:00:00Z","Until":"2026-01-01T00:00:00+02:00","Tail":5,"Follow":true}}"#,
        )
        .unwrap();
        assert_eq!(req.config.tail, 5);
        assert!(req.config.follow);
    }

    /// The env is written only as the plugin leaves it (the variables asked for; see
    /// `plugin::strip_secrets`): an empty one is not written at all.
    #[test]
    fn an_empty_container_env_is_not_written_out() {
        let info = Info {
            container_env: Vec::new(),
            ..Info::default()
        };
        assert!(!serde_json::to_string(&info)
            .unwrap()
            .contains("ContainerEnv"));
    }
}
