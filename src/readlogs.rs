//! `/LogDriver.ReadLogs`: `docker logs` served from the local store.
//!
//! The answer is a stream of frames (`frame`), one LogEntry each, oldest first. The engine writes
//! `line` to the user as is, so a newline is appended to complete lines and to the last fragment
//! of a split line, never to earlier fragments. The engine re-applies Since and Until but not
//! Tail, so Tail is done here (reading the store backwards: its cost follows N, not the store's
//! size); Since and Until are applied here too so nothing is sent only to be dropped. Follow
//! streams go on across rotation and end when the container's logging stops, when the client
//! goes away, or at plugin shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::types::ReadConfig;
use crate::entry::LogEntry;
use crate::store::{ContainerStore, Cursor, Position, StoreError};

/// Frames are sent in chunks of about this size when many are ready at once (history); a
/// follow stream sends what it has at once.
const CHUNK: usize = 64 << 10;
/// Bytes of records read from the store per step.
const READ_STEP: usize = 256 << 10;
/// How long after Until a follow still waits: entries stamped just before it may still be in
/// the FIFO or the store's write when Until passes.
const FOLLOW_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadLogsError {
    #[error("ReadLogs Config.{field}: {value:?} is not an RFC 3339 time")]
    BadTime { field: &'static str, value: String },
    #[error("ReadLogs Config.Tail: {0} is not valid (-1 for all, 0 for none, N for the last N)")]
    BadTail(i64),
}

/// A validated ReadLogs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Unix nanoseconds; `None` is unset.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// `None`: all entries.
    pub tail: Option<usize>,
    pub follow: bool,
}

impl ReadRequest {
    pub fn parse(config: &ReadConfig) -> Result<Self, ReadLogsError> {
        let tail = match config.tail {
            t if t < -1 => return Err(ReadLogsError::BadTail(t)),
            -1 => None,
            t => Some(usize::try_from(t).map_err(|_| ReadLogsError::BadTail(t))?),
        };
        Ok(Self {
            since: parse_time("Since", &config.since)?,
            until: parse_time("Until", &config.until)?,
            tail,
            follow: config.follow,
        })
    }

    fn admits(&self, time_nano: i64) -> bool {
        self.since.is_none_or(|s| time_nano >= s) && self.until.is_none_or(|u| time_nano <= u)
    }

    fn is_past_until(&self, time_nano: i64) -> bool {
        self.until.is_some_and(|u| time_nano > u)
    }

    /// How long a follow may still receive entries, at `now_nano`: the engine stamps entries
    /// with the time it read them, so once Until (plus [`FOLLOW_GRACE`]) is past nothing more
    /// can be admitted, and with Since after Until nothing ever can. `None`: no Until, follow
    /// until logging stops. Without this a `docker logs -f --until <past>` of a quiet container
    /// waited for a line that could never be shown.
    fn follow_window(&self, now_nano: i64) -> Option<Duration> {
        let until = self.until?;
        if self.since.is_some_and(|since| since > until) {
            return Some(Duration::ZERO);
        }
        let end = until.saturating_add(FOLLOW_GRACE.as_nanos() as i64);
        let left = u64::try_from(end.saturating_sub(now_nano)).unwrap_or(0);
        Some(Duration::from_nanos(left))
    }
}

