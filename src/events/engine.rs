//! The Docker Engine client for events, over the engine's unix socket.
//!
//! The protocol used:
//!
//! | request | answer |
//! |---|---|
//! | `GET /_ping` | `200 OK`; the `Api-Version` header is the engine's highest API version |
//! | `GET /v<api>/events?since=<s>.<9 digits>&filters=<url-encoded json>` | `200`, then one JSON event per line, forever |
//!
//! - Versioned paths only: an unversioned path means "whatever this engine speaks", and events
//!   change shape between versions (1.52 dropped `status`, `id`, `from`). We speak
//!   [`min(engine, MAX_API)`](MAX_API); an engine that sends no usable `Api-Version` gets
//!   [`FALLBACK_API`].
//! - `since` must be `seconds.nanoseconds` (the engine accepts no other form with nanoseconds)
//!   and is inclusive: the event at exactly `since` comes again.
//! - The body is split by line ([`super::lines`]), never by read. A line that is not an event is
//!   logged with its text and skipped: one bad line must not end the stream.
//! - No read timeout on the stream: an idle engine sends nothing for hours, and a local socket
//!   does not go half-open; the engine's restart closes it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};

use super::event::{excerpt, Event};
use super::filters::Filters;
use super::lines::{Line, LineSplitter};

/// The newest API version whose event shape this code knows (Docker 29).
pub const MAX_API: ApiVersion = ApiVersion {
    major: 1,
    minor: 52,
};

/// What we speak when `/_ping` names no version: 1.41 (Docker 20.10) is the oldest engine still
/// in wide use, and its events already have `timeNano`, `scope` and `Actor`.
pub const FALLBACK_API: ApiVersion = ApiVersion {
    major: 1,
    minor: 41,
};

