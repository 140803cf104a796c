//! Elasticsearch failing in the ways tests/shipping.rs does not cover, each while a container
//! keeps logging: down for minutes, a 429 storm, 413 on every large batch, 5xx from one of two
//! live hosts, answers cut mid-body, a mapping conflict on every tenth document, credentials
//! revoked then restored, and a cluster not ready for the documents
//! (item-level 403 privileges or write block, 404 no index, a missing ingest pipeline) until an
//! operator fixes it.
//!
//! Every case checks the same promises: the container is never slowed (every write to its FIFO
//! completes at once while Elasticsearch fails), `docker logs` has every line while it fails,
//! and in the end every line is indexed exactly once (no `_id` twice, no line twice) or, for a
//! permanent rejection only, dead-lettered; nothing is lost. Each prints its figures (sent,
//! stored, indexed, duplicated, dead-lettered, lost; the plugin's RSS and open fds before and
//! after) for the README's Reliability table. Durations scale with ESLP_SOAK (`make soak`).

mod support;
use support::{engine, es_check, es_server, probe, soak};

use std::time::{Duration, Instant};

use engine::*;
use es_check::{dead_lettered, messages_in, rss_and_fds, shown_lines, Fed, Feeder, Tally};
use es_server::{Auth, EsServer, Faults, NotReady, ServerOptions};

/// Lines a second each container writes: steady, well below what the plugin drains.
const PER_SECOND: usize = 500;
/// Every this many lines, one is 40 KB (three fragments), so rejoining is exercised too.
const SPLIT_EVERY: usize = 997;
/// A write to the FIFO that takes longer than this means the container was slowed.
const SLOWED: Duration = Duration::from_secs(1);

/// A plugin, one container logging through a fault, and what it wrote.
struct Run {
    plugin: PluginProcess,
    id: String,
    fed: Fed,
    /// Lines `docker logs` showed while the fault was on.
    stored: usize,
    /// RSS (KiB) and open fds of the plugin once logging started.
    start: (u64, usize),
}

fn plugin_for(hosts: &str, env: &[(&str, &str)]) -> PluginProcess {
    let mut all = vec![
        ("ES_HOSTS", hosts),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "500ms"),
        ("ES_FLUSH_INTERVAL", "100ms"),
    ];
    all.extend_from_slice(env);
    PluginProcess::start_with_env(&all)
}

