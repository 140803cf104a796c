//! Benchmarks of the plugin binary driven the way the engine drives it (FIFO + StartLogging over
//! the plugin socket), without an engine: ingest, shipping, meaning (JSON lines and multiline),
//! memory, tail and latency (items 2, 4, 5, 6 and 7 of the benchmark issue). `benches/engine.rs` runs the real engine (item 3).
//!
//! Run with `make bench` (or `make bench-short`: `BENCH_SHORT=1`, small N, one round, same code).
//! For profiling one case: `BENCH_ONLY=ingest,shipping,meaning,memory,tail,latency` picks sections,
//! `BENCH_CONTAINERS=N` the N-container ingest cases, `BENCH_LINE_BYTES=100` (or 1000, 40000) one
//! ingest workload, `BENCH_INGEST_OPTS=compress=false,...` the ingest's log-opts.
//! Results go to `bench/results/plugin.md` and `bench/results/plugin.svg`. Figures are medians of
//! several rounds and ratios against a baseline of the same run; nothing here asserts a time.

#[path = "../tests/support/engine.rs"]
mod engine;
#[path = "support/report.rs"]
mod report;
#[path = "support/sink_es.rs"]
mod sink_es;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{fragments, frame, line, Api, EngineFifo, PluginProcess};
use report::{human, median, percentile, verdict, Bar, Table};
use sink_es::SinkEs;

/// The capacity the plugin gives its FIFO (`src/fifo.rs`, WANTED_PIPE_SIZE); the raw-pipe
/// baseline gets the same, so it is the limit of a pipe as the plugin sees it.
const PIPE_SIZE: i32 = 1 << 20;
/// Frames are written in batches of about this many bytes: one write per frame (what the engine
/// does) would make the feeder, not the plugin, the bottleneck. The engine's own writes are
/// measured in `benches/engine.rs`.
const WRITE_BATCH: usize = 64 << 10;
/// Bound of any wait for the plugin or the sink (a stuck run fails instead of hanging CI).
const WAIT_LIMIT: Duration = Duration::from_secs(600);

fn main() {
    let short = report::short();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut out = format!(
        "## Plugin benchmarks (FIFO harness, no engine)\n\nMachine: {}. Mode: {}.\n\n",
        report::machine(),
        if short {
            "short (CI smoke run: small N, one round; figures are not meaningful)"
        } else {
            "full"
        }
    );
    let mut groups = Vec::new();
    if report::selected("ingest") {
        let (ingest, ingest_bars) = ingest(&rt, short);
        out.push_str(&ingest.markdown());
        groups.extend(ingest_bars);
    }
    if report::selected("shipping") {
        let (shipping, shipping_bars) = shipping(&rt, short);
        out.push_str(&shipping.markdown());
        groups.push(("Shipping, documents/s (100 B lines)".into(), shipping_bars));
    }
    if report::selected("meaning") {
        let (meaning, meaning_bars) = meaning(&rt, short);
        out.push_str(&meaning.markdown());
        groups.push((
            "Shipping with JSON decoding and multiline merging, lines/s".into(),
            meaning_bars,
        ));
    }
    if report::selected("memory") {
        out.push_str(&memory(&rt, short).markdown());
    }
    if report::selected("tail") {
        out.push_str(&tail(&rt, short).markdown());
    }
    if report::selected("latency") {
        out.push_str(&latency(&rt, short).markdown());
    }
    out.push_str(&format!(
        "Whole run: {:.0} s.\n\n",
        started.elapsed().as_secs_f64()
    ));
    report::write("plugin.md", &out);
    report::write(
        "plugin.svg",
        &report::bar_chart_svg("es-logging-plugin: ingest and shipping throughput", &groups),
    );
}

/// A 64-hex-digit container id unique to (`round`, `n`).
fn container(round: usize, n: usize) -> String {
    format!("{round:032x}{n:032x}")
}

fn fill(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i + seed) % 26) as u8).collect()
}

/// One workload: lines of `line_bytes`, `lines` of them in all (spread over the containers).
struct Workload {
    name: &'static str,
    line_bytes: usize,
    lines: usize,
}