fn now_nano() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    nanos.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// RFC 3339 with any offset; empty or Go's zero time (year 1) means unset.
fn parse_time(field: &'static str, text: &str) -> Result<Option<i64>, ReadLogsError> {
    if text.is_empty() {
        return Ok(None);
    }
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| ReadLogsError::BadTime {
        field,
        value: text.chars().take(64).collect(),
    })?;
    if time.year() <= 1 {
        return Ok(None);
    }
    let nanos = time.unix_timestamp_nanos();
    Ok(Some(nanos.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
}

/// Encodes one entry as a ReadLogs frame, with the newline the engine expects.
pub fn encode_frame(out: &mut BytesMut, entry: &LogEntry) {
    let mut entry = entry.clone();
    if entry.ends_line() {
        let mut line = BytesMut::with_capacity(entry.line.len() + 1);
        line.put_slice(&entry.line);
        line.put_u8(b'\n');
        entry.line = line.freeze();
    }
    let len = entry.encoded_len();
    out.reserve(4 + len);
    out.put_u32(len as u32);
    // Encoding into a BytesMut with the capacity reserved above cannot fail.
    let _ = entry.encode(out);
}

/// What ends a follow stream besides the client: the container's count of active logging runs
/// reaching zero, and plugin shutdown.
pub struct FollowEnd {
    pub active_runs: watch::Receiver<usize>,
    pub shutdown: CancellationToken,
}

/// Streams the answer into `tx` until done. Returns early, without error, when the client
/// hangs up (the send fails).
pub async fn stream(
    store: Arc<ContainerStore>,
    request: ReadRequest,
    follow_end: FollowEnd,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), StoreError> {
    let mut out = Sender {
        tx,
        buf: BytesMut::new(),
    };
    // Everything before `end` is history; a follow goes on from exactly there.
    let (history, end) = match request.tail {
        Some(n) => blocking(|| store.tail_with_end(n))?,
        None => (Vec::new(), store.end()),
    };
    for entry in history.iter().filter(|e| request.admits(e.time_nano)) {
        if !out.push(entry).await {
            return Ok(());
        }
    }
    let mut cursor = match (request.tail, request.since) {
        (Some(_), _) => store.cursor(end),
        (None, Some(since)) => blocking(|| store.cursor_since(since))?,
        (None, None) => store.cursor(store.start()),
    };
    if request.tail.is_none() {
        // All history up to `end`.
        if !copy_until(&mut cursor, Some(end), &request, &mut out).await? {
            return Ok(());
        }
    }
    let window = request.follow_window(now_nano());
    if !request.follow || window == Some(Duration::ZERO) {
        out.flush().await;
        return Ok(());
    }
    out.flush().await;
    let mut changes = store.subscribe();
    let FollowEnd {
        mut active_runs,
        shutdown,
    } = follow_end;
    let until_passed = async {
        match window {
            Some(window) => tokio::time::sleep(window).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_passed);
    loop {
        if !copy_until(&mut cursor, None, &request, &mut out).await? {
            return Ok(());
        }
        if !out.flush().await {
            return Ok(());
        }
        if *active_runs.borrow_and_update() == 0 {
            // Logging stopped: what it wrote is in the store; send the rest and end.
            copy_until(&mut cursor, None, &request, &mut out).await?;
            out.flush().await;
            return Ok(());
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            changed = active_runs.changed() => if changed.is_err() { return Ok(()) },
            _ = out.tx.closed() => return Ok(()),
            _ = shutdown.cancelled() => { out.flush().await; return Ok(()) },
            _ = &mut until_passed => {
                copy_until(&mut cursor, None, &request, &mut out).await?;
                out.flush().await;
                return Ok(());
            }
        }
    }
}

/// Sends entries from `cursor` until `stop` (or the end of the store), honouring since/until.
/// Returns false when the stream is over (client gone, or Until passed).
async fn copy_until(
    cursor: &mut Cursor,
    stop: Option<Position>,
    request: &ReadRequest,
    out: &mut Sender,
) -> Result<bool, StoreError> {
    loop {
        if stop.is_some_and(|s| cursor.position() >= s) {
            return Ok(true);
        }
        let entries = match blocking(|| cursor.read(READ_STEP)) {
            Ok(entries) => entries,
            // One damaged segment (a torn .gz) must not hide the rest of the store.
            Err(error) if error.is_segment_damage() && cursor.skip_segment() => {
                tracing::error!(%error, "docker logs skips a damaged segment of the local copy: its entries after the damage are not shown");
                continue;
            }
            Err(error) => return Err(error),
        };
        if entries.is_empty() {
            return Ok(true);
        }
        for (entry, at) in entries {
            if stop.is_some_and(|s| at > s) {
                return Ok(true);
            }
            if request.is_past_until(entry.time_nano) {
                out.flush().await;
                return Ok(false);
            }
            if request.admits(entry.time_nano) && !out.push(&entry).await {
                return Ok(false);
            }
        }
    }
}

/// Store reads are file I/O (and gunzip for compressed segments): tell the runtime, so other
/// connections are not held up behind a large `docker logs`.
fn blocking<T>(read: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(read)
}

struct Sender {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl Sender {
    /// Adds a frame, sending the chunk when it is full. False when the client is gone.
    async fn push(&mut self, entry: &LogEntry) -> bool {
        encode_frame(&mut self.buf, entry);
        if self.buf.len() >= CHUNK {
            return self.flush().await;
        }
        true
    }

    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return !self.tx.is_closed();
        }
        let chunk = self.buf.split().freeze();
        self.tx.send(chunk).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(since: &str, until: &str, tail: i64) -> ReadConfig {
        ReadConfig {
            since: since.into(),
            until: until.into(),
            tail,
            follow: false,
        }
    }

    #[test]
    fn zero_time_means_unset_and_offsets_are_honoured() {
        let r = ReadRequest::parse(&config(
            "0001-01-01T00:00:00Z",
            "1970-01-01T01:00:01+01:00",
            5,
        ))
        .unwrap();
        assert_eq!(r.since, None);
        assert_eq!(r.until, Some(1_000_000_000));
        assert_eq!(r.tail, Some(5));
        assert_eq!(ReadRequest::parse(&config("", "", -1)).unwrap().tail, None);
    }

    #[test]
    fn bad_times_and_tails_are_named() {
        let err = ReadRequest::parse(&config("yesterday", "", -1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ReadLogs Config.Since: \"yesterday\" is not an RFC 3339 time"
        );
        assert_eq!(
            ReadRequest::parse(&config("", "", -7)).unwrap_err(),
            ReadLogsError::BadTail(-7)
        );
    }

    #[test]
    fn a_follow_ends_once_until_is_past_or_before_since() {
        let at = |since: Option<i64>, until: Option<i64>| ReadRequest {
            since,
            until,
            tail: None,
            follow: true,
        };
        let now = 1_000 * SEC;
        assert_eq!(at(None, None).follow_window(now), None);
        assert_eq!(
            at(None, Some(now - 5 * SEC)).follow_window(now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            at(Some(now + 9 * SEC), Some(now + 2 * SEC)).follow_window(now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            at(None, Some(now + 2 * SEC)).follow_window(now),
            Some(Duration::from_secs(2) + FOLLOW_GRACE)
        );
        // Within the grace after Until, lines stamped before it may still come.
        assert_eq!(
            at(None, Some(now - SEC / 2)).follow_window(now),
            Some(FOLLOW_GRACE - Duration::from_millis(500))
        );
        assert_eq!(
            at(None, Some(i64::MIN)).follow_window(now),
            Some(Duration::ZERO)
        );
        assert!(at(None, Some(i64::MAX)).follow_window(now).is_some());
    }

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn newline_goes_on_complete_lines_and_last_fragments_only() {
        use crate::entry::PartialLogEntryMetadata;
        let frag = |last| LogEntry {
            source: "stdout".into(),
            time_nano: 1,
            line: Bytes::from_static(b"part"),
            partial: true,
            partial_log_metadata: Some(PartialLogEntryMetadata {
                last,
                id: "x".into(),
                ordinal: 1,
            }),
        };
        let whole = LogEntry {
            partial: false,
            partial_log_metadata: None,
            ..frag(false)
        };
        for (entry, want) in [
            (frag(false), &b"part"[..]),
            (frag(true), b"part\n"),
            (whole, b"part\n"),
        ] {
            let mut out = BytesMut::new();
            encode_frame(&mut out, &entry);
            let decoded = LogEntry::decode(&out[4..]).unwrap();
            assert_eq!(&decoded.line[..], want);
        }
    }
}
