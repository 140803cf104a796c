//! kill -9 of the real plugin binary, many times, under load: no line is lost across a crash
//! and restart.
//!
//! A writer thread plays a container logging steadily (short lines, and now and then a 40 KB
//! line in 16 KiB fragments) while the test kills the plugin with SIGKILL and starts it again on
//! the same state dir. The restarted plugin reopens the FIFO from its run table, as it must: the
//! engine restarts a crashed plugin but does not repeat StartLogging (docs/protocol.md),
//! and the bytes the dead plugin had not consumed wait in the pipe.
//!
//! Each kill is aimed at a moment: in the middle of the stream (a batch being stored), right as
//! a new segment appears (rotation: max-size 64k), while a `.log.gz.tmp` exists (compression),
//! while a checkpoint's temporary file exists (shipping to the fake Elasticsearch). An aimed
//! kill that does not see its moment within a limit fires anyway; the hits are printed.
//!
//! Promise: every line that reached the FIFO is in the store (ReadLogs returns each exactly once,
//! in order) and, when shipping, indexed exactly once (no line twice, no `_id` twice).
//!
//! The kill delays come from a seeded generator; the seed is printed and `ESLP_CRASH_SEED=N`
//! replays it.

mod support;
use support::{engine, es_server, probe, soak};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::*;
use es_server::{EsServer, Faults, ServerOptions};

const T0: i64 = 1_790_000_000_000_000_000;
/// Kills in one round. A soak runs more rounds (`soak::iterations(1)`), each on a fresh state
/// dir, so the store stays within max-file and ReadLogs can be checked whole.
const KILLS_PER_ROUND: u64 = 10;

/// splitmix64: small, seedable, good enough to spread kill times.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Self, u64) {
        let seed = std::env::var("ESLP_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        (Self(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn millis(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(range.start + self.next() % (range.end - range.start))
    }
}

/// What a kill is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Moment {
    /// Any moment of the stream: a batch being stored, or between two.
    Batch,
    /// Just as a new segment file appears.
    Rotation,
    /// While a segment is being gzipped (its `.log.gz.tmp` exists).
    Compression,
    /// While a checkpoint is being written (its `.tmp` exists).
    Checkpoint,
}

/// What the container prints as its `seq`th line (time `t`): entries, a long line in fragments.
type Printer = fn(i64, i64) -> Vec<LogEntry>;

/// Short lines, and now and then a 40 KB line in 16 KiB fragments.
fn plain_lines(seq: i64, t: i64) -> Vec<LogEntry> {
    if seq % 4001 == 0 {
        let text: Vec<u8> = (0..40_000).map(|k| b'a' + ((seq + k) % 26) as u8).collect();
        fragments(t, &text, &format!("split{seq}"))
    } else {
        vec![line(
            "stdout",
            t,
            format!("crash test line {seq}").as_bytes(),
        )]
    }
}

/// The container's lines, written at a steady pace until told to stop; returns what it wrote.
fn spawn_writer(
    fifo: EngineFifo,
    lines_per_tick: usize,
    print: Printer,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(EngineFifo, Vec<LogEntry>)> {
    std::thread::spawn(move || {
        let mut fifo = fifo;
        let mut sent = Vec::new();
        let mut seq = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let mut tick = Vec::with_capacity(lines_per_tick);
            for _ in 0..lines_per_tick {
                seq += 1;
                tick.extend(print(seq, T0 + seq * 1000));
            }
            // Blocks while the plugin is down and the pipe is full, as a container does.
            fifo.write_entries(&tick);
            sent.extend(tick);
            std::thread::sleep(Duration::from_millis(10));
        }
        (fifo, sent)
    })
}

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

fn newest_segment(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = files_with_suffix(dir, ".log")
        .into_iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
        .collect();
    names.sort();
    names.pop()
}

