//! `docker logs --tail N` over a large local copy, through the real plugin binary: what the
//! answer costs the plugin in memory. The store is written straight into the plugin's state dir
//! in the store's on-disk layout (see src/store/mod.rs), which is much faster than feeding
//! 300 MB through a FIFO in a debug build.

mod support;
use support::{engine, probe};

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use engine::*;
use http_body_util::BodyExt;
use prost::Message;

const T0: i64 = 1_790_000_000_000_000_000;
/// The engine's `local` driver default max-size: what a default store's segments hold.
const SEGMENT_BYTES: usize = 20 << 20;
/// 15 segments of 20 MiB: a 300 MiB copy, 12 of them gzipped, 2 sealed plain, 1 active.
const GZ_SEGMENTS: u64 = 12;
const PLAIN_SEGMENTS: u64 = 3;
const LINE_BYTES: usize = 1000;

fn entry(seq: usize) -> LogEntry {
    // Varied text, so gzip does not shrink a segment to nothing.
    let mut text = format!("line {seq:09} ").into_bytes();
    let mut state = seq as u64 | 1;
    while text.len() < LINE_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(b'a' + (state % 26) as u8);
    }
    line(
        if seq % 2 == 0 { "stdout" } else { "stderr" },
        T0 + seq as i64 * 1000,
        &text,
    )
}

/// Writes the segments of a ~300 MiB store for container `id` under `state`; returns how many
/// entries it holds.
fn write_store(state: &Path, id: &str) -> usize {
    let dir = state.join("containers").join(id);
    std::fs::create_dir_all(&dir).expect("store dir");
    let mut seq = 0;
    for number in 1..=GZ_SEGMENTS + PLAIN_SEGMENTS {
        let mut content = Vec::with_capacity(SEGMENT_BYTES + LINE_BYTES * 2);
        while content.len() < SEGMENT_BYTES {
            let payload = entry(seq).encode_to_vec();
            let size = (payload.len() as u32).to_be_bytes();
            content.extend_from_slice(&size);
            content.extend_from_slice(&payload);
            content.extend_from_slice(&size);
            seq += 1;
        }
        if number <= GZ_SEGMENTS {
            let path = dir.join(format!("{number:020}.log.gz"));
            let file = std::fs::File::create(&path).expect("create .gz");
            let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            gz.write_all(&content).expect("write .gz");
            gz.finish().expect("finish .gz");
        } else {
            std::fs::write(dir.join(format!("{number:020}.log")), &content).expect("write .log");
        }
    }
    seq
}

/// Peak resident memory (VmHWM) of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Reads a non-follow ReadLogs answer as it streams, keeping only the count and the first and
/// last entries (the whole answer is hundreds of MiB).
async fn tail_summary(
    api: &Api,
    id: &str,
    tail: i64,
) -> (usize, Option<LogEntry>, Option<LogEntry>) {
    let answer = api
        .call(
            "/LogDriver.ReadLogs",
            &Api::read_logs_body(id, "", "", tail, false),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let mut pending = BytesMut::new();
    let (mut count, mut first, mut last) = (0, None, None);
    while let Some(frame) = body.frame().await {
        let data = frame.expect("stream").into_data().expect("data");
        pending.extend_from_slice(&data);
        while pending.len() >= 4 {
            let len = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
            if pending.len() < 4 + len {
                break;
            }
            pending.advance(4);
            let frame = pending.split_to(len);
            if first.is_none() {
                first = Some(LogEntry::decode(&frame[..]).expect("a LogEntry"));
            }
            last = Some(frame);
            count += 1;
        }
    }
    assert!(pending.is_empty(), "the answer ends inside a frame");
    let last = last.map(|frame| LogEntry::decode(&frame[..]).expect("a LogEntry"));
    (count, first, last)
}

/// Regression: the tail held all N decoded entries and whole decompressed segments (Tail=300000
/// over a 300 MB store: 7 MiB -> 352 MiB), and concurrent readers multiplied it. It streams now:
/// the plugin's memory does not follow N or the store's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_logs_tail_of_a_300_mib_store_keeps_the_plugin_small() {
    let id = container_id(0x7a);
    let started = Instant::now();
    let mut total = 0;
    let plugin = PluginProcess::start_prepared(&[], |state| total = write_store(state, &id));
    let written = started.elapsed();
    let api = plugin.client();
    let pid = plugin.pid();
    let at_start = probe::usage(pid);
    let (count, _, last) = tail_summary(&api, &id, 10).await;
    assert_eq!(count, 10);
    assert_eq!(last, Some(as_shown(&[entry(total - 1)])[0].clone()));
    let after_small = probe::usage(pid);

    let reading = Instant::now();
    let n = 300_000.min(total);
    // Two readers at once: each must cost a read step, not the answer.
    let (one, two) = tokio::join!(
        tail_summary(&api, &id, n as i64),
        tail_summary(&api, &id, n as i64)
    );
    let read_time = reading.elapsed();
    let peak = peak_rss_kib(pid);
    let after = probe::usage(pid);
    for (count, first, last) in [one, two] {
        assert_eq!(count, n);
        assert_eq!(first, Some(as_shown(&[entry(total - n)])[0].clone()));
        assert_eq!(last, Some(as_shown(&[entry(total - 1)])[0].clone()));
    }
    let growth_mib = peak.saturating_sub(at_start.rss_kib) as f64 / 1024.0;
    eprintln!(
        "store of {total} entries ({} MiB) written in {written:?}; plugin at start: {at_start}; \
         after Tail=10: {after_small}; two Tail={n} in {read_time:?}: peak RSS {:.1} MiB \
         (+{growth_mib:.1} MiB), after: {after}",
        ((GZ_SEGMENTS + PLAIN_SEGMENTS) as usize * SEGMENT_BYTES) >> 20,
        peak as f64 / 1024.0,
    );
    assert!(
        growth_mib < 64.0,
        "two Tail={n} answers took the plugin from {at_start} to a peak of {:.1} MiB",
        peak as f64 / 1024.0
    );
}
