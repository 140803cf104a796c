//! A destination's disk work against the containers' pipes: the plugin as it runs (its
//! pipelines, stores and destination on one multi-thread runtime like the binary's), shipping
//! to noida-db (an in-process Elasticsearch imitation, see docs/elasticsearch.md), with
//! the checkpoint's fsync made slow by `checkpoint::slow_sync`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::container_id::ContainerId;
use crate::entry::LogEntry;
use crate::plugin::Plugin;
use crate::protocol::{Info, StartLogging};
use crate::settings::Settings;
use crate::shipper::checkpoint::slow_sync;
use crate::shipper::source::FRAGMENT_WAIT;
use crate::testing::engine_fifo;

const SHIPPED: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const LOCAL: &str = "10ca110ca110ca110ca110ca110ca110ca110ca110ca110ca110ca110ca110ca";

/// One log line as the engine frames it.
fn frame(time_nano: i64, text: &str) -> Vec<u8> {
    crate::testing::frame(&crate::testing::line(time_nano, text))
}

async fn start(plugin: &Arc<Plugin>, id: &str, file: &Path, config: &[(&str, &str)]) {
    let request = StartLogging {
        file: file.to_string_lossy().into_owned(),
        info: Info {
            container_id: id.into(),
            container_name: format!("/{}", &id[..12]),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Info::default()
        },
    };
    let plugin = Arc::clone(plugin);
    // As the API calls it: StartLogging syncs files.
    tokio::task::spawn_blocking(move || plugin.start_logging(request))
        .await
        .unwrap()
        .expect("StartLogging");
}

/// A container never blocks on another container's slow checkpoint. Regression: a destination wrote
/// its checkpoints (a file fsync and a folder fsync per container, in the acknowledge path) on the
/// runtime thread it runs on, the threads that drain every container's FIFO. On a slow disk, a line
/// written by a container that does not even ship waited for another container's checkpoint to
/// reach the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_checkpoint_fsync_does_not_stall_another_containers_drain() {
    const SLOW_SYNC: Duration = Duration::from_secs(2);
    const MEASURE: Duration = Duration::from_secs(5);
    const LIMIT: Duration = Duration::from_millis(200);

    let es = noida::elasticsearch::spawn("127.0.0.1:0").expect("start noida-db");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let plugin = Plugin::open(Settings::default(), &state, CancellationToken::new()).unwrap();
    let (shipped_file, mut shipped) = engine_fifo(dir.path(), "shipped");
    let (local_file, mut local) = engine_fifo(dir.path(), "local");
    let hosts = format!("http://{es}");
    start(
        &plugin,
        SHIPPED,
        &shipped_file,
        &[("hosts", &hosts), ("flush_interval", "10ms")],
    )
    .await;
    start(&plugin, LOCAL, &local_file, &[]).await;
    let local_store = plugin
        .stores()
        .get_open(&ContainerId::parse(LOCAL).unwrap())
        .unwrap();
    slow_sync::set(&state.join("checkpoints"), SLOW_SYNC);
    let slowed_before = slow_sync::begun();

    // The shipping container logs all along: every acknowledgement moves its checkpoint.
    let done = Arc::new(AtomicBool::new(false));
    let shipping = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut t = 1_000_000;
            while !done.load(Ordering::SeqCst) {
                t += 1;
                shipped.write_all(&frame(t, "a shipped line")).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            shipped
        })
    };
    // The other container: each line, how long until it is in its store.
    let measured = std::thread::spawn(move || {
        let mut latencies = Vec::new();
        let begin = Instant::now();
        let mut t = 1;
        while begin.elapsed() < MEASURE {
            t += 1;
            let before = local_store.end();
            let sent = Instant::now();
            local.write_all(&frame(t, "a local line")).unwrap();
            while local_store.end() == before && sent.elapsed() < SLOW_SYNC * 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
            latencies.push(sent.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        (latencies, local)
    });
    let (latencies, _local) = tokio::task::spawn_blocking(move || measured.join().unwrap())
        .await
        .unwrap();
    done.store(true, Ordering::SeqCst);
    let _shipped = shipping.join().unwrap();
    let slowed = slow_sync::begun() - slowed_before;
    slow_sync::set(&state.join("checkpoints"), Duration::ZERO);
    plugin.shutdown_token().cancel();
    plugin.wind_down(Duration::from_secs(10)).await;

    assert!(
        slowed >= 1,
        "the shipping container's checkpoint was written {slowed} times while measuring: nothing was acknowledged"
    );
    let worst = latencies.iter().max().copied().unwrap_or_default();
    let over = latencies.iter().filter(|l| **l > LIMIT).count();
    eprintln!(
        "{} lines of the other container, {over} took over {LIMIT:?} to be stored, worst {worst:?}; {slowed} slow checkpoint writes",
        latencies.len()
    );
    assert!(
        worst <= LIMIT,
        "a line of another container waited {worst:?} to be stored ({over} of {} over {LIMIT:?}) while a checkpoint synced",
        latencies.len()
    );
}

/// A destroyed local copy leaves no checkpoint file behind (state stays small). Regression: with
/// DESTROY_LOGS_ON_STOP, a shipped container's local copy was removed once everything was shipped,
/// but its checkpoint file stayed: one file per container ever run, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_copy_destroyed_after_shipping_takes_its_checkpoint_with_it() {
    let es = noida::elasticsearch::spawn("127.0.0.1:0").expect("start noida-db");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let settings = Settings {
        destroy_logs_on_stop: true,
        ..Settings::default()
    };
    let plugin = Plugin::open(settings, &state, CancellationToken::new()).unwrap();
    let (file, mut engine) = engine_fifo(dir.path(), "shipped");
    let hosts = format!("http://{es}");
    start(
        &plugin,
        SHIPPED,
        &file,
        &[("hosts", &hosts), ("flush_interval", "10ms")],
    )
    .await;
    let checkpoint = state.join("checkpoints").join(format!("{SHIPPED}.json"));
    assert!(checkpoint.exists(), "StartLogging writes the checkpoint");
    for t in 1..=3 {
        engine.write_all(&frame(t, "a line")).unwrap();
    }
    plugin.stop_logging(&file.to_string_lossy()).await;
    let copy = state.join("containers").join(SHIPPED);
    let begin = Instant::now();
    while copy.exists() && begin.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shipped_and_removed = !copy.exists();
    plugin.shutdown_token().cancel();
    plugin.wind_down(Duration::from_secs(10)).await;
    assert!(
        shipped_and_removed,
        "the local copy was not removed after shipping"
    );
    assert!(
        !checkpoint.exists(),
        "the checkpoint of the removed local copy is left behind"
    );
}

