//! An in-process Elasticsearch imitation for the shipper's tests, with fault injection.
//!
//! It answers the few endpoints the shipper uses, with the shapes Elasticsearch 8.15 documents
//! (see `docs/elasticsearch.md`), keeps every accepted document in memory, counts what
//! it saw in [`Stats`], and can misbehave on demand ([`Faults`]): per-item 429/400/5xx, a
//! cluster not ready for the documents (item 403 privileges or write block, 404 no index, a
//! missing pipeline), a whole `_bulk` answered 429/503/502/401/403/413, 413 above a number of
//! items, slow answers, cut connections and answers cut halfway through their body. It exists
//! because no real Elasticsearch can be installed here and the compatible servers that can
//! (noida-db, osmem-server) cannot fail on demand.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /`, `HEAD /` | cluster info; `X-Elastic-Product: Elasticsearch` unless [`Flavor::OpenSearch`] |
//! | `POST`/`PUT /_bulk`, `/<target>/_bulk` | NDJSON bulk, gzip/deflate bodies, `filter_path`, `pipeline` |
//! | `GET`/`POST /_refresh`, `/<index>/_refresh` | `{"_shards":..}` (documents are visible at once anyway) |
//! | `GET`/`POST /_count`, `/<index>/_count` | `{"count":N,..}`; comma lists and `*` wildcards |
//! | anything else | 404 `{"error":"no handler found for uri [..] and method [..]","status":404}` |
//!
//! Authentication, when configured, is checked first on every request (401 with ES's
//! `security_exception` body and `WWW-Authenticate` headers). Faults apply to `_bulk` only.
//!
//! Order of work in a `_bulk`: count it; drop the connection if a drop fault is due (nothing
//! stored); check Content-Type (406), decode the body (400), its size (413, on the decompressed
//! body), the final newline and the action lines (400); answer a due whole-request fault or the
//! `max_docs_per_request` 413; then answer each item (an item fault, else the real outcome). A
//! `delay` is slept after all that, just before answering: the documents are already stored, as
//! with a slow cluster whose answer arrives after the client gave up (a retry then sees 409s).
//! A `cut_answer` fault likewise comes after the documents are stored: the status line and
//! headers (with the whole body's Content-Length) go out with half the body, then the connection
//! is closed, as when a proxy or the node dies mid-answer.
//!
//! Two ways to run it: [`EsServer::start`] spawns onto the caller's tokio runtime (use a
//! `multi_thread` test runtime if the test also blocks); [`EsServer::start_blocking`] brings its
//! own one-thread runtime, for plain `#[test]` functions. Dropping the server stops it: the
//! listener closes and open connections are cut.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;

/// `http.max_content_length`'s default: 100 MiB.
pub const DEFAULT_MAX_CONTENT_LENGTH: usize = 100 * 1024 * 1024;

const ES_VERSION: &str = "8.15.0";
const OPENSEARCH_VERSION: &str = "2.19.1";
const CLUSTER_UUID: &str = "Qm9ndXNDbHVzdGVyVVVJRA";

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Serve HTTPS with a fresh self-signed CA ([`EsServer::ca_pem`]) and a server certificate
    /// for `127.0.0.1` and `localhost`.
    pub tls: bool,
    pub auth: Option<Auth>,
    pub flavor: Flavor,
    /// Judged on the decompressed body; above it `_bulk` answers 413 with an empty body.
    pub max_content_length: usize,
    /// The port to listen on; 0 takes a free one. A fixed port lets a test bring a server "back"
    /// where a plugin already looks for it.
    pub port: u16,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            tls: false,
            auth: None,
            flavor: Flavor::Elasticsearch,
            max_content_length: DEFAULT_MAX_CONTENT_LENGTH,
            port: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Elasticsearch 8.15.0: `X-Elastic-Product` header, `document_parsing_exception`.
    Elasticsearch,
    /// OpenSearch 2.19.1: no product header, `distribution: "opensearch"`,
    /// `mapper_parsing_exception`, `rejected_execution_exception`, and a whole-request 400 for
    /// `require_data_stream` (OpenSearch has no such parameter).
    OpenSearch,
}

#[derive(Clone, Debug)]
pub enum Auth {
    /// `Authorization: Basic base64(user:password)`.
    Basic { user: String, password: String },
    /// `Authorization: ApiKey base64(id:key)`.
    ApiKey { id: String, key: String },
}

/// Misbehaviour on demand; [`EsServer::set_faults`] replaces it and restarts its counters.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// `(status, n)`: every n-th item (counted over all items since `set_faults`) answers
    /// `status`: 429 `es_rejected_execution_exception`, 400 `document_parsing_exception`,
    /// 404 `index_not_found_exception`, 503 `unavailable_shards_exception`, others `exception`.
    pub item_status_every: Option<(u16, usize)>,
    /// `(status, text)`: every item whose source line contains `text` answers `status`.
    pub item_status_matching: Option<(u16, String)>,
    /// The cluster is not ready for the documents (a role without `create_doc`, a write block,
    /// auto-create off, a missing ingest pipeline): every `create`/`index` item answers the
    /// error Elasticsearch gives for it, until cleared, and nothing is stored.
    pub item_not_ready: Option<NotReady>,
    /// How often one `(index, _id)` may be failed by the two item faults above before it is
    /// accepted, so that retries succeed; 0 = no limit (a permanent failure). Items without an
    /// `_id` are not tracked and fail whenever chosen.
    pub item_fail_times: usize,
    /// Answer whole `_bulk` requests with this status and the body ES sends for it
    /// (413: empty; 502/504: a proxy's HTML page; others: ES error JSON).
    pub whole_status: Option<u16>,
    /// Only the next N `_bulk` requests get `whole_status`; 0 = until cleared.
    pub whole_status_times: usize,
    /// Answer 413 (empty body) to a `_bulk` with more items than this.
    pub max_docs_per_request: Option<usize>,
    /// Sleep this long before answering a `_bulk` (after storing its documents).
    pub delay: Option<Duration>,
    /// Read a `_bulk` request, then close the connection without answering (nothing stored).
    pub drop_connection: bool,
    /// Only the next N `_bulk` requests are dropped; 0 = until cleared.
    pub drop_times: usize,
    /// Answer `_bulk` 200 with a body that is not the bulk answer, after storing the documents
    /// (a proxy or a broken node mangling answers): the client cannot know what was written.
    pub garbled: Option<Garbled>,
    /// Only the next N `_bulk` answers are garbled; 0 = until cleared.
    pub garbled_times: usize,
    /// Store a `_bulk`'s documents, send the answer's status, headers and half its body, then
    /// close the connection (a reset mid-answer).
    pub cut_answer: bool,
    /// Only the next N `_bulk` answers are cut; 0 = until cleared.
    pub cut_times: usize,
}