/// Frames for whole lines, concatenated up to about [`WRITE_BATCH`]; returns the batch, the lines
/// and the payload bytes (line text) it holds.
fn batch(line_bytes: usize) -> (Vec<u8>, usize, usize) {
    let mut out = Vec::with_capacity(WRITE_BATCH + (64 << 10));
    let mut lines = 0;
    let text = fill(line_bytes, 0);
    while out.len() < WRITE_BATCH {
        let time = 1_700_000_000_000_000_000 + lines as i64;
        if line_bytes > 16 << 10 {
            // The engine splits lines longer than 16 KiB into partial fragments.
            for f in fragments(time, &text, &format!("p{lines}")) {
                out.extend_from_slice(&frame(&f));
            }
        } else {
            out.extend_from_slice(&frame(&line("stdout", time, &text)));
        }
        lines += 1;
    }
    (out, lines, lines * line_bytes)
}

fn set_pipe_size(fd: i32) {
    // SAFETY: fcntl on a descriptor we own; failure leaves the pipe as it was.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
}

/// Writes `reps` copies of `chunk` to every descriptor, the way the engine feeds its FIFOs: its
/// log copiers are goroutines sharing one thread per core, and a full pipe parks the goroutine
/// (a non-blocking write, then poll), not a thread. A blocked thread per pipe instead would hand
/// the plugin's few threads a fair share of 100+ runnable threads: the feeder, not the plugin,
/// would be measured.
fn feed(fds: &[RawFd], chunk: &[u8], reps: usize) {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(fds.len());
    std::thread::scope(|s| {
        for t in 0..threads {
            let mine: Vec<RawFd> = fds.iter().copied().skip(t).step_by(threads).collect();
            s.spawn(move || feed_some(&mine, chunk, reps));
        }
    });
}

/// One feeder thread: round-robin over its pipes, writing what fits, polling when all are full.
fn feed_some(fds: &[RawFd], chunk: &[u8], reps: usize) {
    // Per pipe: descriptor, copies left, offset into the current copy.
    let mut left: Vec<(RawFd, usize, usize)> = fds.iter().map(|&fd| (fd, reps, 0)).collect();
    for &fd in fds {
        // SAFETY: fcntl on a descriptor the caller keeps open; O_NONBLOCK only changes how our
        // own open file description writes.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    while !left.is_empty() {
        let mut progressed = false;
        for (fd, copies, offset) in left.iter_mut() {
            while *copies > 0 {
                let rest = &chunk[*offset..];
                // SAFETY: writes from a live slice to an open descriptor.
                let n = unsafe { libc::write(*fd, rest.as_ptr().cast(), rest.len()) };
                if n < 0 {
                    let error = std::io::Error::last_os_error();
                    match error.kind() {
                        std::io::ErrorKind::WouldBlock => break,
                        std::io::ErrorKind::Interrupted => continue,
                        _ => panic!("write to pipe: {error}"),
                    }
                }
                progressed = true;
                *offset += n as usize;
                if *offset == chunk.len() {
                    *offset = 0;
                    *copies -= 1;
                }
            }
        }
        left.retain(|(_, copies, _)| *copies > 0);
        if !progressed && !left.is_empty() {
            let mut polled: Vec<libc::pollfd> = left
                .iter()
                .map(|&(fd, _, _)| libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            // SAFETY: polls a live array of pollfd of the length given.
            unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 1000) };
        }
    }
}

/// The physical limit: the same batches through `writers` pipes, fed as [`feed`] does, to one
/// reader thread per pipe that discards (the most a reader can take), or, with `store_in`, that
/// writes what it reads to a file of its own there (the least any reader that keeps the bytes
/// on disk pays: one copy out of the pipe and one into the page cache).
fn raw_pipe(chunk: &[u8], reps: usize, writers: usize, store_in: Option<&Path>) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        let mut write_ends = Vec::new();
        for n in 0..writers {
            let mut fds = [0i32; 2];
            // SAFETY: pipe fills both descriptors; each is owned by exactly one File below.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
            set_pipe_size(fds[1]);
            let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
            write_ends.push(unsafe { std::fs::File::from_raw_fd(fds[1]) });
            let mut out = store_in.map(|dir| {
                std::fs::File::create(dir.join(format!("pipe-{n}"))).expect("create pipe copy")
            });
            s.spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = reader.read(&mut buf).expect("read pipe");
                    if n == 0 {
                        break;
                    }
                    if let Some(out) = out.as_mut() {
                        out.write_all(&buf[..n]).expect("write pipe copy");
                    }
                }
            });
        }
        let fds: Vec<RawFd> = write_ends.iter().map(|f| f.as_raw_fd()).collect();
        feed(&fds, chunk, reps);
        // Closing the write ends ends the readers.
        drop(write_ends);
    });
    start.elapsed()
}

