//! The engine's LogEntry message (proto/entry.proto), as prost generates it.
//!
//! The same bytes travel three ways: in frames on the FIFO from the engine, as record payloads in
//! the local store, and in frames of ReadLogs answers. Unknown fields (Docker 29.5's `attrs`) are
//! skipped by prost's decoder.

include!(concat!(env!("OUT_DIR"), "/docker.logdriver.rs"));

/// The only two `source` values the engine shows; ReadLogs entries with any other source are
/// dropped silently by the engine.
pub const STDOUT: &str = "stdout";
pub const STDERR: &str = "stderr";

impl LogEntry {
    /// True when this entry ends a line: a complete line, or the last fragment of a split one.
    /// ReadLogs appends a newline exactly to these.
    pub fn ends_line(&self) -> bool {
        !self.partial
            || self
                .partial_log_metadata
                .as_ref()
                .is_some_and(|meta| meta.last)
    }
}
