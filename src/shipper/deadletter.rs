//! Documents Elasticsearch refused for good (a mapping conflict, a document too large), kept so
//! nothing is silently gone and never retried so nothing is blocked.
//!
//! File: `<state>/dead-letter/<destination>.ndjson`, one JSON object per line:
//! `{"time":"<RFC 3339>","status":400,"reason":"<type: reason>","document":"<the NDJSON item>"}`.
//!
//! Invariants:
//! - The file only grows, by whole records, up to `DEAD_LETTER_MAX_SIZE` (the plugin setting,
//!   per destination). It is never rotated, cut or replaced by the plugin: what is in it stays
//!   until an operator moves or deletes it (a `.ndjson.1` left by an older version is never
//!   touched either). A refused document that does not fit is a loss: counted
//!   (`eslp_dead_letter_lost_total`, through [`Recorded::lost`]) and logged at ERROR with the
//!   count. The oldest records are kept rather than the newest: the first refusals are the ones
//!   that explain the rest, and nothing already written is ever destroyed.
//! - The file is opened for each batch of records, so a file an operator moved or deleted is
//!   started afresh at the next refusal, and writing resumes once there is room again.
//! - A batch's records are on disk (`fdatasync`, and the folder synced when the file is new)
//!   before [`DeadLetters::record`] returns, because the caller then acknowledges those
//!   documents and the checkpoint moves past them: after a power loss the local copy is gone
//!   and the dead-letter file is all that is left. One sync per bulk answer, not per document.
//! - A write that fails part-way is cut back to the file's length before it, so the file holds
//!   whole records only.
//!
//! With the `dead_letter_index` option each refused document is also queued in memory for that
//! index (at most [`MAX_QUEUED`] documents and [`MAX_QUEUED_BYTES`]; beyond them the oldest
//! wait in the file only), as a document of its own: `{"@timestamp","message":"<the NDJSON
//! item>","error":{"code","message"},"event":{"kind":"pipeline_error"}}`, so it can be found and
//! replayed from Elasticsearch itself. Its text fields are never parsed, so the mapping that
//! refused the original cannot refuse it.
//!
//! Besides the file and the queue, this module holds the two tasks around them: [`dead_letter`]
//! (a destination's refused documents into the file, off the runtime's threads) and
//! [`to_index`] (the queue into the dead-letter index, best effort, until shutdown).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::bulk::{self, ItemVerdict, RequestVerdict};
use super::client::Client;
use super::config::EsOptions;
use super::index::IndexTemplate;
use super::pause::Pause;
use super::retry::{Refusal, Wait};
use super::source::Batch;
use crate::metrics::DestinationMetrics;

/// `DEAD_LETTER_MAX_SIZE`'s default: room for a long run of mapping conflicts (about 100,000
/// refused documents of 2 KB) on a host whose disk holds the logs themselves many times over.
pub const DEFAULT_MAX_FILE: u64 = 256 << 20;
/// Refused documents waiting for the dead-letter index; beyond it the oldest wait in the file
/// only.
pub const MAX_QUEUED: usize = 10_000;
/// Bytes of refused documents waiting for the dead-letter index: documents reach a few MiB
/// each (a rejoined line is up to 1 MiB, escaped twice), so a count alone does not bound it.
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

/// One refused document.
pub struct Refused<'a> {
    /// Its NDJSON item: the action line and the source line.
    pub item: &'a [u8],
    pub status: u16,
    pub reason: &'a str,
}

/// What became of a batch of refused documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// Written and synced to the dead-letter file.
    pub kept: usize,
    /// Not kept: the file's budget was full, or it could not be written.
    pub lost: usize,
}

