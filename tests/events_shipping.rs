//! The engine's events through the real plugin binary (EVENTS=true) into the test
//! Elasticsearch: an engine imitation on a unix socket (support/fake_engine.rs) publishes
//! recorded-shape events; every one must arrive once, as an ECS (or Logtail) document, also
//! across a kill -9 of the plugin while events keep coming.

mod support;
use support::{engine, es_server, fake_engine};

use std::collections::HashSet;
use std::time::Duration;

use engine::PluginProcess;
use es_server::{EsServer, ServerOptions, StoredDoc};
use fake_engine::{FakeEngine, FakeEvent};

const WEB: &str = "4f2a6ec7c1d3b0b5e1f6a9e1f2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0";
const INDEX: &str = "logs-docker.events-default";

async fn wait_docs(server: &EsServer, want: usize, plugin: &PluginProcess) -> Vec<StoredDoc> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let docs = server.docs();
        if docs.len() >= want {
            return docs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {want} event documents; plugin log:\n{}",
            docs.len(),
            plugin.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_action<'a>(docs: &'a [StoredDoc], action: &str) -> Vec<&'a StoredDoc> {
    docs.iter()
        .filter(|d| d.source["docker"]["event"]["action"] == action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_events_arrive_once_as_ecs_documents_across_a_plugin_kill() {
    let server = EsServer::start(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let engine = FakeEngine::start(&socket);
    let mut plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_FLUSH_INTERVAL", "50ms"),
        ("EVENTS", "true"),
        ("EVENTS_SOCKET", socket.to_str().unwrap()),
    ]);
    engine.wait_subscribers(1).await;
    engine.push(FakeEvent::container("create", WEB, "web", "nginx:1.27"));
    engine.push(FakeEvent::container("start", WEB, "web", "nginx:1.27"));
    let die = engine.push(FakeEvent::die(WEB, "web", "nginx:1.27", 137));
    engine.push(FakeEvent::image_pull("registry.example.com/team/app:2.1"));
    engine.push(
        FakeEvent::container("health_status: unhealthy", WEB, "web", "nginx:1.27")
            .attr("com.example.tier", "core"),
    );
    let docs = wait_docs(&server, 5, &plugin).await;
    assert!(docs.iter().all(|d| d.index == INDEX));
    let died = by_action(&docs, "die");
    assert_eq!(died.len(), 1);
    let s = &died[0].source;
    assert_eq!(s["event"]["action"], "die");
    assert_eq!(s["event"]["outcome"], "failure");
    assert_eq!(s["process"]["exit_code"], 137);
    assert_eq!(s["container"]["name"], "web");
    assert_eq!(s["container"]["id"], WEB);
    assert_eq!(s["data_stream"]["dataset"], "docker.events");
    let nanos = die.time_nano % 1_000_000_000;
    assert!(
        s["@timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!(".{nanos:09}Z"))),
        "nanosecond @timestamp: {}",
        s["@timestamp"]
    );
    let health = by_action(&docs, "health_status: unhealthy");
    assert_eq!(health[0].source["event"]["action"], "health_status");
    assert_eq!(
        health[0].source["container"]["labels"]["com_example_tier"],
        "core"
    );

    // Killed: events meanwhile are caught up with since=, the replayed one is not twice.
    plugin.kill();
    engine.push(FakeEvent::container("stop", WEB, "web", "nginx:1.27"));
    engine.push(FakeEvent::container("destroy", WEB, "web", "nginx:1.27"));
    plugin.restart();
    engine.wait_subscribers(1).await;
    engine.push(FakeEvent::image("delete", "sha256:abc", "nginx:1.27"));
    let docs = wait_docs(&server, 8, &plugin).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let docs_after = server.docs();
    assert_eq!(docs_after.len(), 8, "an event indexed twice or lost");
    assert_eq!(docs.len(), 8);
    let ids: HashSet<&str> = docs_after.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 8);
    for action in ["stop", "destroy", "delete"] {
        assert_eq!(by_action(&docs_after, action).len(), 1, "{action}");
    }
    assert!(
        engine.requests().iter().any(|r| r.since.is_some()),
        "the restarted plugin resumed with since="
    );
    assert!(
        by_action(&docs_after, "events-gap").is_empty(),
        "no gap: the engine's buffer covered the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logtail_format_and_engine_side_filters() {
    let server = EsServer::start(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let engine = FakeEngine::start(&socket);
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_FLUSH_INTERVAL", "50ms"),
        ("EVENTS", "true"),
        ("EVENTS_SOCKET", socket.to_str().unwrap()),
        ("EVENTS_FORMAT", "logtail"),
        ("EVENTS_FILTERS", "type=container"),
        ("EVENTS_INDEX", "docker-events"),
    ]);
    engine.wait_subscribers(1).await;
    engine.push(FakeEvent::image_pull("busybox:latest"));
    let die = engine.push(FakeEvent::die(WEB, "web", "nginx:1.27", 0));
    let docs = wait_docs(&server, 1, &plugin).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.docs().len(), 1, "the image event passed the filter");
    let s = &docs[0].source;
    assert_eq!(docs[0].index, "docker-events");
    assert_eq!(s["_type_"], "container");
    assert_eq!(s["_action_"], "die");
    assert_eq!(s["_id_"], WEB);
    assert_eq!(s["_time_nano_"], die.time_nano.to_string());
    assert_eq!(s["exitCode"], "0");
    let filters = engine.requests()[0].filters.clone().unwrap_or_default();
    assert!(filters.contains("container"), "filters sent: {filters}");
}
