//! Where and how a container's lines are shipped: the Elasticsearch log-opts (and the plugin
//! settings that give them host-wide defaults) as one typed value. Containers whose
//! `EsOptions` are equal share one destination. The options are parsed into it by
//! `options::es`, beside the other log-opts; this module only holds and shows the value.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use elasticsearch::http::Url;

use crate::shipper::attributes::Attributes;
use crate::shipper::index::IndexTemplate;
use crate::shipper::json_lines::JsonOptions;
use crate::shipper::multiline::MultilineOptions;
use crate::shipper::statics::Statics;

/// A credential: compared and hashed like a string, never shown.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Auth {
    None,
    Basic {
        user: String,
        password: Secret,
    },
    /// base64(id:key), as sent in `Authorization: ApiKey ...`.
    ApiKey(Secret),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verification {
    Full,
    None,
}

/// Debug is written out below: hosts and proxy may carry `user:password@`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EsOptions {
    pub hosts: Vec<Url>,
    pub auth: Auth,
    pub index: IndexTemplate,
    pub pipeline: Option<String>,
    /// Also index refused documents here (a name without placeholders).
    pub dead_letter_index: Option<String>,
    pub agent_name: Option<String>,
    pub timeout: Duration,
    pub backoff_init: Duration,
    pub backoff_max: Duration,
    pub proxy_url: Option<Url>,
    pub ca_file: Option<PathBuf>,
    /// `ssl.ca_trusted_fingerprint`: SHA-256 of a CA certificate to trust (see `fingerprint`).
    pub ca_fingerprint: Option<[u8; 32]>,
    pub verification: Verification,
    pub bulk_max_bytes: usize,
    pub flush_interval: Duration,
    pub workers: usize,
    pub compression_level: u32,
    /// `tags` and `fields`: what every document of the container carries besides its line.
    pub statics: Statics,
    /// Docker's `tag`, `labels`, `env` and their regex forms (set by `LogOptions::parse`).
    pub attributes: Attributes,
    /// `json.*`: JSON lines decoded into fields (`None`: off).
    pub json: Option<JsonOptions>,
    /// `multiline.*`: lines merged into one document (`None`: off).
    pub multiline: Option<MultilineOptions>,
}

impl EsOptions {
    /// A name for logs and metrics: the hosts, without credentials.
    pub fn label(&self) -> String {
        self.hosts
            .iter()
            .map(|u| {
                format!(
                    "{}://{}:{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for EsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.hosts.iter().map(without_credentials).collect();
        f.debug_struct("EsOptions")
            .field("hosts", &hosts)
            .field("auth", &self.auth)
            .field("index", &self.index)
            .field("pipeline", &self.pipeline)
            .field("dead_letter_index", &self.dead_letter_index)
            .field("agent_name", &self.agent_name)
            .field("timeout", &self.timeout)
            .field("backoff_init", &self.backoff_init)
            .field("backoff_max", &self.backoff_max)
            .field(
                "proxy_url",
                &self.proxy_url.as_ref().map(without_credentials),
            )
            .field("ca_file", &self.ca_file)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("verification", &self.verification)
            .field("bulk_max_bytes", &self.bulk_max_bytes)
            .field("flush_interval", &self.flush_interval)
            .field("workers", &self.workers)
            .field("compression_level", &self.compression_level)
            .field("statics", &self.statics)
            .field("attributes", &self.attributes)
            .field("json", &self.json)
            .field("multiline", &self.multiline)
            .finish()
    }
}

/// A URL as it may be shown: a `user:password@` part replaced by `<redacted>@`.
fn without_credentials(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.username().is_empty() && shown.password().is_none() {
        return shown.to_string();
    }
    let _ = shown.set_password(None);
    let _ = shown.set_username("redacted");
    shown.to_string().replacen("redacted@", "<redacted>@", 1)
}