/// The plugin: `writers` containers started, the batches written to their FIFOs, then
/// StopLogging on each (which answers once the pipe is drained into the store).
fn plugin_run(
    rt: &tokio::runtime::Runtime,
    plugin: &PluginProcess,
    round: usize,
    chunk: &[u8],
    reps: usize,
    writers: usize,
    opts: &[(&str, &str)],
) -> Duration {
    let api = plugin.client();
    let fifos: Vec<EngineFifo> = (0..writers)
        .map(|n| EngineFifo::create(plugin.dir.path(), &format!("fifo-{round}-{n}")))
        .collect();
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            for (n, fifo) in fifos.iter().enumerate() {
                let err = api
                    .start_logging(&fifo.path, &container(round, n), opts)
                    .await;
                assert_eq!(err, "", "StartLogging");
            }
        })
    }));
    if let Err(panic) = started {
        eprintln!("bench: the plugin's log:\n{}", plugin.output());
        std::panic::resume_unwind(panic);
    }
    let cpu_before = thread_cpu_seconds(plugin.pid());
    let start = Instant::now();
    let fds: Vec<RawFd> = fifos.iter().map(|f| f.file.as_raw_fd()).collect();
    feed(&fds, chunk, reps);
    let written = start.elapsed();
    stop_all(rt, &api, &fifos);
    let total = start.elapsed();
    let cpu_after = thread_cpu_seconds(plugin.pid());
    let used =
        |name: &str| cpu_after.get(name).unwrap_or(&0.0) - cpu_before.get(name).unwrap_or(&0.0);
    eprintln!(
        "bench: {writers} container(s): written in {:.3} s, all stopped after {:.3} s; plugin CPU: \
         {:.3} s draining (tokio-rt-worker), {:.3} s compressing (store-compress)",
        written.as_secs_f64(),
        total.as_secs_f64(),
        used("tokio-rt-worker"),
        used("store-compress"),
    );
    total
}

fn stop_all(rt: &tokio::runtime::Runtime, api: &Api, fifos: &[EngineFifo]) {
    rt.block_on(async {
        let stops = fifos.iter().map(|f| api.stop_logging(&f.path));
        for err in futures_util::future::join_all(stops).await {
            assert_eq!(err, "", "StopLogging");
        }
    });
}

fn quiet_plugin(env: &[(&str, &str)]) -> PluginProcess {
    let mut all = vec![("LOG_DRIVER_LEVEL", "warn")];
    all.extend_from_slice(env);
    PluginProcess::start_with_env(&all)
}