#[derive(Default)]
struct Queue {
    documents: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Queue {
    /// Makes room for `incoming` bytes at the back by dropping the oldest; how many went.
    fn make_room(&mut self, incoming: usize) -> usize {
        let mut dropped = 0;
        while !self.documents.is_empty()
            && (self.documents.len() >= MAX_QUEUED || self.bytes + incoming > MAX_QUEUED_BYTES)
        {
            if let Some(old) = self.documents.pop_front() {
                self.bytes -= old.len();
                dropped += 1;
            }
        }
        dropped
    }

    fn fits(&self, document: &[u8]) -> bool {
        self.documents.len() < MAX_QUEUED && self.bytes + document.len() <= MAX_QUEUED_BYTES
    }
}

pub struct DeadLetters {
    path: PathBuf,
    max_file: u64,
    lock: Mutex<()>,
    /// For the dead-letter index, when there is one: documents ready to index.
    queue: Option<Mutex<Queue>>,
}

impl DeadLetters {
    /// `max_file`: `DEAD_LETTER_MAX_SIZE`, the most the file may hold.
    pub fn new(dir: PathBuf, destination: &str, index: bool, max_file: u64) -> Self {
        let name: String = destination
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(150)
            .collect();
        Self {
            path: dir.join(format!("{name}.ndjson")),
            max_file,
            lock: Mutex::new(()),
            queue: index.then(|| Mutex::new(Queue::default())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends refused documents and syncs them; what does not fit (or cannot be written) is
    /// logged at ERROR with its count and returned as lost, for the caller's metrics. Blocks on
    /// the disk: call it off the runtime's threads.
    pub fn record(&self, refused: &[Refused<'_>]) -> Recorded {
        if refused.is_empty() {
            return Recorded::default();
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let lines: Vec<(Vec<u8>, &Refused<'_>)> = refused
            .iter()
            .map(|r| {
                let line = serde_json::json!({
                    "time": now,
                    "status": r.status,
                    "reason": r.reason,
                    "document": String::from_utf8_lossy(r.item),
                });
                // Serialising a Value into a Vec cannot fail.
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                (bytes, r)
            })
            .collect();
        let also = if self.queue.is_some() {
            " (they are still sent to the dead-letter index)"
        } else {
            ""
        };
        let recorded = match self.append(lines.iter().map(|(line, _)| line.as_slice())) {
            Ok(kept) => {
                let lost = lines.len() - kept;
                if lost > 0 {
                    tracing::error!(lost, path = %self.path.display(), max_bytes = self.max_file, "the dead-letter file is full (DEAD_LETTER_MAX_SIZE): documents Elasticsearch refused for good are lost{also}; move the file away or raise DEAD_LETTER_MAX_SIZE");
                }
                Recorded { kept, lost }
            }
            Err(error) => {
                tracing::error!(%error, lost = lines.len(), path = %self.path.display(), "cannot write the dead-letter file: documents Elasticsearch refused for good are lost{also}");
                Recorded {
                    kept: 0,
                    lost: lines.len(),
                }
            }
        };
        if let Some(queue) = &self.queue {
            self.enqueue(queue, &now, &lines);
        }
        recorded
    }

    /// Appends whole lines while they fit in the budget, then syncs; how many went in.
    fn append<'a>(&self, lines: impl Iterator<Item = &'a [u8]>) -> std::io::Result<usize> {
        let dir = self.path.parent();
        if let Some(dir) = dir {
            crate::fsutil::create_private_dir(dir)?;
        }
        let existed = self.path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        let before = file.metadata()?.len();
        let mut size = before;
        let mut buffer = Vec::new();
        let mut kept = 0;
        for line in lines {
            // Whole records only: one that does not fit is lost, a smaller one after it may
            // still go in.
            if size + line.len() as u64 > self.max_file {
                continue;
            }
            size += line.len() as u64;
            buffer.extend_from_slice(line);
            kept += 1;
        }
        if kept == 0 {
            return Ok(0);
        }
        let written = file.write_all(&buffer).and_then(|()| file.sync_data());
        if let Err(error) = written {
            // Whole records only: cut back what went in of this batch.
            let _ = file.set_len(before);
            return Err(error);
        }
        if !existed {
            if let Some(dir) = dir {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        Ok(kept)
    }

    fn enqueue(&self, queue: &Mutex<Queue>, now: &str, lines: &[(Vec<u8>, &Refused<'_>)]) {
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0;
        for (_, refused) in lines {
            let document = serde_json::json!({
                "@timestamp": now,
                "message": String::from_utf8_lossy(refused.item),
                "error": {"code": refused.status, "message": refused.reason},
                "event": {"kind": "pipeline_error"},
            });
            let document = serde_json::to_vec(&document).unwrap_or_default();
            dropped += queue.make_room(document.len());
            if queue.fits(&document) {
                queue.bytes += document.len();
                queue.documents.push_back(document);
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(dropped, path = %self.path.display(), "too many refused documents waiting for the dead-letter index; the oldest are in the dead-letter file only");
        }
    }

    /// Queued documents for the dead-letter index, oldest first: at most `max` of them, and
    /// no more than `max_bytes` (at least one).
    pub fn take(&self, max: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let Some(queue) = &self.queue else {
            return Vec::new();
        };
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = Vec::new();
        let mut bytes = 0;
        while taken.len() < max {
            let Some(next) = queue.documents.front() else {
                break;
            };
            if !taken.is_empty() && bytes + next.len() > max_bytes {
                break;
            }
            bytes += next.len();
            queue.bytes -= next.len();
            taken.extend(queue.documents.pop_front());
        }
        taken
    }

    /// Puts documents that could not be sent back at the front, in order, as far as the
    /// queue's bounds allow (the rest are in the file only).
    pub fn put_back(&self, documents: Vec<Vec<u8>>) {
        if let Some(queue) = &self.queue {
            let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            for document in documents.into_iter().rev() {
                if queue.fits(&document) {
                    queue.bytes += document.len();
                    queue.documents.push_front(document);
                }
            }
        }
    }
}

/// Writes documents of `batch` refused for good to the dead-letter file (synced before they
/// count as acknowledged) and counts them in `metrics`; what the file cannot keep is counted as
/// lost (and logged at ERROR by the file). `node` is who refused them.
pub async fn dead_letter(
    letters: &Arc<DeadLetters>,
    metrics: &Arc<DestinationMetrics>,
    batch: &Batch,
    refused: &[Refusal],
    node: &str,
) {
    let Some(first) = refused.first() else {
        return;
    };
    // An fdatasync per answer: on the blocking pool, off the threads that drain FIFOs. It gets
    // copies of the refused documents (document faults: few, and each copied once).
    let copies: Vec<(Vec<u8>, u16, String)> = refused
        .iter()
        .map(|r| (batch.item(r.item).to_vec(), r.status, r.reason.clone()))
        .collect();
    let container = batch.items[first.item].source.short().to_owned();
    let node = node.to_owned();
    let (writer, counts) = (Arc::clone(letters), Arc::clone(metrics));
    let span = tracing::Span::current();
    let recorded = tokio::task::spawn_blocking(move || {
        span.in_scope(|| record_refused(&writer, &counts, &copies, &container, &node))
    })
    .await;
    if let Err(error) = recorded {
        // They count as acknowledged all the same: a loss, said as one.
        tracing::error!(%error, documents = refused.len(), "writing refused documents to the dead-letter file failed; they are lost");
        metrics.add_dead_letter_lost(refused.len() as u64);
    }
}

/// [`dead_letter`]'s blocking part: the write and sync, the counts, and the line that says so
/// (logged as soon as they are on disk).
fn record_refused(
    letters: &DeadLetters,
    metrics: &DestinationMetrics,
    copies: &[(Vec<u8>, u16, String)],
    container: &str,
    node: &str,
) {
    let records: Vec<Refused<'_>> = copies
        .iter()
        .map(|(item, status, reason)| Refused {
            item,
            status: *status,
            reason,
        })
        .collect();
    let Recorded { kept, lost } = letters.record(&records);
    metrics.add_dead_lettered(kept as u64);
    metrics.add_dead_letter_lost(lost as u64);
    // One line per answer, not per document: a mapping conflict can refuse every document.
    let (_, status, reason) = &copies[0];
    tracing::warn!(documents = copies.len(), kept, lost, %container, status, %reason, %node, path = %letters.path().display(), "documents refused for good by Elasticsearch (the first one's container and reason shown), kept in the dead-letter file");
}

/// Indexes refused documents queued in `letters` into the dead-letter `index` as they come,
/// until `shutdown`. Best effort beside the file: a whole-request failure keeps them queued
/// and retries with backoff; a document the dead-letter index refuses too stays in the file
/// only. `destination` names the destination in log lines.
pub async fn to_index(
    letters: &DeadLetters,
    client: &Client,
    options: &EsOptions,
    destination: &str,
    shutdown: &CancellationToken,
    index: &str,
) {
    let data_stream = IndexTemplate::parse(index)
        .ok()
        .and_then(|t| t.resolve(&Default::default(), "").ok())
        .is_some_and(|r| r.data_stream().is_some());
    let mut pause = Pause::new(options.backoff_init, options.backoff_max);
    let action = serde_json::json!({"create": {"_index": index}}).to_string();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(options.flush_interval) => {}
            _ = shutdown.cancelled() => return,
        }
        let documents = letters.take(1_000, options.bulk_max_bytes);
        if documents.is_empty() {
            continue;
        }
        let mut ndjson = Vec::new();
        for document in &documents {
            ndjson.extend_from_slice(action.as_bytes());
            ndjson.push(b'\n');
            ndjson.extend_from_slice(document);
            ndjson.push(b'\n');
        }
        let sent = match bulk::encode_body(&ndjson, options.compression_level) {
            Ok(body) => client
                .bulk(body, data_stream, false)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let verdict =
            sent.map(|answer| bulk::classify(answer.status, &answer.body, documents.len()));
        // Why some documents wait for the next round, if any do.
        let held = match verdict {
            Ok(RequestVerdict::Items(items)) => {
                let (held, retry) = index_answer(index, &items, documents);
                letters.put_back(retry);
                held
            }
            other => {
                letters.put_back(documents);
                Some(match other {
                    Err(error) => error,
                    Ok(verdict) => verdict.to_string(),
                })
            }
        };
        match held {
            None => pause.reset(),
            Some(reason) => {
                let message = format!("cannot index refused documents into the dead-letter index {index}: {reason}; they stay in the dead-letter file and are retried");
                if pause
                    .wait(&Wait::Warn(message), destination, shutdown)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// The dead-letter index's per-document verdicts: why some wait for the next round (the first
/// such verdict, if any), and those documents. Refused ones stay in the file only.
fn index_answer(
    index: &str,
    items: &[ItemVerdict],
    documents: Vec<Vec<u8>>,
) -> (Option<String>, Vec<Vec<u8>>) {
    let refused = items
        .iter()
        .filter(|v| matches!(v, ItemVerdict::Reject { .. }))
        .count();
    let first_held = items
        .iter()
        .find(|v| {
            matches!(
                v,
                ItemVerdict::Retry { .. }
                    | ItemVerdict::NotReady { .. }
                    | ItemVerdict::Unknown { .. }
            )
        })
        .map(ToString::to_string);
    let retry: Vec<Vec<u8>> = items
        .iter()
        .zip(documents)
        .filter(|(v, _)| {
            !matches!(
                v,
                ItemVerdict::Written | ItemVerdict::Duplicate | ItemVerdict::Reject { .. }
            )
        })
        .map(|(_, d)| d)
        .collect();
    if refused > 0 {
        tracing::warn!(refused, %index, "the dead-letter index refused documents too; they are in the dead-letter file");
    }
    (first_held, retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(n: usize, size: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"create\":{{\"_index\":\"logs\",\"_id\":\"{i}\"}}}}\n{{\"message\":\"{}\"}}\n",
                    "x".repeat(size)
                )
                .into_bytes()
            })
            .collect()
    }

    fn record(letters: &DeadLetters, items: &[Vec<u8>]) -> Recorded {
        let refused: Vec<Refused<'_>> = items
            .iter()
            .map(|item| Refused {
                item,
                status: 400,
                reason: "document_parsing_exception: bad field",
            })
            .collect();
        letters.record(&refused)
    }

    fn records(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("whole JSON records only"))
            .collect()
    }

    /// Regression: past 64 MiB the file was renamed over the previous `.1` copy, so the
    /// oldest refused documents vanished without a word or a count.
    #[test]
    fn past_its_budget_the_file_keeps_what_it_has_and_counts_the_rest_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::new(dir.path().join("dl"), "http://es:9200", false, 4096);
        let older = letters.path().with_extension("ndjson.1");
        std::fs::create_dir_all(older.parent().unwrap()).unwrap();
        std::fs::write(&older, "a copy left by an older version\n").unwrap();

        let first = record(&letters, &refused(5, 300));
        assert_eq!(first, Recorded { kept: 5, lost: 0 });
        let kept_before = std::fs::read(letters.path()).unwrap();
        let mut total = first;
        for _ in 0..20 {
            let r = record(&letters, &refused(3, 300));
            total.kept += r.kept;
            total.lost += r.lost;
        }
        assert_eq!(total.kept + total.lost, 65);
        assert!(total.lost > 0, "{total:?}");
        let size = std::fs::metadata(letters.path()).unwrap().len();
        assert!(size <= 4096, "{size} bytes in a 4096-byte budget");
        // Nothing written was replaced or cut: the file begins with the first records and
        // holds exactly the kept ones, whole.
        let now = std::fs::read(letters.path()).unwrap();
        assert!(now.starts_with(&kept_before));
        assert_eq!(records(letters.path()).len(), total.kept);
        assert_eq!(
            std::fs::read_to_string(&older).unwrap(),
            "a copy left by an older version\n"
        );
        // A document larger than the whole budget is lost, not written in part.
        assert_eq!(
            record(&letters, &refused(1, 10_000)),
            Recorded { kept: 0, lost: 1 }
        );
    }

    #[test]
    fn writing_resumes_once_the_operator_moves_the_file_away() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::new(dir.path().to_owned(), "d", false, 2048);
        while record(&letters, &refused(1, 200)).lost == 0 {}
        std::fs::rename(letters.path(), dir.path().join("moved.ndjson")).unwrap();
        assert_eq!(
            record(&letters, &refused(2, 200)),
            Recorded { kept: 2, lost: 0 }
        );
        let records = records(letters.path());
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["status"], 400);
        assert_eq!(
            records[0]["reason"],
            "document_parsing_exception: bad field"
        );
    }

    #[test]
    fn an_unwritable_file_is_a_counted_loss() {
        let dir = tempfile::tempdir().unwrap();
        // The folder's place is taken by a file: nothing can be created in it.
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, "").unwrap();
        let letters = DeadLetters::new(blocked, "d", false, 1 << 20);
        assert_eq!(
            record(&letters, &refused(3, 10)),
            Recorded { kept: 0, lost: 3 }
        );
    }

    /// Regression: the queue for the dead-letter index was bounded by count only (10,000
    /// documents of any size: up to gigabytes of memory for long lines).
    #[test]
    fn the_dead_letter_index_queue_is_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::new(dir.path().to_owned(), "d", true, u64::MAX);
        let big = refused(1, 1 << 20);
        for _ in 0..(MAX_QUEUED_BYTES >> 20) + 8 {
            record(&letters, &big);
        }
        let queue = letters.queue.as_ref().unwrap().lock().unwrap();
        assert!(
            queue.bytes <= MAX_QUEUED_BYTES,
            "{} bytes queued",
            queue.bytes
        );
        assert_eq!(
            queue.bytes,
            queue.documents.iter().map(Vec::len).sum::<usize>()
        );
        assert!(!queue.documents.is_empty());
        drop(queue);
        // Taking is bounded by bytes too, but always takes one.
        let taken = letters.take(1000, 1);
        assert_eq!(taken.len(), 1);
        let rest = letters.take(1000, 3 << 20);
        assert!(rest.len() <= 3, "{}", rest.len());
        letters.put_back(rest);
        let queue = letters.queue.as_ref().unwrap().lock().unwrap();
        assert_eq!(
            queue.bytes,
            queue.documents.iter().map(Vec::len).sum::<usize>()
        );
    }
}
