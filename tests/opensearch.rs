//! The shipping promises against a real OpenSearch 2.19.6 (tests/support/opensearch.rs), not an
//! imitation: one single node for the main paths and the real rejections, a node with a tiny
//! write queue for real 429s, and a three-node cluster for failover; and the main path against
//! a real Elasticsearch 8.19.21 node (core APIs only).
//!
//! What the real server decides here, and no imitation did: the data stream and its backing
//! indices (from a composable template with `data_stream`, which OpenSearch does not ship for
//! `logs-*-*`), `create` with our ids answered 409 on replay, gzip bodies, mapping conflicts from
//! a real mapping, `index.blocks.write`, a missing ingest pipeline, a write thread pool that
//! rejects, a data stream rollover, nodes that die and a cluster manager that is lost.
//!
//! Each scenario ships through the real plugin binary (support/engine.rs plays the engine) and
//! checks the index with `_count` after `_refresh` and a scroll over every `_id`.

mod support;
use support::{engine, es_check, fake_engine, opensearch, prereq, probe};

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use engine::*;
use es_check::container_lines;
use opensearch::{Cluster, Engine, Node};
use probe::{destination_metric, fetch_metrics, free_addr};

/// `_count` of `index` after `_refresh` (0 while it does not exist).
fn count(node: &Node, index: &str) -> usize {
    node.client().count(index)
}

