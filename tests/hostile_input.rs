//! Hostile input, through the real plugin binary: every malformed request, FIFO
//! content, ReadLogs config and log-opt is answered with a clear error (or stored and shipped
//! faithfully where that is the promise), the plugin keeps serving, and a well-behaved container
//! logging at the same time (the [`Neighbour`]) loses nothing and is never blocked.
//!
//! What is decided here, and documented by these tests:
//! - `File` must be a FIFO once opened: a symlink to a FIFO is accepted (the check is on the
//!   opened file, and the engine is the only client of the root-only socket); a regular file,
//!   a device, a directory, a socket, a missing or NUL-holding path are refused by name.
//! - Bytes of a line are stored as they came (non-UTF-8, NUL, escapes, CR) and `docker logs`
//!   gets them back byte for byte; Elasticsearch gets the lossy UTF-8 text (each invalid
//!   sequence becomes U+FFFD, control characters kept, JSON-escaped).
//! - A frame over the cap (`frame::MAX_PAYLOAD`, 1 MiB, whatever the pipes' sizes) is skipped
//!   and counted (as oversized, and as lost), however large its length prefix says it is, and
//!   the FIFO keeps being drained.
//! - Fragments that never end are stored as they come; the shipper rejoins at most 1 MiB
//!   (`MAX_MESSAGE`) into one document and ships the rest of a line in further documents, and
//!   ships a line whose last fragment never comes after `FRAGMENT_WAIT`.

mod support;
use support::{engine, es_server, probe, soak};

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::*;
use es_server::{EsServer, Faults, Garbled, ServerOptions};
use http_body_util::BodyExt;

const T0: i64 = 1_790_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

/// A well-behaved container logging a line every millisecond beside the hostile input. Its
/// writes never block (the FIFO is non-blocking): a write that finds the pipe full is retried,
/// and the longest wait is reported, so "never slowed" is measured.
struct Neighbour {
    id: String,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<(EngineFifo, Vec<LogEntry>, Duration)>>,
}

