//! Helpers the crate's unit tests share: a FIFO as the engine makes it, and lines framed as the
//! engine writes them (a 4-byte big-endian length, then the LogEntry protobuf).

use std::fs::File;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::entry::LogEntry;

/// A FIFO as the engine makes it, with the engine's end held open (read-write, so opening it
/// never waits for the plugin and the plugin never reads EOF).
pub fn engine_fifo(dir: &Path, name: &str) -> (PathBuf, File) {
    let path = dir.join(name);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    (path, writer)
}

/// A whole stdout line.
pub fn line(time_nano: i64, text: &str) -> LogEntry {
    LogEntry {
        source: "stdout".into(),
        time_nano,
        line: text.as_bytes().to_vec().into(),
        ..LogEntry::default()
    }
}

/// `entry` as the engine writes it into the FIFO.
pub fn frame(entry: &LogEntry) -> Vec<u8> {
    let payload = entry.encode_to_vec();
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}