/// Waits until `index` holds `want` documents; on a timeout, fails with the plugin's log.
fn wait_count(node: &Node, index: &str, want: usize, limit: Duration, plugin: &PluginProcess) {
    let deadline = Instant::now() + limit;
    loop {
        let have = count(node, index);
        if have >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{index} holds {have} of {want} documents after {limit:?}; plugin log ends:\n{}",
            log_tail(plugin, 40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn log_tail(plugin: &PluginProcess, lines: usize) -> String {
    let out = plugin.output();
    let kept: Vec<&str> = out.lines().filter(|l| !l.contains("DEBUG")).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// Every line once: as many documents as lines, no `_id` twice, the messages those written.
fn assert_exactly_once(node: &Node, index: &str, messages: &[String]) {
    let docs = node.scan(index);
    let ids: HashSet<&str> = docs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), docs.len(), "{index}: an _id indexed twice");
    let mut got: Vec<&str> = docs.iter().map(|(_, m)| m.as_str()).collect();
    let mut want: Vec<&str> = messages.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got.len(), want.len(), "{index}: documents vs lines written");
    assert!(
        got == want,
        "{index}: the indexed messages differ from the lines written"
    );
    assert_eq!(count(node, index), messages.len(), "{index}: _count");
}

/// Moves every shipping checkpoint of a stopped plugin back to the start of its segment, as a
/// crash before the first checkpoint write would leave it: the next start ships it all again.
fn rewind_checkpoints(state: &std::path::Path) {
    let dir = state.join("checkpoints");
    let mut rewound = 0;
    for file in std::fs::read_dir(&dir)
        .expect("checkpoints folder")
        .flatten()
    {
        let text = std::fs::read_to_string(file.path()).expect("a checkpoint");
        let mut checkpoint: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        checkpoint["offset"] = 0.into();
        std::fs::write(file.path(), checkpoint.to_string()).expect("rewrite a checkpoint");
        rewound += 1;
    }
    assert!(rewound > 0, "no checkpoint in {}", dir.display());
}

/// A crash before any checkpoint moved, then a restart: the plugin ships its whole store again
/// and the real server answers every one of the `lines` documents 409; nothing is indexed twice.
fn replay_is_answered_409(
    node: &Node,
    plugin: &mut PluginProcess,
    metrics: &str,
    index: &str,
    lines: usize,
) {
    plugin.kill();
    rewind_checkpoints(&plugin.state);
    plugin.restart();
    wait_metric(
        metrics,
        "eslp_documents_duplicate_total",
        lines as u64,
        plugin,
    );
    assert_eq!(count(node, index), lines, "a replayed line indexed twice");
}

/// A container of the fake engine: its FIFO held open as the engine holds it.
struct Container {
    fifo: EngineFifo,
    id: String,
}

async fn start_container(plugin: &PluginProcess, tag: u8, opts: &[(&str, &str)]) -> Container {
    let fifo = EngineFifo::create(plugin.dir.path(), &format!("fifo-{tag}"));
    let id = container_id(tag);
    let err = plugin.client().start_logging(&fifo.path, &id, opts).await;
    assert_eq!(err, "", "StartLogging of container {tag}");
    Container { fifo, id }
}

fn plugin_for(url: &str, metrics: &str, extra: &[(&str, &str)]) -> PluginProcess {
    let mut env = vec![
        ("ES_HOSTS", url),
        ("ES_FLUSH_INTERVAL", "200ms"),
        ("ES_BACKOFF_MAX", "2s"),
        ("METRICS_ADDR", metrics),
    ];
    env.extend_from_slice(extra);
    PluginProcess::start_with_env(&env)
}

/// A counter of the plugin's own process (it starts at 0 with each start), summed over its
/// destinations.
fn metric_value(metrics: &str, name: &str) -> u64 {
    // A plugin just restarted may not listen yet: nothing counted so far.
    if std::net::TcpStream::connect(metrics).is_err() {
        return 0;
    }
    destination_metric(&fetch_metrics(metrics), name)
}

fn wait_metric(metrics: &str, name: &str, at_least: u64, plugin: &PluginProcess) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let value = metric_value(metrics, name);
        if value >= at_least {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {value}, waited for {at_least}; plugin log ends:\n{}",
            log_tail(plugin, 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first record of the plugin's dead-letter file.
fn first_dead_letter(state: &std::path::Path) -> serde_json::Value {
    let file = std::fs::read_dir(state.join("dead-letter"))
        .expect("dead-letter folder")
        .flatten()
        .next()
        .expect("a dead-letter file");
    let text = std::fs::read_to_string(file.path()).expect("dead-letter file");
    serde_json::from_str(text.lines().next().expect("a record")).expect("JSON record")
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The main paths on one real node, one after another (a JVM start costs ~10 s of CPU):
/// 100k lines into the data stream default, replay answered 409, kill -9 mid-shipping, and the
/// real rejections. Each scenario has its own target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_opensearch_single_node() {
    if !prereq::java_and_maven("real_opensearch_single_node") {
        return;
    }
    let home = tempfile::tempdir().expect("node home");
    let node = blocking(|| Node::start_single(&home.path().join("single"), &[]));
    blocking(|| node.install_logs_template(0));

    // OS_ONLY=<part of a name> runs only the scenarios it names (local debugging).
    let only = std::env::var("OS_ONLY").unwrap_or_default();
    let run = |name: &str| {
        let selected = name.contains(only.as_str());
        if selected {
            println!("--- {name}");
        }
        selected
    };
    if run("a_hundred_thousand_lines_land_once_in_the_data_stream_and_a_replay_is_answered_409") {
        a_hundred_thousand_lines_land_once_in_the_data_stream_and_a_replay_is_answered_409(&node)
            .await;
    }
    if run("kill_9_mid_shipping_indexes_every_line_exactly_once") {
        kill_9_mid_shipping_indexes_every_line_exactly_once(&node).await;
    }
    if run("a_mapping_conflict_is_dead_lettered_with_the_real_reason") {
        a_mapping_conflict_is_dead_lettered_with_the_real_reason(&node).await;
    }
    if run("a_write_block_holds_the_lines_until_it_is_lifted") {
        a_write_block_holds_the_lines_until_it_is_lifted(&node).await;
    }
    if run("a_missing_pipeline_holds_the_lines_until_it_exists") {
        a_missing_pipeline_holds_the_lines_until_it_exists(&node).await;
    }
    if run("a_rollover_during_a_replay_duplicates_what_the_replay_repeats") {
        a_rollover_during_a_replay_duplicates_what_the_replay_repeats(&node).await;
    }
    if run("json_lines_and_merged_traces_land_and_a_key_conflict_is_dead_lettered") {
        json_lines_and_merged_traces_land_and_a_key_conflict_is_dead_lettered(&node).await;
    }
    if run("engine_events_land_in_their_data_stream") {
        engine_events_land_in_their_data_stream(&node).await;
    }
}

async fn a_hundred_thousand_lines_land_once_in_the_data_stream_and_a_replay_is_answered_409(
    node: &Node,
) {
    const LINES: usize = 100_000;
    let index = "logs-docker-default";
    let metrics = free_addr();
    let mut plugin = plugin_for(&node.url(), &metrics, &[]);
    let mut container = start_container(&plugin, 1, &[]).await;
    // Every 997th line is 40 KB in 16 KiB fragments: rejoined into one document.
    let (entries, messages) = container_lines(LINES, 1, 997);
    blocking(|| {
        container.fifo.write_entries(&entries);
        wait_count(node, index, LINES, Duration::from_secs(300), &plugin);
        assert_exactly_once(node, index, &messages);
    });

    // A data stream from the template, and ECS documents in it.
    let (status, body) = node
        .client()
        .request("GET", &format!("/_data_stream/{index}"), "");
    assert_eq!(status, 200, "{index} is a data stream: {body}");
    assert!(body.contains(".ds-logs-docker-default-000001"), "{body}");
    let (status, body) = node.client().request(
        "POST",
        &format!("/{index}/_search"),
        r#"{"size":1,"query":{"match_phrase":{"message":"container 1 line 4"}}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("search answer");
    let doc = &answer["hits"]["hits"][0]["_source"];
    assert_eq!(doc["message"], "container 1 line 4", "{doc}");
    assert_eq!(doc["container"]["id"], container.id.as_str());
    assert_eq!(doc["stream"], "stdout");
    assert_eq!(doc["agent"]["type"], "es-logging-plugin");
    assert_eq!(doc["data_stream"]["type"], "logs");
    assert_eq!(doc["data_stream"]["dataset"], "docker");
    assert_eq!(doc["data_stream"]["namespace"], "default");
    assert!(doc["ecs"]["version"].is_string(), "{doc}");
    assert!(
        doc["@timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!(
                ".{:09}Z",
                (es_check::T0 + 4_000 + 1) % 1_000_000_000
            ))),
        "nanosecond @timestamp: {doc}"
    );
    // The default compression level gzips every bulk body, and the real server took them: what
    // was sent is far below the plain bodies, whose action line and container part alone are
    // over 250 bytes a document.
    let plain_at_least = LINES * 250 + messages.iter().map(String::len).sum::<usize>();
    let sent = metric_value(&metrics, "eslp_bulk_bytes_total") as usize;
    assert!(
        sent > 0 && sent < plain_at_least / 3,
        "{sent} bytes sent for at least {plain_at_least} bytes of plain bodies: not compressed"
    );

    // Replay: the checkpoint rewound, the plugin ships the whole store again; the real server
    // answers every `create` 409 and nothing is indexed twice.
    blocking(|| replay_is_answered_409(node, &mut plugin, &metrics, index, LINES));
    assert_eq!(plugin.client().stop_logging(&container.fifo.path).await, "");
}

async fn kill_9_mid_shipping_indexes_every_line_exactly_once(node: &Node) {
    const LINES: usize = 30_000;
    let index = "logs-docker-crash";
    let metrics = free_addr();
    let mut plugin = plugin_for(&node.url(), &metrics, &[("ES_BULK_MAX_BYTES", "64k")]);
    let opts = [("index", index)];
    let container = start_container(&plugin, 2, &opts).await;
    let (entries, messages) = container_lines(LINES, 2, 499);
    let mut fifo = container.fifo;
    // The writer goes on across the kills: the engine keeps writing into the pipe.
    let writer = std::thread::spawn(move || {
        for chunk in entries.chunks(500) {
            fifo.write_entries(chunk);
            std::thread::sleep(Duration::from_millis(5));
        }
        fifo
    });
    let mut kills = 0;
    blocking(|| {
        let mut last = 0;
        while kills < 3 {
            let have = count(node, index);
            if have > last + 2_000 && have < LINES {
                plugin.kill();
                kills += 1;
                std::thread::sleep(Duration::from_millis(200));
                plugin.restart();
                last = have;
            }
            if have >= LINES {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_count(node, index, LINES, Duration::from_secs(300), &plugin);
        // Let the last checkpointed replay finish, then count once more.
        std::thread::sleep(Duration::from_secs(2));
        assert_exactly_once(node, index, &messages);
    });
    assert!(kills > 0, "the plugin was never killed mid-shipping");
    println!("kill -9 mid-shipping: {kills} kills, {LINES} lines indexed exactly once");
    let fifo = writer.join().expect("writer");
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
}

async fn a_mapping_conflict_is_dead_lettered_with_the_real_reason(node: &Node) {
    // A plain index whose real mapping takes numbers only in `message`.
    let index = "eslp-conflict";
    let (status, body) = node.client().request(
        "PUT",
        &format!("/{index}"),
        r#"{"settings":{"number_of_replicas":0},"mappings":{"properties":{"message":{"type":"long"}}}}"#,
    );
    assert_eq!(status, 200, "create {index}: {body}");
    let metrics = free_addr();
    let plugin = plugin_for(&node.url(), &metrics, &[]);
    let mut container = start_container(&plugin, 3, &[("index", index)]).await;
    let texts = ["1", "2", "three", "4", "five", "6"];
    let entries: Vec<LogEntry> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| line("stdout", es_check::T0 + i as i64, t.as_bytes()))
        .collect();
    container.fifo.write_entries(&entries);
    blocking(|| {
        wait_count(node, index, 4, Duration::from_secs(60), &plugin);
        wait_metric(&metrics, "eslp_documents_dead_lettered_total", 2, &plugin);
    });
    let mut dead = es_check::dead_lettered(&plugin.state);
    dead.sort();
    assert_eq!(dead, ["five", "three"]);
    let record = first_dead_letter(&plugin.state);
    assert_eq!(record["status"], 400, "{record}");
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("mapper_parsing_exception") && reason.contains("[message]"),
        "the real reason: {reason}"
    );
    assert_eq!(count(node, index), 4);
}

/// JSON lines decoded into fields and a Java trace merged land in a real data stream; a line
/// whose key conflicts with the mapping an earlier line made (`json.user` text, then an object)
/// is refused by the real mapper and dead-lettered with its reason, not retried forever, and the
/// lines after it land.
async fn json_lines_and_merged_traces_land_and_a_key_conflict_is_dead_lettered(node: &Node) {
    let index = "logs-jsonapp-default";
    let metrics = free_addr();
    let plugin = plugin_for(&node.url(), &metrics, &[]);
    let opts = [
        ("index", index),
        ("json", "true"),
        ("json.ecs", "true"),
        ("multiline.preset", "java"),
        ("multiline.timeout", "1s"),
    ];
    let mut container = start_container(&plugin, 4, &opts).await;
    let texts = [
        r#"{"level":"info","msg":"first","user":"alice"}"#,
        r#"{"level":"warn","msg":"second","user":{"id":7}}"#,
        "java.lang.IllegalStateException: boom",
        "\tat shop.Cart.add(Cart.java:12)",
        "Caused by: java.io.IOException: disk",
        r#"{"level":"info","msg":"third","user":"bob"}"#,
    ];
    let entries: Vec<LogEntry> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| line("stdout", es_check::T0 + i as i64, t.as_bytes()))
        .collect();
    container.fifo.write_entries(&entries);
    blocking(|| {
        wait_count(node, index, 3, Duration::from_secs(60), &plugin);
        wait_metric(&metrics, "eslp_documents_dead_lettered_total", 1, &plugin);
    });
    assert_eq!(es_check::dead_lettered(&plugin.state), ["second"]);
    let record = first_dead_letter(&plugin.state);
    assert_eq!(record["status"], 400, "{record}");
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("mapper_parsing_exception") && reason.contains("json.user"),
        "the real reason: {reason}"
    );
    let mut messages: Vec<String> = node.scan(index).into_iter().map(|(_, m)| m).collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            "first",
            "java.lang.IllegalStateException: boom\n\tat shop.Cart.add(Cart.java:12)\nCaused by: java.io.IOException: disk",
            "third"
        ]
    );
    let client = node.client();
    let (status, body) = client.request(
        "POST",
        &format!("/{index}/_search"),
        r#"{"query":{"bool":{"filter":[{"term":{"log.level":"info"}},{"term":{"json.user":"bob"}}]}}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).expect("search answer");
    assert_eq!(
        found["hits"]["total"]["value"], 1,
        "fields searchable: {body}"
    );
    assert_eq!(
        metric_value(&metrics, "eslp_documents_dead_lettered_total"),
        1
    );
}

