//! The events collector against an engine imitation on a unix socket: order, line reassembly,
//! filters, version negotiation, reconnects with `since=`, no event twice, and gaps.

mod support;
use support::fake_engine;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use es_logging_plugin::events::engine::format_since;
use es_logging_plugin::events::{
    Collector, CollectorItem, CollectorStats, EngineClient, Event, Filters, Gap, Stopped,
};
use fake_engine::{FakeEngine, FakeEvent, ENGINE_BUFFER};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WEB: &str = "4f2a6ec7c1d3b0b5e1f6a9e1f2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0";
const DB: &str = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b";
const WAIT: Duration = Duration::from_secs(10);

/// A collector running against a fake engine, with its sink.
struct Running {
    items: UnboundedReceiver<CollectorItem>,
    shutdown: CancellationToken,
    task: JoinHandle<Stopped>,
    stats: Arc<CollectorStats>,
}

fn start(engine: &FakeEngine, filters: &str, since: Option<i64>) -> Running {
    let filters: Filters = filters.parse().expect("filters");
    // Short delays: the tests wait for reconnects, not for production pacing.
    let collector = Collector::new(EngineClient::new(engine.socket()), filters)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(200));
    run(collector, since)
}

/// Runs `collector` from `since` in a task.
fn run(collector: Collector, since: Option<i64>) -> Running {
    let stats = collector.stats();
    let (sink, items) = unbounded_channel();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { collector.run(since, sink, token).await });
    Running {
        items,
        shutdown,
        task,
        stats,
    }
}

/// [`start`] from now, once the engine streams to the collector: events pushed after this
/// reach it live.
async fn streaming(engine: &FakeEngine, filters: &str) -> Running {
    let running = start(engine, filters, None);
    engine.wait_subscribers(1).await;
    running
}

impl Running {
    async fn next(&mut self) -> CollectorItem {
        tokio::time::timeout(WAIT, self.items.recv())
            .await
            .expect("an item within 10 s")
            .expect("collector running")
    }

    /// The next items are exactly these events, in order, one each.
    async fn expect_events(&mut self, expected: &[FakeEvent]) -> Vec<Event> {
        let mut got = Vec::new();
        for want in expected {
            match self.next().await {
                CollectorItem::Event(line) => {
                    let event = &line.event;
                    assert_eq!(
                        (
                            event.time_nano,
                            event.action.as_str(),
                            event.actor.id.as_str()
                        ),
                        (want.time_nano, want.action.as_str(), want.actor_id.as_str())
                    );
                    assert_eq!(event.actor.attributes, want.attributes);
                    assert_eq!(Event::parse(&line.raw).expect("raw line"), *event);
                    got.push(line.event);
                }
                CollectorItem::Gap(gap) => panic!("unexpected {gap:?} before {want:?}"),
            }
        }
        got
    }

    async fn expect_gap(&mut self) -> Gap {
        match self.next().await {
            CollectorItem::Gap(gap) => gap,
            CollectorItem::Event(line) => panic!("expected a gap, got {:?}", line.event),
        }
    }

    /// Nothing more arrives for a while: no duplicate, no stray gap.
    async fn expect_quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), self.items.recv()).await
        {
            panic!("unexpected {item:?}");
        }
    }

    async fn stop(self) -> Stopped {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("collector stops within 2 s of shutdown")
            .expect("collector task")
    }
}