/// Starts a container logging into `plugin` for `duration` while Elasticsearch fails, then,
/// with the fault still on, checks the container was never slowed and `docker logs` shows
/// every line it wrote.
async fn log_through_fault(
    plugin: PluginProcess,
    config: &[(&str, &str)],
    tag: u8,
    duration: Duration,
) -> Run {
    let api = plugin.client();
    let id = container_id(tag);
    let fifo = EngineFifo::create(plugin.dir.path(), &format!("fifo{tag}"));
    let mut all = vec![("bulk_max_bytes", "256k")];
    all.extend_from_slice(config);
    assert_eq!(api.start_logging(&fifo.path, &id, &all).await, "");
    let start = rss_and_fds(plugin.pid());
    let fed = Feeder::start(fifo, tag, PER_SECOND, duration, SPLIT_EVERY)
        .finish()
        .await;
    assert!(
        fed.slowest_write < SLOWED,
        "the container was slowed: a write to its FIFO took {:?}",
        fed.slowest_write
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let shown = shown_lines(&api.read_logs(&id, "", "", -1).await);
        if shown == fed.messages {
            break shown.len();
        }
        assert!(
            Instant::now() < deadline,
            "docker logs shows {} of the {} lines written while Elasticsearch fails",
            shown.len(),
            fed.messages.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Run {
        plugin,
        id,
        fed,
        stored,
        start,
    }
}

/// Stops the container, waits until every line is indexed in one of `servers` or
/// dead-lettered, and checks none is lost or indexed twice. Prints the case's figures.
async fn settle(case: &str, run: &Run, servers: &[&EsServer]) -> Tally {
    let api = run.plugin.client();
    assert_eq!(api.stop_logging(&run.fed.fifo.path).await, "");
    let sent = &run.fed.messages;
    let deadline = Instant::now() + Duration::from_secs(180);
    let (indexed, dead) = loop {
        let docs: Vec<_> = servers.iter().flat_map(|s| s.docs()).collect();
        let indexed = messages_in(&docs, &run.id);
        let dead = dead_lettered(&run.plugin.state);
        if indexed.len() + dead.len() >= sent.len() {
            break (indexed, dead);
        }
        if Instant::now() >= deadline {
            let log = run.plugin.output();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
            panic!(
                "{case}: {} indexed + {} dead-lettered of {} lines after 180 s; plugin log:\n{}",
                indexed.len(),
                dead.len(),
                sent.len(),
                tail[tail.len().saturating_sub(30)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tally = Tally::count(sent, run.stored, &indexed, &dead);
    let end = rss_and_fds(run.plugin.pid());
    eprintln!(
        "fault case {case}: sent {} stored {} indexed {} duplicated {} dead-lettered {} lost {}; \
         fifo entries {}, slowest write {:?} over {:?}; plugin RSS {} -> {} KiB, fds {} -> {}",
        tally.sent,
        tally.stored,
        tally.indexed,
        tally.duplicated,
        tally.dead_lettered,
        tally.lost,
        run.fed.entries,
        run.fed.slowest_write,
        run.fed.elapsed,
        run.start.0,
        end.0,
        run.start.1,
        end.1
    );
    if tally.duplicated > 0 {
        show_duplicates(servers, &run.id);
    }
    assert_eq!(tally.lost, 0, "{case}: lines lost");
    assert_eq!(tally.duplicated, 0, "{case}: lines indexed twice");
    assert!(
        end.1 <= run.start.1 + 16,
        "{case}: open fds grew from {} to {}",
        run.start.1,
        end.1
    );
    assert!(
        end.0 <= run.start.0 + 64 * 1024,
        "{case}: RSS grew from {} to {} KiB",
        run.start.0,
        end.0
    );
    assert!(
        !run.plugin.output().contains("panicked"),
        "{case}: the plugin panicked"
    );
    tally
}

/// Prints the documents whose message was indexed more than once, for diagnosis.
fn show_duplicates(servers: &[&EsServer], id: &str) {
    let docs: Vec<_> = servers.iter().flat_map(|s| s.docs()).collect();
    let mut by_message: std::collections::HashMap<&str, Vec<&es_server::StoredDoc>> =
        std::collections::HashMap::new();
    for doc in docs.iter().filter(|d| d.source["container"]["id"] == id) {
        let message = doc.source["message"].as_str().unwrap_or_default();
        by_message.entry(message).or_default().push(doc);
    }
    for (message, docs) in by_message.iter().filter(|(_, d)| d.len() > 1).take(10) {
        let ids: Vec<(&str, &serde_json::Value)> = docs
            .iter()
            .map(|d| (d.id.as_str(), &d.source["@timestamp"]))
            .collect();
        eprintln!(
            "indexed {} times: {:.60} ({} bytes): {ids:?}",
            docs.len(),
            message,
            message.len()
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Nothing listens where Elasticsearch should be (connections refused) for minutes in a soak,
/// 20 s in CI, while the container logs; then it comes up there and gets everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_down_for_minutes_then_back_loses_nothing() {
    let port = free_port();
    let plugin = plugin_for(&format!("http://127.0.0.1:{port}"), &[]);
    let run = log_through_fault(plugin, &[], 31, soak::duration(Duration::from_secs(20))).await;
    let server = EsServer::start(ServerOptions {
        port,
        ..ServerOptions::default()
    })
    .await;
    let tally = settle("elasticsearch down, then back", &run, &[&server]).await;
    assert_eq!(tally.dead_lettered, 0);
}

/// Every `_bulk` answered 429 with no Retry-After for a long stretch: the plugin backs off on
/// its own (a bounded request rate, not a tight loop), then delivers everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_without_retry_after_is_waited_out() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        whole_status: Some(429),
        ..Faults::default()
    });
    let plugin = plugin_for(&server.url(), &[]);
    let storm = soak::duration(Duration::from_secs(8));
    let run = log_through_fault(plugin, &[], 32, storm).await;
    let stats = server.stats();
    let rate = stats.bulk_requests as f64 / storm.as_secs_f64();
    eprintln!(
        "429 storm: {} requests answered 429 over {storm:?} ({rate:.1}/s)",
        stats.bulk_requests
    );
    assert!(stats.whole_faults.get(&429).copied().unwrap_or(0) > 0);
    // Two workers, backoff capped at 500 ms: a few requests a second, not thousands.
    assert!(
        rate < 20.0,
        "{rate:.1} requests a second during a 429 storm"
    );
    server.set_faults(Faults::default());
    let tally = settle("429 storm", &run, &[&server]).await;
    assert_eq!(tally.dead_lettered, 0);
}

/// The server answers 413 to every body over 4 KiB (its http.max_content_length): every batch
/// is split, down to single documents; a document alone over the limit (the 40 KB lines) is
/// the only thing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_over_the_size_limit_is_split_down_to_single_documents() {
    let server = EsServer::start(ServerOptions {
        max_content_length: 4096,
        ..ServerOptions::default()
    })
    .await;
    let plugin = plugin_for(&server.url(), &[]);
    let run = log_through_fault(plugin, &[], 33, soak::duration(Duration::from_secs(6))).await;
    let too_large: Vec<String> = run
        .fed
        .messages
        .iter()
        .filter(|m| m.len() > 4096)
        .cloned()
        .collect();
    let tally = settle("413 on every batch over 4 KiB", &run, &[&server]).await;
    let stats = server.stats();
    eprintln!(
        "413 case: {} requests, {} refused 413, single-document requests {}",
        stats.bulk_requests,
        stats.bulk_refused.get(&413).copied().unwrap_or(0),
        stats.bulk_sizes.iter().filter(|&&n| n == 1).count()
    );
    assert!(stats.bulk_refused.get(&413).copied().unwrap_or(0) > 0);
    assert!(
        stats.bulk_sizes.contains(&1),
        "never split down to one document"
    );
    assert!(!too_large.is_empty());
    assert_eq!(tally.dead_lettered, too_large.len());
}

/// Two live hosts, one answering every `_bulk` with 503: everything lands once on the other,
/// nothing on the failing one, nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundreds_from_one_of_two_live_hosts_land_everything_once_on_the_other() {
    let failing = EsServer::start(ServerOptions::default()).await;
    failing.set_faults(Faults {
        whole_status: Some(503),
        ..Faults::default()
    });
    let healthy = EsServer::start(ServerOptions::default()).await;
    let plugin = plugin_for(&format!("{},{}", failing.url(), healthy.url()), &[]);
    let run = log_through_fault(plugin, &[], 34, soak::duration(Duration::from_secs(6))).await;
    let tally = settle("503 from one of two hosts", &run, &[&failing, &healthy]).await;
    let answered = failing.stats().whole_faults.get(&503).copied().unwrap_or(0);
    eprintln!(
        "503 case: the failing host answered {answered} requests with 503, the healthy one {}",
        healthy.stats().bulk_requests
    );
    assert!(answered > 0, "the failing host was never tried");
    assert_eq!(failing.doc_count(), 0);
    assert_eq!(tally.indexed, tally.sent);
    assert_eq!(tally.dead_lettered, 0);
}

/// Answers cut halfway through their body (headers sent, documents stored): the plugin cannot
/// know what was written, sends again, and the `_id`s make the resend harmless (409s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cut_mid_body_are_retried_without_duplicate_ids() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        cut_answer: true,
        ..Faults::default()
    });
    let plugin = plugin_for(&server.url(), &[]);
    let run = log_through_fault(plugin, &[], 35, soak::duration(Duration::from_secs(6))).await;
    assert!(server.stats().cut_answers > 0);
    server.set_faults(Faults::default());
    let tally = settle("answers cut mid-body", &run, &[&server]).await;
    let stats = server.stats();
    eprintln!(
        "cut case: {} answers cut, {} resent documents answered 409",
        stats.cut_answers, stats.conflicts_409
    );
    assert!(stats.conflicts_409 > 0, "nothing was resent after a cut");
    assert_eq!(tally.dead_lettered, 0);
}