impl Neighbour {
    async fn start(plugin: &PluginProcess, tag: u8, config: &[(&str, &str)]) -> Self {
        let id = container_id(tag);
        let fifo = EngineFifo::create(plugin.dir.path(), &format!("neighbour{tag}"));
        let err = plugin.client().start_logging(&fifo.path, &id, config).await;
        assert_eq!(err, "", "the neighbour's StartLogging");
        // SAFETY: fcntl on a descriptor the EngineFifo owns.
        unsafe { libc::fcntl(fifo.file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let path = fifo.path.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let mut fifo = fifo;
            let mut written = Vec::new();
            let mut longest_wait = Duration::ZERO;
            let mut i = 0i64;
            while !stopped.load(Ordering::Relaxed) {
                let entry = line(
                    "stdout",
                    T0 + i * 1000 + i64::from(tag),
                    format!("neighbour {tag} line {i}").as_bytes(),
                );
                // Under PIPE_BUF: one write puts the whole frame in or nothing.
                let bytes = frame(&entry);
                let began = Instant::now();
                loop {
                    match fifo.file.write(&bytes) {
                        Ok(n) => {
                            assert_eq!(n, bytes.len(), "a small frame is written whole");
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if stopped.load(Ordering::Relaxed) {
                                return (fifo, written, longest_wait);
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(e) => panic!("neighbour write: {e}"),
                    }
                }
                longest_wait = longest_wait.max(began.elapsed());
                written.push(entry);
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (fifo, written, longest_wait)
        });
        Self {
            id,
            path,
            stop,
            writer: Some(writer),
        }
    }

    /// Stops writing, ends the run, and checks every line is in the local copy in order;
    /// returns the lines sent.
    async fn finish(mut self, plugin: &PluginProcess) -> Vec<LogEntry> {
        self.stop.store(true, Ordering::Relaxed);
        let writer = self.writer.take().expect("finished once");
        let (fifo, written, longest_wait) =
            tokio::task::spawn_blocking(move || writer.join().expect("the neighbour's writer"))
                .await
                .expect("join");
        assert_eq!(plugin.client().stop_logging(&self.path).await, "");
        drop(fifo);
        let stored = plugin.client().read_logs(&self.id, "", "", -1).await;
        eprintln!(
            "neighbour {}: sent {}, stored {}, lost {}, longest wait for a write {longest_wait:?}",
            &self.id[..12],
            written.len(),
            stored.len(),
            written.len().saturating_sub(stored.len())
        );
        assert!(!written.is_empty(), "the neighbour wrote nothing");
        assert!(
            stored == as_shown(&written),
            "the neighbour's local copy differs from what it wrote ({} sent, {} stored)",
            written.len(),
            stored.len()
        );
        assert!(
            longest_wait < Duration::from_secs(2),
            "a neighbour write waited {longest_wait:?}: its FIFO was not drained"
        );
        written
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        // On a panic: let the writer thread end instead of writing on forever.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Writes `bytes` in one blocking write(), as a writer other than the engine may (the engine's
/// writes are non-blocking, a frame each), and fails if it is not done within `limit`; then it
/// drains the FIFO itself so the writer thread ends. Regression: a blocking write larger than
/// the free pipe space appends without waking an edge-triggered reader while the pipe is not
/// empty, and the plugin, holding an incomplete frame, waited for a wakeup that never came.
async fn write_within(limit: Duration, fifo: &EngineFifo, bytes: Vec<u8>, plugin: &PluginProcess) {
    let mut file = fifo.file.try_clone().expect("dup the FIFO");
    let writer = std::thread::spawn(move || file.write_all(&bytes));
    let deadline = Instant::now() + limit;
    while !writer.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if writer.is_finished() {
        writer.join().expect("writer").expect("FIFO write");
        return;
    }
    let log = plugin.output();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo.path)
        .expect("open the FIFO to unblock the writer");
    let mut buf = vec![0u8; 1 << 20];
    let mut unread = 0;
    while !writer.is_finished() {
        match reader.read(&mut buf) {
            Ok(n) => unread += n,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    panic!(
        "a blocking write waited over {limit:?} with {unread} bytes unread: the plugin stopped draining the FIFO; plugin log tail:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// The plugin log line of a run that ended, for its counters.
/// The plugin's "logging run ended" line for `fifo`, waited for up to 10 s: the run's end is
/// logged off the runtime's threads, so it may follow the StopLogging answer by a moment.
fn run_end_line(plugin: &PluginProcess, fifo: &Path) -> Option<String> {
    let file = fifo.display().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = plugin
            .output()
            .lines()
            .find(|l| l.contains("logging run ended") && l.contains(&file))
            .map(str::to_owned);
        if found.is_some() || std::time::Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn body_text(answer: hyper::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = answer.status().as_u16();
    let bytes = answer
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("the {status} answer's body was cut: {e}"))
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn usage(plugin: &PluginProcess) -> probe::ProcUsage {
    probe::usage(plugin.pid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_logging_refuses_hostile_ids_and_files_by_name() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let neighbour = Neighbour::start(&plugin, 1, &[]).await;
    let dir = plugin.dir.path();
    let fifo = EngineFifo::create(dir, "hostile");
    let regular = dir.join("regular");
    std::fs::write(&regular, b"x").unwrap();
    let to_regular = dir.join("link-to-regular");
    std::os::unix::fs::symlink(&regular, &to_regular).unwrap();
    let to_zero = dir.join("link-to-zero");
    std::os::unix::fs::symlink("/dev/zero", &to_zero).unwrap();
    let socket = dir.join("a.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let missing = dir.join("missing");
    let id = container_id(2);
    let not_hex = "is not 64 lowercase hex digits";
    let fifo_path = fifo.path.display().to_string();
    let cases: Vec<(String, String, &str)> = vec![
        (fifo_path.clone(), String::new(), not_hex),
        (fifo_path.clone(), "a".repeat(65), not_hex),
        (fifo_path.clone(), "a".repeat(63), not_hex),
        (fifo_path.clone(), "A".repeat(64), not_hex),
        (fifo_path.clone(), "é".repeat(32), not_hex),
        (fifo_path.clone(), "ａ".repeat(64), not_hex),
        (
            fifo_path.clone(),
            format!("{}/../x", "a".repeat(59)),
            not_hex,
        ),
        (fifo_path.clone(), format!("{}\n", "a".repeat(63)), not_hex),
        (
            fifo_path.clone(),
            format!("{}\u{0}", "a".repeat(63)),
            not_hex,
        ),
        (fifo_path.clone(), "a".repeat(100_000), not_hex),
        (String::new(), id.clone(), "StartLogging has no File"),
        (
            missing.display().to_string(),
            id.clone(),
            "No such file or directory",
        ),
        (
            "relative-fifo".into(),
            id.clone(),
            "No such file or directory",
        ),
        (format!("{fifo_path}\u{0}x"), id.clone(), "nul byte"),
        (
            socket.display().to_string(),
            id.clone(),
            "is not a FIFO (it is a socket)",
        ),
        (
            to_regular.display().to_string(),
            id.clone(),
            "is not a FIFO (it is a regular file)",
        ),
        (
            to_zero.display().to_string(),
            id.clone(),
            "is not a FIFO (it is a character device)",
        ),
    ];
    for (file, cid, want) in &cases {
        let body = serde_json::json!({
            "File": file,
            "Info": { "ContainerID": cid, "ContainerName": "/hostile" }
        });
        let err = api
            .call_err("/LogDriver.StartLogging", &body.to_string())
            .await;
        assert!(
            err.to_lowercase().contains(&want.to_lowercase()),
            "File {file:?} id {:?}: got {err:?}, want {want:?}",
            cid.chars().take(80).collect::<String>()
        );
        assert!(
            err.len() < 600,
            "the error repeats the hostile input at length: {} bytes",
            err.len()
        );
    }
    // Nothing of a refused request was kept: no store, no run record. Dot files are the
    // store root's own bookkeeping (the recorded boot), never a container's.
    let stores: Vec<String> = std::fs::read_dir(plugin.state.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(stores, vec![container_id(1)], "stores after the refusals");
    let runs = std::fs::read_to_string(plugin.state.join("runs.json")).unwrap_or_default();
    assert!(
        !runs.contains("hostile"),
        "a refused run was recorded: {runs}"
    );

    // A symlink to a FIFO is a FIFO once opened: accepted, and read like the FIFO itself.
    let link = dir.join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo.path, &link).unwrap();
    assert_eq!(api.start_logging(&link, &id, &[]).await, "");
    let mut fifo = fifo;
    let through_link = vec![line("stdout", T0, b"through a symlink")];
    fifo.write_entries(&through_link);
    assert_eq!(api.stop_logging(&link).await, "");
    assert_eq!(
        api.read_logs(&id, "", "", -1).await,
        as_shown(&through_link)
    );

    neighbour.finish(&plugin).await;
    eprintln!(
        "hostile StartLogging: {} requests refused by name, 1 symlinked FIFO accepted",
        cases.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_huge_and_misrouted_requests_get_clear_errors_and_memory_stays_flat() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let neighbour = Neighbour::start(&plugin, 3, &[]).await;
    // Warm up the connection pool and the allocator before the baseline.
    assert_eq!(api.call_text("/LogDriver.Capabilities", "").await.0, 200);
    let before = usage(&plugin);

    // Bodies that are not the JSON the engine sends: 400, naming the endpoint.
    let deep = "[".repeat(100_000);
    let malformed: Vec<Bytes> = vec![
        Bytes::from_static(br#"{"File":5}"#),
        Bytes::from_static(br#"{"File":"/x","Info":"text"}"#),
        Bytes::from_static(br#"{"File":"/x","Info":{"ContainerID":"#),
        Bytes::from_static(br#"{"File":"\udc00"}"#),
        Bytes::from_static(b"{\"File\":\"\xff\xfe\"}"),
        Bytes::from_static(b"\x00\x01\x02"),
        Bytes::from_static(b"null"),
        Bytes::from(deep),
    ];
    for endpoint in ["/LogDriver.StartLogging", "/LogDriver.ReadLogs"] {
        for body in &malformed {
            let answer = api
                .try_call_bytes(endpoint, body.clone())
                .await
                .expect("an answer");
            let (status, text) = body_text(answer).await;
            assert_eq!(status, 400, "{endpoint} {body:?}: {text}");
            // What is JSON but not this endpoint's shape is refused for what it lacks.
            assert!(
                (text.contains(endpoint) && text.contains("not the JSON"))
                    || text.contains("is not 64 lowercase hex digits"),
                "{endpoint}: {text}"
            );
        }
    }
    // StopLogging never fails (a failure leaks the engine's FIFO), whatever its body.
    for body in &malformed {
        let answer = api
            .try_call_bytes("/LogDriver.StopLogging", body.clone())
            .await
            .expect("an answer");
        assert_eq!(body_text(answer).await, (200, r#"{"Err":""}"#.into()));
    }

    // Endpoints that do not exist: 404 naming the path and the endpoints served.
    for path in [
        "/",
        "/LogDriver.startlogging",
        "/LogDriver.StartLogging/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/Plugin.Activate.Extra",
    ] {
        let answer = api
            .try_call(path, "{}")
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let (status, text) = body_text(answer).await;
        assert_eq!(status, 404, "{path}: {text}");
        assert!(
            text.contains("unknown endpoint") && text.contains("/LogDriver."),
            "{path}: {text}"
        );
    }
    let long_path = format!("/{}", "x".repeat(60_000));
    match api.try_call(&long_path, "{}").await {
        Ok(answer) => assert!(answer.status().as_u16() >= 400, "a 60 KB path was served"),
        Err(error) => eprintln!("a 60 KB path: connection refused by the HTTP layer ({error})"),
    }

    // A raw connection that sends garbage gets an HTTP error; one that stalls mid-request
    // holds only itself.
    let socket = plugin.socket.clone();
    let garbage_answer = tokio::task::spawn_blocking(move || {
        let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(b"\x16\x03\x01GARBAGE \xff\xff\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(
        garbage_answer.is_empty() || garbage_answer.starts_with("HTTP/1.1 4"),
        "garbage got {garbage_answer:?}"
    );
    let mut stalled = std::os::unix::net::UnixStream::connect(&plugin.socket).unwrap();
    stalled
        .write_all(b"POST /LogDriver.StartLogging HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"File\":")
        .unwrap();
    assert_eq!(
        api.call_text("/LogDriver.Capabilities", "").await.0,
        200,
        "a stalled connection held up another"
    );

    // Huge bodies: refused at the 8 MiB limit, never buffered whole.
    let sizes = soak::iterations(3);
    for round in 0..sizes {
        let mut huge = br#"{"File":"/x","Info":{"ContainerEnv":[""#.to_vec();
        huge.resize(50 << 20, b'A');
        huge.extend_from_slice(br#""]}}"#);
        let endpoint = if round % 2 == 0 {
            "/LogDriver.StartLogging"
        } else {
            "/LogDriver.ReadLogs"
        };
        // A client of its own: the connection is closed after the 413, and a pooled one would
        // fail the next request for that reason alone.
        match plugin
            .client()
            .try_call_bytes(endpoint, Bytes::from(huge))
            .await
        {
            Ok(answer) => {
                assert_eq!(answer.status(), 413);
                // The plugin closes after its 413 while the client may still be sending: the
                // answer's body then cannot always be read whole.
                match answer.into_body().collect().await {
                    Ok(body) => {
                        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                        assert!(
                            text.contains("the limit is 8388608 bytes"),
                            "the refusal names the limit: {text}"
                        );
                    }
                    Err(error) => eprintln!("50 MB body to {endpoint}: 413, body cut ({error})"),
                }
            }
            // The plugin answered 413 and closed while the client was still sending.
            Err(error) => eprintln!("50 MB body to {endpoint}: connection cut ({error})"),
        }
    }
    drop(stalled);
    assert_eq!(
        plugin
            .client()
            .call_text("/LogDriver.Capabilities", "")
            .await
            .0,
        200
    );
    let after = usage(&plugin);
    eprintln!(
        "malformed/huge requests: {} malformed x2 endpoints, {sizes} x 50 MB bodies; plugin at start: {before}; at end: {after}",
        malformed.len()
    );
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    assert!(
        grown < 32 << 10,
        "RSS grew by {grown} KiB over 50 MB bodies: a body is buffered whole"
    );
    neighbour.finish(&plugin).await;
}

/// Fragments of one line with `id` that never get their `last`.
fn endless_fragments(time_nano: i64, len: usize, id: &str) -> Vec<LogEntry> {
    let text: Vec<u8> = (0..len).map(|k| b'a' + (k % 26) as u8).collect();
    let mut pieces = fragments(time_nano, &text, id);
    if let Some(last) = pieces.last_mut() {
        if let Some(meta) = last.partial_log_metadata.as_mut() {
            meta.last = false;
        }
    }
    pieces
}

/// Messages of the documents indexed for a container, sorted; checks no `_id` is there twice.
fn indexed_messages(server: &EsServer, id: &str) -> Vec<String> {
    let docs = server.docs();
    let ids: HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), docs.len(), "an _id was indexed twice");
    let mut messages: Vec<String> = docs
        .iter()
        .filter(|d| d.source["container"]["id"] == id)
        .map(|d| d.source["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    messages.sort();
    messages
}

async fn wait_for_docs(server: &EsServer, want: usize, limit: Duration, plugin: &PluginProcess) {
    let deadline = tokio::time::Instant::now() + limit;
    while server.doc_count() < want {
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "only {} of {want} documents within {limit:?}; plugin log:\n{}",
                server.doc_count(),
                plugin
                    .output()
                    .lines()
                    .filter(|l| !l.contains("DEBUG"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Elasticsearch imitation and a plugin shipping to it every 50 ms.
async fn shipping_plugin() -> (EsServer, PluginProcess) {
    let server = EsServer::start(ServerOptions::default()).await;
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_FLUSH_INTERVAL", "50ms"),
    ]);
    (server, plugin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fifo_content_is_skipped_or_kept_faithfully_and_never_blocks() {
    let (server, plugin) = shipping_plugin().await;
    let api = plugin.client();
    let neighbour = Neighbour::start(&plugin, 4, &[]).await;
    let before = usage(&plugin);
    let id = container_id(5);
    let fifo = EngineFifo::create(plugin.dir.path(), "hostile-a");
    let first_path = fifo.path.clone();
    assert_eq!(
        api.start_logging(&fifo.path, &id, &[("max-size", "64m")])
            .await,
        ""
    );

    let control_lines: Vec<&[u8]> = vec![
        b"\xff\xfe\x00nul and bell\x07 \x1b[31mred\x1b[0m\r\n\tend",
        b"",
        b"\xed\xa0\x80 a UTF-16 surrogate in UTF-8",
        b"\xc0\xaf overlong slash",
        b"\xef\xbb\xbfbom",
        b"\"quoted\" \\ {\"json\":1}\n{\"create\":{}}",
        "unicode ✓ 𝄞".as_bytes(),
    ];
    let mut stored: Vec<LogEntry> = vec![line("stdout", T0, b"before")];
    stored.extend(
        control_lines
            .iter()
            .enumerate()
            .map(|(i, text)| line("stderr", T0 + 1 + i as i64, text)),
    );
    stored.extend([
        line("stdout", i64::MIN, b"time i64::MIN"),
        line("stdout", -1, b"time -1"),
        line("stdout", 0, b"time 0"),
        line("stdout", i64::MAX, b"time i64::MAX"),
        line("evil\"}\n{\"index\":{}}", T0 + 20, b"odd source"),
    ]);
    let million = vec![b'm'; 1_000_000];
    stored.push(line("stdout", T0 + 21, &million));
    let mut first_part = Vec::new();
    for e in &stored {
        first_part.extend_from_slice(&frame(e));
    }
    // A frame whose payload is not a LogEntry: skipped, counted as invalid.
    first_part.extend_from_slice(&7u32.to_be_bytes());
    first_part.extend_from_slice(b"\xff\xff\xff\xff\xff\xff\xff");
    // A real frame of 2 MiB, over the 1 MiB cap: skipped as its bytes come.
    first_part.extend_from_slice(&(2u32 << 20).to_be_bytes());
    first_part.extend(std::iter::repeat_n(b'z', 2 << 20));
    let after_oversized = line("stdout", T0 + 22, b"after oversized");
    first_part.extend_from_slice(&frame(&after_oversized));
    stored.push(after_oversized);
    // 1 MiB split by the engine into 64 fragments: one document of exactly MAX_MESSAGE.
    let mebi: Vec<u8> = (0..1usize << 20).map(|k| b'A' + (k % 26) as u8).collect();
    let mebi_fragments = fragments(T0 + 23, &mebi, "mebi");
    // 2.5 MiB of fragments that never end, then a complete line.
    let endless = endless_fragments(T0 + 24, 5 << 19, "endless");
    let after_endless = line("stdout", T0 + 25, b"after endless");
    // Fragments that never end and nothing after them: shipped after FRAGMENT_WAIT.
    let trailing = endless_fragments(T0 + 26, 100 << 10, "trailing");
    for e in mebi_fragments
        .iter()
        .chain(&endless)
        .chain([&after_endless])
        .chain(&trailing)
    {
        first_part.extend_from_slice(&frame(e));
        stored.push(e.clone());
    }
    let sent_bytes = first_part.len();
    write_within(Duration::from_secs(30), &fifo, first_part, &plugin).await;
    // The trailing fragments are shipped without a last fragment and without StopLogging.
    let trailing_text: String = trailing
        .iter()
        .map(|e| String::from_utf8_lossy(&e.line).into_owned())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !indexed_messages(&server, &id).contains(&trailing_text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a line whose last fragment never came was not shipped; plugin log:\n{}",
            plugin.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An absurd length prefix: everything behind it for 4 GiB is that frame's, skipped; the
    // writer is never blocked.
    let mut absurd = u32::MAX.to_be_bytes().to_vec();
    absurd.extend(frame(&line("stdout", T0 + 27, b"swallowed")).repeat(100_000));
    write_within(Duration::from_secs(30), &fifo, absurd, &plugin).await;
    assert_eq!(api.stop_logging(&first_path).await, "");
    drop(fifo);
    let first_end = run_end_line(&plugin, &first_path).expect("the run's end is logged");
    assert!(
        first_end.contains("oversized=2") && first_end.contains("invalid=1"),
        "the skipped frames are counted: {first_end}"
    );

    // A truncated frame at StopLogging, and at EOF without StopLogging: the whole entries
    // before it are kept, the piece counted.
    let mut truncated = |text: &'static [u8], t: i64| {
        let entry = line("stdout", t, text);
        stored.push(entry.clone());
        let mut bytes = frame(&entry);
        bytes.extend_from_slice(&100u32.to_be_bytes());
        bytes.extend_from_slice(&[b'q'; 50]);
        bytes
    };
    let second = truncated(b"second run", T0 + 30);
    let third = truncated(b"third run", T0 + 31);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "hostile-b");
    assert_eq!(api.start_logging(&fifo.path, &id, &[]).await, "");
    fifo.file.write_all(&second).unwrap();
    assert_eq!(api.stop_logging(&fifo.path).await, "");
    let second_end = run_end_line(&plugin, &fifo.path).expect("second run ended");
    assert!(second_end.contains("truncated_bytes=54"), "{second_end}");
    drop(fifo);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "hostile-c");
    let third_path = fifo.path.clone();
    assert_eq!(api.start_logging(&fifo.path, &id, &[]).await, "");
    fifo.file.write_all(&third).unwrap();
    drop(fifo);
    wait_until(Duration::from_secs(10), "the EOF of the third run", || {
        run_end_line(&plugin, &third_path).is_some_and(|l| l.contains("Eof"))
    });
    let third_end = run_end_line(&plugin, &third_path).unwrap_or_default();
    assert!(third_end.contains("truncated_bytes=54"), "{third_end}");

    // docker logs: every stored byte back exactly (non-UTF-8 and control bytes included).
    let shown = api.read_logs(&id, "", "", -1).await;
    assert_eq!(shown.len(), stored.len(), "entries in the local copy");
    for (i, (got, want)) in shown.iter().zip(as_shown(&stored)).enumerate() {
        assert!(*got == want, "entry {i} differs in the local copy");
    }

    // Elasticsearch: lossy UTF-8 text, the 1 MiB line in one document, endless fragments in
    // documents of at most 1 MiB.
    let written = neighbour.finish(&plugin).await;
    let text = |e: &LogEntry| String::from_utf8_lossy(&e.line).into_owned();
    let joined = |pieces: &[LogEntry]| pieces.iter().map(text).collect::<String>();
    let mut want: Vec<String> = stored.iter().filter(|e| !e.partial).map(text).collect();
    want.push(joined(&mebi_fragments));
    for chunk in endless.chunks(64) {
        want.push(joined(chunk));
    }
    want.push(trailing_text);
    want.sort();
    wait_for_docs(
        &server,
        want.len() + written.len(),
        Duration::from_secs(60),
        &plugin,
    )
    .await;
    let got = indexed_messages(&server, &id);
    assert_eq!(got.len(), want.len(), "documents of the hostile container");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "an indexed message differs: {:?} vs {:?}",
            g.chars().take(60).collect::<String>(),
            w.chars().take(60).collect::<String>()
        );
    }
    assert_eq!(
        indexed_messages(&server, &container_id(4)).len(),
        written.len(),
        "the neighbour's documents"
    );
    let after = usage(&plugin);
    eprintln!(
        "hostile FIFO content: {} bytes written, {} entries stored, {} documents indexed (1 invalid and 2 oversized frames skipped, 2 truncated frames counted); neighbour {} lines all stored and indexed once; plugin at start: {before}; at end: {after}",
        sent_bytes,
        stored.len(),
        got.len(),
        written.len()
    );
    assert!(
        after.rss_kib < before.rss_kib + (96 << 10),
        "RSS grew from {before} to {after}"
    );
}

fn rfc3339(nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The same instant written with the largest offset RFC 3339 allows short of a day.
fn far_east(nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(23, 59, 0).unwrap())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn read_body(since: &str, until: &str, tail: serde_json::Value, follow: bool, id: &str) -> String {
    serde_json::json!({
        "Info": { "ContainerID": id, "Config": null },
        "Config": { "Since": since, "Until": until, "Tail": tail, "Follow": follow }
    })
    .to_string()
}

/// Reads a ReadLogs answer to its end within `limit`; `None` if it did not end.
async fn read_to_end(
    api: &Api,
    body: &str,
    limit: Duration,
) -> Option<(u16, Vec<LogEntry>, String)> {
    let answer = api.call("/LogDriver.ReadLogs", body).await;
    let status = answer.status().as_u16();
    let collected = tokio::time::timeout(limit, answer.into_body().collect())
        .await
        .ok()?
        .expect("stream")
        .to_bytes();
    if status == 200 {
        Some((status, decode_frames(&collected), String::new()))
    } else {
        Some((
            status,
            Vec::new(),
            String::from_utf8_lossy(&collected).into_owned(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_logs_with_hostile_times_and_tails_answers_clearly_and_ends() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let neighbour = Neighbour::start(&plugin, 6, &[]).await;
    let id = container_id(7);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "reader");
    assert_eq!(api.start_logging(&fifo.path, &id, &[]).await, "");
    let written: Vec<LogEntry> = (0..100)
        .map(|i| line("stdout", T0 + i * SEC, format!("entry {i}").as_bytes()))
        .collect();
    fifo.write_entries(&written);
    let shown = as_shown(&written);
    let quick = Duration::from_secs(5);
    for _ in 0..100 {
        if api.read_logs(&id, "", "", -1).await.len() == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = serde_json::json!(-1);
    let t = |s: i64| rfc3339(T0 + s * SEC);
    // (since, until, tail, what is answered)
    let answered: Vec<(String, String, serde_json::Value, &[LogEntry])> = vec![
        (t(60), t(40), all.clone(), &shown[..0]),
        (
            "9999-12-31T23:59:59.999999999Z".into(),
            String::new(),
            all.clone(),
            &shown[..0],
        ),
        (
            String::new(),
            "9999-12-31T23:59:59Z".into(),
            all.clone(),
            &shown[..],
        ),
        (
            "1969-12-31T23:59:59Z".into(),
            String::new(),
            all.clone(),
            &shown[..],
        ),
        (
            "1000-01-01T00:00:00Z".into(),
            String::new(),
            all.clone(),
            &shown[..],
        ),
        (
            "0000-01-01T00:00:00Z".into(),
            String::new(),
            all.clone(),
            &shown[..],
        ),
        (
            String::new(),
            "1000-01-01T00:00:00Z".into(),
            all.clone(),
            &shown[..0],
        ),
        (
            t(10).replace('Z', "+00:00"),
            far_east(T0 + 20 * SEC),
            all.clone(),
            &shown[10..21],
        ),
        (
            String::new(),
            String::new(),
            serde_json::json!(i64::MAX),
            &shown[..],
        ),
        (
            String::new(),
            String::new(),
            serde_json::json!(0),
            &shown[..0],
        ),
    ];
    for (since, until, tail, want) in &answered {
        let body = read_body(since, until, tail.clone(), false, &id);
        let (status, got, err) = read_to_end(&api, &body, quick)
            .await
            .unwrap_or_else(|| panic!("ReadLogs {since} {until} {tail} did not end"));
        assert_eq!(status, 200, "{since} {until} {tail}: {err}");
        assert!(
            got == *want,
            "since {since:?} until {until:?} tail {tail}: {} entries, want {}",
            got.len(),
            want.len()
        );
    }
    // Refused with a 400 naming the field.
    let long = "9".repeat(1 << 20);
    let refused: Vec<(String, String, serde_json::Value, &str)> = vec![
        (
            "-0001-01-01T00:00:00Z".into(),
            String::new(),
            all.clone(),
            "Config.Since",
        ),
        (
            "2026-02-30T00:00:00Z".into(),
            String::new(),
            all.clone(),
            "Config.Since",
        ),
        (
            String::new(),
            "yesterday".into(),
            all.clone(),
            "Config.Until",
        ),
        (long.clone(), String::new(), all.clone(), "Config.Since"),
        (
            String::new(),
            String::new(),
            serde_json::json!(-5),
            "Config.Tail: -5",
        ),
        (
            String::new(),
            String::new(),
            serde_json::json!(i64::MIN),
            "Config.Tail",
        ),
        (
            String::new(),
            String::new(),
            serde_json::json!(u64::MAX),
            "not the JSON",
        ),
        (
            String::new(),
            String::new(),
            serde_json::json!(1e99),
            "not the JSON",
        ),
        (
            String::new(),
            String::new(),
            serde_json::json!("5"),
            "not the JSON",
        ),
    ];
    for (since, until, tail, want) in &refused {
        let body = read_body(since, until, tail.clone(), false, &id);
        let (status, _, err) = read_to_end(&api, &body, quick).await.expect("an answer");
        assert_eq!(status, 400, "{tail}: {err}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert!(err.len() < 500, "the error repeats 1 MB of input");
    }
    let (status, _, err) = read_to_end(
        &api,
        &read_body("", "", all.clone(), false, "../../etc"),
        quick,
    )
    .await
    .expect("an answer");
    assert_eq!(status, 400);
    assert!(err.contains("is not 64 lowercase hex digits"), "{err}");
    let (status, got, _) = read_to_end(
        &api,
        &read_body("", "", all.clone(), false, &container_id(99)),
        quick,
    )
    .await
    .expect("an answer");
    assert_eq!(
        (status, got.len()),
        (200, 0),
        "an unknown container has no logs"
    );

    // Follows that can never deliver anything more end at once, while the container still
    // runs and is quiet: Until already past, Since after Until.
    let follows: [(String, String, &[LogEntry]); 2] = [
        (String::new(), t(500), &shown[..]),
        (t(90), t(10), &shown[..0]),
    ];
    for (since, until, want) in follows {
        let body = read_body(&since, &until, all.clone(), true, &id);
        let started = Instant::now();
        let (status, got, _) = read_to_end(&api, &body, quick).await.unwrap_or_else(|| {
            panic!("docker logs -f --since {since:?} --until {until:?} did not end while the container is quiet")
        });
        assert_eq!(status, 200);
        assert!(
            got == want,
            "follow --since {since:?} --until {until:?}: {} entries, want {}",
            got.len(),
            want.len()
        );
        eprintln!(
            "follow --since {since:?} --until {until:?} ended after {:?}",
            started.elapsed()
        );
    }
    // A follow whose Until comes while it follows ends then, not at the next line.
    let soon = time::OffsetDateTime::now_utc() + Duration::from_secs(1);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = read_body(&t(99), &soon, all.clone(), true, &id);
    let (_, got, _) = read_to_end(&api, &body, quick)
        .await
        .expect("a follow whose Until passed while following did not end");
    assert!(got == shown[99..], "{} entries", got.len());

    assert_eq!(api.stop_logging(&fifo.path).await, "");
    neighbour.finish(&plugin).await;
    eprintln!(
        "hostile ReadLogs: {} answered, {} refused with 400, 3 follows ended without waiting for a line",
        answered.len() + 1,
        refused.len() + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_and_option_injection_is_refused_naming_the_option_or_made_harmless() {
    let (server, plugin) = shipping_plugin().await;
    let api = plugin.client();
    let neighbour = Neighbour::start(&plugin, 8, &[]).await;
    let fifo = EngineFifo::create(plugin.dir.path(), "injector");
    let id = container_id(9);
    let rules = "none of \\ / * ? \" < > | , # :";
    let placeholders = "%{[container.name]}";
    let refused: Vec<(&str, &str)> = vec![
        ("logs-{{ .Name }}", placeholders),
        ("logs-{{.Name}}", placeholders),
        ("logs-{{.name}}", placeholders),
        ("../x", rules),
        ("a,b", rules),
        ("<x>", rules),
        ("logs-*", rules),
        ("x?pretty", rules),
        ("logs#x", rules),
        ("remote:logs", rules),
        ("logs x", rules),
        ("logs\nx", rules),
        ("_all", "it starts with '_'"),
        ("-x", "it starts with '-'"),
        ("..", "\".\" and \"..\" are not index names"),
        ("Logs", "is uppercase"),
        ("logs-%{[container.name]", "unclosed %{"),
        ("logs-%{[env.SECRET]}", placeholders),
        ("logs-%{[container.labels.team]}", "no label \"team\""),
    ];
    let long_name = "x".repeat(300);
    let mut cases = refused.clone();
    cases.push((&long_name, "at most 255"));
    for (index, want) in &cases {
        let err = api
            .start_logging(&fifo.path, &id, &[("index", index)])
            .await;
        assert!(
            err.contains("log-opt index") && err.contains(want),
            "index={index:?}: got {err:?}, want {want:?}"
        );
    }
    // Other options that reach a URL or a header: refused, naming the option.
    for (name, value) in [
        ("hosts", "es\nX-Injected: 1"),
        ("proxy_url", "gopher://proxy"),
        ("dead_letter_index", "../dead"),
        ("workers", "2\n3"),
        ("timeout", "1s; 2s"),
    ] {
        let err = api.start_logging(&fifo.path, &id, &[(name, value)]).await;
        assert!(
            err.contains(&format!("log-opt {name}")),
            "{name}={value:?}: {err:?}"
        );
    }

    // Harmless by construction: label values are sanitised into the name, and a pipeline name
    // is a query value, percent-encoded.
    let mut body = Api::start_logging_body(
        &fifo.path,
        &id,
        &[
            ("index", "logs-%{[container.labels.team]}"),
            ("pipeline", "p&require_data_stream=false&refresh=true"),
        ],
    );
    body["Info"]["ContainerLabels"] = serde_json::json!({ "team": "../../_all,*\n<x>" });
    let err = api
        .call_err("/LogDriver.StartLogging", &body.to_string())
        .await;
    assert_eq!(err, "");
    let mut fifo = fifo;
    fifo.write_entries(&[line("stdout", T0, b"label injection")]);
    assert_eq!(api.stop_logging(&fifo.path).await, "");
    let written = neighbour.finish(&plugin).await;
    wait_for_docs(&server, written.len() + 1, Duration::from_secs(60), &plugin).await;
    let doc = server
        .docs()
        .into_iter()
        .find(|d| d.source["message"] == "label injection")
        .expect("the line is indexed");
    assert_eq!(doc.index, "logs-.._..__all____x_");
    assert_eq!(
        doc.pipeline.as_deref(),
        Some("p&require_data_stream=false&refresh=true")
    );
    let stats = server.stats();
    let indices: HashSet<String> = server.docs().into_iter().map(|d| d.index).collect();
    eprintln!(
        "injection: {} index values and 5 other options refused by name; label and pipeline injection harmless (indices written: {indices:?}); {} documents, {} bulk requests",
        cases.len(),
        server.doc_count(),
        stats.bulk_requests
    );
    assert_eq!(
        indices,
        HashSet::from(["logs-docker-default".to_owned(), doc.index.clone()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_answers_that_are_not_json_or_truncated_are_retried_without_loss_or_duplicates(
) {
    let server = EsServer::start(ServerOptions::default()).await;
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_FLUSH_INTERVAL", "20ms"),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "200ms"),
    ]);
    let rounds = soak::iterations(2);
    let mut sent = 0;
    for (round, how) in (0..rounds).flat_map(|r| [(r, Garbled::NotJson), (r, Garbled::Truncated)]) {
        server.set_faults(Faults {
            garbled: Some(how),
            garbled_times: 3,
            ..Faults::default()
        });
        let tag = u8::try_from(10 + 2 * round).expect("a container tag")
            + u8::from(how == Garbled::Truncated);
        let neighbour = Neighbour::start(&plugin, tag, &[("bulk_max_bytes", "64k")]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        sent += neighbour.finish(&plugin).await.len();
        wait_for_docs(&server, sent, Duration::from_secs(60), &plugin).await;
    }
    let stats = server.stats();
    let docs = server.docs();
    let ids: HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    eprintln!(
        "garbled answers: {} mangled ({:?}), sent {sent}, indexed {}, duplicates answered 409 {}, distinct ids {}",
        stats.garbled_answers,
        [Garbled::NotJson, Garbled::Truncated],
        docs.len(),
        stats.conflicts_409,
        ids.len()
    );
    assert_eq!(stats.garbled_answers as u64, rounds * 6);
    assert_eq!(docs.len(), sent, "every line indexed");
    assert_eq!(ids.len(), sent, "no _id twice");
    assert!(
        stats.conflicts_409 > 0,
        "documents of a mangled answer were resent and answered 409"
    );
    let log = plugin.output();
    assert!(
        log.contains("the bulk answer is not the JSON Elasticsearch sends"),
        "the retry names the problem"
    );
}