/// What [`Faults::item_not_ready`] answers to each item, as Elasticsearch 8 does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// 403 `security_exception`: the user's roles lack `create_doc` (or `auto_configure`) on
    /// the index.
    Privileges,
    /// 403 `cluster_block_exception`: `index.blocks.write` is set on the index.
    WriteBlock,
    /// 404 `index_not_found_exception`: the index does not exist and
    /// `action.auto_create_index` is false.
    NoIndex,
    /// 400 `illegal_argument_exception` `pipeline with id [..] does not exist`: the item's
    /// pipeline (the request's `pipeline`, else the index's default pipeline) is missing.
    NoPipeline,
}

impl NotReady {
    /// The item's status and error object.
    fn answer(self, index: &str, pipeline: Option<&str>) -> (u16, Value) {
        match self {
            NotReady::Privileges => (
                403,
                json!({
                    "type": "security_exception",
                    "reason": format!("action [indices:data/write/bulk[s]] is unauthorized for user [shipper] with effective roles [logs_reader] on indices [{index}], this action is granted by the index privileges [create_doc,create,index,write,all]")
                }),
            ),
            NotReady::WriteBlock => (
                403,
                json!({
                    "type": "cluster_block_exception",
                    "reason": format!("index [{index}] blocked by: [FORBIDDEN/8/index write (api)];")
                }),
            ),
            NotReady::NoIndex => (
                404,
                index_not_found(index)["error"]["root_cause"][0].clone(),
            ),
            NotReady::NoPipeline => (
                400,
                json!({
                    "type": "illegal_argument_exception",
                    "reason": format!("pipeline with id [{}] does not exist", pipeline.unwrap_or("logs-docker@custom"))
                }),
            ),
        }
    }
}

/// How [`Faults::garbled`] mangles a `_bulk` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Garbled {
    /// An HTML page with status 200 and `Content-Type: application/json`.
    NotJson,
    /// The real answer cut in half (a well-framed HTTP body holding half a JSON document).
    Truncated,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredDoc {
    /// The index or data stream named by the request (no `.ds-` backing index).
    pub index: String,
    pub id: String,
    pub source: Value,
    /// The action's `pipeline`, else the request's `pipeline` parameter; `_none` is `None`.
    pub pipeline: Option<String>,
}

/// What the server saw. Counters only grow (none are reset by `set_faults` or `clear_docs`).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Every HTTP request, whatever its path or answer (dropped ones included).
    pub requests: usize,
    /// Every `_bulk` request, whatever its answer.
    pub bulk_requests: usize,
    /// Items of each `_bulk` whose body parsed, in arrival order (including those then refused
    /// whole by a fault): shows how a client split its batches.
    pub bulk_sizes: Vec<usize>,
    /// Items that got a per-item answer.
    pub items_seen: usize,
    /// Per-item answers by status (201, 200, 409, 429, ...).
    pub item_statuses: BTreeMap<u16, usize>,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub conflicts_409: usize,
    /// Items failed by an item fault, by status.
    pub rejected_by_fault: BTreeMap<u16, usize>,
    /// `_bulk` requests answered by `whole_status` or `max_docs_per_request`, by status.
    pub whole_faults: BTreeMap<u16, usize>,
    /// `_bulk` requests refused on their own merits (400 bad body, 405, 406, 413 too large), by status.
    pub bulk_refused: BTreeMap<u16, usize>,
    pub dropped_connections: usize,
    /// `_bulk` answers mangled by [`Faults::garbled`].
    pub garbled_answers: usize,
    /// `_bulk` answers cut halfway through their body.
    pub cut_answers: usize,
    pub delayed_requests: usize,
    /// `_bulk` requests with `Content-Encoding: gzip`.
    pub gzip_requests: usize,
    /// Query parameters of the last `_bulk` request, percent-decoded.
    pub last_query_params: BTreeMap<String, String>,
    /// Headers of the last `_bulk` request, names lowercased (repeated ones joined with ", ").
    pub last_bulk_headers: BTreeMap<String, String>,
    /// Requests refused 401 (missing or wrong credentials).
    pub auth_failures: usize,
    pub tls_handshake_failures: usize,
}