/// Item 2: lines/s and MB/s into the store beside a raw pipe, for 1, 10 and 100 containers.
fn ingest(rt: &tokio::runtime::Runtime, short: bool) -> (Table, Vec<(String, Vec<Bar>)>) {
    let scale = if short { 20 } else { 1 };
    let workloads = [
        Workload {
            name: "100 B lines",
            line_bytes: 100,
            lines: 3_000_000 / scale,
        },
        Workload {
            name: "1 KB lines",
            line_bytes: 1000,
            lines: 400_000 / scale,
        },
        Workload {
            name: "40 KB lines (3 fragments each)",
            line_bytes: 40_000,
            lines: 10_000 / scale,
        },
    ];
    let rounds = if short { 1 } else { 5 };
    let mut table = Table::new(
        "Ingest: FIFO to local store",
        &[
            "lines",
            "containers",
            "lines/s (plugin)",
            "MB/s (plugin)",
            "MB/s (raw pipe)",
            "plugin / raw",
            "MB/s (pipe to file)",
            "plugin / pipe to file",
            "target",
        ],
    );
    table.note = format!(
        "Median of {rounds} rounds; the baselines and the plugin alternate within each round. The feeder \
         writes pre-encoded frames in {} KiB batches to the FIFOs the plugin holds, from one \
         thread per core with non-blocking writes (as the engine's goroutines do); the clock stops when \
         StopLogging has answered for every container (it answers once the pipe is drained into \
         the store). Raw pipe: the same bytes through as many pipes of the same capacity \
         (1 MiB) to readers that discard them. Pipe to file: the same, with each reader writing \
         what it reads to a file of its own (one copy out of the pipe and one into the page cache, \
         the least any reader that keeps the bytes pays). MB = 10^6 bytes of line text. Default log-opts \
         (max-size 20m, max-file 5, compress true), no Elasticsearch.",
        WRITE_BATCH >> 10
    );
    // BENCH_INGEST_OPTS=key=value,... runs the ingest with other log-opts (e.g. compress=false,
    // to see what background compression costs); the table then says so.
    let extra_opts = std::env::var("BENCH_INGEST_OPTS").unwrap_or_default();
    let ingest_opts: Vec<(&str, &str)> = extra_opts
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    if !ingest_opts.is_empty() {
        table
            .note
            .push_str(&format!(" This run's log-opts: {extra_opts}."));
    }
    let mut bars = Vec::new();
    for workload in &workloads {
        // BENCH_LINE_BYTES=N runs only the workload of N-byte lines (profiling one of them).
        if std::env::var("BENCH_LINE_BYTES").is_ok_and(|n| n != workload.line_bytes.to_string()) {
            continue;
        }
        let (chunk, chunk_lines, chunk_bytes) = batch(workload.line_bytes);
        let mut group = Vec::new();
        for writers in [1usize, 10, 100] {
            // BENCH_CONTAINERS=N runs only the N-container cases (profiling one of them).
            if std::env::var("BENCH_CONTAINERS").is_ok_and(|n| n != writers.to_string()) {
                continue;
            }
            let reps = workload.lines.div_ceil(writers * chunk_lines).max(1);
            let lines = (reps * writers * chunk_lines) as f64;
            let bytes = (reps * writers * chunk_bytes) as f64;
            let plugin = quiet_plugin(&[]);
            let (mut plugin_times, mut raw_times, mut file_times) =
                (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let mut run_raw = || {
                    raw_times.push(raw_pipe(&chunk, reps, writers, None).as_secs_f64());
                    let copies = tempfile::tempdir_in(plugin.dir.path()).expect("tempdir");
                    file_times
                        .push(raw_pipe(&chunk, reps, writers, Some(copies.path())).as_secs_f64());
                };
                if round % 2 == 1 {
                    run_raw();
                }
                plugin_times.push(
                    plugin_run(rt, &plugin, round, &chunk, reps, writers, &ingest_opts)
                        .as_secs_f64(),
                );
                if round % 2 == 0 {
                    run_raw();
                }
            }
            let (plugin_s, raw_s, file_s) = (
                median(&plugin_times),
                median(&raw_times),
                median(&file_times),
            );
            let lines_s = lines / plugin_s;
            let (mb_s, raw_mb_s) = (bytes / plugin_s / 1e6, bytes / raw_s / 1e6);
            let file_mb_s = bytes / file_s / 1e6;
            let ratio = mb_s / raw_mb_s;
            let mut target = format!("≥ 0.5 of raw: {}", verdict(ratio >= 0.5));
            if workload.line_bytes == 100 && writers == 1 {
                target.push_str(&format!("; ≥ 1 M lines/s: {}", verdict(lines_s >= 1e6)));
            }
            table.row(vec![
                workload.name.into(),
                writers.to_string(),
                human(lines_s),
                human(mb_s),
                human(raw_mb_s),
                format!("{ratio:.2}"),
                human(file_mb_s),
                format!("{:.2}", mb_s / file_mb_s),
                target,
            ]);
            group.push(Bar {
                label: format!("raw pipe, {writers} pipe(s)"),
                value: raw_mb_s,
                baseline: true,
            });
            group.push(Bar {
                label: format!("pipe to file, {writers} pipe(s)"),
                value: file_mb_s,
                baseline: true,
            });
            group.push(Bar {
                label: format!("plugin, {writers} container(s)"),
                value: mb_s,
                baseline: false,
            });
        }
        bars.push((format!("Ingest MB/s, {}", workload.name), group));
    }
    (table, bars)
}

/// CPU time (user + system, all threads) `pid` has used, in seconds; 0 if it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 12th and 13th from there, in clock ticks.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// CPU time (user + system) of `pid`'s threads, summed by thread name, in seconds.
fn thread_cpu_seconds(pid: u32) -> std::collections::HashMap<String, f64> {
    let mut by_name = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        *by_name.entry(name.trim().to_owned()).or_insert(0.0) += stat_cpu_seconds(&stat);
    }
    by_name
}

