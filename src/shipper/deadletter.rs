//! Documents Elasticsearch refused for good (a mapping conflict, a document too large), kept so
//! nothing is silently gone and never retried so nothing is blocked.
//!
//! File: `<state>/dead-letter/<destination>.ndjson`, one JSON object per line:
//! `{"time":"<RFC 3339>","status":400,"reason":"<type: reason>","document":"<the NDJSON item>"}`.
//! When it passes [`MAX_FILE`] it is renamed to `.1` (replacing an older one), so it stays
//! bounded.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

pub const MAX_FILE: u64 = 64 << 20;

pub struct DeadLetters {
    path: PathBuf,
    lock: Mutex<()>,
}

impl DeadLetters {
    pub fn new(dir: PathBuf, destination: &str) -> Self {
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
                std::fs::create_dir_all(dir)?;
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
    }
}
