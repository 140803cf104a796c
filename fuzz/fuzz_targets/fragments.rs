//! Rejoining split lines (src/shipper/fragments.rs) over any sequence of whole lines and
//! fragments: ids that change, `last` missing or repeated, empty fragments, a small cap.
//! Properties:
//! - the lines handed out (then the one flushed at the end) cover the entries exactly once and
//!   in order: messages joined == entries' lines joined, each line starts where the previous
//!   ended, the first at the first entry, the last at the end of the last entry;
//! - a line spanning several entries holds fragments of one id only, with `last` on none but
//!   possibly its final one, and a whole line is always a line of its own;
//! - a message is over the cap only when it is a single entry.
#![no_main]

use arbitrary::Arbitrary;
use es_logging_plugin::entry::{LogEntry, PartialLogEntryMetadata};
use es_logging_plugin::shipper::fragments::{Fragments, Line};
use es_logging_plugin::store::Position;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Piece {
    partial: bool,
    /// Few distinct ids, so runs of one id are common.
    id: u8,
    last: bool,
    line: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    cap: u8,
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
            source: if i % 2 == 0 { "stdout" } else { "stderr" }.into(),
            time_nano: i as i64,
            line: p.line.clone().into(),
            partial: p.partial,
            partial_log_metadata: p.partial.then(|| PartialLogEntryMetadata {
                last: p.last,
                id: format!("id{}", p.id % 3),
                ordinal: i as i32 + 1,
            }),
        })
        .collect();
    let mut fragments = Fragments::new(cap);
    let mut lines: Vec<Line> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        lines.extend(
            fragments
                .push(entry.clone(), at(i), at(i + 1))
                .into_iter()
                .flatten(),
        );
    }
    lines.extend(fragments.flush());
    assert!(fragments.is_empty() && fragments.waiting_since().is_none());

    let joined: Vec<u8> = lines.iter().flat_map(|l| l.message.clone()).collect();
    let want: Vec<u8> = entries.iter().flat_map(|e| e.line.to_vec()).collect();
    assert_eq!(joined, want, "messages joined != lines joined");

    let mut next = 0usize;
    for line in &lines {
        let (first, end) = (index_of(line.start), index_of(line.end));
        assert_eq!(first, next, "a gap or an overlap before {line:?}");
        assert!(end > first, "an empty line {line:?}");
        next = end;
        let span = &entries[first..end];
        assert_eq!(
            line.time_nano, span[0].time_nano,
            "the first fragment's time"
        );
        assert_eq!(line.stream, span[0].source);
        if span.len() > 1 {
            assert!(
                line.message.len() <= cap,
                "{} bytes over the cap {cap}",
                line.message.len()
            );
            let id = |e: &LogEntry| e.partial_log_metadata.as_ref().map(|m| m.id.clone());
            for (k, e) in span.iter().enumerate() {
                assert!(e.partial, "a whole line joined to another");
                assert_eq!(id(e), id(&span[0]), "fragments of two ids joined");
                let last = e.partial_log_metadata.as_ref().is_some_and(|m| m.last);
                assert!(!last || k + 1 == span.len(), "joined past a last fragment");
            }
        }
    }
    assert_eq!(next, entries.len(), "entries left out at the end");
});