/// Polls `seen` as fast as it can for up to `limit`; true if it became true.
fn poll(limit: Duration, mut seen: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if seen() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

/// Waits for `moment` (or a random delay for Batch), kills the plugin with SIGKILL, starts it
/// again. True if the moment was seen before the kill.
fn kill_at(
    plugin: &mut PluginProcess,
    store: &Path,
    checkpoints: &Path,
    moment: Moment,
    rng: &mut Rng,
) -> bool {
    std::thread::sleep(rng.millis(20..150));
    let hit = match moment {
        Moment::Batch => {
            std::thread::sleep(rng.millis(0..200));
            true
        }
        Moment::Rotation => {
            let now = newest_segment(store);
            poll(Duration::from_millis(800), || newest_segment(store) != now)
        }
        Moment::Compression => poll(Duration::from_millis(800), || {
            !files_with_suffix(store, ".log.gz.tmp").is_empty()
        }),
        Moment::Checkpoint => {
            // A .tmp left by an earlier kill is no checkpoint being written now.
            let since = std::time::SystemTime::now();
            poll(Duration::from_millis(1500), || {
                files_with_suffix(checkpoints, ".tmp").iter().any(|tmp| {
                    std::fs::metadata(tmp)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t >= since)
                })
            })
        }
    };
    plugin.restart();
    hit
}

fn reopened_count(plugin: &PluginProcess) -> usize {
    plugin
        .output()
        .matches("reopened FIFO after restart")
        .count()
}