/// Pins every thread of `pid` to CPU 1, so "on one core" is what it says.
fn pin_to_one_core(pid: u32) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "2", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "taskset -a -p 2 {pid} (util-linux) failed"
    );
}

/// Item 4: documents/s from the store into an Elasticsearch that acknowledges and discards.
fn shipping(rt: &tokio::runtime::Runtime, short: bool) -> (Table, Vec<Bar>) {
    let docs: usize = if short { 50_000 } else { 1_000_000 };
    let rounds = if short { 1 } else { 3 };
    let mut table = Table::new(
        "Shipping: local store to Elasticsearch",
        &[
            "workers",
            "gzip",
            "documents/s",
            "bulk requests",
            "plugin's core busy",
            "target (≥ 250 k/s on one core)",
        ],
    );
    table.note = format!(
        "{docs} lines of 100 B from one container; the plugin is pinned to one core (taskset) and \
         ships to an in-process sink that acknowledges every item and keeps nothing \
         (`benches/support/sink_es.rs`). Rate = documents / time from the first to the last \
         acknowledged item, median of {rounds} rounds. The lines are fed as fast as the plugin \
         takes them, so the shipper reads from the store while ingest runs beside it on the \
         same core. Core busy: the plugin's CPU time (user + system) over the same window, \
         ingest included; under 100% the core waited on the sink's answers. Other options \
         default (bulk_max_bytes 5m, flush_interval 1s)."
    );
    let mut bars = Vec::new();
    let (chunk, chunk_lines, _) = batch(100);
    let reps = docs.div_ceil(chunk_lines);
    let total = (reps * chunk_lines) as u64;
    for (workers, level) in [("1", "0"), ("1", "1"), ("4", "0"), ("4", "1")] {
        let mut rates = Vec::new();
        let mut busy = Vec::new();
        let mut requests = 0;
        for round in 0..rounds {
            let opts = [("workers", workers), ("compression_level", level)];
            let shipped = ship_to_sink(rt, round, &chunk, reps, &opts, total);
            busy.push(shipped.busy);
            rates.push(total as f64 / shipped.window);
            requests = shipped.requests;
        }
        let rate = median(&rates);
        let gzip = if level == "0" { "off" } else { "level 1" };
        table.row(vec![
            workers.into(),
            gzip.into(),
            human(rate),
            requests.to_string(),
            format!("{:.0}%", median(&busy) * 100.0),
            verdict(rate >= 250_000.0).into(),
        ]);
        bars.push(Bar {
            label: format!("{workers} worker(s), gzip {gzip}"),
            value: rate,
            baseline: false,
        });
    }
    (table, bars)
}

/// Frames of whole stdout lines made by `text(n)`, concatenated up to about [`WRITE_BATCH`] and a
/// multiple of `whole` lines; returns the batch and the lines it holds.
fn text_batch(whole: usize, text: impl Fn(usize) -> String) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(WRITE_BATCH + (64 << 10));
    let mut lines = 0;
    while out.len() < WRITE_BATCH || lines % whole != 0 {
        let time = 1_700_000_000_000_000_000 + lines as i64;
        out.extend_from_slice(&frame(&line("stdout", time, text(lines).as_bytes())));
        lines += 1;
    }
    (out, lines)
}

/// A JSON log line of about 100 B.
fn json_text(n: usize) -> String {
    format!(
        r#"{{"level":"info","msg":"request {n:08} served","user":"u{:03}","ms":{}}}"#,
        n % 1000,
        n % 97
    )
}

/// A Java trace of 10 lines of about 40-60 B, one line of it.
fn trace_text(n: usize) -> String {
    match n % 10 {
        0 => format!("java.lang.IllegalStateException: request {n:08} failed"),
        k => format!("\tat shop.service.Cart.add{k}(Cart.java:{n:08})"),
    }
}

/// One row of [`meaning`]: lines of a kind, shipped with some options.
struct Case<'a> {
    kind: &'static str,
    options: &'static str,
    chunk: &'a [u8],
    chunk_lines: usize,
    extra: &'static [(&'static str, &'static str)],
    /// Lines per document.
    per_doc: usize,
}