/// The running server; dropping it stops it.
pub struct EsServer {
    port: u16,
    tls: Option<TlsMaterial>,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EsServer {
    /// Binds 127.0.0.1 on a free port and serves from tasks on the current tokio runtime.
    pub async fn start(opts: ServerOptions) -> EsServer {
        let listener = TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "bind 127.0.0.1:{} for the Elasticsearch imitation: {e}",
                    opts.port
                )
            });
        let port = listener.local_addr().expect("local address").port();
        let tls = opts.tls.then(TlsMaterial::generate);
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config.clone()));
        let shared = Arc::new(Shared {
            flavor: opts.flavor,
            auth: opts.auth,
            max_content_length: opts.max_content_length,
            state: Mutex::new(State::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        EsServer {
            port,
            tls,
            shared,
            accept,
            runtime: None,
        }
    }

    /// Like [`start`](Self::start) but on a runtime of its own (one worker thread), for tests
    /// without one. Panics if called from inside a tokio runtime: use `start` there.
    pub fn start_blocking(opts: ServerOptions) -> EsServer {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "EsServer::start_blocking brings its own runtime; inside async code use EsServer::start"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("es-server")
            .enable_all()
            .build()
            .expect("runtime for the Elasticsearch imitation");
        let mut server = runtime.block_on(Self::start(opts));
        server.runtime = Some(runtime);
        server
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with TLS (no trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the server's certificate, when TLS is on.
    pub fn ca_pem(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.ca_pem.clone())
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER, no separators (what
    /// `ssl.ca_trusted_fingerprint` takes), when TLS is on.
    pub fn ca_fingerprint_sha256(&self) -> Option<String> {
        self.tls.as_ref().map(|t| {
            sha2::Sha256::digest(&t.ca_der)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }

    /// Every stored document in arrival order (an `index` over an existing `_id` replaces it
    /// in place; a `delete` removes it).
    pub fn docs(&self) -> Vec<StoredDoc> {
        self.shared.lock().docs.clone()
    }

    pub fn doc_count(&self) -> usize {
        self.shared.lock().docs.len()
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Replaces the faults and restarts their counters (item counter, per-id failure counts,
    /// `whole_status_times`, `drop_times`, `cut_times`). `Faults::default()` clears them.
    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.shared.lock();
        state.faults = faults;
        state.item_counter = 0;
        state.fail_counts.clear();
        state.whole_given = 0;
        state.drops_given = 0;
        state.garbled_given = 0;
        state.cuts_given = 0;
    }

    /// Forgets every document and index (a later `create` of the same `_id` succeeds again).
    pub fn clear_docs(&self) {
        let mut state = self.shared.lock();
        state.docs.clear();
        state.versions.clear();
        state.indices.clear();
    }
}

impl Drop for EsServer {
    fn drop(&mut self) {
        // The accept task owns the listener and the connection tasks (a JoinSet): aborting it
        // closes the one and aborts the others.
        self.accept.abort();
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                // Waits for the worker, so the port is closed when drop returns.
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}

struct TlsMaterial {
    ca_pem: String,
    ca_der: Vec<u8>,
    server_config: Arc<rustls::ServerConfig>,
}

impl TlsMaterial {
    fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "es-server test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "es-server");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .expect("server TLS config");
        TlsMaterial {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            server_config: Arc::new(server_config),
        }
    }
}

struct Shared {
    flavor: Flavor,
    auth: Option<Auth>,
    max_content_length: usize,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide its own failure behind a
        // poisoned-lock panic in every later request.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct State {
    faults: Faults,
    docs: Vec<StoredDoc>,
    /// `(index, _id)` -> `_version`.
    versions: HashMap<(String, String), u64>,
    indices: HashSet<String>,
    seq_nos: HashMap<String, u64>,
    auto_ids: u64,
    item_counter: usize,
    fail_counts: HashMap<(String, String), usize>,
    whole_given: usize,
    drops_given: usize,
    garbled_given: usize,
    cuts_given: usize,
    stats: Stats,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("es_server: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => serve(TokioIo::new(stream), shared).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve(TokioIo::new(tls), shared).await,
                    Err(_) => shared.lock().stats.tls_handshake_failures += 1,
                },
            }
        });
    }
}

async fn serve<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, DropConnection>(served(handle(shared, req).await?).await) }
    });
    // An error here is a client that went away or a connection we dropped on purpose.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

type Answer = Response<Full<Bytes>>;

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// Marks an answer to be cut halfway through its body (the `cut_answer` fault).
#[derive(Clone, Copy)]
struct CutAnswer;

/// An answer's body as it goes out: whole, or half of it and then the connection closed.
enum Served {
    Whole(Full<Bytes>),
    Cut {
        half: Option<Bytes>,
        /// Lets hyper flush the headers and the half before the connection is closed.
        pause: std::pin::Pin<Box<tokio::time::Sleep>>,
    },
}

impl hyper::body::Body for Served {
    type Data = Bytes;
    type Error = DropConnection;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, DropConnection>>> {
        use std::future::Future as _;
        use std::task::Poll;
        match self.get_mut() {
            Served::Whole(full) => std::pin::Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Served::Cut { half, pause } => match half.take() {
                Some(bytes) => Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes)))),
                None => pause.as_mut().poll(cx).map(|()| Some(Err(DropConnection))),
            },
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Served::Whole(full) => full.size_hint(),
            // The Content-Length header set by `served` promises the whole body.
            Served::Cut { .. } => hyper::body::SizeHint::default(),
        }
    }
}

/// The answer as sent: answers marked [`CutAnswer`] promise their whole length and send half.
async fn served(answer: Answer) -> Response<Served> {
    if answer.extensions().get::<CutAnswer>().is_none() {
        return answer.map(Served::Whole);
    }
    let (mut parts, body) = answer.into_parts();
    let whole = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    parts.headers.insert(
        hyper::header::CONTENT_LENGTH,
        HeaderValue::from(whole.len()),
    );
    let half = whole.slice(..whole.len() / 2);
    Response::from_parts(
        parts,
        Served::Cut {
            half: Some(half),
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
        },
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, DropConnection> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    shared.lock().stats.requests += 1;
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let filter = query.get("filter_path").map(|f| FilterPath::parse(f));
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let reply = Reply {
        flavor: shared.flavor,
        filter,
    };

    if let Some(refusal) = check_auth(&shared, &parts.headers, &path, &reply) {
        shared.lock().stats.auth_failures += 1;
        return Ok(refusal);
    }

    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        [] if method == Method::GET || method == Method::HEAD => Ok(root(&reply, &method)),
        ["_bulk"] => bulk(&shared, &reply, &parts, body, None, query).await,
        [target, "_bulk"] => bulk(&shared, &reply, &parts, body, Some(target), query).await,
        ["_refresh"] | [_, "_refresh"] if method == Method::GET || method == Method::POST => {
            Ok(reply.json(200, json!({"_shards": shards()})))
        }
        ["_count"] if method == Method::GET || method == Method::POST => {
            Ok(count(&shared, &reply, "*"))
        }
        [target, "_count"] if method == Method::GET || method == Method::POST => {
            Ok(count(&shared, &reply, target))
        }
        _ => Ok(reply.raw_json(
            404,
            json!({
                "error": format!("no handler found for uri [{path}] and method [{method}]"),
                "status": 404
            }),
        )),
    }
}

fn check_auth(shared: &Shared, headers: &HeaderMap, path: &str, reply: &Reply) -> Option<Answer> {
    let auth = shared.auth.as_ref()?;
    let given = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(given) = given else {
        return Some(reply.unauthorized(format!(
            "missing authentication credentials for REST request [{path}]"
        )));
    };
    let (scheme, credentials) = given.split_once(' ').unwrap_or((given, ""));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let accepted = match auth {
        Auth::Basic { user, password } => {
            scheme.eq_ignore_ascii_case("basic")
                && decoded.as_deref() == Some(format!("{user}:{password}").as_str())
        }
        Auth::ApiKey { id, key } => {
            scheme.eq_ignore_ascii_case("apikey")
                && decoded.as_deref() == Some(format!("{id}:{key}").as_str())
        }
    };
    if accepted {
        return None;
    }
    let reason = if scheme.eq_ignore_ascii_case("basic") {
        let user = decoded
            .as_deref()
            .and_then(|d| d.split_once(':'))
            .map_or("", |(u, _)| u);
        format!("unable to authenticate user [{user}] for REST request [{path}]")
    } else {
        "unable to authenticate with provided credentials and anonymous access is not allowed for this request".to_owned()
    };
    Some(reply.unauthorized(reason))
}

