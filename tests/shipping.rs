//! Shipping to Elasticsearch through the real plugin binary: containers played through FIFOs,
//! documents checked in the in-process Elasticsearch imitation (tests/support/es_server.rs),
//! including every fault it can inject. Each test asserts the exact set of documents: nothing
//! lost, no `_id` twice.

#[path = "support/engine.rs"]
mod engine;
#[path = "support/es_server.rs"]
mod es_server;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use engine::*;
use es_server::{EsServer, Faults, Flavor, ServerOptions};

const T0: i64 = 1_790_000_000_000_000_000;

/// Lines of one container: short ones, and every `split_every`-th a 40 KB line in fragments.
fn container_lines(n: usize, tag: u8, split_every: usize) -> (Vec<LogEntry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut messages = Vec::new();
    for i in 0..n {
        let t = T0 + (i as i64) * 1000 + tag as i64;
        if split_every > 0 && i % split_every == split_every - 1 {
            let text: Vec<u8> = (0..40_000).map(|k| b'a' + ((i + k) % 26) as u8).collect();
            entries.extend(fragments(t, &text, &format!("p{tag}-{i}")));
            messages.push(String::from_utf8(text).unwrap());
        } else {
            let text = format!("container {tag} line {i}");
            entries.push(line(
                if i % 2 == 0 { "stdout" } else { "stderr" },
                t,
                text.as_bytes(),
            ));
            messages.push(text);
        }
    }
    (entries, messages)
}