impl<'a> Case<'a> {
    fn new(
        kind: &'static str,
        options: &'static str,
        chunk: &'a [u8],
        chunk_lines: usize,
        extra: &'static [(&'static str, &'static str)],
        per_doc: usize,
    ) -> Self {
        Case {
            kind,
            options,
            chunk,
            chunk_lines,
            extra,
            per_doc,
        }
    }
}

/// Shipping throughput with `json=true` and with `multiline.preset=java`, each beside the same
/// lines shipped plain, in the same run (rounds interleaved): what the two features cost.
fn meaning(rt: &tokio::runtime::Runtime, short: bool) -> (Table, Vec<Bar>) {
    let lines: usize = if short { 50_000 } else { 1_000_000 };
    let rounds = if short { 1 } else { 3 };
    let mut table = Table::new(
        "Shipping: JSON lines into fields, stack traces merged",
        &[
            "lines",
            "options",
            "lines/s",
            "documents/s",
            "÷ the same lines plain",
            "plugin's core busy",
        ],
    );
    table.note = format!(
        "{lines} lines from one container, 1 worker, gzip off, plugin pinned to one core, into the \
         acknowledging sink (as in the shipping table). JSON lines are objects of about 80 B \
         (`{}`); traces are 10 lines, a `java.lang...Exception` line and 9 `\\tat` frames \
         (merged: one document per 10 lines). Rate = lines / time from the first to the last \
         acknowledged document, median of {rounds} rounds, the cases interleaved in each round; \
         the ratio is against the same lines shipped with the option off.",
        json_text(0)
    );
    let (json_chunk, json_lines) = text_batch(1, json_text);
    let (trace_chunk, trace_lines) = text_batch(10, trace_text);
    // The trace batch holds whole traces, so that each batch merges alone.
    assert_eq!(trace_lines % 10, 0, "whole traces per batch");
    let cases = [
        Case::new("JSON", "plain", &json_chunk, json_lines, &[], 1),
        Case::new(
            "JSON",
            "json=true",
            &json_chunk,
            json_lines,
            &[("json", "true")],
            1,
        ),
        Case::new("trace", "plain", &trace_chunk, trace_lines, &[], 1),
        Case::new(
            "trace",
            "multiline.preset=java",
            &trace_chunk,
            trace_lines,
            &[("multiline.preset", "java")],
            10,
        ),
    ];
    let mut rates = vec![Vec::new(); cases.len()];
    let mut busy = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (i, case) in cases.iter().enumerate() {
            let reps = lines.div_ceil(case.chunk_lines);
            let total_lines = reps * case.chunk_lines;
            let mut opts = vec![("workers", "1"), ("compression_level", "0")];
            opts.extend_from_slice(case.extra);
            let docs = (total_lines / case.per_doc) as u64;
            let shipped = ship_to_sink(rt, round, case.chunk, reps, &opts, docs);
            busy[i].push(shipped.busy);
            rates[i].push(total_lines as f64 / shipped.window);
        }
    }
    let mut bars = Vec::new();
    for (
        i,
        &Case {
            kind,
            options,
            per_doc,
            ..
        },
    ) in cases.iter().enumerate()
    {
        let rate = median(&rates[i]);
        // Each feature's row against the plain row of the same lines just before it.
        let base = median(&rates[i - i % 2]);
        table.row(vec![
            kind.into(),
            options.into(),
            human(rate),
            human(rate / per_doc as f64),
            format!("{:.2}", rate / base),
            format!("{:.0}%", median(&busy[i]) * 100.0),
        ]);
        bars.push(Bar {
            label: format!("{kind} lines, {options}"),
            value: rate,
            baseline: options == "plain",
        });
    }
    (table, bars)
}

/// What one shipping round measured.
struct Shipped {
    /// Seconds from the first to the last acknowledged document.
    window: f64,
    /// The plugin's CPU time over the wall time of the round.
    busy: f64,
    requests: u64,
}