fn root(reply: &Reply, method: &Method) -> Answer {
    let body = match reply.flavor {
        Flavor::Elasticsearch => json!({
            "name": "es-server",
            "cluster_name": "es-server-test",
            "cluster_uuid": CLUSTER_UUID,
            "version": {
                "number": ES_VERSION,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": "1a77947f34deddb41af25e6f0ddb8e830159c179",
                "build_date": "2024-08-05T10:05:34.233336849Z",
                "build_snapshot": false,
                "lucene_version": "9.11.1",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "You Know, for Search"
        }),
        Flavor::OpenSearch => json!({
            "name": "es-server",
            "cluster_name": "es-server-test",
            "cluster_uuid": CLUSTER_UUID,
            "version": {
                "distribution": "opensearch",
                "number": OPENSEARCH_VERSION,
                "build_type": "tar",
                "build_hash": "fd9a9d90df25bea1af2c6a85039692e815b894f5",
                "build_date": "2025-02-27T01:22:24.665339607Z",
                "build_snapshot": false,
                "lucene_version": "9.12.1",
                "minimum_wire_compatibility_version": "7.10.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "The OpenSearch Project: https://opensearch.org/"
        }),
    };
    let mut answer = reply.json(200, body);
    if method == Method::HEAD {
        *answer.body_mut() = Full::new(Bytes::new());
    }
    answer
}

fn count(shared: &Shared, reply: &Reply, target: &str) -> Answer {
    let state = shared.lock();
    let patterns: Vec<&str> = target.split(',').map(str::trim).collect();
    for pattern in &patterns {
        let concrete = !pattern.contains('*') && *pattern != "_all";
        if concrete && !state.indices.contains(*pattern) {
            return reply.json(404, index_not_found(pattern));
        }
    }
    let count = state
        .docs
        .iter()
        .filter(|d| patterns.iter().any(|p| *p == "_all" || glob(p, &d.index)))
        .count();
    reply.json(
        200,
        json!({
            "count": count,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// _bulk

#[derive(Clone, Copy, PartialEq)]
enum OpKind {
    Create,
    Index,
    Delete,
    Update,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Index => "index",
            OpKind::Delete => "delete",
            OpKind::Update => "update",
        }
    }
}

struct Op {
    kind: OpKind,
    index: String,
    id: Option<String>,
    pipeline: Option<String>,
    /// The source line, for every kind but `delete`.
    source: Option<Vec<u8>>,
}

/// Parameters an action line may carry (ES 8's `BulkRequestParser`); anything else, `_type`
/// included, is a whole-request 400.
const ACTION_PARAMS: &[&str] = &[
    "_index",
    "_id",
    "routing",
    "pipeline",
    "require_alias",
    "require_data_stream",
    "if_seq_no",
    "if_primary_term",
    "version",
    "version_type",
    "dynamic_templates",
    "retry_on_conflict",
    "_source",
    "list_executed_pipelines",
];

async fn bulk(
    shared: &Shared,
    reply: &Reply,
    parts: &hyper::http::request::Parts,
    body: Bytes,
    target: Option<&str>,
    query: BTreeMap<String, String>,
) -> Result<Answer, DropConnection> {
    let started = Instant::now();
    let encoding = header_str(&parts.headers, "content-encoding")
        .trim()
        .to_ascii_lowercase();
    let (drop, cut, delay) = {
        let mut state = shared.lock();
        state.stats.bulk_requests += 1;
        if encoding == "gzip" {
            state.stats.gzip_requests += 1;
        }
        state.stats.last_query_params = query.clone();
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        state.stats.last_bulk_headers = headers;
        let faults = state.faults.clone();
        let drop = faults.drop_connection
            && (faults.drop_times == 0 || state.drops_given < faults.drop_times);
        if drop {
            state.drops_given += 1;
            state.stats.dropped_connections += 1;
        }
        let cut = !drop
            && faults.cut_answer
            && (faults.cut_times == 0 || state.cuts_given < faults.cut_times);
        if cut {
            state.cuts_given += 1;
            state.stats.cut_answers += 1;
        }
        if faults.delay.is_some() {
            state.stats.delayed_requests += 1;
        }
        (drop, cut, faults.delay)
    };
    let answer = if drop {
        None
    } else {
        let mut answer = bulk_answer(
            shared, reply, parts, &body, target, &query, &encoding, started,
        );
        if cut {
            answer.extensions_mut().insert(CutAnswer);
        }
        Some(answer)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer.ok_or(DropConnection)
}

#[allow(clippy::too_many_arguments)]
fn bulk_answer(
    shared: &Shared,
    reply: &Reply,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    target: Option<&str>,
    query: &BTreeMap<String, String>,
    encoding: &str,
    started: Instant,
) -> Answer {
    let ops = match parse_bulk(shared, reply, parts, body, target, query, encoding) {
        Ok(ops) => ops,
        Err(answer) => {
            *shared
                .lock()
                .stats
                .bulk_refused
                .entry(answer.status().as_u16())
                .or_default() += 1;
            return answer;
        }
    };

    let mut state = shared.lock();
    state.stats.bulk_sizes.push(ops.len());
    let faults = state.faults.clone();
    if let Some(status) = faults.whole_status {
        if faults.whole_status_times == 0 || state.whole_given < faults.whole_status_times {
            state.whole_given += 1;
            *state.stats.whole_faults.entry(status).or_default() += 1;
            return reply.whole_fault(status, target.unwrap_or("_all"));
        }
    }
    if let Some(max) = faults.max_docs_per_request {
        if ops.len() > max {
            *state.stats.whole_faults.entry(413).or_default() += 1;
            return empty(413);
        }
    }

    let default_pipeline = query.get("pipeline").cloned();
    let require_data_stream = query.get("require_data_stream").map(String::as_str) == Some("true");
    let mut errors = false;
    let mut items = Vec::with_capacity(ops.len());
    for op in ops {
        let item = state.item(
            reply.flavor,
            &faults,
            op,
            &default_pipeline,
            require_data_stream,
        );
        let status = item["status"].as_u64().unwrap_or(0) as u16;
        errors |= status >= 300;
        state.stats.items_seen += 1;
        *state.stats.item_statuses.entry(status).or_default() += 1;
        items.push(item);
    }
    drop(state);

    let items: Vec<Value> = items
        .into_iter()
        .map(|mut item| {
            let kind = item
                .as_object_mut()
                .and_then(|i| i.remove("_op"))
                .and_then(|k| k.as_str().map(str::to_owned))
                .expect("every item names its action");
            json!({ kind: item })
        })
        .collect();
    let mut answer = json!({
        "errors": errors,
        "took": started.elapsed().as_millis() as u64,
        "items": items,
    });
    if default_pipeline.is_some() {
        answer["ingest_took"] = json!(0);
    }
    let garbled = {
        let mut state = shared.lock();
        let due = faults.garbled_times == 0 || state.garbled_given < faults.garbled_times;
        let garbled = faults.garbled.filter(|_| due);
        if garbled.is_some() {
            state.garbled_given += 1;
            state.stats.garbled_answers += 1;
        }
        garbled
    };
    match garbled {
        None => reply.json(200, answer),
        Some(how) => reply.garbled(answer, how),
    }
}

// The error is the answer to send, built once at the point of failure; boxing it would only
// add noise to a test server.
#[allow(clippy::result_large_err)]
fn parse_bulk(
    shared: &Shared,
    reply: &Reply,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    target: Option<&str>,
    query: &BTreeMap<String, String>,
    encoding: &str,
) -> Result<Vec<Op>, Answer> {
    if parts.method != Method::POST && parts.method != Method::PUT {
        return Err(reply.raw_json(
            405,
            json!({
                "error": format!(
                    "Incorrect HTTP method for uri [{}] and method [{}], allowed: [POST, PUT]",
                    parts.uri, parts.method
                ),
                "status": 405
            }),
        ));
    }
    if reply.flavor == Flavor::OpenSearch && query.contains_key("require_data_stream") {
        return Err(reply.error(
            400,
            "illegal_argument_exception",
            &format!(
                "request [{}] contains unrecognized parameter: [require_data_stream]",
                parts.uri.path()
            ),
        ));
    }
    let content_type = header_str(&parts.headers, "content-type");
    if content_type.is_empty() {
        return Err(reply.raw_json(
            406,
            json!({"error": "Content-Type header is missing", "status": 406}),
        ));
    }
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !matches!(
        media.as_str(),
        "application/json"
            | "application/x-ndjson"
            | "application/vnd.elasticsearch+json"
            | "application/vnd.elasticsearch+x-ndjson"
    ) {
        return Err(reply.raw_json(
            406,
            json!({
                "error": format!("Content-Type header [{content_type}] is not supported"),
                "status": 406
            }),
        ));
    }

    let limit = shared.max_content_length;
    let body: Vec<u8> = match encoding {
        "" | "identity" => body.to_vec(),
        "gzip" | "deflate" => {
            let mut decoded = Vec::new();
            let read = if encoding == "gzip" {
                flate2::read::MultiGzDecoder::new(body)
                    .take(limit as u64 + 1)
                    .read_to_end(&mut decoded)
            } else {
                flate2::read::ZlibDecoder::new(body)
                    .take(limit as u64 + 1)
                    .read_to_end(&mut decoded)
            };
            if let Err(error) = read {
                return Err(reply.error(
                    400,
                    "illegal_argument_exception",
                    &format!("failed to decompress the {encoding} request body: {error}"),
                ));
            }
            decoded
        }
        other => {
            return Err(reply.error(
                400,
                "illegal_argument_exception",
                &format!("unsupported Content-Encoding [{other}]"),
            ))
        }
    };
    if body.len() > limit {
        return Err(empty(413));
    }
    if body.is_empty() {
        return Err(reply.error(
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: no requests added;",
        ));
    }
    if body.last() != Some(&b'\n') {
        return Err(reply.error(
            400,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        ));
    }

    let lines: Vec<&[u8]> = body[..body.len() - 1].split(|b| *b == b'\n').collect();
    let mut ops = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let line = lines[i];
        i += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let malformed = |reason: String| reply.error(400, "illegal_argument_exception", &reason);
        let action: Value = serde_json::from_slice(line).map_err(|e| {
            reply.error(
                400,
                "x_content_parse_exception",
                &format!("[{line_no}:{}] {e}", e.column()),
            )
        })?;
        let Some(action) = action.as_object().filter(|o| o.len() == 1) else {
            return Err(malformed(format!(
                "Malformed action/metadata line [{line_no}], expected START_OBJECT with one field"
            )));
        };
        let (name, meta) = action.iter().next().expect("one field");
        let kind = match name.as_str() {
            "create" => OpKind::Create,
            "index" => OpKind::Index,
            "delete" => OpKind::Delete,
            "update" => OpKind::Update,
            other => {
                return Err(malformed(format!(
                    "Malformed action/metadata line [{line_no}], expected field [create], [delete], [index] or [update] but found [{other}]"
                )))
            }
        };
        let Some(meta) = meta.as_object() else {
            return Err(malformed(format!(
                "Malformed action/metadata line [{line_no}], expected START_OBJECT but found [{meta}]"
            )));
        };
        if let Some(unknown) = meta.keys().find(|k| !ACTION_PARAMS.contains(&k.as_str())) {
            return Err(malformed(format!(
                "Action/metadata line [{line_no}] contains an unknown parameter [{unknown}]"
            )));
        }
        let text = |key: &str| match meta.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let Some(index) = text("_index").or_else(|| target.map(str::to_owned)) else {
            return Err(reply.error(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing;",
            ));
        };
        let source = if kind == OpKind::Delete {
            None
        } else {
            let Some(source) = lines.get(i) else {
                return Err(malformed(format!(
                    "The bulk request must be terminated by a newline [\\n]: no source line for the action/metadata line [{line_no}]"
                )));
            };
            i += 1;
            Some(source.to_vec())
        };
        ops.push(Op {
            kind,
            index,
            id: text("_id"),
            pipeline: text("pipeline"),
            source,
        });
    }
    if ops.is_empty() {
        return Err(reply.error(
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: no requests added;",
        ));
    }
    Ok(ops)
}

impl State {
    /// Answers one item; the answer carries its action name under `_op` for the caller.
    fn item(
        &mut self,
        flavor: Flavor,
        faults: &Faults,
        op: Op,
        default_pipeline: &Option<String>,
        require_data_stream: bool,
    ) -> Value {
        self.item_counter += 1;
        let op_name = op.kind.name();
        let failed = |status: u16, error: Value, id: Option<&str>| json!({"_op": op_name, "_index": op.index, "_id": id, "status": status, "error": error});

        if let Some(not_ready) = faults.item_not_ready {
            if op.kind != OpKind::Delete {
                let pipeline = op.pipeline.as_deref().or(default_pipeline.as_deref());
                let (status, error) = not_ready.answer(&op.index, pipeline);
                *self.stats.rejected_by_fault.entry(status).or_default() += 1;
                return failed(status, error, op.id.as_deref());
            }
        }
        let chosen_by_every = faults
            .item_status_every
            .filter(|(_, n)| *n > 0 && self.item_counter % n == 0)
            .map(|(status, _)| status);
        let chosen_by_match = faults
            .item_status_matching
            .as_ref()
            .and_then(|(status, text)| {
                let source = op.source.as_deref().unwrap_or(b"");
                (!text.is_empty() && source.windows(text.len()).any(|w| w == text.as_bytes()))
                    .then_some(*status)
            });
        if let Some(status) = chosen_by_match.or(chosen_by_every) {
            let allowed = match &op.id {
                None => true,
                Some(id) => {
                    let count = self
                        .fail_counts
                        .entry((op.index.clone(), id.clone()))
                        .or_default();
                    let allowed = faults.item_fail_times == 0 || *count < faults.item_fail_times;
                    if allowed {
                        *count += 1;
                    }
                    allowed
                }
            };
            if allowed {
                *self.stats.rejected_by_fault.entry(status).or_default() += 1;
                let id = op.id.clone().unwrap_or_else(|| self.next_auto_id());
                return failed(
                    status,
                    item_fault_error(flavor, status, &op.index, &id),
                    Some(&id),
                );
            }
        }

        if let Err(reason) = check_index_name(&op.index) {
            return failed(
                400,
                json!({"type": "invalid_index_name_exception", "reason": reason,
                       "index_uuid": "_na_", "index": op.index}),
                op.id.as_deref(),
            );
        }
        if require_data_stream && op.kind == OpKind::Index {
            return failed(
                400,
                json!({"type": "illegal_argument_exception",
                       "reason": "only write ops with an op_type of create are allowed in data streams"}),
                op.id.as_deref(),
            );
        }

        let pipeline = op
            .pipeline
            .clone()
            .or_else(|| default_pipeline.clone())
            .filter(|p| p != "_none");
        match op.kind {
            OpKind::Create | OpKind::Index => {
                let source_line = op.source.as_deref().unwrap_or(b"");
                let id = op.id.clone().unwrap_or_else(|| self.next_auto_id());
                let source = match parse_source(source_line) {
                    Ok(source) => source,
                    Err(reason) => {
                        return failed(400, parse_error(flavor, &op.index, &id, &reason), Some(&id))
                    }
                };
                let key = (op.index.clone(), id.clone());
                if let Some(version) = self.versions.get(&key).copied() {
                    if op.kind == OpKind::Create {
                        self.stats.conflicts_409 += 1;
                        return failed(409, version_conflict(&op.index, &id, version), Some(&id));
                    }
                    let doc = StoredDoc {
                        index: op.index.clone(),
                        id: id.clone(),
                        source,
                        pipeline,
                    };
                    if let Some(slot) = self
                        .docs
                        .iter_mut()
                        .find(|d| d.index == doc.index && d.id == doc.id)
                    {
                        *slot = doc;
                    }
                    self.versions.insert(key, version + 1);
                    self.stats.updated += 1;
                    return self.success(op_name, &op.index, &id, version + 1, "updated", 200);
                }
                self.docs.push(StoredDoc {
                    index: op.index.clone(),
                    id: id.clone(),
                    source,
                    pipeline,
                });
                self.versions.insert(key, 1);
                self.indices.insert(op.index.clone());
                self.stats.created += 1;
                self.success(op_name, &op.index, &id, 1, "created", 201)
            }
            OpKind::Delete => {
                let Some(id) = op.id.clone() else {
                    return failed(
                        400,
                        json!({"type": "action_request_validation_exception",
                        "reason": "Validation Failed: 1: id is missing;"}),
                        None,
                    );
                };
                let key = (op.index.clone(), id.clone());
                match self.versions.remove(&key) {
                    Some(version) => {
                        self.docs.retain(|d| !(d.index == op.index && d.id == id));
                        self.stats.deleted += 1;
                        self.success(op_name, &op.index, &id, version + 1, "deleted", 200)
                    }
                    None => {
                        let mut answer = self.success(op_name, &op.index, &id, 1, "not_found", 404);
                        answer["_version"] = json!(1);
                        answer
                    }
                }
            }
            OpKind::Update => {
                let Some(id) = op.id.clone() else {
                    return failed(
                        400,
                        json!({"type": "action_request_validation_exception",
                        "reason": "Validation Failed: 1: id is missing;"}),
                        None,
                    );
                };
                let request = match parse_source(op.source.as_deref().unwrap_or(b"")) {
                    Ok(request) => request,
                    Err(reason) => {
                        return failed(
                            400,
                            json!({"type": "x_content_parse_exception", "reason": reason}),
                            Some(&id),
                        )
                    }
                };
                let Some(partial) = request.get("doc").filter(|d| d.is_object()).cloned() else {
                    return failed(
                        400,
                        json!({"type": "action_request_validation_exception",
                        "reason": "Validation Failed: 1: script or doc is missing;"}),
                        Some(&id),
                    );
                };
                let key = (op.index.clone(), id.clone());
                match self.versions.get(&key).copied() {
                    Some(version) => {
                        if let Some(doc) = self
                            .docs
                            .iter_mut()
                            .find(|d| d.index == op.index && d.id == id)
                        {
                            merge(&mut doc.source, partial);
                        }
                        self.versions.insert(key, version + 1);
                        self.stats.updated += 1;
                        self.success(op_name, &op.index, &id, version + 1, "updated", 200)
                    }
                    None if request.get("doc_as_upsert") == Some(&Value::Bool(true)) => {
                        self.docs.push(StoredDoc {
                            index: op.index.clone(),
                            id: id.clone(),
                            source: partial,
                            pipeline,
                        });
                        self.versions.insert(key, 1);
                        self.indices.insert(op.index.clone());
                        self.stats.created += 1;
                        self.success(op_name, &op.index, &id, 1, "created", 201)
                    }
                    None => failed(
                        404,
                        json!({"type": "document_missing_exception",
                               "reason": format!("[{id}]: document missing"),
                               "index_uuid": index_uuid(&op.index), "shard": "0", "index": op.index}),
                        Some(&id),
                    ),
                }
            }
        }
    }

    fn success(
        &mut self,
        op: &str,
        index: &str,
        id: &str,
        version: u64,
        result: &str,
        status: u16,
    ) -> Value {
        let seq = self.seq_nos.entry(index.to_owned()).or_default();
        let seq_no = *seq;
        *seq += 1;
        json!({
            "_op": op,
            "_index": index,
            "_id": id,
            "_version": version,
            "result": result,
            "_shards": shards(),
            "_seq_no": seq_no,
            "_primary_term": 1,
            "status": status
        })
    }

    /// 20 characters, like the ids Elasticsearch generates.
    fn next_auto_id(&mut self) -> String {
        self.auto_ids += 1;
        format!("auto{:016}", self.auto_ids)
    }
}

fn parse_source(line: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(line) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!(
            "[1:1] failed to parse: the document must be a JSON object, found [{other}]"
        )),
        Err(e) => Err(format!(
            "[{}:{}] failed to parse: {e}",
            e.line(),
            e.column()
        )),
    }
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// Elasticsearch's index name rules (the ones a shipper can get wrong).
fn check_index_name(index: &str) -> Result<(), String> {
    let bad = index.is_empty()
        || index.starts_with(['_', '-', '+'])
        || index == "."
        || index == ".."
        || index.chars().any(|c| {
            c.is_uppercase()
                || matches!(
                    c,
                    '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
                )
        })
        || index.len() > 255;
    if bad {
        Err(format!(
            "Invalid index name [{index}], must be lowercase, must not start with '_', '-' or '+', and must not contain \\, /, *, ?, \", <, >, |, space, ',', # or :"
        ))
    } else {
        Ok(())
    }
}

fn index_uuid(index: &str) -> String {
    let digest = sha2::Sha256::digest(index.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn version_conflict(index: &str, id: &str, version: u64) -> Value {
    json!({
        "type": "version_conflict_engine_exception",
        "reason": format!("[{id}]: version conflict, document already exists (current version [{version}])"),
        "index_uuid": index_uuid(index),
        "shard": "0",
        "index": index
    })
}

fn parse_error(flavor: Flavor, index: &str, id: &str, reason: &str) -> Value {
    let kind = match flavor {
        Flavor::Elasticsearch => "document_parsing_exception",
        Flavor::OpenSearch => "mapper_parsing_exception",
    };
    json!({
        "type": kind,
        "reason": format!("{reason} (document with id '{id}')"),
        "caused_by": {"type": "json_parse_exception", "reason": reason},
        "index_uuid": index_uuid(index),
        "shard": "0",
        "index": index
    })
}

fn item_fault_error(flavor: Flavor, status: u16, index: &str, id: &str) -> Value {
    match status {
        429 => json!({
            "type": match flavor {
                Flavor::Elasticsearch => "es_rejected_execution_exception",
                Flavor::OpenSearch => "rejected_execution_exception",
            },
            "reason": "rejected execution of primary operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, primary_operation_bytes=512, max_coordinating_and_primary_bytes=107374182]"
        }),
        400 => {
            let reason = format!(
                "[1:42] failed to parse field [message] of type [long] in document with id '{id}'. Preview of field's value: 'not a number'"
            );
            let kind = match flavor {
                Flavor::Elasticsearch => "document_parsing_exception",
                Flavor::OpenSearch => "mapper_parsing_exception",
            };
            json!({
                "type": kind,
                "reason": reason,
                "caused_by": {"type": "illegal_argument_exception",
                              "reason": "For input string: \"not a number\""},
                "index_uuid": index_uuid(index), "shard": "0", "index": index
            })
        }
        404 => index_not_found(index)["error"]["root_cause"][0].clone(),
        503 => json!({
            "type": "unavailable_shards_exception",
            "reason": format!("[{index}][0] primary shard is not active Timeout: [1m], request: [BulkShardRequest [[{index}][0]] containing [1] requests]")
        }),
        _ => {
            json!({"type": "exception", "reason": format!("injected item failure with status {status}")})
        }
    }
}

fn index_not_found(index: &str) -> Value {
    let cause = json!({
        "type": "index_not_found_exception",
        "reason": format!("no such index [{index}]"),
        "resource.type": "index_or_alias",
        "resource.id": index,
        "index_uuid": "_na_",
        "index": index
    });
    let mut error = cause.clone();
    error["root_cause"] = json!([cause]);
    json!({"error": error, "status": 404})
}

// ---------------------------------------------------------------------------------------------
// Answers

struct Reply {
    flavor: Flavor,
    filter: Option<FilterPath>,
}

impl Reply {
    /// A JSON answer; `filter_path` applies to 2xx answers only (errors stay whole, to keep
    /// failures readable in test output).
    fn json(&self, status: u16, body: Value) -> Answer {
        let body = match (&self.filter, status) {
            (Some(filter), 200..=299) => filter.apply(body),
            _ => body,
        };
        self.raw_json(status, body)
    }

    fn raw_json(&self, status: u16, body: Value) -> Answer {
        let mut answer = Response::new(Full::new(Bytes::from(body.to_string())));
        *answer.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
        let headers = answer.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        // Genuine ES adds the product header to every answer but 401/403, which its security
        // layer sends before the request reaches the code that adds it.
        if self.flavor == Flavor::Elasticsearch && status != 401 && status != 403 {
            headers.insert(
                "x-elastic-product",
                HeaderValue::from_static("Elasticsearch"),
            );
        }
        answer
    }

    /// A 200 whose body is not the bulk answer `body` would have been (see [`Garbled`]).
    fn garbled(&self, body: Value, how: Garbled) -> Answer {
        let whole = match &self.filter {
            Some(filter) => filter.apply(body),
            None => body,
        }
        .to_string();
        let text = match how {
            Garbled::NotJson => "<html><body><h1>Welcome to nginx!</h1></body></html>\n".to_owned(),
            Garbled::Truncated => {
                let cut = (0..=whole.len() / 2)
                    .rev()
                    .find(|&i| whole.is_char_boundary(i))
                    .unwrap_or(0);
                whole[..cut].to_owned()
            }
        };
        let mut answer = self.raw_json(200, Value::Null);
        *answer.body_mut() = Full::new(Bytes::from(text));
        answer
    }

    /// ES's error shape: `{"error":{"root_cause":[..],"type":..,"reason":..},"status":N}`.
    fn error(&self, status: u16, kind: &str, reason: &str) -> Answer {
        self.raw_json(status, error_body(status, kind, reason))
    }

    fn unauthorized(&self, reason: String) -> Answer {
        if self.flavor == Flavor::OpenSearch {
            // The OpenSearch security plugin answers in plain text.
            let mut answer = Response::new(Full::new(Bytes::from_static(b"Unauthorized")));
            *answer.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            answer.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"OpenSearch Security\""),
            );
            return answer;
        }
        let challenges = [
            "Basic realm=\"security\", charset=\"UTF-8\"",
            "Bearer realm=\"security\"",
            "ApiKey",
        ];
        let mut body = error_body(401, "security_exception", &reason);
        body["error"]["header"] = json!({ "WWW-Authenticate": challenges });
        body["error"]["root_cause"][0]["header"] = json!({ "WWW-Authenticate": challenges });
        let mut answer = self.raw_json(401, body);
        for challenge in challenges {
            answer
                .headers_mut()
                .append("www-authenticate", HeaderValue::from_static(challenge));
        }
        answer
    }

    fn whole_fault(&self, status: u16, target: &str) -> Answer {
        match status {
            413 => empty(413),
            401 => self.unauthorized("unable to authenticate user [elastic] for REST request [/_bulk]".to_owned()),
            403 => self.error(403, "security_exception", &format!(
                "action [indices:data/write/bulk[s]] is unauthorized for user [elastic] with effective roles [viewer] on indices [{target}], this action is granted by the index privileges [create_doc,create,delete,index,write,all]"
            )),
            429 => self.error(429, "es_rejected_execution_exception",
                "rejected execution of coordinating operation [coordinating_and_primary_bytes=107374000, replica_bytes=0, all_bytes=107374000, coordinating_operation_bytes=5242880, max_coordinating_and_primary_bytes=107374182]"),
            503 => self.error(503, "cluster_block_exception",
                "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];"),
            500 => self.error(500, "exception", "injected failure of the whole bulk request"),
            502 | 504 => {
                // Elasticsearch never says 502/504: a proxy in front of it does, in HTML.
                let title = if status == 502 { "502 Bad Gateway" } else { "504 Gateway Time-out" };
                let page = format!("<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n");
                let mut answer = Response::new(Full::new(Bytes::from(page)));
                *answer.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                answer.headers_mut().insert("content-type", HeaderValue::from_static("text/html"));
                answer
            }
            other => self.error(other, "exception", &format!("injected failure with status {other}")),
        }
    }
}

/// A single node: one primary per shard, its replica unassigned.
fn shards() -> Value {
    json!({"total": 2, "successful": 1, "failed": 0})
}

fn error_body(status: u16, kind: &str, reason: &str) -> Value {
    json!({
        "error": {
            "root_cause": [{"type": kind, "reason": reason}],
            "type": kind,
            "reason": reason
        },
        "status": status
    })
}

/// What ES's HTTP layer sends for a body over `http.max_content_length`: no body, no headers.
fn empty(status: u16) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    answer
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            (0..=text.len())
                .filter(|i| text.is_char_boundary(*i))
                .any(|i| glob(rest, &text[i..]))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// filter_path

/// ES's `filter_path`: comma-separated dotted paths; `*` matches within one key, `**` any
/// number of levels; arrays are transparent; a leading `-` excludes. As in ES, objects and
/// array elements left with nothing are dropped, so `items.*.error` keeps only failed items
/// (their positions are lost: add `items.*.status` to keep one entry per item).
struct FilterPath {
    include: Vec<Vec<String>>,
    exclude: Vec<Vec<String>>,
}

impl FilterPath {
    fn parse(spec: &str) -> FilterPath {
        let mut filter = FilterPath {
            include: Vec::new(),
            exclude: Vec::new(),
        };
        for path in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (list, path) = match path.strip_prefix('-') {
                Some(path) => (&mut filter.exclude, path),
                None => (&mut filter.include, path),
            };
            list.push(path.split('.').map(str::to_owned).collect());
        }
        filter
    }

    fn apply(&self, value: Value) -> Value {
        let mut value = if self.include.is_empty() {
            value
        } else {
            let paths: Vec<&[String]> = self.include.iter().map(Vec::as_slice).collect();
            include(&value, &paths).unwrap_or_else(|| Value::Object(Map::new()))
        };
        for path in &self.exclude {
            exclude(&mut value, path);
        }
        value
    }
}

fn include(value: &Value, paths: &[&[String]]) -> Option<Value> {
    if paths.iter().any(|p| p.is_empty()) {
        return Some(value.clone());
    }
    match value {
        Value::Object(map) => {
            let mut kept = Map::new();
            for (key, child) in map {
                let mut rest: Vec<&[String]> = Vec::new();
                for path in paths {
                    if path[0] == "**" {
                        rest.push(path);
                        if path.len() == 1 {
                            rest.push(&path[1..]);
                        } else if glob(&path[1], key) {
                            rest.push(&path[2..]);
                        }
                    } else if glob(&path[0], key) {
                        rest.push(&path[1..]);
                    }
                }
                if rest.is_empty() {
                    continue;
                }
                if let Some(child) = include(child, &rest) {
                    kept.insert(key.clone(), child);
                }
            }
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items.iter().filter_map(|i| include(i, paths)).collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        _ => None,
    }
}

fn exclude(value: &mut Value, path: &[String]) {
    match value {
        Value::Object(map) if path.len() == 1 => map.retain(|k, _| !glob(&path[0], k)),
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if glob(&path[0], key) {
                    exclude(child, &path[1..]);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| exclude(i, path)),
        _ => {}
    }
}