/// Every tenth document refused with a mapping conflict (400, `document_parsing_exception`, as
/// Elasticsearch 8 names it; 7.x said `mapper_parsing_exception`): exactly those are
/// dead-lettered, with the reason, and the other nine in ten indexed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_conflict_on_every_tenth_document_dead_letters_exactly_those() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        item_status_every: Some((400, 10)),
        ..Faults::default()
    });
    let plugin = plugin_for(&server.url(), &[]);
    let run = log_through_fault(plugin, &[], 36, soak::duration(Duration::from_secs(6))).await;
    let tally = settle("mapping conflict on every tenth document", &run, &[&server]).await;
    let stats = server.stats();
    let refused = stats.rejected_by_fault.get(&400).copied().unwrap_or(0);
    assert_eq!(stats.items_seen, tally.sent, "a document was sent twice");
    assert_eq!(refused, tally.sent / 10);
    assert_eq!(tally.dead_lettered, refused);
    assert_eq!(tally.indexed, tally.sent - refused);
    let records = std::fs::read_dir(run.plugin.state.join("dead-letter"))
        .expect("a dead-letter folder")
        .flatten()
        .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
        .collect::<String>();
    assert_eq!(
        records
            .lines()
            .filter(|r| r.contains("document_parsing_exception"))
            .count(),
        refused,
        "every dead-letter record gives Elasticsearch's reason"
    );
}

