//! Through the real engine (item 3 of the benchmark issue): a container printing N lines with
//! es-logging-plugin, beside the engine's `none`, `local` and `json-file` drivers and beside a
//! reference plugin that discards everything (`examples/discard_plugin.rs`, the floor of the
//! engine's plugin path). Same image, same run, drivers alternating, several rounds, medians.
//! Also: the plugin's RSS while Elasticsearch is down (item 5), whether shipping keeps up with
//! the engine's rate (item 4), and the same container shipped into a real OpenSearch 2.19.6 node
//! beside the acknowledging sink (throughput end to end, and one line's latency).
//!
//! Needs root, dockerd, docker-registry and busybox-static (the e2e harness's private engine,
//! `tests/support/docker.rs`), and the reference plugin built first:
//! `cargo build --release --example discard_plugin` (`make bench` does it). Results go to
//! `bench/results/engine.md` and `bench/results/engine.svg`. Nothing here asserts a time.

#[allow(dead_code)]
#[path = "../tests/support/docker.rs"]
mod docker;
#[path = "../tests/support/noida.rs"]
mod noida;
#[path = "../tests/support/opensearch.rs"]
mod opensearch;
#[path = "support/report.rs"]
mod report;
#[path = "support/sink_es.rs"]
mod sink_es;
// docker.rs starts the engine ESLP_ENGINE names (the host's by default) through it.
#[path = "../tests/support/trixie.rs"]
mod trixie;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker::{run_with_timeout, Docker, DRIVER, IMAGE};
use opensearch::Node;
use report::{human, median, verdict, Bar, Table};
use sink_es::SinkEs;

