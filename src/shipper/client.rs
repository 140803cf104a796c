//! Talking to the Elasticsearch nodes of one destination: one `elasticsearch` transport per
//! host (the crate's own multi-node pool has no failover or dead-node marking), a node that fails
//! is rested with a growing pause while the others take the load, and the server's flavor is
//! learned from `GET /` (Elasticsearch sends `X-Elastic-Product: Elasticsearch`; OpenSearch does
//! not, and refuses `require_data_stream`, so it is sent only to Elasticsearch).
//!
//! Bodies are pre-built NDJSON `Bytes` passed to `Elasticsearch::send` untouched; the transport's
//! own compression stays off and Content-Type/Content-Encoding are set here.
//!
//! Errors: [`ClientError`] when a destination cannot be set up (StartLogging refuses the
//! options), [`SendError`] when one request got no answer (the caller retries); both name the
//! option or node at fault.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;

use super::bulk::FILTER_PATH;
use super::config::{Auth, EsOptions, Verification};
use super::fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("log-opt ssl.certificate_authorities: cannot read {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("log-opt ssl.certificate_authorities: {path} holds no usable PEM certificate")]
    CaPem { path: String },
    #[error("cannot set up the connection to {host}: {reason}")]
    Build { host: String, reason: String },
}

/// Why a `_bulk` got no answer, naming the node it went to.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{node}: no client and no CA pin")]
    NoClient { node: String },
    #[error("{node}: {source}")]
    Pin {
        node: String,
        source: fingerprint::PinError,
    },
    #[error("{node}: {source}")]
    PinnedCa {
        node: String,
        source: elasticsearch::Error,
    },
    #[error(transparent)]
    Build(#[from] ClientError),
    /// The transport failed (connection refused or reset, timeout); `causes` is the error with
    /// its sources.
    #[error("{node}: {causes}")]
    Transport { node: String, causes: String },
    #[error("{node}: answer cut short: {causes}")]
    CutShort { node: String, causes: String },
}

/// The answer of one `_bulk`, or why there was none.
pub struct BulkAnswer {
    pub status: u16,
    pub body: Bytes,
    pub node: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Unknown,
    Elasticsearch,
    Other,
}

/// As the operator reads it in the log.
impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::Unknown => "unknown",
            Flavor::Elasticsearch => "Elasticsearch",
            Flavor::Other => "other (OpenSearch or compatible)",
        })
    }
}

struct Node {
    label: String,
    url: Url,
    auth: Auth,
    /// Built at start; with a CA pin (`ssl.ca_trusted_fingerprint`) at the first request, once
    /// the pinned CA is known.
    client: Mutex<Option<Elasticsearch>>,
    health: Mutex<Health>,
}

struct Health {
    rested_until: Option<Instant>,
    failures: u32,
    flavor: Flavor,
}

pub struct Client {
    options: EsOptions,
    nodes: Vec<Node>,
    next: AtomicUsize,
    timeout: Duration,
    backoff_init: Duration,
    backoff_max: Duration,
    pipeline: Option<String>,
    gzip: bool,
}

impl Client {
    pub fn new(options: &EsOptions) -> Result<Self, ClientError> {
        let mut nodes = Vec::new();
        for url in &options.hosts {
            let (url, auth) = split_credentials(url, &options.auth);
            let label = format!(
                "{}://{}:{}",
                url.scheme(),
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            );
            let client = match options.ca_fingerprint {
                Some(_) => None,
                None => Some(build(&url, &auth, options, validation(options)?, &label)?),
            };
            nodes.push(Node {
                label,
                url,
                auth,
                client: Mutex::new(client),
                health: Mutex::new(Health {
                    rested_until: None,
                    failures: 0,
                    flavor: Flavor::Unknown,
                }),
            });
        }
        Ok(Self {
            options: options.clone(),
            nodes,
            next: AtomicUsize::new(0),
            timeout: options.timeout,
            backoff_init: options.backoff_init,
            backoff_max: options.backoff_max,
            pipeline: options.pipeline.clone(),
            gzip: options.compression_level > 0,
        })
    }