/// The cluster stops accepting our credentials (every request 401, as when the API key or the
/// user's password is revoked), then accepts them again: nothing lost, nothing dead-lettered,
/// the refusal logged loudly without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_revoked_then_restored_lose_nothing() {
    const PASSWORD: &str = "revoked-then-restored-7f3a";
    let server = EsServer::start(ServerOptions {
        auth: Some(Auth::Basic {
            user: "elastic".into(),
            password: PASSWORD.into(),
        }),
        ..ServerOptions::default()
    })
    .await;
    server.set_faults(Faults {
        whole_status: Some(401),
        ..Faults::default()
    });
    let plugin = plugin_for(
        &server.url(),
        &[("ES_USER", "elastic"), ("ES_PASSWORD", PASSWORD)],
    );
    let run = log_through_fault(plugin, &[], 37, soak::duration(Duration::from_secs(8))).await;
    assert!(server.stats().whole_faults.get(&401).copied().unwrap_or(0) > 0);
    let log = run.plugin.output();
    assert!(
        log.contains("refused our credentials"),
        "a 401 must be reported loudly"
    );
    server.set_faults(Faults::default());
    let tally = settle("credentials revoked, then restored", &run, &[&server]).await;
    assert_eq!(tally.dead_lettered, 0);
    assert_eq!(
        server.stats().auth_failures,
        0,
        "the credentials sent were right"
    );
    assert!(
        !log.contains(PASSWORD),
        "the password reached the plugin log"
    );
}

/// The cluster answers every document with `not_ready` (an item-level answer that means "the
/// destination is not ready", not "this document is bad") while a container logs for a few
/// seconds; then an operator fixes the cluster. Every line must be held, retried, and indexed
/// once; none dead-lettered. The refusal is logged at ERROR once for the episode (not once per
/// retry), naming the index, the status and Elasticsearch's reason, and counted in the metrics.
async fn not_ready_then_fixed(
    case: &str,
    not_ready: NotReady,
    config: &[(&str, &str)],
    tag: u8,
    expected: &str,
) {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        item_not_ready: Some(not_ready),
        ..Faults::default()
    });
    let metrics = probe::free_addr();
    let plugin = plugin_for(&server.url(), &[("METRICS_ADDR", metrics.as_str())]);
    let run = log_through_fault(plugin, config, tag, soak::duration(Duration::from_secs(4))).await;
    let refused: usize = server.stats().rejected_by_fault.values().sum();
    assert!(refused > 0, "{case}: the fault was never answered");
    assert_eq!(server.doc_count(), 0, "{case}: a document went in");
    // Held, not dead-lettered, before the cluster is fixed.
    assert_eq!(
        dead_lettered(&run.plugin.state).len(),
        0,
        "{case}: dead-lettered while the cluster was not ready"
    );
    let during = probe::fetch_metrics(&metrics);
    server.set_faults(Faults::default());
    let tally = settle(case, &run, &[&server]).await;
    eprintln!("{case}: {refused} item answers refused while not ready");
    assert_eq!(tally.dead_lettered, 0, "{case}: documents dead-lettered");
    assert_eq!(tally.indexed, tally.sent, "{case}: not every line indexed");
    let log = run.plugin.output();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(expected))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{case}: one ERROR for the episode, not one per retry:\n{}",
        errors.join("\n")
    );
    eprintln!("{case}: the ERROR: {}", errors[0]);
    assert!(
        errors[0].contains("logs-docker-default"),
        "{case}: the ERROR names the index: {}",
        errors[0]
    );
    assert!(
        probe::destination_metric(&during, "eslp_documents_held_total") > 0,
        "{case}: held documents not counted:\n{during}"
    );
    assert_eq!(
        probe::destination_metric(&during, "eslp_destination_not_ready"),
        1,
        "{case}: the destination is not shown as not ready:\n{during}"
    );
    let after = probe::fetch_metrics(&metrics);
    assert_eq!(
        probe::destination_metric(&after, "eslp_destination_not_ready"),
        0,
        "{case}: still shown as not ready after the fix:\n{after}"
    );
}