fn engine() -> (tempfile::TempDir, FakeEngine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = FakeEngine::start(&dir.path().join("docker.sock"));
    (dir, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_once_each_with_stable_ids() {
    let (_dir, engine) = engine();
    let mut running = streaming(&engine, "").await;
    let pushed: Vec<FakeEvent> = [
        FakeEvent::image_pull("nginx:1.27"),
        FakeEvent::container("create", WEB, "web-1", "nginx:1.27").attr("com.example.team", "shop"),
        FakeEvent::network("connect", "7e1d2c", "bridge", WEB),
        FakeEvent::container("start", WEB, "web-1", "nginx:1.27"),
        FakeEvent::container("health_status: healthy", WEB, "web-1", "nginx:1.27"),
        FakeEvent::container("exec_create: sh -c date", WEB, "web-1", "nginx:1.27")
            .attr("execID", "e1"),
        FakeEvent::die(WEB, "web-1", "nginx:1.27", 137),
        FakeEvent::container("destroy", WEB, "web-1", "nginx:1.27"),
        FakeEvent::image("tag", "sha256:4f2a", "nginx:stable"),
        FakeEvent::image("delete", "sha256:4f2a", "sha256:4f2a"),
    ]
    .into_iter()
    .map(|event| engine.push(event))
    .collect();
    let got = running.expect_events(&pushed).await;
    running.expect_quiet().await;
    assert_eq!(got[4].action_base(), "health_status");
    let ids: std::collections::HashSet<String> = got.iter().map(Event::id).collect();
    assert_eq!(ids.len(), pushed.len());
    assert_eq!(running.stats.events.load(Ordering::Relaxed), 10);
    assert_eq!(running.stats.gaps.load(Ordering::Relaxed), 0);
    let request = &engine.requests()[0];
    assert_eq!(request.path, "/v1.52/events");
    assert_eq!(request.since, None);
    assert_eq!(running.stop().await, Stopped::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_reassembled_across_chunks_and_bad_lines_skipped() {
    let (_dir, engine) = engine();
    let mut running = streaming(&engine, "").await;
    // Forty labels of 300 bytes: an event far longer than any one chunk.
    let mut big = FakeEvent::container("create", DB, "db", "postgres:17");
    for n in 0..40 {
        big = big.attr(&format!("com.example.label{n}"), &"v".repeat(300));
    }
    let big = engine.push(big);
    running.expect_events(&[big]).await;

    // A line that is not an event, an event written a byte at a time with its newline in the
    // same write as the start of the next one: the bad line is skipped, the stream goes on.
    engine.push_raw(b"this is not json\n");
    let split =
        FakeEvent::container("start", DB, "db", "postgres:17").at(fake_engine::CLOCK_START + 999);
    let line = format!("{}\n", split.to_json("1.52"));
    let (body, newline) = line.split_at(line.len() - 1);
    for byte in body.as_bytes() {
        engine.push_raw(&[*byte]);
    }
    let after = FakeEvent::die(DB, "db", "postgres:17", 0).at(fake_engine::CLOCK_START + 1999);
    engine.push_raw(format!("{newline}{}", after.to_json("1.52")).as_bytes());
    engine.push_raw(b"\n");
    running.expect_events(&[split, after]).await;
    assert_eq!(running.stats.skipped_lines.load(Ordering::Relaxed), 1);
    running.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_reach_the_engine_and_only_matching_events_arrive() {
    let (_dir, engine) = engine();
    let mut running = start(
        &engine,
        "type=container,event=die,event=oom,label=team=web",
        None,
    );
    engine.wait_subscribers(1).await;
    let request = &engine.requests()[0];
    assert_eq!(
        request.filters.as_deref(),
        Some(r#"{"event":["die","oom"],"label":["team=web"],"type":["container"]}"#)
    );
    let wanted = [
        engine.push(FakeEvent::die(WEB, "web-1", "nginx", 1).attr("team", "web")),
        engine.push(FakeEvent::container("oom", WEB, "web-1", "nginx").attr("team", "web")),
    ];
    engine.push(FakeEvent::die(DB, "db", "postgres", 1).attr("team", "data"));
    engine.push(FakeEvent::container("start", WEB, "web-1", "nginx").attr("team", "web"));
    engine.push(FakeEvent::image_pull("nginx:1.27").attr("team", "web"));
    let last = engine.push(FakeEvent::die(WEB, "web-2", "nginx", 0).attr("team", "web"));
    running.expect_events(&wanted).await;
    running.expect_events(&[last]).await;
    running.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_version_is_negotiated_clamped_and_defaulted() {
    for (engine_version, path_version) in [
        (Some("1.45"), "1.45"),
        (Some("1.60"), "1.52"),
        (None, "1.41"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine =
            FakeEngine::start_with_version(&dir.path().join("docker.sock"), engine_version);
        let mut running = streaming(&engine, "").await;
        assert_eq!(
            engine.requests()[0].version,
            path_version,
            "{engine_version:?}"
        );
        // Older engines add the legacy status/id/from; they are read all the same.
        let die = engine.push(FakeEvent::die(WEB, "web-1", "nginx", 2));
        running.expect_events(&[die]).await;
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_with_since_and_delivers_nothing_twice() {
    let (_dir, engine) = engine();
    let mut running = streaming(&engine, "").await;
    let first = engine.push(FakeEvent::container("create", WEB, "web-1", "nginx"));
    // Two events in the same nanosecond: both are replayed by since= and both must be dropped.
    let same_time = first.time_nano + 5_000;
    let before = [
        first,
        engine.push(FakeEvent::container("start", WEB, "web-1", "nginx").at(same_time)),
        engine.push(FakeEvent::network("connect", "7e1d2c", "bridge", WEB).at(same_time)),
    ];
    running.expect_events(&before).await;

    engine.drop_connections();
    let after = [
        engine.push(FakeEvent::die(WEB, "web-1", "nginx", 0)),
        engine.push(FakeEvent::container("destroy", WEB, "web-1", "nginx")),
    ];
    running.expect_events(&after).await;
    running.expect_quiet().await;

    let requests = engine.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert_eq!(
        requests[1].since.as_deref(),
        Some(format_since(same_time).as_str())
    );
    assert_eq!(running.stats.duplicates.load(Ordering::Relaxed), 2);
    assert_eq!(running.stats.gaps.load(Ordering::Relaxed), 0);
    assert!(running.stats.connects.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restart_empties_the_buffer_and_a_gap_is_reported() {
    let (_dir, mut engine) = engine();
    let mut running = streaming(&engine, "").await;
    let before = [
        engine.push(FakeEvent::container("start", WEB, "web-1", "nginx")),
        engine.push(FakeEvent::container("start", DB, "db", "postgres")),
    ];
    running.expect_events(&before).await;

    engine.restart();
    engine.wait_subscribers(1).await;
    let requests = engine.requests();
    let resumed = requests.last().expect("a request after the restart");
    assert_eq!(
        resumed.since.as_deref(),
        Some(format_since(before[1].time_nano).as_str())
    );
    let after = engine.push(FakeEvent::die(WEB, "web-1", "nginx", 143));
    assert_eq!(
        running.expect_gap().await,
        Gap {
            after_nano: before[1].time_nano,
            before_nano: after.time_nano
        }
    );
    running.expect_events(&[after]).await;
    running.expect_quiet().await;
    assert_eq!(running.stats.gaps.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_overrun_while_unreachable_is_a_gap_and_the_rest_arrives_once() {
    let (_dir, engine) = engine();
    let mut running = streaming(&engine, "").await;
    let first = engine.push(FakeEvent::container("start", WEB, "web-1", "nginx"));
    running.expect_events(std::slice::from_ref(&first)).await;

    engine.set_unreachable(true);
    let missed: Vec<FakeEvent> = (0..ENGINE_BUFFER + 44)
        .map(|n| {
            engine.push(
                FakeEvent::container("exec_die", WEB, "web-1", "nginx")
                    .attr("execID", &n.to_string()),
            )
        })
        .collect();
    let requests_before = engine.requests().len();
    engine.set_unreachable(false);
    engine.wait_requests(requests_before + 1).await;

    let kept = &missed[44..];
    assert_eq!(
        running.expect_gap().await,
        Gap {
            after_nano: first.time_nano,
            before_nano: kept[0].time_nano
        }
    );
    running.expect_events(kept).await;
    running.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_since_replays_the_buffer_without_a_gap_when_it_reaches_back() {
    let (_dir, engine) = engine();
    let pushed: Vec<FakeEvent> = (0..3)
        .map(|n| engine.push(FakeEvent::image_pull(&format!("app:{n}"))))
        .collect();
    // An earlier run shipped up to pushed[1]: it comes again (Elasticsearch answers 409), no gap.
    let mut running = start(&engine, "", Some(pushed[1].time_nano));
    running.expect_events(&pushed[1..]).await;
    running.expect_quiet().await;
    assert_eq!(running.stop().await, Stopped::Shutdown);

    // A start before everything the engine still holds: it cannot vouch for the time between.
    let mut running = start(&engine, "", Some(pushed[0].time_nano - 1));
    let gap = running.expect_gap().await;
    assert_eq!(gap.before_nano, pushed[0].time_nano);
    running.expect_events(&pushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_a_closed_sink_end_the_loop_even_while_the_engine_is_down() {
    let (_dir, mut engine) = engine();
    engine.stop();
    let running = start(&engine, "", None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running.stats.disconnects.load(Ordering::Relaxed) >= 2);
    assert_eq!(running.stop().await, Stopped::Shutdown);

    engine.restart();
    let mut running = streaming(&engine, "").await;
    running.items.close();
    engine.push(FakeEvent::container("start", WEB, "web-1", "nginx"));
    let stopped = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("stops");
    assert_eq!(stopped.expect("task"), Stopped::SinkClosed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_engine_refuses_what_the_engine_refuses_and_honours_until() {
    use es_logging_plugin::events::{ApiVersion, EngineError};
    let (_dir, engine) = engine();
    let client = EngineClient::new(engine.socket());
    let too_new = ApiVersion {
        major: 1,
        minor: 53,
    };
    match client.events(too_new, None, &Filters::default()).await {
        Err(EngineError::Status {
            status: 400, body, ..
        }) => {
            assert!(body.contains("too new"), "{body}")
        }
        other => panic!("{other:?}"),
    }
    let mut unsupported = Filters::default();
    unsupported.add("network", "bridge").expect("filter");
    let api = client.negotiate().await.expect("ping");
    match client.events(api, None, &unsupported).await {
        Err(EngineError::Status { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }

    // until: the buffered events up to it, then the end of the stream.
    let pushed: Vec<FakeEvent> = (0..3)
        .map(|n| engine.push(FakeEvent::image_pull(&format!("app:{n}"))))
        .collect();
    let uri = hyperlocal::Uri::new(
        engine.socket(),
        &format!(
            "/v1.52/events?since={}&until={}",
            format_since(pushed[0].time_nano),
            format_since(pushed[1].time_nano)
        ),
    );
    use hyperlocal::UnixClientExt;
    let client = hyper_util::client::legacy::Client::unix();
    let answer = tokio::time::timeout(
        WAIT,
        client.request(
            hyper::Request::get(uri)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        ),
    )
    .await
    .expect("answer")
    .expect("ok");
    let body = tokio::time::timeout(WAIT, http_body_util::BodyExt::collect(answer.into_body()))
        .await
        .expect("the stream ends at until")
        .expect("body")
        .to_bytes();
    let times: Vec<i64> = body
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| Event::parse(line).expect("event").time_nano)
        .collect();
    assert_eq!(times, [pushed[0].time_nano, pushed[1].time_nano]);
}

/// Makes `path` a socket file nobody listens on: connecting is refused, as through a bind mount
/// of an engine socket that the engine has since replaced.
fn dead_socket(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    // std's listener leaves its file behind when dropped.
    drop(std::os::unix::net::UnixListener::bind(path).expect("bind a socket"));
}

/// Regression: an engine restarted with live-restore listens on a new socket file while the
/// plugin keeps running with a bind mount of the old one, which refuses every connection for
/// good; the collector retried forever and never saw an event again. Now a socket that served
/// and then refuses for the stale limit ends the collector (the plugin then exits so the
/// engine restarts it with a fresh mount); one that never served is retried forever (a setup
/// problem, and exiting would only loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_refusing_for_good_after_serving_ends_the_collector() {
    let limit = Duration::from_millis(500);
    let with_limit = |socket: &std::path::Path| {
        let collector = Collector::new(EngineClient::new(socket), Filters::default())
            .with_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .with_stale_socket_limit(limit);
        run(collector, None)
    };

    let (dir, mut engine) = engine();
    let mut running = with_limit(engine.socket());
    engine.wait_subscribers(1).await;
    let event = engine.push(FakeEvent::container("start", WEB, "web-1", "nginx"));
    running.expect_events(&[event]).await;
    engine.stop();
    dead_socket(engine.socket());
    let stopped = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("the collector ends once the socket is stale")
        .expect("task");
    assert_eq!(stopped, Stopped::SocketStale);
    assert!(running.stats.disconnects.load(Ordering::Relaxed) >= 2);

    let never = dir.path().join("never-served.sock");
    dead_socket(&never);
    let running = with_limit(&never);
    tokio::time::sleep(limit * 3).await;
    assert!(
        !running.task.is_finished(),
        "a socket that never served is retried, not taken for stale"
    );
    assert!(running.stats.disconnects.load(Ordering::Relaxed) >= 2);
    assert_eq!(running.stop().await, Stopped::Shutdown);
}