/// Runs the writer, kills the plugin `kills` times aimed at `moments` in turn, then stops the
/// container; returns what it wrote.
async fn crash_loop(
    plugin: &mut PluginProcess,
    id: &str,
    opts: &[(&str, &str)],
    moments: &[Moment],
    lines_per_tick: usize,
    print: Printer,
) -> Vec<LogEntry> {
    let (mut rng, seed) = Rng::seeded();
    eprintln!("ESLP_CRASH_SEED={seed}");
    let fifo = EngineFifo::create(plugin.dir.path(), "fifo");
    let path = fifo.path.clone();
    assert_eq!(plugin.client().start_logging(&path, id, opts).await, "");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(fifo, lines_per_tick, print, Arc::clone(&stop));
    let store = plugin.state.join("containers").join(id);
    let checkpoints = plugin.state.join("checkpoints");
    let mut hits: HashMap<Moment, (u64, u64)> = HashMap::new();
    let kills = KILLS_PER_ROUND;
    for n in 0..kills {
        // Aim at a running pipeline, not at the start-up before the FIFO is reopened (a kill
        // there costs nothing either: the run table is read again at the next start).
        wait_until(Duration::from_secs(10), "the FIFO reopened", || {
            reopened_count(plugin) >= n as usize
        });
        let moment = moments[n as usize % moments.len()];
        let hit =
            tokio::task::block_in_place(|| kill_at(plugin, &store, &checkpoints, moment, &mut rng));
        let counts = hits.entry(moment).or_default();
        counts.0 += 1;
        counts.1 += u64::from(hit);
    }
    wait_until(Duration::from_secs(10), "the FIFO reopened", || {
        reopened_count(plugin) >= kills as usize
    });
    stop.store(true, Ordering::Relaxed);
    let (fifo, sent) = tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("join");
    assert_eq!(plugin.client().stop_logging(&path).await, "");
    drop(fifo);
    let out = plugin.output();
    let reopened = reopened_count(plugin);
    let torn = out.matches("cutting a torn record off").count();
    eprintln!(
        "{kills} kills (moment: (kills, seen before the kill)): {hits:?}; FIFO reopened {reopened} times; torn records cut at restart: {torn}; entries sent: {}",
        sent.len()
    );
    if reopened as u64 != kills {
        let notable: Vec<&str> = out
            .lines()
            .filter(|l| !l.contains("DEBUG") || l.contains("reopen") || l.contains("serving"))
            .collect();
        panic!(
            "{reopened} of {kills} restarts reopened the FIFO; plugin log:\n{}",
            notable.join("\n")
        );
    }
    let usage = probe::usage(plugin.pid());
    eprintln!(
        "plugin after the last restart and StopLogging: RSS {} KiB, {} open fds",
        usage.rss_kib, usage.fds
    );
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_batches_rotation_and_compression_loses_and_repeats_nothing() {
    for round in 0..soak::iterations(1) {
        let mut plugin = PluginProcess::start();
        let id = container_id(0xc1);
        let opts = [
            ("max-size", "64k"),
            ("max-file", "1000"),
            ("compress", "true"),
        ];
        let moments = [Moment::Batch, Moment::Rotation, Moment::Compression];
        let sent = crash_loop(&mut plugin, &id, &opts, &moments, 1000, plain_lines).await;
        let got = plugin.client().read_logs(&id, "", "", -1).await;
        assert_same_entries(&got, &as_shown(&sent));
        let gz = files_with_suffix(&plugin.state.join("containers").join(&id), ".log.gz").len();
        eprintln!(
            "round {round}: sent {} entries, stored {} (ReadLogs: each once, in order), duplicated 0, lost 0; {gz} compressed segments",
            sent.len(),
            got.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_shipping_and_checkpointing_indexes_every_line_exactly_once() {
    for round in 0..soak::iterations(1) {
        shipping_round(round).await;
    }
}

/// The plugin shipping to `server`, retrying quickly.
fn plugin_shipping_to(server: &EsServer) -> PluginProcess {
    PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "200ms"),
    ])
}

/// Documents are stored but the answer never comes (before a kill): nothing is acknowledged.
fn never_answered() -> Faults {
    Faults {
        delay: Some(Duration::from_secs(3600)),
        ..Faults::default()
    }
}

async fn shipping_round(round: u64) {
    let server = EsServer::start(ServerOptions::default()).await;
    let mut plugin = plugin_shipping_to(&server);
    let id = container_id(0xc2);
    let opts = [
        ("max-size", "64k"),
        ("max-file", "1000"),
        ("bulk_max_bytes", "64k"),
    ];
    let moments = [
        Moment::Checkpoint,
        Moment::Batch,
        Moment::Rotation,
        Moment::Compression,
    ];
    let sent = crash_loop(&mut plugin, &id, &opts, &moments, 200, plain_lines).await;
    // The messages the engine shows: fragments joined into their line.
    let mut want: Vec<String> = Vec::new();
    let mut partial = Vec::new();
    for entry in &sent {
        partial.extend_from_slice(&entry.line);
        if entry.ends_line() {
            want.push(String::from_utf8(std::mem::take(&mut partial)).expect("ASCII"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.doc_count() < want.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} lines indexed",
            server.doc_count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything indexed twice would arrive by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let docs = server.docs();
    let ids: std::collections::HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), docs.len(), "an _id indexed twice");
    let mut indexed: Vec<(String, String)> = docs
        .iter()
        .filter(|d| d.source["container"]["id"] == id.as_str())
        .map(|d| {
            (
                d.source["@timestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d.source["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    indexed.sort();
    let indexed: Vec<String> = indexed.into_iter().map(|(_, m)| m).collect();
    assert_eq!(indexed.len(), want.len(), "lines indexed vs sent");
    assert!(
        indexed == want,
        "the indexed lines differ from the sent ones"
    );
    let got = plugin.client().read_logs(&id, "", "", -1).await;
    assert_same_entries(&got, &as_shown(&sent));
    let statuses = server.stats().item_statuses;
    eprintln!(
        "round {round}: sent {} entries ({} lines), stored {}, indexed {} (each once), duplicated 0, lost 0; item statuses {statuses:?} (409 = a resend after a kill, refused as a duplicate _id)",
        sent.len(),
        want.len(),
        got.len(),
        indexed.len()
    );
}

/// The records of a compressed segment, decoded.
fn gz_records(path: &Path) -> Vec<LogEntry> {
    use prost::Message;
    use std::io::Read;
    let mut content = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open .gz"))
        .read_to_end(&mut content)
        .expect("a whole .gz");
    let mut records = Vec::new();
    let mut rest = content.as_slice();
    while rest.len() >= 8 {
        let size = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        records.push(LogEntry::decode(&rest[4..4 + size]).expect("a LogEntry"));
        rest = &rest[size + 8..];
    }
    records
}

/// A compressed segment cut in half while the plugin was down (a partial gzip file): after the
/// restart `docker logs` shows every entry before the tear and every entry after that segment,
/// each once and in order, and the plugin logs the damage at ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_gz_segment_costs_only_the_records_after_the_tear() {
    let mut plugin = PluginProcess::start();
    let id = container_id(0xc3);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo");
    let opts = [
        ("max-size", "64k"),
        ("max-file", "1000"),
        ("compress", "true"),
    ];
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id, &opts).await,
        ""
    );
    let sent: Vec<LogEntry> = (1..=20_000i64)
        .map(|seq| {
            line(
                "stdout",
                T0 + seq,
                format!("torn test line {seq}").as_bytes(),
            )
        })
        .collect();
    fifo.write_entries(&sent);
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
    let store = plugin.state.join("containers").join(&id);
    wait_until(
        Duration::from_secs(20),
        "sealed segments compressed",
        || {
            files_with_suffix(&store, ".log").len() == 1
                && files_with_suffix(&store, ".tmp").is_empty()
        },
    );
    plugin.kill();
    let mut gz = files_with_suffix(&store, ".log.gz");
    gz.sort();
    assert!(gz.len() >= 3, "{gz:?}");
    let damaged = &gz[gz.len() / 2];
    let in_damaged = gz_records(damaged);
    let bytes = std::fs::read(damaged).expect("read .gz");
    std::fs::write(damaged, &bytes[..bytes.len() / 2]).expect("tear the .gz");
    plugin.restart();
    let got = plugin.client().read_logs(&id, "", "", -1).await;
    let shown = as_shown(&sent);
    let first_damaged = shown
        .iter()
        .position(|e| e.time_nano == in_damaged[0].time_nano)
        .expect("the damaged segment's first entry was sent");
    let kept = got.len() + in_damaged.len() - shown.len();
    let want: Vec<LogEntry> = [
        &shown[..first_damaged + kept],
        &shown[first_damaged + in_damaged.len()..],
    ]
    .concat();
    assert_same_entries(&got, &want);
    assert!(
        plugin
            .output()
            .contains("docker logs skips a damaged segment"),
        "no ERROR about the damage"
    );
    eprintln!(
        "torn .gz: sent {} entries, the damaged segment held {}, of which {kept} before the tear were shown; shown {} (each once, in order), lost {} (the rest of the torn segment only)",
        sent.len(),
        in_damaged.len(),
        got.len(),
        sent.len() - got.len()
    );
}

/// The parts of a split line indexed for container `id`, in store order (ids end in the
/// position of the part's first fragment: `<container>-<segment hex>-<offset hex>`).
fn parts_indexed(server: &EsServer, id: &str) -> Vec<String> {
    let mut parts: Vec<((u64, u64), String)> = server
        .docs()
        .into_iter()
        .filter(|d| d.source["container"]["id"] == id)
        .map(|d| {
            let mut fields = d.id.rsplitn(3, '-');
            let offset = u64::from_str_radix(fields.next().expect("offset"), 16).expect("hex");
            let segment = u64::from_str_radix(fields.next().expect("segment"), 16).expect("hex");
            let message = d.source["message"].as_str().unwrap_or_default().to_owned();
            ((segment, offset), message)
        })
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, m)| m).collect()
}

/// A line split by a late fragment is indexed whole across a crash and restart. Regression: a split
/// line whose last fragment came more than FRAGMENT_WAIT (5 s) after the first was shipped in two
/// documents; after a kill before the checkpoint covered them, the replay joined every fragment
/// into one document under the first part's id, Elasticsearch answered 409 (that id holds the first
/// part), and the rest of the line was never indexed. The replay must make the same two documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_flushed_in_two_parts_then_killed_is_replayed_in_the_same_two_parts() {
    let server = EsServer::start(ServerOptions::default()).await;
    // The first part is stored but its answer never comes before the kill: nothing is
    // acknowledged, so the checkpoint stays before the line and the restart replays all of it.
    server.set_faults(never_answered());
    let mut plugin = plugin_shipping_to(&server);
    let id = container_id(0xc4);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo");
    // One request in flight: the second part waits behind the first, unsent at the kill.
    let opts = [("workers", "1")];
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id, &opts).await,
        ""
    );
    let text: Vec<u8> = (0..20_000).map(|k| b'a' + (k % 26) as u8).collect();
    let split = fragments(T0, &text, "slow-line");
    assert_eq!(split.len(), 2);
    fifo.write_entries(&split[..1]);
    // FRAGMENT_WAIT later the first part is shipped alone.
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), "the first part indexed", || {
            server.doc_count() == 1
        })
    });
    fifo.write_entries(&split[1..]);
    let stored = std::time::Instant::now() + Duration::from_secs(10);
    while plugin.client().read_logs(&id, "", "", -1).await.len() < 2 {
        assert!(
            std::time::Instant::now() < stored,
            "the last part not stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    plugin.kill();
    server.set_faults(Faults::default());
    plugin.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.doc_count() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parts = parts_indexed(&server, &id);
    let lengths: Vec<usize> = parts.iter().map(String::len).collect();
    let statuses = server.stats().item_statuses;
    assert_eq!(
        lengths,
        [16 * 1024, text.len() - 16 * 1024],
        "indexed parts of {lengths:?} bytes for a line of {}; item statuses {statuses:?}",
        text.len()
    );
    assert!(
        parts.concat().as_bytes() == text,
        "the parts joined differ from the line"
    );
    eprintln!(
        "a line of {} bytes in two parts, replayed after a kill: indexed as {lengths:?} bytes, item statuses {statuses:?}",
        text.len()
    );
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
}

/// JSON lines on stdout (one in 997 of 40 KB, in 16 KiB fragments) and Java stack traces of
/// five lines on stderr.
fn json_and_traces(seq: i64, t: i64) -> Vec<LogEntry> {
    if seq % 3 == 0 {
        let trace = [
            format!("java.lang.IllegalStateException: request {seq} failed"),
            format!("\tat shop.Cart.add(Cart.java:{seq})"),
            "\tat shop.Api.handle(Api.java:7)".to_owned(),
            "Caused by: java.io.IOException: disk".to_owned(),
            "\t... 12 more".to_owned(),
        ];
        return trace
            .iter()
            .enumerate()
            .map(|(k, text)| line("stderr", t + k as i64, text.as_bytes()))
            .collect();
    }
    if seq % 997 == 0 {
        let pad = "p".repeat(40_000);
        let text = format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#);
        return fragments(t, text.as_bytes(), &format!("json{seq}"));
    }
    let text = format!(r#"{{"seq":{seq},"msg":"request {seq} served"}}"#);
    vec![line("stdout", t, text.as_bytes())]
}

/// The documents `json_and_traces` makes with `multiline.preset=java`: each stdout line (its
/// fragments joined) alone, each stderr trace whole, its lines joined with `\n`.
fn merged_documents(sent: &[LogEntry]) -> Vec<String> {
    let mut docs = Vec::new();
    let mut partial = Vec::new();
    let mut trace: Option<String> = None;
    for entry in sent {
        let text = String::from_utf8(entry.line.to_vec()).expect("ASCII");
        if entry.source == "stderr" {
            let continues = text.starts_with('\t') || text.starts_with("Caused by:");
            match (&mut trace, continues) {
                (Some(doc), true) => {
                    doc.push('\n');
                    doc.push_str(&text);
                }
                _ => docs.extend(trace.replace(text)),
            }
            continue;
        }
        partial.extend_from_slice(&entry.line);
        if entry.ends_line() {
            docs.push(String::from_utf8(std::mem::take(&mut partial)).expect("ASCII"));
        }
    }
    docs.extend(trace);
    docs.sort();
    docs
}

/// kill -9 while stack traces are merged (stderr) and JSON lines decoded (stdout), both streams
/// busy: every document is indexed exactly once and merged the same way as without a crash
/// (no trace cut in two or repeated in part by a replay, no `_id` reused), and the JSON lines,
/// the long ones too, carry their fields. The wait is long (`multiline.timeout=10m`) so that
/// every cut comes from the lines alone and the expected documents are known; the wait's own
/// cut is the next test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_merging_traces_and_decoding_json_indexes_each_document_once() {
    let server = EsServer::start(ServerOptions::default()).await;
    let mut plugin = plugin_shipping_to(&server);
    let id = container_id(0xc5);
    let opts = [
        ("max-size", "64k"),
        ("max-file", "1000"),
        ("bulk_max_bytes", "64k"),
        ("json", "true"),
        ("multiline.preset", "java"),
        ("multiline.timeout", "10m"),
    ];
    let moments = [Moment::Checkpoint, Moment::Batch, Moment::Rotation];
    let sent = crash_loop(&mut plugin, &id, &opts, &moments, 100, json_and_traces).await;
    let want = merged_documents(&sent);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.doc_count() < want.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} documents indexed",
            server.doc_count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let docs = server.docs();
    let ids: std::collections::HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), docs.len(), "an _id indexed twice");
    let mut got: Vec<String> = docs
        .iter()
        .map(|d| d.source["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    got.sort();
    assert_eq!(got.len(), want.len(), "documents indexed vs made");
    assert!(
        got == want,
        "the indexed documents differ from the merge of the lines sent"
    );
    let mut decoded = 0;
    for doc in &docs {
        let message = doc.source["message"].as_str().unwrap_or_default();
        if doc.source["stream"] == "stdout" {
            let seq = &doc.source["json"]["seq"];
            assert!(
                seq.is_i64(),
                "a JSON line not decoded: {}",
                &message[..80.min(message.len())]
            );
            assert!(message.starts_with(&format!(r#"{{"seq":{seq},"#)));
            decoded += 1;
        } else {
            assert_eq!(message.lines().count(), 5, "a trace not whole: {message}");
            assert_eq!(
                doc.source["error"]["type"], "json",
                "a trace is not JSON, and says so"
            );
        }
    }
    let statuses = server.stats().item_statuses;
    eprintln!(
        "sent {} entries; indexed {} documents (each once, merged as without a crash: {} traces whole, {decoded} JSON lines decoded); item statuses {statuses:?}",
        sent.len(),
        docs.len(),
        docs.len() - decoded
    );
}

/// A trace whose next line is late is shipped as it is once `multiline.timeout` passes; after a
/// kill before it was acknowledged, the replay cuts it at the same place. Without the recorded
/// cut the replay would merge the late line into the first document's `_id`, be answered 409,
/// and the late line would never be indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_cut_by_the_timeout_then_killed_is_replayed_in_the_same_two_documents() {
    let server = EsServer::start(ServerOptions::default()).await;
    // Stored, but the answer never comes before the kill: nothing is acknowledged.
    server.set_faults(never_answered());
    let mut plugin = plugin_shipping_to(&server);
    let id = container_id(0xc6);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo");
    let opts = [
        ("workers", "1"),
        ("multiline.preset", "java"),
        ("multiline.timeout", "1s"),
    ];
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id, &opts).await,
        ""
    );
    fifo.write_entries(&[
        line("stderr", T0, b"java.lang.RuntimeException: slow"),
        line("stderr", T0 + 1, b"\tat a.B.c(B.java:1)"),
    ]);
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), "the first part indexed", || {
            server.doc_count() == 1
        })
    });
    fifo.write_entries(&[line("stderr", T0 + 2, b"\tat d.E.f(E.java:2)")]);
    let stored = Instant::now() + Duration::from_secs(10);
    while plugin.client().read_logs(&id, "", "", -1).await.len() < 3 {
        assert!(Instant::now() < stored, "the late line not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    plugin.kill();
    server.set_faults(Faults::default());
    plugin.restart();
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.doc_count() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parts = parts_indexed(&server, &id);
    let statuses = server.stats().item_statuses;
    assert_eq!(
        parts,
        [
            "java.lang.RuntimeException: slow\n\tat a.B.c(B.java:1)",
            "\tat d.E.f(E.java:2)"
        ],
        "item statuses {statuses:?}"
    );
    eprintln!("a trace cut by the timeout, replayed after a kill: indexed as {parts:?}, item statuses {statuses:?}");
}