/// One round: a fresh plugin pinned to one core ships `reps` times `chunk` from one container to
/// a fresh sink with `opts` (besides `hosts`), until the sink holds `docs` documents.
fn ship_to_sink(
    rt: &tokio::runtime::Runtime,
    round: usize,
    chunk: &[u8],
    reps: usize,
    opts: &[(&str, &str)],
    docs: u64,
) -> Shipped {
    let sink = SinkEs::start(1);
    let plugin = quiet_plugin(&[]);
    pin_to_one_core(plugin.pid());
    let url = sink.url();
    let mut all = vec![("hosts", url.as_str())];
    all.extend_from_slice(opts);
    let (cpu_before, clock) = (cpu_seconds(plugin.pid()), Instant::now());
    plugin_run(rt, &plugin, round, chunk, reps, 1, &all);
    assert!(
        sink.wait_items(docs, WAIT_LIMIT),
        "the sink got {} of {docs} documents",
        sink.items()
    );
    let cpu = cpu_seconds(plugin.pid()) - cpu_before;
    Shipped {
        window: sink
            .ack_window()
            .expect("acknowledged")
            .as_secs_f64()
            .max(1e-3),
        busy: cpu / clock.elapsed().as_secs_f64(),
        requests: sink.bulk_requests(),
    }
}

/// Samples the RSS of `pid` every 20 ms until `stop`; returns the largest seen.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let peak = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if let Some(rss) = report::rss_bytes(pid, false) {
                peak.fetch_max(rss, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak.load(Ordering::SeqCst)
    })
}

fn du(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// A loopback port with nothing listening (bound, then closed).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a loopback port")
        .port()
}

/// Item 5: RSS with 100 idle containers, and while ingesting with Elasticsearch down.
fn memory(rt: &tokio::runtime::Runtime, short: bool) -> Table {
    const MIB: f64 = 1024.0 * 1024.0;
    let mut table = Table::new("Memory", &["case", "RSS", "target"]);
    table.note = "VmRSS of the plugin process. Idle: 100 containers started, one line each, \
                  read 3 s later. Elasticsearch down: 100 B lines fed as fast as the plugin takes \
                  them with `hosts` pointing at a closed loopback port, RSS sampled every 20 ms \
                  (the largest sample); the backlog is what the state folder holds at the end. \
                  Item 3's version of this (through the real engine) is in the engine results."
        .into();
    let sink = SinkEs::start(1);
    let url = sink.url();
    for (case, hosts) in [
        ("no Elasticsearch", None),
        ("shipping to the sink", Some(&url)),
    ] {
        let plugin = quiet_plugin(&[]);
        let opts: Vec<(&str, &str)> = hosts.iter().map(|h| ("hosts", h.as_str())).collect();
        let api = plugin.client();
        let mut fifos: Vec<EngineFifo> = (0..100)
            .map(|n| EngineFifo::create(plugin.dir.path(), &format!("idle-{n}")))
            .collect();
        rt.block_on(async {
            for (n, fifo) in fifos.iter().enumerate() {
                assert_eq!(
                    api.start_logging(&fifo.path, &container(7, n), &opts).await,
                    "",
                    "StartLogging"
                );
            }
        });
        for fifo in &mut fifos {
            fifo.write_entries(&[line("stdout", 1, b"hello")]);
        }
        std::thread::sleep(Duration::from_secs(3));
        let rss = report::rss_bytes(plugin.pid(), false).expect("plugin RSS") as f64 / MIB;
        table.row(vec![
            format!("100 idle containers, {case}"),
            format!("{rss:.1} MiB"),
            format!("< 30 MiB: {}", verdict(rss < 30.0)),
        ]);
        stop_all(rt, &api, &fifos);
    }
    let lines = if short { 100_000 } else { 3_000_000 };
    let plugin = quiet_plugin(&[]);
    let down = format!("http://127.0.0.1:{}", closed_port());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(plugin.pid(), stop.clone());
    let (chunk, chunk_lines, chunk_bytes) = batch(100);
    let reps = lines / chunk_lines;
    plugin_run(rt, &plugin, 9, &chunk, reps, 1, &[("hosts", &down)]);
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.join().expect("sampler") as f64 / MIB;
    let backlog = du(&plugin.state) as f64 / MIB;
    table.row(vec![
        format!(
            "ingesting {} lines ({:.0} MB), Elasticsearch down; {backlog:.0} MiB on disk after",
            reps * chunk_lines,
            (reps * chunk_bytes) as f64 / 1e6
        ),
        format!("{peak:.1} MiB"),
        format!("< 64 MiB: {}", verdict(peak < 64.0)),
    ]);
    table
}

