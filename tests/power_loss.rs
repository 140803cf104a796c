//! No line is lost across a power loss: a host that loses power, played against the real
//! plugin binary.
//!
//! The plugin syncs a container's active segment only at stop, shutdown or close, and its
//! shipping checkpoint every second: after a power loss the checkpoint can point past what the
//! segment kept. The test ships lines to the fake Elasticsearch, kills the plugin, cuts the
//! active segment back to an earlier record boundary (what the page cache had not written out
//! is gone; the checkpoint file is whole), restarts the plugin, and writes new lines.
//!
//! Promise: every new line is indexed. Its document id (`<container>-<segment>-<offset>`) is
//! never one an earlier line had, so Elasticsearch cannot refuse it as a duplicate (409).

mod support;
use support::{engine, es_server};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::*;
use es_server::{EsServer, ServerOptions};

const T0: i64 = 1_790_000_000_000_000_000;

/// The active segment: the highest-numbered plain `.log`.
fn active_segment(store: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(store)
        .expect("store dir")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.to_string_lossy().ends_with(".log"))
        .collect();
    logs.sort();
    logs.pop().expect("an active segment")
}

/// The offsets just after each record of a plain segment (`[u32 BE size][payload][u32 BE size]`).
fn record_ends(segment: &Path) -> Vec<u64> {
    let bytes = std::fs::read(segment).expect("read segment");
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += size + 8;
        ends.push(at as u64);
    }
    ends
}

/// The checkpoint's (segment, offset).
fn checkpoint(state: &Path, id: &str) -> Option<(u64, u64)> {
    let bytes = std::fs::read(state.join("checkpoints").join(format!("{id}.json"))).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((json["segment"].as_u64()?, json["offset"].as_u64()?))
}

fn lines(prefix: &str, range: std::ops::Range<i64>) -> Vec<LogEntry> {
    range
        .map(|seq| {
            line(
                "stdout",
                T0 + seq * 1000,
                format!("{prefix} line {seq:06}").as_bytes(),
            )
        })
        .collect()
}

/// Longer than the shipper's least interval between checkpoint writes (1 s).
fn checkpoint_interval() -> Duration {
    Duration::from_millis(1200)
}

async fn wait_indexed(server: &EsServer, want: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if server.doc_count() >= want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Regression: after a power loss the restarted plugin appended at the cut-back end of the
/// active segment, so new lines took the ids of lines indexed before the loss; Elasticsearch
/// answered 409 and they were counted as duplicates: 0 of 50 new lines indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_new_lines_are_indexed_not_refused_as_duplicates() {
    power_loss(Checkpoint::BeyondTheDurableEnd).await;
}

/// Regression: with the synced checkpoint older than what the segment kept (it is written at
/// most once a second), the shipper replays the kept records and then takes the first new one,
/// in a new segment, under the id "just after the last record read": the old segment's cut-back
/// end, the id of a line indexed before the loss. Elasticsearch answered 409 and that line was
/// never indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_with_an_older_checkpoint_the_first_new_line_is_indexed() {
    power_loss(Checkpoint::BeforeTheDurableEnd).await;
}

/// Where the synced checkpoint stands against what the cut-back segment kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checkpoint {
    BeyondTheDurableEnd,
    BeforeTheDurableEnd,
}

async fn power_loss(checkpoint_left: Checkpoint) {
    let server = EsServer::start(ServerOptions::default()).await;
    let mut plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "200ms"),
    ]);
    let id = container_id(0xd4);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo");
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id, &[]).await,
        ""
    );
    let before = lines("older", 0..200);
    let (most, last) = before.split_at(before.len() - 1);
    fifo.write_entries(most);
    assert!(
        wait_indexed(&server, most.len(), Duration::from_secs(30)).await,
        "the first lines were not indexed"
    );
    // A checkpoint is written at most once a second: the last line, later, gets one written
    // for everything.
    tokio::time::sleep(checkpoint_interval()).await;
    fifo.write_entries(last);
    assert!(
        wait_indexed(&server, before.len(), Duration::from_secs(30)).await,
        "the first lines were not indexed"
    );
    let store = plugin.state.join("containers").join(&id);
    let segment = active_segment(&store);
    let ends = record_ends(&segment);
    assert_eq!(ends.len(), before.len());
    // The checkpoint is written at most once a second: wait for one past the first records.
    let mut saved = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while saved <= ends[10] {
        assert!(
            Instant::now() < deadline,
            "no checkpoint past the first records: {:?} in {}; plugin log:\n{}",
            checkpoint(&plugin.state, &id),
            segment.display(),
            plugin.output()
        );
        std::thread::sleep(Duration::from_millis(20));
        saved = checkpoint(&plugin.state, &id).map_or(0, |(_, offset)| offset);
    }

    // Power loss: the plugin dies, the segment keeps only its first records (at most half), cut
    // at a record boundary before the checkpoint, which (synced) survives whole.
    plugin.kill();
    let kept = ends
        .iter()
        .rposition(|&end| end < saved)
        .expect("a record before the checkpoint")
        .min(before.len() / 2 - 1);
    let durable = ends[kept];
    if checkpoint_left == Checkpoint::BeforeTheDurableEnd {
        // The last synced checkpoint, from before the records the segment kept.
        let path = plugin.state.join("checkpoints").join(format!("{id}.json"));
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("checkpoint")).expect("json");
        json["offset"] = ends[kept / 2].into();
        std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("checkpoint");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment")
        .set_len(durable)
        .expect("cut the segment back");
    // A power loss is a new boot of the host: what the plugin records of the boot it ran in no
    // longer matches.
    std::fs::write(
        plugin.state.join("containers").join(".boot_id"),
        "00000000-0000-0000-0000-000000000000",
    )
    .expect("record another boot");
    plugin.restart();
    wait_until(Duration::from_secs(10), "the FIFO reopened", || {
        plugin.output().contains("reopened FIFO after restart")
    });

    let after = lines("newer", 200..250);
    fifo.write_entries(&after);
    let want = before.len() + after.len();
    let indexed = wait_indexed(&server, want, Duration::from_secs(20)).await;
    let stats = server.stats();
    let docs = server.docs();
    let new_indexed = docs
        .iter()
        .filter(|doc| {
            doc.source["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("newer"))
        })
        .count();
    assert!(
        indexed,
        "{new_indexed} of {} new lines indexed after the power loss; item statuses {:?}",
        after.len(),
        stats.item_statuses
    );
    let ids: std::collections::HashSet<&str> = docs.iter().map(|doc| doc.id.as_str()).collect();
    assert_eq!(ids.len(), docs.len(), "an _id indexed twice");
    assert_eq!(new_indexed, after.len());
    // Replaying what the segment kept after an older checkpoint is harmless: 409s for lines
    // indexed before the loss, and nothing else.
    let replayed = match checkpoint_left {
        Checkpoint::BeyondTheDurableEnd => 0,
        Checkpoint::BeforeTheDurableEnd => kept - kept / 2,
    };
    assert_eq!(
        stats.conflicts_409, replayed,
        "a new line refused as a duplicate; item statuses {:?}",
        stats.item_statuses
    );
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
    eprintln!(
        "power loss ({checkpoint_left:?}): {} lines shipped, the segment cut back to {} of them, {} new lines written: indexed {new_indexed}, refused as duplicates {}, lost 0",
        before.len(),
        kept + 1,
        after.len(),
        stats.conflicts_409
    );
}
