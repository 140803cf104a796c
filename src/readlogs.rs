//! `/LogDriver.ReadLogs`: `docker logs` served from the local store.
//!
//! The answer is a stream of frames (`frame`), one LogEntry each, oldest first. The engine writes
//! `line` to the user as is, so a newline is appended to complete lines and to the last fragment
//! of a split line, never to earlier fragments. The engine re-applies Since and Until but not
//! Tail, so Tail is done here: the store counts backwards where the last N entries start, keeping
//! none of them, and the answer streams forward from there, so memory is one read step whatever
//! N and the store's size. Since and Until are applied here too so nothing is sent only to be
//! dropped. A damaged segment is skipped with an ERROR, never the end of the answer. Follow
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

use crate::entry::LogEntry;
use crate::protocol::ReadConfig;
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
    // Everything before `end` is history. Tail N starts where the last N entries start
    // (counted backwards, none kept), and is applied before Since and Until, as the engine's
    // own drivers do.
    let (mut cursor, end) = match (request.tail, request.since) {
        (Some(n), _) => {
            let (start, end) = blocking(|| store.tail_start(n))?;
            (store.cursor(start), end)
        }
        (None, Some(since)) => {
            let end = store.end();
            (blocking(|| store.cursor_since(since))?, end)
        }
        (None, None) => {
            let end = store.end();
            (store.cursor(store.start()), end)
        }
    };
    // A follow reads straight on past `end`: stopping there would drop what the read step
    // that crossed it fetched beyond it.
    let stop = (!request.follow).then_some(end);
    if !copy_until(&mut cursor, stop, &request, &mut out).await? {
        return Ok(());
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

    /// A store of 30 entries a segment: the oldest sealed segments gzipped, the newer sealed ones
    /// left plain, and the active one; entry `i` is stamped `i` seconds after T0.
    struct History {
        _dir: tempfile::TempDir,
        _stores: crate::store::Stores,
        store: Arc<ContainerStore>,
        entries: Vec<LogEntry>,
    }

    const T0: i64 = 1_790_000_000 * SEC;
    const PER_SEGMENT: usize = 30;

    fn history_entry(i: usize) -> LogEntry {
        LogEntry {
            source: if i % 3 == 0 { "stderr" } else { "stdout" }.into(),
            time_nano: T0 + i as i64 * SEC,
            // All records the same length, so each segment holds exactly PER_SEGMENT.
            line: Bytes::from(format!("entry {i:05} of the history")),
            partial: false,
            partial_log_metadata: None,
        }
    }

    fn append(store: &ContainerStore, entries: &[LogEntry]) {
        let mut batch = crate::store::Batch::default();
        for entry in entries {
            batch.push(&entry.encode_to_vec(), entry.time_nano);
        }
        store.append(&batch).unwrap();
    }

    fn segment_files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// `gz` sealed segments compressed, then `plain` sealed ones, then an active one with
    /// `active` entries.
    fn history(gz: usize, plain: usize, active: usize) -> History {
        use crate::container_id::ContainerId;
        use crate::store::{Spool, StoreLimits, Stores};
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::open(dir.path().join("root"), Arc::new(Spool::new(1 << 30))).unwrap();
        let id = ContainerId::parse(&"c".repeat(64)).unwrap();
        // Rotation happens before a record once the segment is at or over max_size.
        let total = gz * PER_SEGMENT + plain * PER_SEGMENT + active;
        let entries: Vec<LogEntry> = (0..total).map(history_entry).collect();
        let max_size = PER_SEGMENT as u64 * (history_entry(0).encoded_len() as u64 + 8);
        let limits = |compress| StoreLimits {
            max_size,
            max_file: 1000,
            compress,
        };
        let store = stores.open_container(&id, limits(true)).unwrap();
        let container_dir = dir.path().join("root").join(id.as_str());
        // A segment is sealed (and queued for compression) by the record after it.
        let compressed_part = (gz * PER_SEGMENT + 1).min(total);
        for chunk in entries[..compressed_part].chunks(PER_SEGMENT) {
            append(&store, chunk);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while segment_files(&container_dir)
            .iter()
            .filter(|name| name.ends_with(".log.gz"))
            .count()
            < gz
        {
            assert!(std::time::Instant::now() < deadline, "not compressed");
            std::thread::sleep(Duration::from_millis(10));
        }
        store.set_limits(limits(false));
        for chunk in entries[compressed_part..].chunks(PER_SEGMENT) {
            append(&store, chunk);
        }
        History {
            _dir: dir,
            _stores: stores,
            store,
            entries,
        }
    }

    fn never_ends() -> FollowEnd {
        FollowEnd {
            active_runs: watch::channel(1).1,
            shutdown: CancellationToken::new(),
        }
    }

    /// A non-follow ReadLogs answer, decoded: the entries as the engine would get them.
    async fn answer(
        store: &Arc<ContainerStore>,
        since: Option<i64>,
        until: Option<i64>,
        tail: Option<usize>,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let request = ReadRequest {
            since,
            until,
            tail,
            follow: false,
        };
        let (tx, mut rx) = mpsc::channel(8);
        let reading = tokio::spawn(stream(Arc::clone(store), request, never_ends(), tx));
        let mut bytes = Vec::new();
        while let Some(chunk) = rx.recv().await {
            bytes.extend_from_slice(&chunk);
        }
        reading.await.unwrap()?;
        Ok(decode_answer(&bytes))
    }

    /// The whole frames of an answer, as stored (the newline is the answer's).
    fn decode_answer(bytes: &[u8]) -> Vec<LogEntry> {
        let mut entries = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            if rest.len() < 4 + len {
                break;
            }
            let mut entry = LogEntry::decode(&rest[4..4 + len]).unwrap();
            if entry.line.ends_with(b"\n") {
                entry.line = entry.line.slice(..entry.line.len() - 1);
            }
            entries.push(entry);
            rest = &rest[4 + len..];
        }
        entries
    }

    /// What the engine shows for tail N with since/until: the last N, then those in the window.
    fn expected(
        all: &[LogEntry],
        since: Option<i64>,
        until: Option<i64>,
        tail: Option<usize>,
    ) -> Vec<LogEntry> {
        let from = tail.map_or(0, |n| all.len().saturating_sub(n));
        all[from..]
            .iter()
            .filter(|e| {
                since.is_none_or(|s| e.time_nano >= s) && until.is_none_or(|u| e.time_nano <= u)
            })
            .cloned()
            .collect()
    }

    /// What a forward reader that skips damaged segments reads from the start: the entries
    /// `docker logs` can still show.
    fn readable(store: &ContainerStore) -> Vec<LogEntry> {
        let mut cursor = store.cursor(store.start());
        let mut got = Vec::new();
        loop {
            match cursor.read(1 << 20) {
                Ok(entries) if entries.is_empty() => return got,
                Ok(entries) => got.extend(entries.into_iter().map(|(entry, _)| entry)),
                Err(error) if error.is_segment_damage() && cursor.skip_segment() => {}
                Err(error) => panic!("{error}"),
            }
        }
    }

    /// Regression: one damaged segment (a torn .gz, a record whose sizes disagree, a payload
    /// that is not a LogEntry) made the tail an error, so `docker logs --tail N` showed nothing
    /// at all. The damaged part is skipped (with an ERROR) and the other segments come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_segment_does_not_empty_docker_logs_tail() {
        let history = history(4, 3, 10);
        let dir = history._dir.path().join("root").join("c".repeat(64));
        let record = history_entry(0).encoded_len() + 8;
        // Segments 1-4 are gzipped, 5-7 plain, 8 active.
        let gz = dir.join(format!("{:020}.log.gz", 2));
        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let sizes_differ = dir.join(format!("{:020}.log", 6));
        let mut bytes = std::fs::read(&sizes_differ).unwrap();
        bytes[10 * record + 3] ^= 0x01;
        std::fs::write(&sizes_differ, &bytes).unwrap();
        let not_an_entry = dir.join(format!("{:020}.log", 7));
        let mut bytes = std::fs::read(&not_an_entry).unwrap();
        bytes[20 * record + 4..21 * record - 4].fill(0xff);
        std::fs::write(&not_an_entry, &bytes).unwrap();

        let readable = readable(&history.store);
        let all = &history.entries;
        // What damage hides: the rest of each damaged segment, and nothing else.
        let segment = |n: usize| &all[(n - 1) * PER_SEGMENT..n * PER_SEGMENT];
        let torn_kept = readable.len() - (all.len() - 3 * PER_SEGMENT) - 10 - 20;
        assert!(torn_kept < PER_SEGMENT, "the torn .gz lost entries");
        let want_readable = [
            segment(1),
            &segment(2)[..torn_kept],
            segment(3),
            segment(4),
            segment(5),
            &segment(6)[..10],
            &segment(7)[..20],
            &all[7 * PER_SEGMENT..],
        ]
        .concat();
        assert_eq!(readable, want_readable);
        let n = readable.len();
        let index = |entry: &LogEntry| ((entry.time_nano - T0) / SEC) as usize;
        for tail in [
            Some(5),
            Some(10 + 5),      // into the payload-damaged segment, after the damage
            Some(10 + 25),     // into it, before the damage
            Some(10 + 20 + 5), // into the segment whose sizes differ, after the damage
            Some(10 + 20 + 10 + 30 + 30 + 3), // into the gzipped ones
            Some(n - 1),
            Some(n),
            Some(all.len()),
            None,
        ] {
            let got = answer(&history.store, None, None, tail).await;
            let got = got.unwrap_or_else(|error| panic!("tail {tail:?}: {error}"));
            // N entries, as many as there are to show. Where the start falls after the damage
            // in a segment, the whole records after it come too (a reader from its start would
            // stop at the damage): the answer is every readable entry from its first one on,
            // and may hold more whole ones.
            assert_eq!(got.len(), tail.unwrap_or(n).min(n), "tail {tail:?}");
            assert_eq!(got.last(), all.last(), "tail {tail:?}");
            for pair in got.windows(2) {
                assert!(
                    index(&pair[0]) < index(&pair[1]),
                    "tail {tail:?}: out of order"
                );
            }
            for entry in &got {
                assert_eq!(entry, &all[index(entry)], "tail {tail:?}: not as written");
            }
            let first = index(&got[0]);
            let missing: Vec<usize> = readable
                .iter()
                .map(index)
                .filter(|&i| i >= first && !got.iter().any(|e| index(e) == i))
                .collect();
            assert!(missing.is_empty(), "tail {tail:?}: missing {missing:?}");
            if tail.is_none_or(|t| t >= n) {
                assert_eq!(got, readable, "tail {tail:?}");
            }
        }
    }

    /// Regression: the history part of a follow stopped at the end taken when the request came,
    /// and dropped what the read step that crossed it had fetched beyond it, while the cursor
    /// (where the follow goes on) had moved past those entries: lines written while a
    /// `docker logs -f` sent its history were never shown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follow_loses_nothing_written_while_its_history_streams() {
        use crate::container_id::ContainerId;
        use crate::store::{Spool, StoreLimits, Stores};
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::open(dir.path().join("root"), Arc::new(Spool::new(1 << 30))).unwrap();
        let id = ContainerId::parse(&"d".repeat(64)).unwrap();
        let store = stores.open_container(&id, StoreLimits::default()).unwrap();
        let long = |i: usize| LogEntry {
            line: Bytes::from(format!("{i:06} {}", "y".repeat(200))),
            ..history_entry(i)
        };
        // Far more than the channel and a read step hold: the stream waits for the client
        // before its history reaches the end.
        let mut written: Vec<LogEntry> = (0..10_000).map(long).collect();
        append(&store, &written);
        for (round, tail) in [None, Some(9_000)].into_iter().enumerate() {
            let request = ReadRequest {
                since: None,
                until: None,
                tail,
                follow: true,
            };
            let (runs_tx, runs_rx) = watch::channel(1);
            let follow_end = FollowEnd {
                active_runs: runs_rx,
                shutdown: CancellationToken::new(),
            };
            let (tx, mut rx) = mpsc::channel(8);
            let reading = tokio::spawn(stream(Arc::clone(&store), request, follow_end, tx));
            // The first chunk is sent after the history's end was taken.
            let mut bytes = rx.recv().await.unwrap().to_vec();
            let first = 20_000 + round * 100;
            let later: Vec<LogEntry> = (first..first + 50).map(long).collect();
            append(&store, &later);
            let from = written.len() - tail.unwrap_or(written.len());
            written.extend(later);
            let want = &written[from..];
            loop {
                if decode_answer(&bytes).len() >= want.len() {
                    break;
                }
                let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
                let Ok(Some(chunk)) = chunk else {
                    break;
                };
                bytes.extend_from_slice(&chunk);
            }
            runs_tx.send(0).unwrap();
            while let Some(chunk) = rx.recv().await {
                bytes.extend_from_slice(&chunk);
            }
            reading.await.unwrap().unwrap();
            let got = decode_answer(&bytes);
            assert_eq!(got.len(), want.len(), "tail {tail:?}");
            assert!(got == want, "tail {tail:?}: not the entries written");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tail_over_gz_and_plain_segments_is_exactly_the_last_n_with_since_and_until() {
        // 4 gzipped segments, 3 plain sealed ones, 10 entries in the active one.
        let history = history(4, 3, 10);
        let all = &history.entries;
        let total = all.len();
        let names = segment_files(
            history
                ._dir
                .path()
                .join("root")
                .join("c".repeat(64))
                .as_path(),
        );
        assert_eq!(
            names.iter().filter(|n| n.ends_with(".log.gz")).count(),
            4,
            "{names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| n.ends_with(".log")).count(),
            4,
            "{names:?}"
        );
        let at = |i: usize| Some(T0 + i as i64 * SEC);
        let tails = [
            Some(0),
            Some(1),
            Some(7),                        // within the active segment
            Some(10),                       // exactly the active segment
            Some(11),                       // one into the newest sealed segment
            Some(10 + PER_SEGMENT),         // exactly a segment boundary
            Some(10 + 3 * PER_SEGMENT + 5), // into the gzipped ones
            Some(total - 1),
            Some(total),
            Some(total + 100), // more than exist
            None,              // -1: all
        ];
        let windows = [
            (None, None),
            (at(total - 20), None),
            (None, at(total - 15)),
            (at(50), at(120)),
            (at(total + 5), None),
        ];
        for tail in tails {
            for (since, until) in windows {
                let got = answer(&history.store, since, until, tail).await.unwrap();
                assert_eq!(
                    got,
                    expected(all, since, until, tail),
                    "tail {tail:?} since {since:?} until {until:?}"
                );
            }
        }
    }

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
