//! Shipping to Elasticsearch through the real plugin binary: containers played through FIFOs,
//! documents checked in the in-process Elasticsearch imitation (tests/support/es_server.rs),
//! including every fault it can inject. Each test asserts the exact set of documents: nothing
//! lost, no `_id` twice.

mod support;
use support::{engine, es_check, es_server, noida, osmem, prereq, probe};

use std::collections::BTreeMap;
use std::time::Duration;

use engine::*;
use es_check::{container_lines, messages_of, wait_for_docs};
use es_server::{EsServer, Faults, Flavor, ServerOptions};
use probe::{fetch_metrics, free_addr, metric};

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
    report_counts(&server, 10_000);
    (server, plugin)
}

/// One line for the closing note's table of fault cases: lines sent, documents indexed, 409s
/// (replays answered as duplicates), refused items and whole requests, dropped connections.
fn report_counts(server: &EsServer, sent: usize) {
    let stats = server.stats();
    eprintln!(
        "fault case {}: sent {sent}, indexed {}, duplicates (409) {}, items failed by the fault {:?}, whole requests failed {:?}, connections dropped {}",
        std::thread::current().name().unwrap_or("?"),
        server.doc_count(),
        stats.conflicts_409,
        stats.rejected_by_fault,
        stats.whole_faults,
        stats.dropped_connections
    );
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
    // Logged after the records are synced, on another thread: wait for it, do not race it.
    engine::wait_until(
        Duration::from_secs(10),
        "the refusal's reason in the plugin log",
        || plugin.output().contains("document_parsing_exception"),
    );
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
        (
            vec![
                ("hosts", "es"),
                ("dead_letter_index", "dl-%{[container.name]}"),
            ],
            "log-opt dead_letter_index",
        ),
        (
            vec![("hosts", "es"), ("dead_letter_index", "Dead Letters")],
            "log-opt dead_letter_index",
        ),
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
    let fetch = move || fetch_metrics(&addr);
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

/// A server that drops every connection (Elasticsearch down) and a plugin shipping to it with
/// short backoffs and metrics on; returns the metrics address too.
async fn outage_with_metrics(extra_env: &[(&str, &str)]) -> (EsServer, PluginProcess, String) {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        drop_connection: true,
        ..Faults::default()
    });
    let addr = free_addr();
    let url = server.url();
    let mut env = vec![
        ("ES_HOSTS", url.as_str()),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "300ms"),
        ("METRICS_ADDR", addr.as_str()),
    ];
    env.extend_from_slice(extra_env);
    let plugin = PluginProcess::start_with_env(&env);
    (server, plugin, addr)
}

/// Regression: retention deleted unshipped segments beyond max-file while Elasticsearch was
/// down. They now stay as backlog (not shown by docker logs) and all arrive when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_beyond_max_file_survives_an_outage_and_ships_in_full() {
    let (server, plugin, addr) = outage_with_metrics(&[]).await;
    let ran = run_containers(
        &plugin,
        &[("max-size", "100k"), ("max-file", "2")],
        &[(15, 20_000)],
    )
    .await;
    // docker logs shows the max-file window only, as the engine's drivers do.
    let shown = plugin.client().read_logs(&ran[0].0, "", "", -1).await;
    assert!(
        !shown.is_empty() && shown.len() < 5_000,
        "docker logs shows {} entries, more than two 100k segments",
        shown.len()
    );
    let text = fetch_metrics(&addr);
    assert!(metric(&text, "eslp_spool_backlog_bytes") > 0, "{text}");
    server.set_faults(Faults::default());
    wait_for_docs(&server, 20_000, Duration::from_secs(180)).await;
    assert_eq!(messages_of(&server, &ran[0].0), ran[0].1);
    // Shipped: the backlog is deleted and the budget given back.
    let mut used = u64::MAX;
    for _ in 0..100 {
        used = metric(&fetch_metrics(&addr), "eslp_spool_backlog_bytes");
        if used == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(used, 0, "backlog left after everything shipped");
    assert_eq!(
        metric(&fetch_metrics(&addr), "eslp_spool_dropped_entries_total"),
        0
    );
}

