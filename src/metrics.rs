//! Counters, and the Prometheus text endpoint that shows them (`METRICS_ADDR`, off by default).
//!
//! Exposition format 0.0.4: `# HELP`, `# TYPE`, then `name{labels} value` lines. Destinations
//! are labelled by their hosts (no credentials); containers are never labels (unbounded).
//!
//! A low layer that the other parts report into, importing none of them: the pipeline adds
//! [`IngestCounts`], and parts that keep their own counters (the spool, the events collector)
//! are read at each scrape through [`SpoolReport`] and [`EventsReport`], implemented where the
//! parts are wired (`plugin`, `events::service`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

/// A per-destination counter: name, help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&DestinationMetrics) -> u64);

#[derive(Default)]
pub struct DestinationMetrics {
    acked: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    /// Refused documents the dead-letter file could not keep (its budget full, a write error).
    dead_letter_lost: AtomicU64,
    /// Sends held back because the destination is not ready for them.
    held: AtomicU64,
    /// Sends held back because of an item answer the plugin does not know.
    unknown_answers: AtomicU64,
    /// A gauge: indices in a "not ready" episode.
    not_ready: AtomicU64,
    requests: AtomicU64,
    bytes_sent: AtomicU64,
    dropped_bytes: AtomicU64,
    /// A gauge: bytes stored but not yet acknowledged, over this destination's containers.
    backlog_bytes: AtomicU64,
}

