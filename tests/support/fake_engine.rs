//! A Docker Engine imitation for the events collector: `/_ping` and `/v<api>/events` on a unix
//! socket, answering as the engine does (docs/events.md):
//!
//! - `/_ping`: `200 OK` with `Api-Version` (omitted when set to `None`).
//! - `/v<api>/events`: `400` when `<api>` is newer than the engine's version or a filter key is
//!   unknown; else `200` and a chunked stream of JSON lines. With `since=<s>.<ns>` the buffered
//!   events at or after it (inclusive) come first; with `until` the buffered events up to it come
//!   and the stream ends (the real engine also waits for live events until then; no test needs
//!   that); without `until` live events follow forever.
//! - `filters` (URL-encoded JSON, `{"key":["v",...]}`): `type`, `event` (exact, or a prefix for
//!   `health_status`, `exec_create`, `exec_start`), `label` (`k` or `k=v`, all must match),
//!   `container` (id prefix or name), `image` (reference, image name or container image).
//!   Values of one key are ORed, keys ANDed. The engine's other keys answer 400 here: no test
//!   uses them.
//! - A buffer of the last 256 events, lost on [`FakeEngine::restart`], as the engine's.
//! - Lines are written in awkward chunks: a replay as one run cut every 97 bytes, each live event
//!   in three pieces, so the client's line reassembly is exercised on every connection.
//!
//! Events are built with [`FakeEvent`] in the engine's shapes; versions before 1.52 add the
//! legacy `status`, `id` and `from` as older engines did.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

/// The engine keeps its last 256 events (daemon/events: `eventsLimit`).
pub const ENGINE_BUFFER: usize = 256;

/// 2026-11-22T04:11:00Z: the fake clock's start.
pub const CLOCK_START: i64 = 1_795_320_660_000_000_000;

/// One event as the engine would publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeEvent {
    pub kind: String,
    pub action: String,
    pub actor_id: String,
    pub attributes: BTreeMap<String, String>,
    pub scope: String,
    /// 0 until pushed: the fake clock gives it a time then, unless [`at`](Self::at) set one.
    pub time_nano: i64,
}

impl FakeEvent {
    pub fn new(kind: &str, action: &str, actor_id: &str) -> FakeEvent {
        FakeEvent {
            kind: kind.into(),
            action: action.into(),
            actor_id: actor_id.into(),
            attributes: BTreeMap::new(),
            scope: "local".into(),
            time_nano: 0,
        }
    }

    /// A container event: `name` and `image` always, as the engine sends them.
    pub fn container(action: &str, id: &str, name: &str, image: &str) -> FakeEvent {
        FakeEvent::new("container", action, id)
            .attr("name", name)
            .attr("image", image)
    }

    /// `die` with its `exitCode` and `execDuration`.
    pub fn die(id: &str, name: &str, image: &str, exit_code: i32) -> FakeEvent {
        FakeEvent::container("die", id, name, image)
            .attr("exitCode", &exit_code.to_string())
            .attr("execDuration", "3")
    }

    /// `pull`: the actor is the reference pulled, `name` the repository.
    pub fn image_pull(reference: &str) -> FakeEvent {
        let name = reference
            .rsplit_once(':')
            .map_or(reference, |(name, _)| name);
        FakeEvent::new("image", "pull", reference).attr("name", name)
    }

    /// `tag` and `delete`: the actor is the image id, `name` the reference concerned.
    pub fn image(action: &str, image_id: &str, name: &str) -> FakeEvent {
        FakeEvent::new("image", action, image_id).attr("name", name)
    }

    /// `connect`/`disconnect`: the actor is the network, the container an attribute.
    pub fn network(action: &str, network_id: &str, network: &str, container: &str) -> FakeEvent {
        FakeEvent::new("network", action, network_id)
            .attr("container", container)
            .attr("name", network)
            .attr("type", "bridge")
    }

    pub fn attr(mut self, key: &str, value: &str) -> FakeEvent {
        self.attributes.insert(key.into(), value.into());
        self
    }

    pub fn at(mut self, time_nano: i64) -> FakeEvent {
        self.time_nano = time_nano;
        self
    }

    /// The JSON line (without its newline) an engine speaking `api` writes.
    pub fn to_json(&self, api: &str) -> String {
        let mut line = json!({
            "Type": self.kind,
            "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": self.attributes},
            "scope": self.scope,
            "time": self.time_nano.div_euclid(1_000_000_000),
            "timeNano": self.time_nano,
        });
        if version_before(api, "1.52") && matches!(self.kind.as_str(), "container" | "image") {
            line["status"] = self.action.as_str().into();
            line["id"] = self.actor_id.as_str().into();
            if let Some(image) = self.attributes.get("image") {
                line["from"] = image.as_str().into();
            }
        }
        line.to_string()
    }
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn version_before(version: &str, than: &str) -> bool {
    parse_version(version) < parse_version(than)
}

/// What a client asked `/events` for, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsRequest {
    pub path: String,
    /// The `<api>` of `/v<api>/events`.
    pub version: String,
    pub since: Option<String>,
    pub until: Option<String>,
    /// The `filters` parameter, URL-decoded.
    pub filters: Option<String>,
}