/// Past SPOOL_MAX_SIZE the oldest unshipped entries go: counted in the metrics, logged at
/// ERROR, and everything newer still arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_unshipped_entries_counted_and_logged() {
    let (server, plugin, addr) = outage_with_metrics(&[("SPOOL_MAX_SIZE", "300k")]).await;
    let ran = run_containers(
        &plugin,
        &[
            ("max-size", "100k"),
            ("max-file", "2"),
            ("compress", "false"),
        ],
        &[(16, 20_000)],
    )
    .await;
    let text = fetch_metrics(&addr);
    let dropped = metric(&text, "eslp_spool_dropped_entries_total") as usize;
    assert!(dropped > 0, "{text}");
    assert!(metric(&text, "eslp_spool_backlog_bytes") <= 300 * 1024);
    assert!(plugin.output().contains("the spool budget is full"));
    server.set_faults(Faults::default());
    let total = ran[0].1.len();
    // Dropped counts entries (a 40 KB line is 3): at least total - dropped lines remain.
    wait_for_docs(&server, total - dropped, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let indexed = messages_of(&server, &ran[0].0);
    let n = indexed.len();
    assert!(n < total, "nothing was dropped after all");
    assert!(
        n + dropped >= total,
        "{n} indexed + {dropped} dropped < {total} lines"
    );
    // Batches already read stay in memory and arrive; what the budget deleted is a run of
    // lines behind them. Only fragments of a line cut by that hole may stand alone.
    let position: std::collections::HashMap<&String, usize> =
        ran[0].1.iter().enumerate().map(|(i, m)| (m, i)).collect();
    let strays = indexed
        .iter()
        .filter(|m| !position.contains_key(m))
        .filter(|m| !m.bytes().all(|b| b.is_ascii_lowercase()))
        .count();
    assert_eq!(strays, 0, "documents that are neither lines nor fragments");
    let order: Vec<usize> = indexed
        .iter()
        .filter_map(|m| position.get(m).copied())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "lines out of order or twice"
    );
    assert_eq!(
        order.last(),
        Some(&(total - 1)),
        "the newest line is missing"
    );
}

/// A test Elasticsearch on HTTPS with a fresh private CA, and a plugin with short backoffs and
/// no host-wide destination.
async fn tls_server_and_plugin() -> (EsServer, PluginProcess) {
    let server = EsServer::start(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    })
    .await;
    let plugin =
        PluginProcess::start_with_env(&[("ES_BACKOFF_INIT", "20ms"), ("ES_BACKOFF_MAX", "200ms")]);
    (server, plugin)
}

/// HTTPS with a private CA: trusted through `ssl.certificate_authorities`, or not verified with
/// `ssl.verification_mode=none`; without either the handshake fails, loudly, and the lines wait
/// in the local copy (docker logs has them) instead of being lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_the_right_ca_and_keeps_lines_until_it_is_trusted() {
    let (server, plugin) = tls_server_and_plugin().await;
    let ca_path = plugin.dir.path().join("ca.pem");
    std::fs::write(&ca_path, server.ca_pem().expect("a TLS server has a CA")).unwrap();
    let ca = ca_path.to_str().unwrap().to_owned();
    let url = server.url();
    assert!(url.starts_with("https://"));
    let trusted = run_containers(
        &plugin,
        &[("hosts", &url), ("ssl.certificate_authorities", &ca)],
        &[(19, 1_000)],
    )
    .await;
    let unverified = run_containers(
        &plugin,
        &[("hosts", &url), ("ssl.verification_mode", "none")],
        &[(20, 1_000)],
    )
    .await;
    let untrusted = run_containers(&plugin, &[("hosts", &url)], &[(21, 1_000)]).await;
    wait_for_docs(&server, 2_000, Duration::from_secs(60)).await;
    assert_eq!(messages_of(&server, &trusted[0].0), trusted[0].1);
    assert_eq!(messages_of(&server, &unverified[0].0), unverified[0].1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        messages_of(&server, &untrusted[0].0).is_empty(),
        "shipped over TLS to a server whose CA is not trusted"
    );
    assert!(server.stats().tls_handshake_failures > 0);
    let shown = plugin.client().read_logs(&untrusted[0].0, "", "", -1).await;
    assert!(
        shown.len() >= 1_000,
        "the untrusted container's lines are kept locally"
    );
    let log = plugin.output();
    assert!(
        log.to_lowercase().contains("certificate"),
        "the failure names the certificate problem"
    );
}