impl DestinationMetrics {
    pub fn add_acked(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_duplicate(&self, n: u64) {
        self.duplicates.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_retry(&self, n: u64) {
        self.retries.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_dead_letter_lost(&self, n: u64) {
        self.dead_letter_lost.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_held(&self, n: u64) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_unknown_answers(&self, n: u64) {
        self.unknown_answers.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set_not_ready(&self, indices: u64) {
        self.not_ready.store(indices, Ordering::Relaxed);
    }
    pub fn add_request(&self, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn set_backlog_bytes(&self, n: u64) {
        self.backlog_bytes.store(n, Ordering::Relaxed);
    }

    pub fn add_dropped_bytes(&self, n: u64) {
        self.dropped_bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a logging run added since it last reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestCounts {
    pub entries: u64,
    pub bytes: u64,
    /// Frames skipped as oversized or not a LogEntry.
    pub frames_skipped: u64,
    pub lost: u64,
}

/// The spool's figures at a scrape.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolFigures {
    /// Unshipped bytes kept beyond max-file.
    pub used: u64,
    /// The budget (SPOOL_MAX_SIZE).
    pub max: u64,
    pub dropped_bytes: u64,
    pub dropped_entries: u64,
}

/// The events collector's counters at a scrape.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventsFigures {
    pub events: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub connects: u64,
}

/// A spool budget, read at each scrape.
pub trait SpoolReport: Send + Sync {
    fn spool_figures(&self) -> SpoolFigures;
}

/// An events collector's counters, read at each scrape.
pub trait EventsReport: Send + Sync {
    fn events_figures(&self) -> EventsFigures;
}

/// Plugin-wide counters of the FIFO side.
#[derive(Default)]
pub struct IngestMetrics {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub frames_skipped: AtomicU64,
    pub lost: AtomicU64,
}

impl IngestMetrics {
    /// Adds counts of a logging run (published as they grow).
    pub fn record(&self, counts: IngestCounts) {
        self.entries.fetch_add(counts.entries, Ordering::Relaxed);
        self.bytes.fetch_add(counts.bytes, Ordering::Relaxed);
        self.frames_skipped
            .fetch_add(counts.frames_skipped, Ordering::Relaxed);
        self.lost.fetch_add(counts.lost, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    pub ingest: Arc<IngestMetrics>,
    destinations: Mutex<BTreeMap<String, Arc<DestinationMetrics>>>,
    spool: Option<Arc<dyn SpoolReport>>,
    events: std::sync::OnceLock<Arc<dyn EventsReport>>,
}

impl Metrics {
    pub fn new(spool: Arc<dyn SpoolReport>) -> Self {
        Self {
            spool: Some(spool),
            ..Self::default()
        }
    }

    /// The events collector's counters, once it runs.
    pub fn set_events(&self, stats: Arc<dyn EventsReport>) {
        let _ = self.events.set(stats);
    }

    pub fn destination(&self, label: &str) -> Arc<DestinationMetrics> {
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(label.to_owned()).or_default())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        fn get(a: &AtomicU64) -> u64 {
            a.load(Ordering::Relaxed)
        }
        let plain = [
            (
                "eslp_lines_read_total",
                "Log entries read from container FIFOs and stored",
                get(&self.ingest.entries),
            ),
            (
                "eslp_bytes_read_total",
                "Bytes read from container FIFOs",
                get(&self.ingest.bytes),
            ),
            (
                "eslp_frames_skipped_total",
                "Frames skipped as oversized or not a LogEntry",
                get(&self.ingest.frames_skipped),
            ),
            (
                "eslp_lines_lost_total",
                "Entries lost: the local copy could not be written, or the frame was over the 1 MiB cap",
                get(&self.ingest.lost),
            ),
        ];
        for (name, help, value) in plain {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
        if let Some(spool) = &self.spool {
            let spool = spool.spool_figures();
            let spool_metrics = [
                (
                    "eslp_spool_backlog_bytes",
                    "gauge",
                    "Unshipped bytes kept on disk beyond max-file (charged to SPOOL_MAX_SIZE)",
                    spool.used,
                ),
                (
                    "eslp_spool_max_bytes",
                    "gauge",
                    "The spool budget (SPOOL_MAX_SIZE)",
                    spool.max,
                ),
                (
                    "eslp_spool_dropped_bytes_total",
                    "counter",
                    "Unshipped bytes deleted because the spool budget was full",
                    spool.dropped_bytes,
                ),
                (
                    "eslp_spool_dropped_entries_total",
                    "counter",
                    "Unshipped entries deleted because the spool budget was full",
                    spool.dropped_entries,
                ),
            ];
            for (name, kind, help, value) in spool_metrics {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
                ));
            }
        }
        if let Some(events) = self.events.get() {
            let events = events.events_figures();
            let counters = [
                ("eslp_events_total", "Engine events collected", events.events),
                (
                    "eslp_events_duplicates_total",
                    "Replayed engine events dropped as already collected",
                    events.duplicates,
                ),
                (
                    "eslp_events_gaps_total",
                    "Times the engine's buffer did not cover a disconnection (events may be missing)",
                    events.gaps,
                ),
                (
                    "eslp_events_connects_total",
                    "Connections to the engine's /events",
                    events.connects,
                ),
            ];
            for (name, help, value) in counters {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
                ));
            }
        }
        let map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let per: [Counter; 10] = [
            (
                "eslp_documents_acked_total",
                "Documents Elasticsearch wrote",
                |m| get(&m.acked),
            ),
            (
                "eslp_documents_duplicate_total",
                "Documents answered 409 (already indexed: a replay)",
                |m| get(&m.duplicates),
            ),
            (
                "eslp_documents_retried_total",
                "Document sends retried",
                |m| get(&m.retries),
            ),
            (
                "eslp_documents_dead_lettered_total",
                "Documents refused for good, kept in the dead-letter file",
                |m| get(&m.dead_lettered),
            ),
            (
                "eslp_dead_letter_lost_total",
                "Documents refused for good that the dead-letter file could not keep (DEAD_LETTER_MAX_SIZE reached, or a write error): lost",
                |m| get(&m.dead_letter_lost),
            ),
            (
                "eslp_documents_held_total",
                "Document sends held back and retried because the destination is not ready for them (item 401/403, a write block, a missing index or pipeline)",
                |m| get(&m.held),
            ),
            (
                "eslp_documents_unknown_answer_total",
                "Document sends held back and retried slowly because of an item answer this plugin does not know",
                |m| get(&m.unknown_answers),
            ),
            ("eslp_bulk_requests_total", "Bulk requests sent", |m| {
                get(&m.requests)
            }),
            (
                "eslp_bulk_bytes_total",
                "Bytes of bulk bodies sent (after compression)",
                |m| get(&m.bytes_sent),
            ),
            (
                "eslp_dropped_by_retention_bytes_total",
                "Unshipped bytes removed by retention before shipping",
                |m| get(&m.dropped_bytes),
            ),
        ];
        let backlog: Counter = (
            "eslp_backlog_bytes",
            "Bytes stored but not yet acknowledged by Elasticsearch",
            |m| get(&m.backlog_bytes),
        );
        let not_ready: Counter = (
            "eslp_destination_not_ready",
            "Indices of the destination refusing documents as not ready (privileges, a write block, a missing index or pipeline); 0 when all accept",
            |m| get(&m.not_ready),
        );
        let kinds = per
            .iter()
            .map(|c| (c, "counter"))
            .chain([(&backlog, "gauge"), (&not_ready, "gauge")]);
        for ((name, help, value), kind) in kinds {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (label, m) in map.iter() {
                let label = label.replace('\\', "\\\\").replace('"', "\\\"");
                out.push_str(&format!("{name}{{destination=\"{label}\"}} {}\n", value(m)));
            }
        }
        out
    }
}

/// Serves `/metrics` (any path) until shutdown.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, %addr, "cannot listen for metrics (METRICS_ADDR); metrics are off");
            return;
        }
    };
    tracing::info!(%addr, "metrics at /metrics");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let body = metrics.render();
                async move {
                    let mut answer = Response::new(Full::new(Bytes::from(body)));
                    answer.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok::<_, Infallible>(answer)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