async fn a_write_block_holds_the_lines_until_it_is_lifted(node: &Node) {
    let index = "logs-docker-blocked";
    let metrics = free_addr();
    let plugin = plugin_for(&node.url(), &metrics, &[]);
    let mut container = start_container(&plugin, 4, &[("index", index)]).await;
    container
        .fifo
        .write_entries(&[line("stdout", es_check::T0, b"before the block")]);
    blocking(|| wait_count(node, index, 1, Duration::from_secs(60), &plugin));
    let set_block = |on: bool| {
        let (status, body) = node.client().request(
            "PUT",
            &format!("/{index}/_settings"),
            &format!(r#"{{"index.blocks.write":{on}}}"#),
        );
        assert_eq!(status, 200, "index.blocks.write={on}: {body}");
    };
    blocking(|| set_block(true));
    let (entries, mut messages) = container_lines(500, 4, 0);
    container.fifo.write_entries(&entries);
    blocking(|| {
        // Real item-level 403 cluster_block_exception: held, not dead-lettered.
        wait_metric(&metrics, "eslp_documents_held_total", 1, &plugin);
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(count(node, index), 1, "indexed through a write block");
        assert!(es_check::dead_lettered(&plugin.state).is_empty());
        assert!(
            plugin.output().contains("cluster_block_exception"),
            "the ERROR names the real reason"
        );
        set_block(false);
        wait_count(node, index, 501, Duration::from_secs(120), &plugin);
        messages.push("before the block".to_owned());
        assert_exactly_once(node, index, &messages);
    });
    assert!(es_check::dead_lettered(&plugin.state).is_empty());
}

async fn a_missing_pipeline_holds_the_lines_until_it_exists(node: &Node) {
    let index = "logs-docker-piped";
    let pipeline = "eslp-tagging";
    let metrics = free_addr();
    let plugin = plugin_for(&node.url(), &metrics, &[]);
    let opts = [("index", index), ("pipeline", pipeline)];
    let mut container = start_container(&plugin, 5, &opts).await;
    let (entries, messages) = container_lines(200, 5, 0);
    container.fifo.write_entries(&entries);
    blocking(|| {
        // Real item-level 400 "pipeline with id [..] does not exist": held, not dead-lettered.
        wait_metric(&metrics, "eslp_documents_held_total", 1, &plugin);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(count(node, index), 0, "indexed without its pipeline");
        assert!(es_check::dead_lettered(&plugin.state).is_empty());
        let (status, body) = node.client().request(
            "PUT",
            &format!("/_ingest/pipeline/{pipeline}"),
            r#"{"processors":[{"set":{"field":"labels.tagged","value":"yes"}}]}"#,
        );
        assert_eq!(status, 200, "create the pipeline: {body}");
        wait_count(node, index, 200, Duration::from_secs(120), &plugin);
        assert_exactly_once(node, index, &messages);
        let (status, body) = node.client().request(
            "POST",
            &format!("/{index}/_count"),
            r#"{"query":{"term":{"labels.tagged":"yes"}}}"#,
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(r#""count":200"#),
            "every line through the pipeline: {body}"
        );
    });
    assert!(es_check::dead_lettered(&plugin.state).is_empty());
}

/// The README's caveat, measured: ids are unique per backing index, so a replay after a
/// rollover indexes the replayed lines again, into the new generation.
async fn a_rollover_during_a_replay_duplicates_what_the_replay_repeats(node: &Node) {
    const LINES: usize = 1_000;
    let index = "logs-docker-rolled";
    let metrics = free_addr();
    let mut plugin = plugin_for(&node.url(), &metrics, &[]);
    let container = start_container(&plugin, 6, &[("index", index)]).await;
    let (entries, messages) = container_lines(LINES, 6, 0);
    let mut fifo = container.fifo;
    fifo.write_entries(&entries);
    blocking(|| wait_count(node, index, LINES, Duration::from_secs(120), &plugin));
    // A crash before any checkpoint moved (the worst case: the whole store is replayed), with
    // a rollover before the restart.
    plugin.kill();
    rewind_checkpoints(&plugin.state);
    let (status, body) = blocking(|| {
        node.client()
            .request("POST", &format!("/{index}/_rollover"), "")
    });
    assert_eq!(status, 200, "rollover: {body}");
    plugin.restart();
    blocking(|| {
        wait_count(node, index, 2 * LINES, Duration::from_secs(120), &plugin);
        std::thread::sleep(Duration::from_secs(1));
    });
    let docs = blocking(|| node.scan(index));
    let distinct: BTreeSet<&str> = docs.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(distinct.len(), messages.len(), "every line there");
    let duplicates = docs.len() - distinct.len();
    println!(
        "rollover during a replay of {LINES} lines: {duplicates} duplicates ({} documents)",
        docs.len()
    );
    assert_eq!(
        duplicates, LINES,
        "every replayed line of the old generation is indexed again in the new one"
    );
    assert_eq!(
        metric_value(&metrics, "eslp_documents_duplicate_total"),
        0,
        "no 409: the new generation has none of the ids"
    );
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
}

async fn engine_events_land_in_their_data_stream(node: &Node) {
    use fake_engine::{FakeEngine, FakeEvent};
    const WEB: &str = "4f2a6ec7c1d3b0b5e1f6a9e1f2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0";
    let index = "logs-docker.events-default";
    let dir = tempfile::tempdir().expect("engine dir");
    let socket = dir.path().join("engine.sock");
    let engine = FakeEngine::start(&socket);
    let metrics = free_addr();
    let socket_path = socket.to_string_lossy().into_owned();
    let plugin = plugin_for(
        &node.url(),
        &metrics,
        &[("EVENTS", "true"), ("EVENTS_SOCKET", &socket_path)],
    );
    engine.wait_subscribers(1).await;
    engine.push(FakeEvent::container("start", WEB, "web", "nginx:1.27"));
    engine.push(FakeEvent::die(WEB, "web", "nginx:1.27", 137));
    engine.push(FakeEvent::image_pull("registry.example.com/team/app:2.1"));
    blocking(|| wait_count(node, index, 3, Duration::from_secs(60), &plugin));
    let (status, body) = node.client().request(
        "POST",
        &format!("/{index}/_search"),
        r#"{"query":{"term":{"event.action":"die"}}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("search answer");
    let hits = answer["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(hits.len(), 1, "{body}");
    let die = &hits[0]["_source"];
    assert_eq!(die["process"]["exit_code"], 137);
    assert_eq!(die["container"]["name"], "web");
    assert_eq!(die["data_stream"]["dataset"], "docker.events");
    let (status, body) = node
        .client()
        .request("GET", &format!("/_data_stream/{index}"), "");
    assert_eq!(status, 200, "{index} is a data stream: {body}");
    drop(plugin);
}

/// A real Elasticsearch 8.19.21 node (core APIs only: see tests/support/opensearch.rs): the
/// plugin knows it for Elasticsearch by the node's own `X-Elastic-Product` header and sends
/// `require_data_stream`, which it takes; 20k lines land once in the data stream from the
/// template, and the whole store replayed is answered 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_elasticsearch_node_takes_every_line_once_and_answers_a_replay_409() {
    if !prereq::java_and_maven(
        "real_elasticsearch_node_takes_every_line_once_and_answers_a_replay_409",
    ) {
        return;
    }
    const LINES: usize = 20_000;
    let home = tempfile::tempdir().expect("node home");
    let node =
        blocking(|| Node::start_single_of(Engine::Elasticsearch, &home.path().join("es"), &[]));
    blocking(|| node.install_logs_template(0));
    let index = "logs-docker-default";
    let metrics = free_addr();
    let mut plugin = plugin_for(&node.url(), &metrics, &[]);
    let container = start_container(&plugin, 8, &[]).await;
    let (entries, messages) = container_lines(LINES, 8, 997);
    let mut fifo = container.fifo;
    fifo.write_entries(&entries);
    blocking(|| {
        wait_count(&node, index, LINES, Duration::from_secs(300), &plugin);
        assert_exactly_once(&node, index, &messages);
    });
    assert!(
        plugin.output().contains("flavor=Elasticsearch"),
        "the node was taken for Elasticsearch"
    );
    let (status, body) = blocking(|| {
        node.client()
            .request("GET", &format!("/_resolve/index/{index}"), "")
    });
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""data_streams":[{"name":"logs-docker-default""#),
        "{index} is a data stream: {body}"
    );

    blocking(|| replay_is_answered_409(&node, &mut plugin, &metrics, index, LINES));
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
}

/// Real 429s: a write pool of one thread and a queue of one rejects most of several bulks at
/// once, item by item (`rejected_execution_exception`). Every line is retried until indexed,
/// none dead-lettered, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_429s_from_a_full_write_queue_lose_nothing() {
    if !prereq::java_and_maven("real_429s_from_a_full_write_queue_lose_nothing") {
        return;
    }
    const LINES: usize = 20_000;
    let home = tempfile::tempdir().expect("node home");
    let node = blocking(|| {
        Node::start_single(
            &home.path().join("queue"),
            &["thread_pool.write.size=1", "thread_pool.write.queue_size=1"],
        )
    });
    // Eight shards: one bulk becomes eight shard requests competing for the one queue slot.
    let (status, body) = blocking(|| {
        node.client().request(
            "PUT",
            "/_index_template/eslp-logs",
            r#"{"index_patterns":["logs-*-*"],"data_stream":{},"priority":200,"template":{"settings":{"number_of_shards":8,"number_of_replicas":0}}}"#,
        )
    });
    assert_eq!(status, 200, "template: {body}");
    let index = "logs-docker-default";
    let metrics = free_addr();
    let plugin = plugin_for(
        &node.url(),
        &metrics,
        &[("ES_WORKERS", "8"), ("ES_BULK_MAX_BYTES", "64k")],
    );
    let mut all = Vec::new();
    let mut containers = Vec::new();
    for tag in 1..=4u8 {
        let mut container = start_container(&plugin, tag, &[]).await;
        let (entries, messages) = container_lines(LINES / 4, tag, 0);
        container.fifo.write_entries(&entries);
        all.extend(messages);
        containers.push(container);
    }
    blocking(|| {
        wait_count(&node, index, LINES, Duration::from_secs(300), &plugin);
        std::thread::sleep(Duration::from_secs(1));
        assert_exactly_once(&node, index, &all);
    });
    let retried = metric_value(&metrics, "eslp_documents_retried_total");
    println!("real 429s: {retried} documents retried, {LINES} indexed once");
    assert!(
        retried > 0,
        "the write queue never rejected: no real 429 was tested"
    );
    assert!(es_check::dead_lettered(&plugin.state).is_empty());
    for container in &containers {
        assert_eq!(plugin.client().stop_logging(&container.fifo.path).await, "");
    }
}

/// Three nodes, `hosts` naming all three, replicas 1: a node killed mid-bulk, restarted, then
/// the elected cluster manager killed. Shipping goes on through the survivors and every line is
/// indexed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_nodes_and_its_manager_and_every_line_lands_once() {
    if !prereq::java_and_maven(
        "a_three_node_cluster_loses_nodes_and_its_manager_and_every_line_lands_once",
    ) {
        return;
    }
    const LINES: usize = 30_000;
    let dir = tempfile::tempdir().expect("cluster homes");
    let mut cluster = blocking(|| Cluster::start(dir.path()));
    let index = "logs-docker-default";
    blocking(|| {
        cluster.nodes[0].install_logs_template(1);
        cluster.create_data_stream(index);
    });
    let metrics = free_addr();
    let plugin = plugin_for(&cluster.hosts(), &metrics, &[("ES_BULK_MAX_BYTES", "64k")]);
    let container = start_container(&plugin, 7, &[]).await;
    let (entries, messages) = container_lines(LINES, 7, 0);
    let mut fifo = container.fifo;
    let writer = std::thread::spawn(move || {
        // 500 lines a second for a minute: shipping spans both losses and the restart.
        for chunk in entries.chunks(300) {
            fifo.write_entries(chunk);
            std::thread::sleep(Duration::from_millis(600));
        }
        fifo
    });
    let survivor = |dead: usize| -> usize { (0..3).find(|&n| n != dead).expect("a live node") };
    blocking(|| {
        let wait_some = |cluster: &Cluster, via: usize, at_least: usize| {
            let started = Instant::now();
            let at_least = at_least.min(LINES);
            loop {
                let have = count(&cluster.nodes[via], index);
                if have >= at_least {
                    println!("{have} documents after {:.1?}", started.elapsed());
                    return;
                }
                if started.elapsed() > Duration::from_secs(180) {
                    let client = cluster.nodes[via].client();
                    let (_, health) = client.request("GET", "/_cluster/health", "");
                    let (_, shards) = client.request("GET", "/_cat/shards?v", "");
                    panic!(
                        "shipping stalled at {have} of {at_least}; health {health}\nshards:\n{shards}\nplugin log ends:\n{}",
                        log_tail(&plugin, 40)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        // A member that is not the manager, killed mid-bulk.
        wait_some(&cluster, 0, 3_000);
        let manager = cluster.manager(0);
        let victim = (0..3)
            .find(|&n| cluster.nodes[n].name != manager)
            .expect("a member that is not the manager");
        cluster.nodes[victim].kill9();
        println!(
            "killed {} (not the manager) mid-bulk",
            cluster.nodes[victim].name
        );
        let via = survivor(victim);
        let before = count(&cluster.nodes[via], index);
        wait_some(&cluster, via, before + 3_000);
        cluster.nodes[victim].spawn();
        cluster.nodes[victim].wait_ready();
        // Its copies recovered before the next loss: else the manager may hold the only one.
        cluster.wait_green(victim);
        println!(
            "{} restarted, cluster green again",
            cluster.nodes[victim].name
        );

        // The elected manager, killed.
        let manager = cluster.manager(victim);
        let lost = (0..3)
            .find(|&n| cluster.nodes[n].name == manager)
            .expect("the manager is a member");
        let via = survivor(lost);
        let before = count(&cluster.nodes[via], index);
        cluster.nodes[lost].kill9();
        println!("killed the manager {manager}");
        wait_some(&cluster, via, before + 3_000);
        println!("new manager: {}", cluster.manager(via));
        wait_count(
            &cluster.nodes[via],
            index,
            LINES,
            Duration::from_secs(300),
            &plugin,
        );
        std::thread::sleep(Duration::from_secs(1));
        assert_exactly_once(&cluster.nodes[via], index, &messages);
    });
    let fifo = writer.join().expect("writer");
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
    assert!(es_check::dead_lettered(&plugin.state).is_empty());
}