async fn wait_for_docs(server: &EsServer, want: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let have = server.doc_count();
        if have >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {have} of {want} documents arrived within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like wait_for_docs, but on a timeout prints what the plugin logged, for diagnosis.
async fn wait_for_docs_or_show(
    server: &EsServer,
    want: usize,
    limit: Duration,
    plugin: &PluginProcess,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while server.doc_count() < want {
        if tokio::time::Instant::now() >= deadline {
            let out = plugin.output();
            let tail: Vec<&str> = out
                .lines()
                .filter(|l| !l.contains("DEBUG"))
                .rev()
                .take(30)
                .collect();
            eprintln!(
                "only {} of {want} documents; plugin log tail:\n{}",
                server.doc_count(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// The messages indexed for one container, in timestamp order, and checks every id is unique.
fn messages_of(server: &EsServer, id: &str) -> Vec<String> {
    let docs = server.docs();
    let ids: HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), docs.len(), "an _id was indexed twice");
    let mut mine: Vec<(String, String)> = docs
        .iter()
        .filter(|d| d.source["container"]["id"] == id)
        .map(|d| {
            (
                d.source["@timestamp"].as_str().unwrap().to_owned(),
                d.source["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    mine.sort();
    mine.into_iter().map(|(_, m)| m).collect()
}

async fn run_containers(
    plugin: &PluginProcess,
    config: &[(&str, &str)],
    containers: &[(u8, usize)],
) -> Vec<(String, Vec<String>, std::path::PathBuf)> {
    let api = plugin.client();
    let mut out = Vec::new();
    let mut writers = Vec::new();
    for &(tag, n) in containers {
        let id = container_id(tag);
        let mut fifo = EngineFifo::create(plugin.dir.path(), &format!("fifo{tag}"));
        let err = api.start_logging(&fifo.path, &id, config).await;
        assert_eq!(err, "", "StartLogging");
        let (entries, messages) = container_lines(n, tag, 997);
        out.push((id, messages, fifo.path.clone()));
        writers.push(std::thread::spawn(move || {
            fifo.write_entries(&entries);
            fifo
        }));
    }
    for ((_, _, path), writer) in out.iter().zip(writers) {
        let fifo = tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        assert_eq!(api.stop_logging(path).await, "");
        drop(fifo);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_100k_lines_of_four_containers_exactly_once_with_ecs_fields() {
    let server = EsServer::start(ServerOptions::default()).await;
    let plugin = PluginProcess::start_with_env(&[("ES_HOSTS", &server.url())]);
    let ran = run_containers(
        &plugin,
        &[("max-size", "1m"), ("max-file", "100")],
        &[(1, 25_000), (2, 25_000), (3, 25_000), (4, 25_000)],
    )
    .await;
    let waited = wait_for_docs_or_show(&server, 100_000, Duration::from_secs(180), &plugin).await;
    assert!(waited);
    for (id, messages, _) in &ran {
        assert_eq!(&messages_of(&server, id), messages, "container {id}");
    }
    let doc = server
        .docs()
        .into_iter()
        .find(|d| d.source["message"] == "container 1 line 0")
        .unwrap();
    assert_eq!(doc.index, "logs-docker-default");
    let s = &doc.source;
    assert_eq!(s["stream"], "stdout");
    assert_eq!(s["container"]["name"], "test");
    assert_eq!(s["container"]["image"]["name"], "busybox");
    assert_eq!(s["container"]["image"]["tag"], "local");
    assert_eq!(s["data_stream"]["type"], "logs");
    assert_eq!(s["data_stream"]["dataset"], "docker");
    assert_eq!(s["data_stream"]["namespace"], "default");
    assert_eq!(s["@timestamp"], "2026-09-21T14:13:20.000000001Z");
    assert!(
        s["host"]["name"].is_string()
            && s["agent"]["version"].is_string()
            && s["ecs"]["version"].is_string()
    );
    let stats = server.stats();
    assert!(stats.gzip_requests > 0, "bodies are gzipped by default");
    assert_eq!(
        stats
            .last_query_params
            .get("require_data_stream")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        stats
            .last_query_params
            .get("filter_path")
            .map(String::as_str),
        Some("errors,items.*.error,items.*.status")
    );
    assert!(!plugin.output().contains("hunter2"));
}

/// One fault scenario: the server misbehaves as `faults` says, everything must still arrive once.
async fn survives(faults: Faults, extra: &[(&str, &str)]) -> (EsServer, PluginProcess) {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(faults);
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "200ms"),
    ]);
    let mut config = vec![("bulk_max_bytes", "256k")];
    config.extend_from_slice(extra);
    let ran = run_containers(&plugin, &config, &[(5, 5_000), (6, 5_000)]).await;
    assert!(wait_for_docs_or_show(&server, 10_000, Duration::from_secs(180), &plugin).await);
    for (id, messages, _) in &ran {
        assert_eq!(&messages_of(&server, id), messages);
    }
    (server, plugin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_429s_are_retried_until_written() {
    let (server, _) = survives(
        Faults {
            item_status_every: Some((429, 3)),
            item_fail_times: 2,
            ..Faults::default()
        },
        &[],
    )
    .await;
    assert!(
        server
            .stats()
            .rejected_by_fault
            .get(&429)
            .copied()
            .unwrap_or(0)
            > 1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_5xx_are_retried_until_written() {
    let (server, _) = survives(
        Faults {
            item_status_every: Some((503, 7)),
            item_fail_times: 1,
            ..Faults::default()
        },
        &[],
    )
    .await;
    assert!(
        server
            .stats()
            .rejected_by_fault
            .get(&503)
            .copied()
            .unwrap_or(0)
            > 100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_503_429_401_and_drops_are_retried() {
    for faults in [
        Faults {
            whole_status: Some(503),
            whole_status_times: 5,
            ..Faults::default()
        },
        Faults {
            whole_status: Some(429),
            whole_status_times: 5,
            ..Faults::default()
        },
        Faults {
            whole_status: Some(502),
            whole_status_times: 3,
            ..Faults::default()
        },
        Faults {
            whole_status: Some(401),
            whole_status_times: 3,
            ..Faults::default()
        },
        Faults {
            drop_connection: true,
            drop_times: 4,
            ..Faults::default()
        },
    ] {
        let shown = format!("{faults:?}");
        let (server, plugin) = survives(faults, &[]).await;
        let stats = server.stats();
        assert!(
            stats.whole_faults.values().sum::<usize>() + stats.dropped_connections > 0,
            "{shown}: fault never happened"
        );
        if shown.contains("401") {
            assert!(
                plugin.output().contains("refused our credentials"),
                "401 must be reported loudly"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_requests_are_split() {
    let (server, _) = survives(
        Faults {
            max_docs_per_request: Some(40),
            ..Faults::default()
        },
        &[],
    )
    .await;
    assert!(
        server.stats().whole_faults.get(&413).copied().unwrap_or(0) > 0
            || server.stats().bulk_refused.get(&413).copied().unwrap_or(0) > 0
    );
    assert!(
        server.stats().bulk_sizes.iter().all(|&n| n <= 40)
            || server.stats().bulk_sizes.iter().any(|&n| n <= 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_past_the_timeout_are_retried_without_duplicates() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        delay: Some(Duration::from_millis(1500)),
        ..Faults::default()
    });
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "200ms"),
    ]);
    let ran = run_containers(&plugin, &[("timeout", "1s")], &[(7, 2_000)]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.set_faults(Faults::default());
    wait_for_docs(&server, 2_000, Duration::from_secs(180)).await;
    assert_eq!(messages_of(&server, &ran[0].0), ran[0].1);
    assert!(server.stats().delayed_requests > 0);
    // The slow request was stored by the server, then sent again: those are 409s, not documents.
    assert!(server.stats().item_statuses.get(&409).copied().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rejections_are_dead_lettered_and_never_block() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        item_status_matching: Some((400, "line 1".into())),
        ..Faults::default()
    });
    let plugin = PluginProcess::start_with_env(&[("ES_HOSTS", &server.url())]);
    let ran = run_containers(&plugin, &[], &[(8, 3_000)]).await;
    let refused: Vec<&String> = ran[0].1.iter().filter(|m| m.contains("line 1")).collect();
    let accepted: Vec<String> = ran[0]
        .1
        .iter()
        .filter(|m| !m.contains("line 1"))
        .cloned()
        .collect();
    wait_for_docs(&server, accepted.len(), Duration::from_secs(30)).await;
    assert_eq!(messages_of(&server, &ran[0].0), accepted);
    let dead_dir = plugin.state.join("dead-letter");
    engine::wait_until(Duration::from_secs(10), "dead letters", || {
        std::fs::read_dir(&dead_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .is_some_and(|t| t.lines().count() == refused.len())
    });
    assert!(plugin.output().contains("document_parsing_exception"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_beside_a_live_one_loses_nothing() {
    let server = EsServer::start(ServerOptions::default()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let hosts = format!("http://127.0.0.1:{dead_port},{}", server.url());
    let plugin =
        PluginProcess::start_with_env(&[("ES_HOSTS", &hosts), ("ES_BACKOFF_INIT", "20ms")]);
    let ran = run_containers(&plugin, &[], &[(9, 5_000)]).await;
    wait_for_docs(&server, 5_000, Duration::from_secs(30)).await;
    assert_eq!(messages_of(&server, &ran[0].0), ran[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_down_then_back_loses_nothing_and_docker_logs_keeps_working() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        drop_connection: true,
        ..Faults::default()
    });
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "300ms"),
    ]);
    let ran = run_containers(&plugin, &[], &[(10, 20_000)]).await;
    // Down: nothing indexed, yet docker logs has every line.
    assert_eq!(server.doc_count(), 0);
    let shown = plugin.client().read_logs(&ran[0].0, "", "", -1).await;
    assert_eq!(
        shown.len(),
        ran[0].1.len() + ran[0].1.iter().filter(|m| m.len() == 40_000).count() * 2
    );
    server.set_faults(Faults::default());
    wait_for_docs(&server, 20_000, Duration::from_secs(180)).await;
    assert_eq!(messages_of(&server, &ran[0].0), ran[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_shipping_indexes_every_line_exactly_once() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        delay: Some(Duration::from_millis(30)),
        ..Faults::default()
    });
    let mut plugin = PluginProcess::start_with_env(&[("ES_HOSTS", &server.url())]);
    let id = container_id(11);
    let fifo = EngineFifo::create(plugin.dir.path(), "fifo11");
    let path = fifo.path.clone();
    assert_eq!(
        plugin
            .client()
            .start_logging(&path, &id, &[("bulk_max_bytes", "64k")])
            .await,
        ""
    );
    let (entries, messages) = container_lines(60_000, 11, 5_000);
    let writer = std::thread::spawn(move || {
        let mut fifo = fifo;
        fifo.write_entries(&entries);
        fifo
    });
    for round in 0..4u64 {
        tokio::time::sleep(Duration::from_millis(300 + round * 100)).await;
        plugin.restart();
    }
    let fifo = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    assert_eq!(plugin.client().stop_logging(&path).await, "");
    drop(fifo);
    // Also kill it once more after the container stopped but before shipping finished.
    plugin.restart();
    server.set_faults(Faults::default());
    wait_for_docs(&server, messages.len(), Duration::from_secs(90)).await;
    assert_eq!(messages_of(&server, &id), messages);
    let statuses: BTreeMap<u16, usize> = server.stats().item_statuses;
    eprintln!("item statuses across the kills: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_gets_no_require_data_stream() {
    let server = EsServer::start(ServerOptions {
        flavor: Flavor::OpenSearch,
        ..ServerOptions::default()
    })
    .await;
    let plugin = PluginProcess::start_with_env(&[("ES_HOSTS", &server.url())]);
    let ran = run_containers(&plugin, &[], &[(12, 1_000)]).await;
    wait_for_docs(&server, 1_000, Duration::from_secs(30)).await;
    assert_eq!(messages_of(&server, &ran[0].0), ran[0].1);
    assert!(!server
        .stats()
        .last_query_params
        .contains_key("require_data_stream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shipping_options_fail_start_logging_with_the_option_named() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let fifo = EngineFifo::create(plugin.dir.path(), "fifo13");
    let id = container_id(13);
    for (config, want) in [
        (vec![("hosts", "ftp://x")], "log-opt hosts"),
        (vec![("hosts", "es"), ("workers", "0")], "log-opt workers"),
        (vec![("hosts", "es"), ("index", "Bad Index")], "index"),
        (
            vec![("hosts", "es"), ("index", "logs-%{[nope]}-x")],
            "index",
        ),
        (
            vec![("hosts", "es"), ("ssl.verification_mode", "maybe")],
            "ssl.verification_mode",
        ),
        (
            vec![
                ("hosts", "es"),
                ("ssl.certificate_authorities", "/nonexistent/ca.pem"),
            ],
            "ssl.certificate_authorities",
        ),
        (vec![("host", "es")], "did you mean \"hosts\""),
    ] {
        let err = api.start_logging(&fifo.path, &id, &config).await;
        assert!(err.contains(want), "{config:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_acknowledged_documents_without_container_labels() {
    let server = EsServer::start(ServerOptions::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let plugin =
        PluginProcess::start_with_env(&[("ES_HOSTS", &server.url()), ("METRICS_ADDR", &addr)]);
    let ran = run_containers(&plugin, &[], &[(14, 500)]).await;
    wait_for_docs(&server, 500, Duration::from_secs(60)).await;
    let acked = format!(
        "eslp_documents_acked_total{{destination=\"http://127.0.0.1:{}\"}} 500",
        server.port()
    );
    let fetch = move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    // The server stores documents before the plugin has read its answer: poll.
    let mut text = String::new();
    for _ in 0..200 {
        text = fetch();
        if text.contains(&acked) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(&acked), "{text}");
    assert!(text.contains("eslp_lines_read_total 500"), "{text}");
    assert!(!text.contains(&ran[0].0), "a container id became a label");
}
