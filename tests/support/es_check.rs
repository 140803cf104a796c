//! What the shipping tests feed and check: container lines (short ones and long split ones),
//! a feeder that plays a container logging at a steady rate and times every write to the FIFO,
//! and the checks on what reached the Elasticsearch imitation and the dead-letter files.
//!
//! Built on `support::engine` (the FIFO side) and `support::es_server` (what was indexed).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use super::engine::{fragments, line, EngineFifo, LogEntry};
use super::es_server::{EsServer, StoredDoc};

pub const T0: i64 = 1_790_000_000_000_000_000;

/// Lines of one container: short ones, and every `split_every`-th a 40 KB line in fragments,
/// every line different. Returns the entries to write and the message of each line.
pub fn container_lines(n: usize, tag: u8, split_every: usize) -> (Vec<LogEntry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut messages = Vec::new();
    for i in 0..n {
        let (line_entries, message) = one_line(i, tag, split_every);
        entries.extend(line_entries);
        messages.push(message);
    }
    (entries, messages)
}

/// Line `i` of container `tag`: its entries (one, or the fragments of a 40 KB line) and message.
fn one_line(i: usize, tag: u8, split_every: usize) -> (Vec<LogEntry>, String) {
    let t = T0 + (i as i64) * 1000 + tag as i64;
    if split_every > 0 && i % split_every == split_every - 1 {
        // Lowercase letters only (a fragment cut from it is still recognisable), starting with
        // `i` in base 26 so that no two long lines are the same.
        let mut text: Vec<u8> = (0..6)
            .map(|d| b'a' + (i / 26usize.pow(d) % 26) as u8)
            .collect();
        text.extend((text.len()..40_000).map(|k| b'a' + ((i + k) % 26) as u8));
        let entries = fragments(t, &text, &format!("p{tag}-{i}"));
        (entries, String::from_utf8(text).expect("ASCII"))
    } else {
        let text = format!("container {tag} line {i}");
        let source = if i % 2 == 0 { "stdout" } else { "stderr" };
        (vec![line(source, t, text.as_bytes())], text)
    }
}

pub async fn wait_for_docs(server: &EsServer, want: usize, limit: Duration) {
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

/// The messages indexed for one container, in timestamp order, and checks every id is unique.
pub fn messages_of(server: &EsServer, id: &str) -> Vec<String> {
    messages_in(&server.docs(), id)
}

/// [`messages_of`] over documents taken from one or more servers.
pub fn messages_in(docs: &[StoredDoc], id: &str) -> Vec<String> {
    let ids: HashSet<(&str, &str)> = docs
        .iter()
        .map(|d| (d.index.as_str(), d.id.as_str()))
        .collect();
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

/// The messages of every document in the dead-letter files under `state`.
pub fn dead_lettered(state: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state.join("dead-letter")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in dir.flatten() {
        let text = std::fs::read_to_string(file.path()).unwrap_or_default();
        for record in text.lines() {
            let record: serde_json::Value =
                serde_json::from_str(record).expect("a dead-letter record is JSON");
            let item = record["document"]
                .as_str()
                .expect("the refused NDJSON item");
            let source = item
                .lines()
                .nth(1)
                .expect("an action line, then the document");
            let doc: serde_json::Value =
                serde_json::from_str(source).expect("the refused document is JSON");
            out.push(doc["message"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

/// Lines as `docker logs` shows them: fragments joined, the newline ReadLogs adds removed.
pub fn shown_lines(entries: &[LogEntry]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for entry in entries {
        current.extend_from_slice(&entry.line);
        if entry.ends_line() {
            if current.last() == Some(&b'\n') {
                current.pop();
            }
            out.push(String::from_utf8_lossy(&current).into_owned());
            current.clear();
        }
    }
    out
}

/// Where every line sent went: the figures of the README's Reliability table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub sent: usize,
    /// Lines `docker logs` showed while Elasticsearch was failing.
    pub stored: usize,
    /// Distinct lines indexed.
    pub indexed: usize,
    /// Lines indexed more than once (under two `_id`s: one `_id` twice fails at once).
    pub duplicated: usize,
    pub dead_lettered: usize,
    /// Lines neither indexed nor dead-lettered.
    pub lost: usize,
}

impl Tally {
    /// Counts `indexed` and `dead` against `sent`; a line both indexed and dead-lettered is a
    /// duplicate.
    pub fn count(sent: &[String], stored: usize, indexed: &[String], dead: &[String]) -> Self {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for message in indexed.iter().chain(dead) {
            *seen.entry(message.as_str()).or_default() += 1;
        }
        let duplicated = seen.values().filter(|&&n| n > 1).count();
        let lost = sent
            .iter()
            .filter(|m| !seen.contains_key(m.as_str()))
            .count();
        let distinct_indexed: HashSet<&String> = indexed.iter().collect();
        Tally {
            sent: sent.len(),
            stored,
            indexed: distinct_indexed.len(),
            duplicated,
            dead_lettered: dead.len(),
            lost,
        }
    }
}

/// A container logging at a steady rate into its FIFO, each write timed: a write that waits
/// is the container being slowed (its pipe full because the plugin stopped draining).
pub struct Feeder {
    thread: std::thread::JoinHandle<Fed>,
}

/// What a [`Feeder`] did.
pub struct Fed {
    pub fifo: EngineFifo,
    /// The message of every line written, in order.
    pub messages: Vec<String>,
    pub entries: usize,
    pub slowest_write: Duration,
    pub elapsed: Duration,
}

impl Feeder {
    /// Writes `per_second` lines a second for `duration` (every `split_every`-th a 40 KB line
    /// in fragments), in bursts every 50 ms.
    pub fn start(
        mut fifo: EngineFifo,
        tag: u8,
        per_second: usize,
        duration: Duration,
        split_every: usize,
    ) -> Self {
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let tick = Duration::from_millis(50);
            let per_tick = (per_second / 20).max(1);
            let (mut messages, mut written, mut slowest_write) = (Vec::new(), 0, Duration::ZERO);
            let mut next = started;
            while started.elapsed() < duration {
                for _ in 0..per_tick {
                    let (entries, message) = one_line(messages.len(), tag, split_every);
                    let write = Instant::now();
                    fifo.write_entries(&entries);
                    slowest_write = slowest_write.max(write.elapsed());
                    written += entries.len();
                    messages.push(message);
                }
                next += tick;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Fed {
                fifo,
                messages,
                entries: written,
                slowest_write,
                elapsed: started.elapsed(),
            }
        });
        Feeder { thread }
    }

    pub async fn finish(self) -> Fed {
        tokio::task::spawn_blocking(move || self.thread.join().expect("feeder thread"))
            .await
            .expect("join the feeder")
    }
}

/// VmRSS (KiB) and open file descriptors of a process.
pub fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}