    /// Sends one `_bulk` to the next healthy node. `Err` is a transport failure (connection
    /// refused or reset, timeout): the node is rested and the caller retries.
    /// Sends one bulk body to the next healthy node. `pipeline`: apply the `pipeline` option
    /// (not for the dead-letter index: the pipeline may be what refused the document).
    pub async fn bulk(
        &self,
        body: Bytes,
        data_stream: bool,
        pipeline: bool,
    ) -> Result<BulkAnswer, SendError> {
        let at = self.pick();
        let node = &self.nodes[at];
        let client = match self.node_client(node).await {
            Ok(client) => client,
            Err(error) => {
                self.node_failed(node);
                return Err(error);
            }
        };
        let flavor = self.flavor(node, &client).await;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        if self.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let mut query: Vec<(&str, &str)> = vec![("filter_path", FILTER_PATH)];
        if let Some(name) = self.pipeline.as_ref().filter(|_| pipeline) {
            query.push(("pipeline", name));
        }
        if data_stream && flavor == Flavor::Elasticsearch {
            query.push(("require_data_stream", "true"));
        }
        let sent = client
            .send(
                Method::Post,
                "/_bulk",
                headers,
                Some(&query),
                Some(body),
                Some(self.timeout),
            )
            .await;
        let result = match sent {
            Ok(response) => {
                let status = response.status_code().as_u16();
                match response.bytes().await {
                    Ok(body) => Ok(BulkAnswer {
                        status,
                        body,
                        node: node.label.clone(),
                    }),
                    Err(error) => Err(SendError::CutShort {
                        node: node.label.clone(),
                        causes: with_causes(&error),
                    }),
                }
            }
            Err(error) => Err(SendError::Transport {
                node: node.label.clone(),
                causes: with_causes(&error),
            }),
        };
        match &result {
            Ok(answer) if answer.status < 500 && answer.status != 429 => self.node_ok(node),
            _ => self.node_failed(node),
        }
        result
    }

    /// Round-robin over nodes not resting; when all rest, the one whose rest ends first.
    fn pick(&self) -> usize {
        let now = Instant::now();
        let n = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut soonest = (start % n, None::<Instant>);
        for k in 0..n {
            let at = (start + k) % n;
            let health = lock(&self.nodes[at].health);
            match health.rested_until {
                Some(until) if until > now => {
                    if soonest.1.is_none_or(|s| until < s) {
                        soonest = (at, Some(until));
                    }
                }
                _ => return at,
            }
        }
        soonest.0
    }

    fn node_ok(&self, node: &Node) {
        let mut health = lock(&node.health);
        health.failures = 0;
        health.rested_until = None;
    }

    fn node_failed(&self, node: &Node) {
        let mut health = lock(&node.health);
        health.failures = health.failures.saturating_add(1);
        let pause = self
            .backoff_init
            .saturating_mul(1 << health.failures.min(16))
            .min(self.backoff_max);
        health.rested_until = Some(Instant::now() + pause);
    }

    /// True when at least one node is not resting.
    pub fn any_node_up(&self) -> bool {
        let now = Instant::now();
        self.nodes
            .iter()
            .any(|n| lock(&n.health).rested_until.is_none_or(|u| u <= now))
    }

    /// The node's client, built now if it waits for its pinned CA.
    async fn node_client(&self, node: &Node) -> Result<Elasticsearch, SendError> {
        if let Some(client) = lock(&node.client).clone() {
            return Ok(client);
        }
        let pin = self
            .options
            .ca_fingerprint
            .ok_or_else(|| SendError::NoClient {
                node: node.label.clone(),
            })?;
        let der = fingerprint::pinned_certificate(
            &node.url,
            pin,
            self.timeout.min(Duration::from_secs(10)),
        )
        .await
        .map_err(|source| SendError::Pin {
            node: node.label.clone(),
            source,
        })?;
        let ca = Certificate::from_der(&der).map_err(|source| SendError::PinnedCa {
            node: node.label.clone(),
            source,
        })?;
        let client = build(
            &node.url,
            &node.auth,
            &self.options,
            CertificateValidation::Full(ca),
            &node.label,
        )?;
        tracing::info!(node = %node.label, "trusting the CA pinned by ssl.ca_trusted_fingerprint");
        *lock(&node.client) = Some(client.clone());
        Ok(client)
    }