type Filters = BTreeMap<String, Vec<String>>;

struct Subscriber {
    filters: Filters,
    sender: mpsc::UnboundedSender<Bytes>,
}

struct State {
    api_version: Option<String>,
    buffer: VecDeque<(FakeEvent, Bytes)>,
    subscribers: Vec<Subscriber>,
    connections: Vec<AbortHandle>,
    requests: Vec<EventsRequest>,
    clock: i64,
    unreachable: bool,
}

/// The fake engine; stops when dropped.
pub struct FakeEngine {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    accept: Option<JoinHandle<()>>,
}

impl FakeEngine {
    /// Starts an engine speaking API 1.52 on `socket`. Needs a tokio runtime.
    pub fn start(socket: &Path) -> FakeEngine {
        FakeEngine::start_with_version(socket, Some("1.52"))
    }

    pub fn start_with_version(socket: &Path, api_version: Option<&str>) -> FakeEngine {
        let state = State {
            api_version: api_version.map(str::to_owned),
            buffer: VecDeque::new(),
            subscribers: Vec::new(),
            connections: Vec::new(),
            requests: Vec::new(),
            clock: CLOCK_START,
            unreachable: false,
        };
        let mut engine = FakeEngine {
            socket: socket.to_owned(),
            state: Arc::new(Mutex::new(state)),
            accept: None,
        };
        engine.listen();
        engine
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake engine state")
    }

    fn listen(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket).expect("bind the fake engine socket");
        let state = Arc::clone(&self.state);
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let mut guard = state.lock().expect("fake engine state");
                if guard.unreachable {
                    // Accepted and closed at once: the client sees a dead engine.
                    continue;
                }
                let service_state = Arc::clone(&state);
                let service = service_fn(move |request| {
                    let state = Arc::clone(&service_state);
                    async move { Ok::<_, Infallible>(answer(&state, request)) }
                });
                let connection = tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                guard.connections.push(connection.abort_handle());
            }
        }));
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Publishes `event`, giving it the next time of the fake clock unless it has one; returns
    /// it with its time.
    pub fn push(&self, mut event: FakeEvent) -> FakeEvent {
        let mut state = self.lock();
        if event.time_nano == 0 {
            // Odd steps, so times have all their digits.
            state.clock += 1_000_123;
            event.time_nano = state.clock;
        } else {
            state.clock = state.clock.max(event.time_nano);
        }
        let api = state.api_version.clone().unwrap_or_else(|| "1.41".into());
        let line = Bytes::from(format!("{}\n", event.to_json(&api)));
        if state.buffer.len() == ENGINE_BUFFER {
            state.buffer.pop_front();
        }
        state.buffer.push_back((event.clone(), line.clone()));
        state.subscribers.retain(|subscriber| {
            !matches(&subscriber.filters, &event) || send_in_pieces(&subscriber.sender, &line)
        });
        event
    }

    /// Writes `bytes` to every client as they are, unbuffered: for garbage lines.
    pub fn push_raw(&self, bytes: &[u8]) {
        let bytes = Bytes::copy_from_slice(bytes);
        self.lock()
            .subscribers
            .retain(|subscriber| subscriber.sender.send(bytes.clone()).is_ok());
    }

    /// Cuts every connection, as a crash would (no end of chunked body).
    pub fn drop_connections(&self) {
        let mut state = self.lock();
        for connection in state.connections.drain(..) {
            connection.abort();
        }
        state.subscribers.clear();
    }

    /// While set, connections are accepted and closed at once (and open ones are cut), but the
    /// buffer keeps filling: a stalled engine, or a network path that went away.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
        if unreachable {
            self.drop_connections();
        }
    }

    /// Stops serving and removes the socket.
    pub fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.drop_connections();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Stops and starts again on the same socket with an empty buffer, as an engine restart.
    /// The clock and the request log go on.
    pub fn restart(&mut self) {
        self.stop();
        self.lock().buffer.clear();
        self.listen();
    }

    /// Every `/events` request so far, oldest first.
    pub fn requests(&self) -> Vec<EventsRequest> {
        self.lock().requests.clone()
    }

    /// Clients currently streaming live events.
    pub fn subscribers(&self) -> usize {
        let mut state = self.lock();
        state
            .subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        state.subscribers.len()
    }

    /// Waits until `count` clients stream live events, at most 10 s.
    pub async fn wait_subscribers(&self, count: usize) {
        self.wait_for("subscribers", || self.subscribers() >= count)
            .await;
    }

    /// Waits until `count` `/events` requests were made, at most 10 s.
    pub async fn wait_requests(&self, count: usize) {
        self.wait_for("events requests", || self.requests().len() >= count)
            .await;
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what} on the fake engine");
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut answer = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *answer.status_mut() = status;
    answer
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    text(status, json!({ "message": message }).to_string())
}

fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let mut state = state.lock().expect("fake engine state");
    if path == "/_ping" {
        let mut answer = text(StatusCode::OK, "OK".into());
        if let Some(version) = &state.api_version {
            let value = version.parse().expect("header value");
            answer.headers_mut().insert("Api-Version", value);
        }
        return answer;
    }
    let Some(version) = path
        .strip_prefix("/v")
        .and_then(|rest| rest.strip_suffix("/events"))
        .map(str::to_owned)
    else {
        return error(StatusCode::NOT_FOUND, "page not found");
    };
    let engine_version = state.api_version.clone().unwrap_or_else(|| "1.41".into());
    if parse_version(&version).is_none() || version_before(&engine_version, &version) {
        let message = format!(
            "client version {version} is too new. Maximum supported API version is {engine_version}"
        );
        return error(StatusCode::BAD_REQUEST, &message);
    }
    let query = request.uri().query().unwrap_or("");
    let get = |key: &str| query_value(query, key);
    let recorded = EventsRequest {
        path: request.uri().to_string(),
        version: version.clone(),
        since: get("since"),
        until: get("until"),
        filters: get("filters"),
    };
    state.requests.push(recorded.clone());
    let filters: Filters = match recorded.filters.as_deref().map(serde_json::from_str) {
        None => Filters::new(),
        Some(Ok(filters)) => filters,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("invalid filters: {e}")),
    };
    if let Some(key) = filters
        .keys()
        .find(|key| !["type", "event", "label", "container", "image"].contains(&key.as_str()))
    {
        return error(StatusCode::BAD_REQUEST, &format!("invalid filter '{key}'"));
    }
    let since = recorded.since.as_deref().map(parse_timestamp);
    let until = recorded.until.as_deref().map(parse_timestamp);
    let (sender, receiver) = mpsc::unbounded_channel();
    if let Some(since) = since {
        let replay: Vec<u8> = state
            .buffer
            .iter()
            .filter(|(event, _)| event.time_nano >= since)
            .filter(|(event, _)| until.is_none_or(|until| event.time_nano <= until))
            .filter(|(event, _)| matches(&filters, event))
            .flat_map(|(_, line)| line.iter().copied())
            .collect();
        for chunk in replay.chunks(97) {
            let _ = sender.send(Bytes::copy_from_slice(chunk));
        }
    }
    // Registered under the same lock as the replay, so no event falls between the two.
    if until.is_none() {
        state.subscribers.push(Subscriber { filters, sender });
    }
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), receiver))
    });
    let mut answer = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    answer.headers_mut().insert(
        "Content-Type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    answer
}

/// Three pieces cut inside the line; false when the client is gone.
fn send_in_pieces(sender: &mpsc::UnboundedSender<Bytes>, line: &Bytes) -> bool {
    let (first, second) = (line.len() / 3, line.len() * 2 / 3);
    [
        line.slice(..first),
        line.slice(first..second),
        line.slice(second..),
    ]
    .into_iter()
    .all(|piece| sender.send(piece).is_ok())
}

/// `secs[.frac]` as the engine reads it: the fraction scaled to nanoseconds.
fn parse_timestamp(text: &str) -> i64 {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().expect("since/until seconds");
    let mut nanos = fraction.to_owned();
    nanos.truncate(9);
    while nanos.len() < 9 {
        nanos.push('0');
    }
    seconds * 1_000_000_000 + nanos.parse::<i64>().expect("since/until fraction")
}

/// The value of `key` in a query string, percent-decoded.
fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .map(percent_decode)
}

/// `%XX` escapes decoded; a `%` not followed by two hex digits is kept as it is. (`+` stays a
/// plus: the collector escapes spaces as `%20`.)
fn percent_decode(text: &str) -> String {
    let mut pieces = text.split('%');
    let mut out = pieces.next().unwrap_or_default().as_bytes().to_vec();
    for piece in pieces {
        match piece
            .get(..2)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            Some(byte) => {
                out.push(byte);
                out.extend_from_slice(&piece.as_bytes()[2..]);
            }
            None => {
                out.push(b'%');
                out.extend_from_slice(piece.as_bytes());
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The engine's filter semantics for the keys the fake knows.
fn matches(filters: &Filters, event: &FakeEvent) -> bool {
    let attribute = |key: &str| event.attributes.get(key).map(String::as_str);
    filters.iter().all(|(key, values)| {
        let any = |test: &dyn Fn(&str) -> bool| values.iter().any(|value| test(value));
        match key.as_str() {
            "type" => any(&|value| value == event.kind),
            "event" => any(&|value| {
                value == event.action
                    || (["health_status", "exec_create", "exec_start"].contains(&value)
                        && event.action.starts_with(value))
            }),
            "label" => values.iter().all(|label| match label.split_once('=') {
                Some((name, wanted)) => attribute(name) == Some(wanted),
                None => attribute(label).is_some(),
            }),
            "container" => any(&|value| {
                event.kind == "container"
                    && (event.actor_id.starts_with(value) || attribute("name") == Some(value))
            }),
            "image" => any(&|value| {
                event.actor_id == value
                    || attribute("image") == Some(value)
                    || (event.kind == "image" && attribute("name") == Some(value))
            }),
            _ => false,
        }
    })
}
