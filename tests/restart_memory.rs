//! A plugin restart with many reopened FIFOs over large local copies, through the real plugin
//! binary: how soon the API answers and what the recovery costs in memory (the plugin stays
//! fast and small when it restarts over many containers).
//!
//! The state dir is written as a crashed plugin leaves it: a run table naming one FIFO per
//! container, and per container a 100 MiB store (five gzipped 20 MiB segments, hard-linked
//! between containers to spare the disk, and an active segment of its own) whose last entries
//! are still in the FIFO (the round the crash stored but did not consume), followed by lines
//! written while the plugin was down. The host's boot is recorded as the current one: a crash,
//! not a reboot, so the stores go on in their active segments.

mod support;
use support::{engine, probe};

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::*;
use es_logging_plugin::protocol::Info;
use es_logging_plugin::runs::{RunRecord, RunTable};
use prost::Message;

const T0: i64 = 1_790_000_000_000_000_000;
const CONTAINERS: u8 = 100;
const SEGMENT_BYTES: usize = 20 << 20;
const GZ_SEGMENTS: u64 = 5;
const LINE_BYTES: usize = 1000;
/// Entries at the end of every store that are also at the front of its FIFO.
const ROUND: usize = 30;
/// Entries written into every FIFO while the plugin was down.
const NEW: usize = 10;
const RSS_LIMIT_MIB: u64 = 64;

fn entry(seq: usize) -> LogEntry {
    // Text that gzip cannot shrink to nothing.
    let mut text = format!("{seq:08} ").into_bytes();
    let mut x = (seq as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while text.len() < LINE_BYTES {
        x ^= x << 7;
        x ^= x >> 9;
        text.push(b'0' + (x % 75) as u8);
    }
    line("stdout", T0 + seq as i64, &text)
}

fn record(entry: &LogEntry, out: &mut Vec<u8>) {
    let payload = entry.encode_to_vec();
    let size = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&size);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&size);
}

/// The gzipped segments every store shares, written once under `dir`; returns the next entry's
/// sequence number.
fn write_shared_segments(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).expect("shared dir");
    let mut seq = 0;
    for number in 1..=GZ_SEGMENTS {
        let mut content = Vec::with_capacity(SEGMENT_BYTES + 2 * LINE_BYTES);
        while content.len() < SEGMENT_BYTES {
            record(&entry(seq), &mut content);
            seq += 1;
        }
        let file = File::create(dir.join(format!("{number:020}.log.gz"))).expect("create .gz");
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(&content).expect("write .gz");
        gz.finish().expect("finish .gz");
    }
    seq
}

fn active_segment(state: &Path, id: &str) -> PathBuf {
    state
        .join("containers")
        .join(id)
        .join(format!("{:020}.log", GZ_SEGMENTS + 1))
}

/// Everything a crashed plugin leaves for one container; returns its FIFO, held open by "the
/// engine".
fn leave_crashed_run(
    state: &Path,
    shared: &Path,
    fifos: &Path,
    n: u8,
    round: &[usize],
) -> EngineFifo {
    let id = container_id(n);
    let dir = state.join("containers").join(&id);
    std::fs::create_dir_all(&dir).expect("store dir");
    for number in 1..=GZ_SEGMENTS {
        let name = format!("{number:020}.log.gz");
        std::fs::hard_link(shared.join(&name), dir.join(&name)).expect("link a segment");
    }
    let mut active = Vec::new();
    for &seq in round {
        record(&entry(seq), &mut active);
    }
    std::fs::write(active_segment(state, &id), &active).expect("active segment");

    let mut fifo = EngineFifo::create(fifos, &format!("fifo-{n}"));
    let pending: Vec<u8> = (round[0]..round[0] + ROUND + NEW)
        .flat_map(|seq| frame(&entry(seq)))
        .collect();
    fifo.file.write_all(&pending).expect("fill the FIFO");
    RunTable::load(state)
        .expect("run table")
        .insert(RunRecord {
            file: fifo.path.to_string_lossy().into_owned(),
            info: Info {
                container_id: id,
                container_name: format!("/c{n}"),
                ..Info::default()
            },
            stopped: false,
        })
        .expect("record the run");
    fifo
}

/// Regression: recovery read the last 65,536 entries of every reopened FIFO's store (whole gzip
/// segments decompressed) before the API served, one FIFO after another, and kept them until
/// the container logged again (10 such FIFOs: 27 MiB before a kill -9, 742 MiB after the
/// restart). Now only a FIFO that holds bytes is checked, against its store's last 2 MiB, as a
/// stream, each FIFO in a task of its own after the API serves.
///
/// Regression too: that check ran on the runtime's threads (the first entry searched in the
/// last gzip segment, decompressed), so with a hundred such FIFOs the API answered 6.4-8.8 s
/// after the start (CI failed at 6.6 s). It now runs on the blocking pool as the FIFO is
/// reopened: 17-126 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_hundred_fifos_over_100_mib_stores_answers_at_once_and_stays_small() {
    let fifos = tempfile::tempdir().expect("fifo dir");
    let mut writers = Vec::new();
    let mut ready = Instant::now();
    let mut first_new = 0;
    let plugin = PluginProcess::start_prepared(&[], |state| {
        let shared = fifos.path().join("shared");
        let next = write_shared_segments(&shared);
        let round: Vec<usize> = (next..next + ROUND).collect();
        first_new = next + ROUND;
        std::fs::create_dir_all(state).expect("state dir");
        for n in 1..=CONTAINERS {
            writers.push(leave_crashed_run(state, &shared, fifos.path(), n, &round));
        }
        // The boot the host is in: this restart is a crash's, not a reboot's.
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot_id");
        std::fs::write(state.join("containers").join(".boot_id"), boot).expect(".boot_id");
        ready = Instant::now();
    });
    let api = plugin.client();
    let (status, _) = api.call_text("/LogDriver.Capabilities", "{}").await;
    let answered = ready.elapsed();
    assert_eq!(status, 200);
    println!("API answered {answered:?} after the start");

    // Every FIFO drained: its active segment holds the round once, then the new lines.
    let want_len = {
        let mut out = Vec::new();
        for seq in first_new - ROUND..first_new + NEW {
            record(&entry(seq), &mut out);
        }
        out.len() as u64
    };
    wait_until(
        Duration::from_secs(120),
        "every FIFO drained into its store",
        || {
            (1..=CONTAINERS).all(|n| {
                std::fs::metadata(active_segment(&plugin.state, &container_id(n)))
                    .is_ok_and(|m| m.len() >= want_len)
            })
        },
    );
    // Let the last rounds finish, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let after = probe::usage(plugin.pid());
    println!("after recovering {CONTAINERS} FIFOs: {after}");

    // Nothing stored twice, nothing lost.
    for n in 1..=CONTAINERS {
        let id = container_id(n);
        let len = std::fs::metadata(active_segment(&plugin.state, &id))
            .expect("active segment")
            .len();
        assert_eq!(
            len, want_len,
            "container {n}: the round was stored twice or lines lost"
        );
    }
    let shown = api
        .read_logs(&container_id(1), "", "", (ROUND + NEW) as i64)
        .await;
    let want: Vec<LogEntry> = (first_new - ROUND..first_new + NEW).map(entry).collect();
    assert_same_entries(&shown, &as_shown(&want));

    assert!(
        answered < Duration::from_secs(1),
        "the API answered {answered:?} after the start"
    );
    assert!(
        after.rss_kib < RSS_LIMIT_MIB << 10,
        "after the restart: {after} (limit {RSS_LIMIT_MIB} MiB)"
    );
    drop(writers);
}
