//! Documents Elasticsearch refused for good (a mapping conflict, a document too large), kept so
//! nothing is silently gone and never retried so nothing is blocked.
//!
//! File: `<state>/dead-letter/<destination>.ndjson`, one JSON object per line:
//! `{"time":"<RFC 3339>","status":400,"reason":"<type: reason>","document":"<the NDJSON item>"}`.
//! When it passes [`MAX_FILE`] it is renamed to `.1` (replacing an older one), so it stays
//! bounded.
//!
//! With the `dead_letter_index` option each refused document is also queued (in memory, at most
//! [`MAX_QUEUED`]; the file keeps them all) for that index, as a document of its own:
//! `{"@timestamp","message":"<the NDJSON item>","error":{"code","message"},"event":{"kind":
//! "pipeline_error"}}`, so it can be found and replayed from Elasticsearch itself. Its text
//! fields are never parsed, so the mapping that refused the original cannot refuse it.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

pub const MAX_FILE: u64 = 64 << 20;
/// Refused documents waiting for the dead-letter index; beyond it the oldest wait in the file
/// only.
pub const MAX_QUEUED: usize = 10_000;

pub struct DeadLetters {
    path: PathBuf,
    lock: Mutex<()>,
    /// For the dead-letter index, when there is one: documents ready to index.
    queue: Option<Mutex<VecDeque<Vec<u8>>>>,
}

impl DeadLetters {
    pub fn new(dir: PathBuf, destination: &str, index: bool) -> Self {
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
            lock: Mutex::new(()),
            queue: index.then(|| Mutex::new(VecDeque::new())),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one refused document; a failure to write is logged, not raised (the document is
    /// counted as dead-lettered either way).
    pub fn record(&self, item: &[u8], status: u16, reason: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = serde_json::json!({
            "time": now,
            "status": status,
            "reason": reason,
            "document": String::from_utf8_lossy(item),
        });
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                crate::runs::create_private_dir(dir)?;
            }
            if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > MAX_FILE) {
                std::fs::rename(&self.path, self.path.with_extension("ndjson.1"))?;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            file.write_all(&bytes)
        })();
        if let Err(error) = result {
            tracing::error!(%error, path = %self.path.display(), "cannot write the dead-letter file; the refused document is lost");
        }
        if let Some(queue) = &self.queue {
            let document = serde_json::json!({
                "@timestamp": line["time"],
                "message": line["document"],
                "error": {"code": status, "message": reason},
                "event": {"kind": "pipeline_error"},
            });
            let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() == MAX_QUEUED {
                queue.pop_front();
                tracing::warn!(path = %self.path.display(), "too many refused documents waiting for the dead-letter index; the oldest stays in the file only");
            }
            queue.push_back(serde_json::to_vec(&document).unwrap_or_default());
        }
    }

    /// Up to `max` queued documents for the dead-letter index, oldest first.
    pub fn take(&self, max: usize) -> Vec<Vec<u8>> {
        let Some(queue) = &self.queue else {
            return Vec::new();
        };
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = max.min(queue.len());
        queue.drain(..n).collect()
    }

    /// Puts documents that could not be sent back at the front, in order.
    pub fn put_back(&self, documents: Vec<Vec<u8>>) {
        if let Some(queue) = &self.queue {
            let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            for document in documents.into_iter().rev() {
                if queue.len() < MAX_QUEUED {
                    queue.push_front(document);
                }
            }
        }
    }
}