/// The reference plugin's name in the engine.
const DISCARD: &str = "eslp-discard:bench";
/// One container's run, all drivers: 1,000,000 lines take a few seconds; a stuck engine fails.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn main() {
    let short = report::short();
    let lines: usize = if short { 100_000 } else { 1_000_000 };
    let rounds = if short { 1 } else { 5 };
    let started = Instant::now();
    let docker = Docker::start();
    install_discard_plugin(&docker);
    // Every line is 99 characters and its newline: `yes` repeats it, `head` cuts the count.
    let script = format!("yes {} | head -n {lines}", "x".repeat(99));

    let drivers: Vec<(&str, Vec<String>)> = vec![
        ("none", vec!["--log-driver".into(), "none".into()]),
        ("local", vec!["--log-driver".into(), "local".into()]),
        ("json-file", vec!["--log-driver".into(), "json-file".into()]),
        (
            "discard plugin (cache-disabled)",
            vec![
                "--log-driver".into(),
                DISCARD.into(),
                "--log-opt".into(),
                "cache-disabled=true".into(),
            ],
        ),
        (
            "es-logging-plugin",
            vec!["--log-driver".into(), DRIVER.into()],
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); drivers.len()];
    let mut seq = 0;
    for round in 0..rounds {
        // Rotate the order, so no driver always runs first (or right after the same one).
        for k in 0..drivers.len() {
            let i = (k + round) % drivers.len();
            seq += 1;
            let (wall, _) = run_container(&docker, &format!("b{seq}"), &drivers[i].1, &script);
            eprintln!(
                "bench: round {round} {}: {:.2} s",
                drivers[i].0,
                wall.as_secs_f64()
            );
            times[i].push(wall.as_secs_f64());
        }
    }
    let medians: Vec<f64> = times.iter().map(|t| median(t)).collect();
    let floor = medians[3];
    let local = medians[1];
    let ours = medians[4];

    let mut table = Table::new(
        "Through the engine: a container printing lines",
        &[
            "driver",
            "median wall time",
            "lines/s",
            "÷ discard plugin",
            "÷ local",
            "rounds (s)",
        ],
    );
    table.note = format!(
        "`docker run -d --network none` of `{IMAGE}` running `yes <99 x> | head -n {lines}` \
         (100 B lines), then `docker wait`: the clock runs from `docker run` to the exit, which \
         the engine reports only after its log copier has handed every line to the driver. \
         {rounds} rounds, drivers rotating within each round; medians. The discard plugin \
         (`examples/discard_plugin.rs`) reads its FIFO and keeps nothing, with the engine's \
         cache disabled; es-logging-plugin runs with default options and no Elasticsearch \
         (local copy only). Target: es-logging-plugin within 1.1x of the discard plugin."
    );
    let mut bars = Vec::new();
    for (i, (name, _)) in drivers.iter().enumerate() {
        table.row(vec![
            (*name).into(),
            format!("{:.2} s", medians[i]),
            human(lines as f64 / medians[i]),
            format!("{:.2}", medians[i] / floor),
            format!("{:.2}", medians[i] / local),
            times[i]
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
        bars.push(Bar {
            label: (*name).into(),
            value: lines as f64 / medians[i],
            baseline: i != 4,
        });
    }
    let ratio = ours / floor;
    let mut out = format!(
        "## Through the real engine\n\nMachine: {}. Engine: {}. Mode: {}.\n\n",
        report::machine(),
        docker.docker_ok(&["version", "-f", "{{.Server.Version}}"]),
        if short {
            "short (CI smoke run: small N, one round; figures are not meaningful)"
        } else {
            "full"
        }
    );
    out.push_str(&table.markdown());
    out.push_str(&format!(
        "es-logging-plugin ÷ discard plugin = **{ratio:.2}** (target ≤ 1.1: {}); \
         beats the floor: {}.\n\n",
        verdict(ratio <= 1.1),
        if ratio < 1.0 { "yes" } else { "no" }
    ));

    let mut extra = Table::new(
        "es-logging-plugin with Elasticsearch",
        &["case", "container wall time", "figure", "target"],
    );
    extra.note = "The same container, es-logging-plugin only. Keeping up: `hosts` is an \
                  in-process sink that acknowledges and discards (`benches/support/sink_es.rs`); \
                  the figure is the time until the last line was acknowledged ÷ the container's \
                  wall time. Elasticsearch down: `hosts` is a closed loopback port, the plugin freshly \
                  enabled; the figure is \
                  the largest RSS of the plugin process, sampled every 20 ms during the run."
        .into();
    let sink = SinkEs::start(1);
    seq += 1;
    let before = sink.items();
    let hosts = format!("hosts={}", sink.url());
    let (wall, _) = run_container(&docker, &format!("b{seq}"), &ours_with(&hosts), &script);
    // The container has exited: every line is in the plugin; how long until all are acked?
    let behind = ack_delay(&sink, before + lines as u64);
    let shipped = sink.items() >= before + lines as u64;
    extra.row(vec![
        "shipping to the sink (default options)".into(),
        format!("{:.2} s", wall.as_secs_f64()),
        if shipped {
            format!(
                "last ack {:.2} s after exit: {:.2}x the wall time",
                behind,
                (wall.as_secs_f64() + behind) / wall.as_secs_f64()
            )
        } else {
            format!("only {} of {lines} acknowledged", sink.items() - before)
        },
        format!(
            "keeps up (all acked within 1 flush interval + 1 s of exit): {}",
            verdict(shipped && behind <= 2.0)
        ),
    ]);

    let real = real_node_rows(&docker, &sink, &script, lines, &mut seq);

    seq += 1;
    // A fresh plugin process: what the earlier rounds and the shipping case allocated stays in
    // the process's heap (the allocator keeps freed memory), and would be counted against this
    // case.
    docker.docker_ok(&["plugin", "disable", DRIVER]);
    docker.docker_ok(&["plugin", "enable", DRIVER]);
    let down = format!(
        "hosts=http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("probe a loopback port")
            .port()
    );
    let (wall, peak) = run_container(&docker, &format!("b{seq}"), &ours_with(&down), &script);
    let peak_mib = peak as f64 / 1024.0 / 1024.0;
    extra.row(vec![
        "Elasticsearch down".into(),
        format!("{:.2} s", wall.as_secs_f64()),
        format!("peak RSS {peak_mib:.1} MiB"),
        format!("< 64 MiB: {}", verdict(peak > 0 && peak_mib < 64.0)),
    ]);
    out.push_str(&extra.markdown());
    out.push_str(&real.markdown());
    out.push_str(&format!(
        "Whole run: {:.0} s.\n\n",
        started.elapsed().as_secs_f64()
    ));
    report::write("engine.md", &out);
    report::write(
        "engine.svg",
        &report::bar_chart_svg(
            "Through the engine: lines/s of a container printing 100 B lines",
            &[("median lines/s by log driver".into(), bars)],
        ),
    );
    drop(docker);
}

/// The same container into the acknowledging sink and into a real OpenSearch node (single
/// node, the data stream template of the tests, replicas 0), one after the other: the time from
/// `docker run` until the last line is acknowledged (sink) or counted by `_count` after
/// `_refresh` (node), and the latency of one line (`echo`, median of a few runs) from
/// `docker run` to the same points.
fn real_node_rows(
    docker: &Docker,
    sink: &SinkEs,
    script: &str,
    lines: usize,
    seq: &mut usize,
) -> Table {
    const LATENCY_RUNS: usize = 5;
    let home = tempfile::Builder::new()
        .prefix("opensearch-")
        .tempdir_in(target_dir())
        .expect("node home");
    let node = Node::start_single(&home.path().join("node"), &[]);
    node.install_logs_template(0);
    let mut table = Table::new(
        "Into a real OpenSearch node, beside the acknowledging sink",
        &[
            "destination",
            "container wall time",
            "last line in after exit",
            "end-to-end lines/s",
            "one line: run → in (median)",
        ],
    );
    table.note = format!(
        "The container above (`{lines}` lines of 100 B), es-logging-plugin with default options \
         (flush_interval 1s, 2 workers, gzip level 1). Sink: acknowledged by the in-process sink. \
         OpenSearch: a real 2.19.6 node from Maven Central on this machine (512 MiB heap, 1 shard, \
         no replica), counted with `_count` after `_refresh`, polled every 100 ms. End to end: \
         lines ÷ (wall time + the wait after exit). One line: from `docker run` of a container \
         that echoes one line and exits until that line is in, {LATENCY_RUNS} runs."
    );
    let node_count = |index: &str, n: usize| node.client().count(index) >= n;
    for destination in ["sink", "OpenSearch 2.19.6"] {
        let real = destination != "sink";
        let index = if real { "logs-bench-default" } else { "" };
        let url = if real { node.url() } else { sink.url() };
        let mut opts = vec![format!("hosts={url}")];
        if real {
            opts.push(format!("index={index}"));
        }
        let driver = ours_with_all(&opts);
        let before = sink.items();
        *seq += 1;
        let (wall, _) = run_container(docker, &format!("b{seq}"), &driver, script);
        let start = Instant::now();
        let arrived = wait_until(RUN_LIMIT, || {
            if real {
                node_count(index, lines)
            } else {
                sink.items() >= before + lines as u64
            }
        });
        let behind = start.elapsed().as_secs_f64();
        let mut latencies = Vec::new();
        for k in 0..LATENCY_RUNS {
            let before = sink.items();
            *seq += 1;
            let start = Instant::now();
            run_container(docker, &format!("b{seq}"), &driver, "echo one");
            let arrived = wait_until(Duration::from_secs(60), || {
                if real {
                    node_count(index, lines + k + 1)
                } else {
                    sink.items() > before
                }
            });
            if arrived {
                latencies.push(start.elapsed().as_secs_f64());
            }
        }
        table.row(vec![
            destination.into(),
            format!("{:.2} s", wall.as_secs_f64()),
            if arrived {
                format!("{behind:.2} s")
            } else {
                format!("not all in after {RUN_LIMIT:?}")
            },
            human(lines as f64 / (wall.as_secs_f64() + behind)),
            if latencies.is_empty() {
                "never arrived".into()
            } else {
                format!("{:.2} s", median(&latencies))
            },
        ]);
    }
    table
}

/// Polls `done` every 100 ms until it holds (true) or `limit` passes (false).
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn ours_with_all(opts: &[String]) -> Vec<String> {
    let mut args = vec!["--log-driver".to_owned(), DRIVER.to_owned()];
    for opt in opts {
        args.push("--log-opt".into());
        args.push(opt.clone());
    }
    args
}

fn ours_with(opt: &str) -> Vec<String> {
    vec![
        "--log-driver".into(),
        DRIVER.into(),
        "--log-opt".into(),
        opt.into(),
    ]
}

/// Seconds from now until the sink has `n` items (0 when it already has them).
fn ack_delay(sink: &SinkEs, n: u64) -> f64 {
    let start = Instant::now();
    sink.wait_items(n, RUN_LIMIT);
    start.elapsed().as_secs_f64()
}

/// Runs one container to its exit; returns the wall time and the plugin's largest RSS seen
/// meanwhile (sampled every 20 ms; 0 when the plugin's process was not found).
fn run_container(docker: &Docker, name: &str, driver: &[String], script: &str) -> (Duration, u64) {
    let mut args: Vec<&str> = vec!["run", "-d", "--name", name, "--network", "none"];
    args.extend(driver.iter().map(String::as_str));
    args.extend([IMAGE, "sh", "-c", script]);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = docker.plugin_pid().map(|pid| {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(rss) = report::rss_bytes(pid, false) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    let start = Instant::now();
    docker.docker_ok(&args);
    let out = run_with_timeout(&mut docker.command(&["wait", name]), RUN_LIMIT)
        .unwrap_or_else(|e| docker.fail(&format!("docker wait {name}: {e}")));
    let wall = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    if let Some(sampler) = sampler {
        let _ = sampler.join();
    }
    if out.stdout.trim() != "0" {
        docker.fail(&format!(
            "container {name} ({}) exited {}",
            driver.join(" "),
            out.stdout.trim()
        ));
    }
    docker.docker_ok(&["rm", name]);
    (wall, peak.load(Ordering::SeqCst))
}

/// The cargo target dir (benches get `target/tmp` as CARGO_TARGET_TMPDIR).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

/// Packages `examples/discard_plugin.rs` (release build) as a managed plugin and enables it:
/// config.json beside a rootfs holding the binary and exactly the libraries `ldd` resolves.
fn install_discard_plugin(docker: &Docker) {
    let binary = target_dir().join("release/examples/discard_plugin");
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --release --example discard_plugin` first (make bench does)",
        binary.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("discard-plugin-")
        .tempdir_in(target_dir())
        .expect("plugin folder");
    let rootfs = dir.path().join("rootfs");
    for sub in ["bin", "run/docker/plugins", "run/docker/logging", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs folders");
    }
    std::fs::copy(&binary, rootfs.join("bin/discard_plugin")).expect("copy the plugin");
    let ldd =
        run_with_timeout(Command::new("ldd").arg(&binary), Duration::from_secs(30)).expect("ldd");
    for word in ldd.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
        let target = rootfs.join(word.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("lib folder");
        // `cp -L`: the loader and libraries are symlinks on the host.
        std::fs::copy(word, &target).unwrap_or_else(|e| panic!("copy {word}: {e}"));
    }
    let config = serde_json::json!({
        "description": "Reads its FIFO and discards everything (benchmark floor)",
        "documentation": "examples/discard_plugin.rs in the es-logging-plugin source tree",
        "entrypoint": ["/bin/discard_plugin"],
        "interface": {"types": ["docker.logdriver/1.0"], "socket": "discard.sock"},
        "network": {"type": "host"}
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config.json");
    let folder = dir.path().to_str().expect("utf-8 path");
    docker.docker_ok(&["plugin", "create", DISCARD, folder]);
    docker.docker_ok(&["plugin", "enable", DISCARD]);
    eprintln!("bench: reference plugin {DISCARD} enabled");
}