/// Bulk requests the destinations sent so far, from the metrics text.
fn requests_sent(plugin: &Plugin) -> u64 {
    plugin
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("eslp_bulk_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The first fragment of a line whose rest never comes, as the engine frames it.
fn first_fragment(time_nano: i64, text: &str) -> Vec<u8> {
    let payload = LogEntry {
        source: "stdout".into(),
        time_nano,
        line: text.as_bytes().to_vec().into(),
        partial: true,
        partial_log_metadata: Some(crate::entry::PartialLogEntryMetadata {
            last: false,
            id: "late".into(),
            ordinal: 1,
        }),
    }
    .encode_to_vec();
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

/// The checkpoint's writes run on the blocking pool now, while the destination goes on: a line
/// whose rest is late (FRAGMENT_WAIT) must still be sent only once its cut is on disk, or a
/// crash in between would replay it cut elsewhere (see `checkpoint`). With the checkpoint's
/// sync 2 s slow, no bulk request may leave before the file holds the split point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_cut_for_its_late_rest_is_sent_only_after_the_cut_is_on_disk() {
    let es = noida::elasticsearch::spawn("127.0.0.1:0").expect("start noida-db");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let plugin = Plugin::open(Settings::default(), &state, CancellationToken::new()).unwrap();
    let (file, mut engine) = engine_fifo(dir.path(), "shipped");
    let hosts = format!("http://{es}");
    start(
        &plugin,
        SHIPPED,
        &file,
        &[("hosts", &hosts), ("flush_interval", "10ms")],
    )
    .await;
    let checkpoint = state.join("checkpoints").join(format!("{SHIPPED}.json"));
    slow_sync::set(&state.join("checkpoints"), Duration::from_secs(2));
    engine
        .write_all(&first_fragment(1, "the first part of a line"))
        .unwrap();
    let has_split =
        || std::fs::read_to_string(&checkpoint).is_ok_and(|text| !text.contains(r#""splits":[]"#));
    let begin = Instant::now();
    let mut cut_on_disk = None;
    let mut sent = None;
    while sent.is_none() && begin.elapsed() < FRAGMENT_WAIT + Duration::from_secs(10) {
        // The file first, then the requests: a request seen is after the file was read.
        let split = has_split();
        let requests = requests_sent(&plugin);
        if split && cut_on_disk.is_none() {
            cut_on_disk = Some(begin.elapsed());
        }
        if requests > 0 {
            sent = Some(begin.elapsed());
            assert!(
                split || has_split(),
                "a bulk request left before the split point was on disk"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    slow_sync::set(&state.join("checkpoints"), Duration::ZERO);
    plugin.shutdown_token().cancel();
    plugin.wind_down(Duration::from_secs(10)).await;
    let sent = sent.expect("the line whose rest is late was never sent");
    let cut_on_disk = cut_on_disk.unwrap_or(sent);
    eprintln!("cut on disk after {cut_on_disk:?}, first request after {sent:?}");
    assert!(
        sent >= FRAGMENT_WAIT + Duration::from_secs(2),
        "sent after {sent:?}: before the fragment wait and the slow write of the cut"
    );
}