    async fn flavor(&self, node: &Node, client: &Elasticsearch) -> Flavor {
        let known = lock(&node.health).flavor;
        if known != Flavor::Unknown {
            return known;
        }
        let answer = client
            .send::<&[u8], ()>(
                Method::Get,
                "/",
                HeaderMap::new(),
                None,
                None,
                Some(self.timeout.min(Duration::from_secs(10))),
            )
            .await;
        let flavor = match answer {
            Ok(response) if response.status_code().is_success() => {
                let header = response
                    .headers()
                    .get("x-elastic-product")
                    .is_some_and(|v| v.as_bytes() == b"Elasticsearch");
                let body = response.bytes().await.unwrap_or_default();
                flavor_of(header, &body)
            }
            // Not known yet: ask again next time; meanwhile send what every flavor accepts.
            _ => return Flavor::Unknown,
        };
        tracing::info!(node = %node.label, %flavor, "Elasticsearch node identified");
        lock(&node.health).flavor = flavor;
        flavor
    }
}

/// Elasticsearch says so in `X-Elastic-Product`; but OpenSearch (and imitations of it) in
/// compatibility mode send that header too, and refuse `require_data_stream`: the body's
/// `version.distribution: "opensearch"` wins over the header.
fn flavor_of(elastic_header: bool, body: &[u8]) -> Flavor {
    let distribution = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["version"]["distribution"].as_str().map(str::to_owned));
    match distribution.as_deref() {
        Some("opensearch") => Flavor::Other,
        _ if elastic_header => Flavor::Elasticsearch,
        _ => Flavor::Other,
    }
}

/// An error and its sources, `: `-separated: the transport's own message ("error sending
/// request") hides the cause an operator needs (refused connection, unknown certificate issuer).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Credentials written into a host URL move into the Authorization header (unless other
/// credentials are set), and out of the URL, so they never show in a log line.
fn split_credentials(url: &Url, auth: &Auth) -> (Url, Auth) {
    let mut clean = url.clone();
    let user = url.username().to_owned();
    let password = url.password().map(str::to_owned);
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    let auth = match auth {
        Auth::None if !user.is_empty() => Auth::Basic {
            user,
            password: super::config::Secret::from(password.unwrap_or_default()),
        },
        other => other.clone(),
    };
    (clean, auth)
}

/// One node's client: no sniffing, our own compression, the options' timeout, proxy and
/// credentials.
fn build(
    url: &Url,
    auth: &Auth,
    options: &EsOptions,
    validation: CertificateValidation,
    label: &str,
) -> Result<Elasticsearch, ClientError> {
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url.clone()))
        .request_body_compression(false)
        .enable_meta_header(false)
        .timeout(options.timeout)
        .cert_validation(validation);
    builder = match &options.proxy_url {
        Some(proxy) => builder.proxy(proxy.clone(), None, None),
        None => builder.disable_proxy(),
    };
    builder = match auth {
        Auth::None => builder,
        Auth::Basic { user, password } => builder.auth(Credentials::Basic(
            user.clone(),
            password.expose().to_owned(),
        )),
        Auth::ApiKey(key) => builder.auth(Credentials::EncodedApiKey(key.expose().to_owned())),
    };
    let transport = builder.build().map_err(|e| ClientError::Build {
        host: label.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Elasticsearch::new(transport))
}

fn validation(options: &EsOptions) -> Result<CertificateValidation, ClientError> {
    if options.verification == Verification::None {
        return Ok(CertificateValidation::None);
    }
    let Some(path) = &options.ca_file else {
        return Ok(CertificateValidation::Default);
    };
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
        path: shown.clone(),
        source,
    })?;
    let certs = Certificate::from_pem(&pem).map_err(|_| ClientError::CaPem { path: shown })?;
    Ok(CertificateValidation::Full(certs))
}

#[cfg(test)]
mod flavor_tests {
    use super::*;

    /// Regression: osmem-server (OpenSearch 3.8) sends `X-Elastic-Product: Elasticsearch`, and
    /// the plugin sent it `require_data_stream`, which it refuses with a 400.
    #[test]
    fn opensearch_is_told_by_its_body_even_with_the_elastic_header() {
        let opensearch = br#"{"version":{"distribution":"opensearch","number":"3.8.0"}}"#;
        let elastic = br#"{"version":{"number":"8.15.3","build_flavor":"default"}}"#;
        assert_eq!(flavor_of(true, opensearch), Flavor::Other);
        assert_eq!(flavor_of(true, elastic), Flavor::Elasticsearch);
        assert_eq!(flavor_of(false, elastic), Flavor::Other);
        assert_eq!(flavor_of(true, b"not json"), Flavor::Elasticsearch);
    }
}
