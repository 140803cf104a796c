//! An Elasticsearch that accepts every `_bulk` item and keeps nothing: the benchmarks' sink.
//!
//! The tests' imitation (`tests/support/es_server.rs`) parses every document into JSON and keeps
//! it in memory behind one lock, which costs more per document than the shipper under test. This
//! one does the least an acknowledging server must: it answers `GET /` as Elasticsearch 8.15
//! (the shipper reads `X-Elastic-Product` from it), gunzips a `_bulk` body when it says gzip,
//! counts its action lines and answers one `{"create":{"status":201}}` per item, which is all
//! the shipper's `filter_path=errors,items.*.error,items.*.status` answer holds.
//!
//! What it measures, besides the count: when the first and the last item were acknowledged
//! (shipping rate), and, when asked, the latency of every document whose text carries a send
//! time written by [`latency_marker`].
#![allow(dead_code)]

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Written into a line by the feeder, read back by the sink: `LAT<nanoseconds since the epoch>;`.
const MARKER: &[u8] = b"LAT";

/// `LAT<now in ns since the epoch>;`, to embed in a line whose latency is measured.
pub fn latency_marker() -> String {
    format!("LAT{};", now_ns())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

#[derive(Default)]
struct Shared {
    items: AtomicU64,
    bulk_requests: AtomicU64,
    record_latency: AtomicBool,
    /// (first, last) acknowledgement.
    window: Mutex<Option<(Instant, Instant)>>,
    latencies_ns: Mutex<Vec<u64>>,
}

/// The running sink, on a runtime of its own; dropping it stops it.
pub struct SinkEs {
    port: u16,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SinkEs {
    /// Binds 127.0.0.1 on a free port, served by `threads` worker threads of its own.
    pub fn start(threads: usize) -> SinkEs {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sink-es")
            .enable_all()
            .build()
            .expect("runtime for the sink");
        let shared = Arc::new(Shared::default());
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0 for the sink");
        let port = listener.local_addr().expect("local address").port();
        runtime.spawn(accept_loop(listener, shared.clone()));
        SinkEs {
            port,
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Items acknowledged so far.
    pub fn items(&self) -> u64 {
        self.shared.items.load(Ordering::SeqCst)
    }

    pub fn bulk_requests(&self) -> u64 {
        self.shared.bulk_requests.load(Ordering::SeqCst)
    }

    /// From the first to the last acknowledged item.
    pub fn ack_window(&self) -> Option<Duration> {
        lock(&self.shared.window).map(|(first, last)| last - first)
    }

    /// Starts reading latency markers from documents (off by default: it costs a scan).
    pub fn record_latency(&self) {
        self.shared.record_latency.store(true, Ordering::SeqCst);
    }

    /// Latencies seen so far, in nanoseconds, in arrival order.
    pub fn latencies_ns(&self) -> Vec<u64> {
        lock(&self.shared.latencies_ns).clone()
    }

    /// Waits until `n` items were acknowledged; `false` after `limit`.
    pub fn wait_items(&self, n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.items() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for SinkEs {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            // An error here is a client that went away.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    if !parts.uri.path().ends_with("/_bulk") {
        return Ok(answer(ROOT.as_bytes().to_vec()));
    }
    let gzip = parts
        .headers
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let plain = if gzip {
        let mut out = Vec::with_capacity(body.len() * 8);
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("a gzip body");
        Bytes::from(out)
    } else {
        body
    };
    // Action and source lines alternate (the shipper sends `create` only, never `delete`).
    let lines = plain.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let mut items = 0usize;
    let record = shared.record_latency.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    let now = if record { now_ns() } else { 0 };
    for (i, line) in lines.enumerate() {
        if i % 2 == 0 {
            items += 1;
        } else if record {
            if let Some(sent) = find_marker(line) {
                latencies.push(now.saturating_sub(sent));
            }
        }
    }
    let mut out = Vec::with_capacity(32 + items * 28);
    out.extend_from_slice(b"{\"errors\":false,\"items\":[");
    for i in 0..items {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"create\":{\"status\":201}}");
    }
    out.extend_from_slice(b"]}");
    let at = Instant::now();
    {
        let mut window = lock(&shared.window);
        let first = window.map_or(at, |(first, _)| first);
        *window = Some((first, at));
    }
    if !latencies.is_empty() {
        lock(&shared.latencies_ns).extend(latencies);
    }
    shared.bulk_requests.fetch_add(1, Ordering::SeqCst);
    shared.items.fetch_add(items as u64, Ordering::SeqCst);
    Ok(answer(out))
}

fn find_marker(line: &[u8]) -> Option<u64> {
    let at = line.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
    let digits = &line[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

fn answer(body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .header("x-elastic-product", "Elasticsearch")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// `GET /` of Elasticsearch 8.15, trimmed to what clients read.
const ROOT: &str = r#"{"name":"sink","cluster_name":"sink","version":{"number":"8.15.0","build_flavor":"default","lucene_version":"9.11.1","minimum_wire_compatibility_version":"7.17.0","minimum_index_compatibility_version":"7.0.0"},"tagline":"You Know, for Search"}"#;