/// With `dead_letter_index`, refused documents are also indexed there, as text with the reason,
/// without the pipeline (which may be what refused them), beside the dead-letter file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_documents_also_reach_the_dead_letter_index() {
    let server = EsServer::start(ServerOptions::default()).await;
    // Matches the original documents only: in a dead-letter document the same text is inside
    // a JSON string, with its quotes escaped.
    server.set_faults(Faults {
        item_status_matching: Some((400, "\"message\":\"container 22 line 1".into())),
        ..Faults::default()
    });
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_DEAD_LETTER_INDEX", "dead-letters"),
        ("ES_FLUSH_INTERVAL", "100ms"),
    ]);
    let ran = run_containers(&plugin, &[], &[(22, 2_000)]).await;
    let refused: Vec<&String> = ran[0]
        .1
        .iter()
        .filter(|m| m.starts_with("container 22 line 1"))
        .collect();
    let accepted = ran[0].1.len() - refused.len();
    wait_for_docs(&server, accepted + refused.len(), Duration::from_secs(60)).await;
    let dead: Vec<_> = server
        .docs()
        .into_iter()
        .filter(|d| d.index == "dead-letters")
        .collect();
    assert_eq!(dead.len(), refused.len());
    assert_eq!(messages_of(&server, &ran[0].0).len(), accepted);
    let one = &dead[0].source;
    assert_eq!(one["error"]["code"], 400);
    assert!(one["error"]["message"]
        .as_str()
        .is_some_and(|r| r.contains("document_parsing_exception")));
    assert!(one["message"]
        .as_str()
        .is_some_and(|m| m.contains("container 22 line 1")));
    assert!(one["@timestamp"].is_string());
}

/// `ssl.ca_trusted_fingerprint` (as Beats take it: colons and upper case allowed) trusts the CA
/// in the chain the server presents; a pin that matches nothing ships nothing and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_fingerprint_pin_trusts_that_ca_only() {
    let (server, plugin) = tls_server_and_plugin().await;
    let url = server.url();
    let pin = server
        .ca_fingerprint_sha256()
        .expect("a TLS server has a CA");
    let beats_style = pin
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let pinned = run_containers(
        &plugin,
        &[
            ("hosts", &url),
            ("ssl.ca_trusted_fingerprint", &beats_style),
        ],
        &[(23, 500)],
    )
    .await;
    let wrong_pin = "00".repeat(32);
    let wrong = run_containers(
        &plugin,
        &[("hosts", &url), ("ssl.ca_trusted_fingerprint", &wrong_pin)],
        &[(24, 500)],
    )
    .await;
    wait_for_docs(&server, 500, Duration::from_secs(60)).await;
    assert_eq!(messages_of(&server, &pinned[0].0), pinned[0].1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(messages_of(&server, &wrong[0].0).is_empty());
    let log = plugin.output();
    assert!(
        log.contains("no certificate the server presented matches ssl.ca_trusted_fingerprint")
            && log.contains(&pin),
        "the failure names the pin and what the server presented"
    );
}