/// Regression: an item-level 403 `security_exception` (the role or API key lacks `create_doc`,
/// the commonest first-deploy mistake) dead-lettered every document and moved the checkpoint
/// past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_level_403_is_held_and_retried_not_dead_lettered() {
    not_ready_then_fixed(
        "item 403 security_exception",
        NotReady::Privileges,
        &[],
        40,
        "security_exception",
    )
    .await;
}

/// Regression: an item-level 403 `cluster_block_exception` (a write block on the index) was
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_block_is_held_and_retried_not_dead_lettered() {
    not_ready_then_fixed(
        "item 403 cluster_block_exception",
        NotReady::WriteBlock,
        &[],
        41,
        "cluster_block_exception",
    )
    .await;
}

/// Regression: an item-level 404 `index_not_found_exception` (auto-create off, the index not
/// made yet) was dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_level_404_index_not_found_is_held_and_retried_not_dead_lettered() {
    not_ready_then_fixed(
        "item 404 index_not_found_exception",
        NotReady::NoIndex,
        &[],
        42,
        "index_not_found_exception",
    )
    .await;
}

/// Regression: a `pipeline` log-opt naming a pipeline that does not exist (yet) dead-lettered
/// every document (item 400 `illegal_argument_exception`, "pipeline with id [..] does not
/// exist").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ingest_pipeline_is_held_and_retried_not_dead_lettered() {
    not_ready_then_fixed(
        "item 400 missing pipeline",
        NotReady::NoPipeline,
        &[("pipeline", "docker-logs")],
        43,
        "pipeline with id [docker-logs] does not exist",
    )
    .await;
}

/// Regression: the dead-letter file was renamed over its previous copy at 64 MiB, unsynced,
/// and nothing said so. Every document refused for good (a mapping conflict) with
/// DEAD_LETTER_MAX_SIZE=64k: the file stops at its budget and keeps what it has, and every
/// refused document that does not fit is counted (`eslp_dead_letter_lost_total`) and logged at
/// ERROR with a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_file_is_a_counted_and_logged_loss_never_a_quiet_one() {
    const BUDGET: u64 = 64 << 10;
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        item_status_every: Some((400, 1)),
        ..Faults::default()
    });
    let metrics = probe::free_addr();
    let plugin = plugin_for(
        &server.url(),
        &[
            ("METRICS_ADDR", metrics.as_str()),
            ("DEAD_LETTER_MAX_SIZE", "64k"),
        ],
    );
    let run = log_through_fault(plugin, &[], 44, soak::duration(Duration::from_secs(2))).await;
    let api = run.plugin.client();
    assert_eq!(api.stop_logging(&run.fed.fifo.path).await, "");
    let sent = run.fed.messages.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (kept, lost) = loop {
        let text = probe::fetch_metrics(&metrics);
        let kept = probe::destination_metric(&text, "eslp_documents_dead_lettered_total");
        let lost = probe::destination_metric(&text, "eslp_dead_letter_lost_total");
        if kept + lost >= sent {
            break (kept, lost);
        }
        assert!(
            Instant::now() < deadline,
            "{kept} dead-lettered + {lost} lost of {sent} refused:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let in_file = dead_lettered(&run.plugin.state);
    let files: Vec<_> = std::fs::read_dir(run.plugin.state.join("dead-letter"))
        .expect("a dead-letter folder")
        .flatten()
        .map(|f| (f.file_name(), f.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    eprintln!(
        "full dead-letter file: sent {sent} refused {sent} dead-lettered {kept} lost {lost}; files {files:?}"
    );
    assert_eq!(files.len(), 1, "one file, never rotated: {files:?}");
    assert!(
        files[0].1 <= BUDGET,
        "the file outgrew its budget: {files:?}"
    );
    assert_eq!(
        in_file.len() as u64,
        kept,
        "the file holds what was counted as kept"
    );
    assert_eq!(kept + lost, sent);
    assert!(lost > 0, "the budget never filled");
    // Whole records of lines that were sent, each once.
    let unique: std::collections::HashSet<&String> = in_file.iter().collect();
    assert_eq!(unique.len(), in_file.len(), "a line dead-lettered twice");
    assert!(in_file.iter().all(|m| run.fed.messages.contains(m)));
    let log = run.plugin.output();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("DEAD_LETTER_MAX_SIZE"))
        .collect();
    assert!(!errors.is_empty(), "the loss was not logged at ERROR");
    let logged: u64 = errors
        .iter()
        .filter_map(|l| {
            l.split("lost=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(logged, lost, "the ERROR lines count every lost document");
}
