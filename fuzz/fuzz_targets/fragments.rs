//! Rejoining split lines (src/shipper/fragments.rs) over any sequence of whole lines and
//! fragments: ids that change, `last` missing or repeated, empty fragments, a small cap.
//! Entries alternate between stdout and stderr more or less (`stream`), as the engine
//! interleaves them. Properties:
//! - the lines handed out (then those flushed at the end) cover the entries exactly once: a
//!   line is its stream's entries from its start to its end, joined; no entry is in two lines or
//!   in none;
//! - a line spanning several entries holds fragments of one id only, with `last` on none but
//!   possibly its final one, and a whole line is always a line of its own;
//! - a message is over the cap only when it is a single entry.
//!
//! With `merge` (multiline, marking lines that begin with `x`) lines are grouped further: then
//! a document is its stream's entries from its start to its end joined, with `\n` between its
//! lines (the entries' own newlines are replaced by spaces so that the joins can be told apart).
//! (That a replay from `Fragments::resume` rebuilds the same lines is a proptest beside the
//! module.)
#![no_main]

use arbitrary::Arbitrary;
use es_logging_plugin::entry::{LogEntry, PartialLogEntryMetadata};
use es_logging_plugin::shipper::fragments::{Fragments, Line};
use es_logging_plugin::shipper::multiline::{Match, MultilineOptions};
use es_logging_plugin::store::Position;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Piece {
    stderr: bool,
    partial: bool,
    /// Few distinct ids, so runs of one id are common.
    id: u8,
    last: bool,
    line: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    cap: u8,
    /// Multiline: match=before, max_lines, max_bytes.
    merge: Option<(bool, u8, u8)>,
    pieces: Vec<Piece>,
}

fn at(i: usize) -> Position {
    Position {
        segment: (i / 7) as u64,
        offset: (i % 7) as u64 * 100,
    }
}

fn index_of(p: Position) -> usize {
    p.segment as usize * 7 + p.offset as usize / 100
}

fuzz_target!(|input: Input| {
    let cap = input.cap as usize + 1;
    let entries: Vec<LogEntry> = input
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| LogEntry {
            source: if p.stderr { "stderr" } else { "stdout" }.into(),
            time_nano: i as i64,
            line: if input.merge.is_some() {
                p.line.iter().map(|&b| if b == b'\n' { b' ' } else { b }).collect::<Vec<u8>>().into()
            } else {
                p.line.clone().into()
            },
            partial: p.partial,
            partial_log_metadata: p.partial.then(|| PartialLogEntryMetadata {
                last: p.last,
                id: format!("id{}", p.id % 3),
                ordinal: i as i32 + 1,
            }),
        })
        .collect();
    let merge = input.merge.map(|(before, max_lines, max_bytes)| MultilineOptions {
        pattern: regex::bytes::Regex::new("^x").expect("a valid pattern"),
        negate: false,
        how: if before { Match::Before } else { Match::After },
        max_lines: usize::from(max_lines).max(1),
        max_bytes: usize::from(max_bytes).max(1),
        timeout: std::time::Duration::from_secs(5),
    });
    let merging = merge.is_some();
    let mut fragments = Fragments::new(cap).merging(merge);
    let mut lines: Vec<Line> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        fragments.push(entry.clone(), at(i), at(i + 1), &mut lines);
    }
    lines.extend(fragments.flush());
    assert!(fragments.is_empty() && fragments.waiting_since().next().is_none());

    let mut covered = vec![0u8; entries.len()];
    for line in &lines {
        let (first, end) = (index_of(line.start), index_of(line.end));
        assert!(end > first, "an empty line {line:?}");
        assert_eq!(
            entries[first].source, line.stream,
            "starts at its first entry"
        );
        let span: Vec<&LogEntry> = (first..end)
            .filter(|&i| entries[i].source == line.stream)
            .inspect(|&i| covered[i] += 1)
            .map(|i| &entries[i])
            .collect();
        let joined: Vec<u8> = span.iter().flat_map(|e| e.line.to_vec()).collect();
        let message: Vec<u8> = if merging {
            line.message.iter().copied().filter(|&b| b != b'\n').collect()
        } else {
            line.message.clone()
        };
        assert_eq!(joined, message, "the message is not its entries joined");
        assert_eq!(
            line.time_nano, span[0].time_nano,
            "the first fragment's time"
        );
        if span.len() > 1 && !merging {
            assert!(
                line.message.len() <= cap,
                "{} bytes over the cap {cap}",
                line.message.len()
            );
            let id = |e: &LogEntry| e.partial_log_metadata.as_ref().map(|m| m.id.clone());
            for (k, e) in span.iter().enumerate() {
                assert!(e.partial, "a whole line joined to another");
                assert_eq!(id(e), id(span[0]), "fragments of two ids joined");
                let last = e.partial_log_metadata.as_ref().is_some_and(|m| m.last);
                assert!(!last || k + 1 == span.len(), "joined past a last fragment");
            }
        }
    }
    assert!(
        covered.iter().all(|&c| c == 1),
        "an entry in no line or in two: {covered:?}"
    );
});