/// osmem-server (an OpenSearch imitation by others, strict about Content-Type, final newlines
/// and `require_data_stream`) takes our bulk bodies as they are, to the default target: the
/// plugin sees OpenSearch in `GET /` and leaves `require_data_stream` out. Every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osmem_server_accepts_every_bulk_body_we_send() {
    let Some(binary) = prereq::osmem_server("osmem_server_accepts_every_bulk_body_we_send") else {
        return;
    };
    let osmem = osmem::Osmem::start(&binary);
    let http = noida::Noida::client_for(osmem.addr());
    let plugin = PluginProcess::start_with_env(&[("ES_HOSTS", &osmem.url())]);
    let ran = run_containers(&plugin, &[], &[(25, 1_000)]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let have = tokio::task::block_in_place(|| http.count("logs-docker-default"));
        if have >= 1_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "osmem-server holds {have} of 1000 documents; plugin log:\n{}",
            plugin.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let docs = tokio::task::block_in_place(|| http.documents("logs-docker-default"));
    let mut mine: Vec<(String, String)> = docs
        .iter()
        .map(|(_, d)| {
            (
                d["@timestamp"].as_str().unwrap_or_default().to_owned(),
                d["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    mine.sort();
    let mine: Vec<String> = mine.into_iter().map(|(_, m)| m).collect();
    assert_eq!(mine, ran[0].1);
    assert!(
        !plugin.output().contains("refused"),
        "osmem-server refused a request"
    );
}

/// Regression: a container restarting at once (its run ends, by StopLogging or EOF, and the next
/// StartLogging comes right away) could have the old run's Stopped reach the destination after
/// the new run's Attach. The destination took the container for stopped, released it once what
/// it had read was shipped, and never shipped the new run's lines (one in three runs of the
/// hostile-input test lost its last line this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_restarting_at_once_ships_every_runs_lines() {
    let server = EsServer::start(ServerOptions::default()).await;
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let id = format!("{:064x}", 0x5eed);
    let url = server.url();
    let opts = [("hosts", url.as_str())];
    let runs = 100;
    for n in 0..runs {
        let mut fifo = EngineFifo::create(plugin.dir.path(), &format!("restart-{n}"));
        assert_eq!(api.start_logging(&fifo.path, &id, &opts).await, "");
        fifo.write_entries(&[line(
            "stdout",
            es_check::T0 + n,
            format!("run {n}").as_bytes(),
        )]);
        if n % 2 == 0 {
            assert_eq!(api.stop_logging(&fifo.path).await, "");
        }
        // Odd runs end by EOF: their end reaches the plugin whenever its task sees it.
        drop(fifo);
    }
    wait_for_docs(&server, runs as usize, Duration::from_secs(60)).await;
    let mut got = messages_of(&server, &id);
    got.sort();
    let mut want: Vec<String> = (0..runs).map(|n| format!("run {n}")).collect();
    want.sort();
    assert_eq!(got, want, "every run's line indexed once");
}

/// No line stored while Elasticsearch is down is lost when ES_HOSTS changes. Regression: the
/// checkpoint was keyed to the ordered host list, so a plugin restarted with a node added to
/// ES_HOSTS found no checkpoint for the new list and started at the store's end: every line stored
/// while Elasticsearch was down was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_es_hosts_keeps_the_unshipped_backlog() {
    let server = EsServer::start(ServerOptions::default()).await;
    // Down while the backlog builds up.
    server.set_faults(Faults {
        drop_connection: true,
        ..Faults::default()
    });
    let mut plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "200ms"),
    ]);
    let id = container_id(16);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo16");
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id, &[]).await,
        ""
    );
    let (entries, messages) = container_lines(3_000, 16, 0);
    fifo.write_entries(&entries[..2_000]);
    let stored = std::time::Instant::now() + Duration::from_secs(10);
    while plugin.client().read_logs(&id, "", "", -1).await.len() < 2_000 {
        assert!(std::time::Instant::now() < stored, "the backlog not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.doc_count(), 0);
    // A node added in front of the old one (a reordered list too): the same cluster.
    let added = free_addr();
    plugin.set_env("ES_HOSTS", &format!("http://{added},{}", server.url()));
    plugin.restart();
    server.set_faults(Faults::default());
    fifo.write_entries(&entries[2_000..]);
    let shipped = wait_for_docs_or_show(&server, 3_000, Duration::from_secs(30), &plugin).await;
    let indexed = messages_of(&server, &id);
    assert!(
        shipped,
        "{} of 3000 lines indexed; the first indexed is {:?}",
        indexed.len(),
        indexed.first()
    );
    assert_eq!(indexed, messages);
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
}