/// How long `/_ping` and the headers of `/events` may take. The engine answers both at once;
/// one that does not is hung, and we would rather retry than wait forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An engine API version, `<major>.<minor>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for ApiVersion {
    type Err = EngineError;

    fn from_str(text: &str) -> Result<ApiVersion, EngineError> {
        let bad = || EngineError::BadVersion {
            given: text.to_owned(),
        };
        let (major, minor) = text.trim().split_once('.').ok_or_else(bad)?;
        Ok(ApiVersion {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

impl ApiVersion {
    /// The version to speak given the `Api-Version` header of `/_ping`.
    pub fn negotiate(header: Option<&str>) -> ApiVersion {
        match header.map(str::parse::<ApiVersion>) {
            Some(Ok(engine)) => engine.min(MAX_API),
            Some(Err(error)) => {
                tracing::warn!(%error, fallback = %FALLBACK_API, "engine API version not understood");
                FALLBACK_API
            }
            None => {
                tracing::warn!(fallback = %FALLBACK_API, "engine sent no Api-Version");
                FALLBACK_API
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine API version {given:?} is not <major>.<minor>")]
    BadVersion { given: String },
    #[error("cannot reach the engine at {} for {path}: {reason}", socket.display())]
    Connect {
        socket: PathBuf,
        path: String,
        reason: String,
        /// The socket exists but nobody listens on it (ECONNREFUSED).
        refused: bool,
    },
    #[error("the engine at {} did not answer {path} within {REQUEST_TIMEOUT:?}", socket.display())]
    Timeout { socket: PathBuf, path: String },
    #[error("the engine answered {status} to {path}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("reading events from {path}: {reason}")]
    Body { path: String, reason: String },
}

impl EngineError {
    /// True when the socket refused the connection: the file is there, nobody listens on it.
    pub fn is_refused(&self) -> bool {
        matches!(self, EngineError::Connect { refused: true, .. })
    }
}

/// True if `error` or one of its sources is an ECONNREFUSED.
fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// An error with its sources: hyper's own Display says only "client error (Connect)".
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One event and the line it came from (for logs and for shipping it as the engine wrote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    pub raw: Bytes,
    pub event: Event,
}

/// The engine's API on its unix socket.
#[derive(Debug, Clone)]
pub struct EngineClient {
    socket: PathBuf,
    client: Client<UnixConnector, Empty<Bytes>>,
}

impl EngineClient {
    pub fn new(socket: impl Into<PathBuf>) -> EngineClient {
        EngineClient {
            socket: socket.into(),
            client: Client::unix(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>, EngineError> {
        let request = hyper::Request::get(Uri::new(&self.socket, path))
            .body(Empty::new())
            .map_err(|error| EngineError::Connect {
                socket: self.socket.clone(),
                path: path.into(),
                reason: error.to_string(),
                refused: false,
            })?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| EngineError::Timeout {
                socket: self.socket.clone(),
                path: path.into(),
            })?
            .map_err(|error| EngineError::Connect {
                socket: self.socket.clone(),
                path: path.into(),
                reason: with_sources(&error),
                refused: is_refused(&error),
            })?;
        if answer.status().is_success() {
            return Ok(answer);
        }
        let status = answer.status().as_u16();
        // The engine explains a refusal in a short JSON body; a body we cannot read within the
        // timeout is no reason to hide the status.
        let body = tokio::time::timeout(REQUEST_TIMEOUT, answer.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|body| excerpt(&body.to_bytes()))
            .unwrap_or_default();
        Err(EngineError::Status {
            path: path.into(),
            status,
            body,
        })
    }

    /// `GET /_ping`: the API version to speak.
    pub async fn negotiate(&self) -> Result<ApiVersion, EngineError> {
        let answer = self.get("/_ping").await?;
        let header = answer
            .headers()
            .get("Api-Version")
            .and_then(|value| value.to_str().ok());
        Ok(ApiVersion::negotiate(header))
    }

    /// Opens the event stream, replaying buffered events from `since` (unix ns, inclusive).
    pub async fn events(
        &self,
        api: ApiVersion,
        since: Option<i64>,
        filters: &Filters,
    ) -> Result<EventStream, EngineError> {
        let path = events_path(api, since, filters);
        let answer = self.get(&path).await?;
        Ok(EventStream {
            path,
            body: answer.into_body(),
            lines: LineSplitter::default(),
            skipped: 0,
        })
    }
}

/// `/v<api>/events?since=<s>.<ns>&filters=<json>`, the parts present only when given.
pub fn events_path(api: ApiVersion, since: Option<i64>, filters: &Filters) -> String {
    let mut query = Vec::new();
    if let Some(since) = since {
        query.push(format!("since={}", format_since(since)));
    }
    if !filters.is_empty() {
        query.push(format!("filters={}", url_escape(&filters.to_json())));
    }
    let mut path = format!("/v{api}/events");
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

/// `seconds.nanoseconds` with nine digits. The engine scales a shorter fraction through a
/// float64 (`1.5` is 1.5 s); with all nine digits the scale is 1 and the time exact.
pub fn format_since(time_nano: i64) -> String {
    const NANOS: i64 = 1_000_000_000;
    format!(
        "{}.{:09}",
        time_nano.div_euclid(NANOS),
        time_nano.rem_euclid(NANOS)
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters, which is always safe in a
/// query value.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The open `/events` answer, read line by line.
#[derive(Debug)]
pub struct EventStream {
    path: String,
    body: Incoming,
    lines: LineSplitter,
    skipped: u64,
}

impl EventStream {
    /// The next event; `Ok(None)` when the engine ended the stream. Lines that are not events
    /// are logged and skipped (see [`skipped`](Self::skipped)).
    pub async fn next(&mut self) -> Result<Option<EventLine>, EngineError> {
        loop {
            while let Some(line) = self.lines.next_line() {
                match line {
                    Line::Complete(raw) => match Event::parse(&raw) {
                        Ok(event) => return Ok(Some(EventLine { raw, event })),
                        Err(error) => {
                            self.skipped += 1;
                            tracing::warn!(path = %self.path, %error, "skipped a line that is not an event");
                        }
                    },
                    Line::Overlong { bytes } => {
                        self.skipped += 1;
                        tracing::warn!(path = %self.path, bytes, "skipped an event line over the size cap");
                    }
                }
            }
            let Some(frame) = self.body.frame().await else {
                if self.lines.pending() > 0 {
                    // Resuming with since= brings this event again whole.
                    tracing::debug!(path = %self.path, bytes = self.lines.pending(), "stream ended inside a line");
                }
                return Ok(None);
            };
            let frame = frame.map_err(|error| EngineError::Body {
                path: self.path.clone(),
                reason: with_sources(&error),
            })?;
            // Trailers carry no events.
            if let Ok(data) = frame.into_data() {
                self.lines.push(&data);
            }
        }
    }

    /// How many lines were skipped as not events so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_clamped_and_fall_back() {
        let v = |major, minor| ApiVersion { major, minor };
        assert_eq!(ApiVersion::negotiate(Some("1.45")), v(1, 45));
        assert_eq!(ApiVersion::negotiate(Some("1.52")), MAX_API);
        assert_eq!(ApiVersion::negotiate(Some("1.60")), MAX_API);
        assert_eq!(ApiVersion::negotiate(Some("2.0")), MAX_API);
        assert_eq!(ApiVersion::negotiate(Some("1.24")), v(1, 24));
        assert_eq!(ApiVersion::negotiate(None), FALLBACK_API);
        assert_eq!(ApiVersion::negotiate(Some("latest")), FALLBACK_API);
        assert!(v(1, 9) < v(1, 10));
        assert_eq!(
            "x.1".parse::<ApiVersion>().unwrap_err().to_string(),
            "engine API version \"x.1\" is not <major>.<minor>"
        );
    }

    #[test]
    fn since_has_nine_fraction_digits() {
        assert_eq!(format_since(0), "0.000000000");
        assert_eq!(
            format_since(1_795_320_660_000_000_005),
            "1795320660.000000005"
        );
        assert_eq!(
            format_since(1_795_320_660_123_456_789),
            "1795320660.123456789"
        );
        assert_eq!(format_since(-1), "-1.999999999");
    }

    #[test]
    fn the_events_path() {
        let none = Filters::default();
        assert_eq!(events_path(MAX_API, None, &none), "/v1.52/events");
        assert_eq!(
            events_path(FALLBACK_API, Some(1_500_000_000), &none),
            "/v1.41/events?since=1.500000000"
        );
        let filters: Filters = "type=container,label=a b=c&d".parse().unwrap();
        assert_eq!(
            events_path(MAX_API, Some(7), &filters),
            "/v1.52/events?since=0.000000007&filters=%7B%22label%22%3A%5B%22a%20b%3Dc%26d%22%5D%2C%22type%22%3A%5B%22container%22%5D%7D"
        );
    }
}