/// Item 6: ReadLogs with Tail=100 on a small and a large store.
fn tail(rt: &tokio::runtime::Runtime, short: bool) -> Table {
    let sizes: [u64; 2] = if short {
        [10_000_000, 100_000_000]
    } else {
        [10_000_000, 1_000_000_000]
    };
    let rounds = if short { 5 } else { 21 };
    let mut table = Table::new(
        "Tail: ReadLogs Tail=100",
        &["store", "median", "slowest", "target (< 20 ms on 1 GB)"],
    );
    table.note = format!(
        "1 KB lines written into one container's store (max-size 100m, max-file 12, compress \
         false, so the whole store is kept), then `ReadLogs` with Tail=100 asked {rounds} times \
         over the plugin socket, the answer read to its end (100 entries checked)."
    );
    let plugin = quiet_plugin(&[]);
    let (chunk, chunk_lines, chunk_bytes) = batch(1000);
    let opts = [
        ("max-size", "100m"),
        ("max-file", "12"),
        ("compress", "false"),
    ];
    let api = plugin.client();
    for (round, size) in sizes.into_iter().enumerate() {
        let reps = (size as usize).div_ceil(chunk_bytes);
        plugin_run(rt, &plugin, 20 + round, &chunk, reps, 1, &opts);
        let id = container(20 + round, 0);
        let mut times = Vec::new();
        for _ in 0..rounds {
            let start = Instant::now();
            let entries = rt.block_on(api.read_logs(&id, "", "", 100));
            times.push(start.elapsed().as_secs_f64() * 1e3);
            assert_eq!(
                entries.len(),
                100,
                "Tail=100 gave {} entries",
                entries.len()
            );
        }
        let med = median(&times);
        let slowest = times.iter().copied().fold(0.0, f64::max);
        let stored = (reps * chunk_lines) as f64 * 1000.0;
        table.row(vec![
            format!("{:.0} MB", stored / 1e6),
            format!("{med:.2} ms"),
            format!("{slowest:.2} ms"),
            verdict(med < 20.0).into(),
        ]);
    }
    table
}

/// Item 7: from the FIFO write to the acknowledgement by Elasticsearch, at 10,000 lines/s.
fn latency(rt: &tokio::runtime::Runtime, short: bool) -> Table {
    let seconds = if short { 3 } else { 20 };
    let mut table = Table::new(
        "Latency: FIFO write to acknowledged document, 10,000 lines/s",
        &["lines", "p50", "p99", "max", "target (p99 < 2 s)"],
    );
    table.note = format!(
        "{seconds} s at 10,000 lines/s (100 lines every 10 ms, one write per frame as the engine \
         does), 100 B lines each carrying its send time; the sink reads it back when it answers \
         the `_bulk`. Default options (flush_interval 1s, workers 2, gzip level 1)."
    );
    let sink = SinkEs::start(1);
    sink.record_latency();
    let plugin = quiet_plugin(&[]);
    let api = plugin.client();
    let mut fifo = EngineFifo::create(plugin.dir.path(), "latency");
    let id = container(30, 0);
    let url = sink.url();
    rt.block_on(async {
        assert_eq!(
            api.start_logging(&fifo.path, &id, &[("hosts", &url)]).await,
            "",
            "StartLogging"
        );
    });
    let pad = fill(100, 3);
    let start = Instant::now();
    let mut sent = 0u64;
    for tick in 0..(seconds * 100) {
        let due = start + Duration::from_millis(10 * tick as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut batch = Vec::with_capacity(100);
        for _ in 0..100 {
            let mut text = sink_es::latency_marker().into_bytes();
            text.extend_from_slice(&pad[..100 - text.len()]);
            batch.push(line("stdout", 1_700_000_000_000_000_000, &text));
        }
        fifo.write_entries(&batch);
        sent += 100;
    }
    assert!(
        sink.wait_items(sent, WAIT_LIMIT),
        "the sink got {} of {sent} documents",
        sink.items()
    );
    stop_all(rt, &api, std::slice::from_ref(&fifo));
    let lat = sink.latencies_ns();
    let ms = |ns: u64| format!("{:.0} ms", ns as f64 / 1e6);
    let p99 = percentile(&lat, 99.0);
    table.row(vec![
        lat.len().to_string(),
        ms(percentile(&lat, 50.0)),
        ms(p99),
        ms(percentile(&lat, 100.0)),
        verdict(p99 < 2_000_000_000).into(),
    ]);
    table
}
