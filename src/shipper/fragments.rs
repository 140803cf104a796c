//! Rejoining split lines. The engine splits a line longer than 16 KiB into partial entries: the
//! same `partial_log_metadata.id`, ordinals from 1, `last` on the final one; a line that ends
//! with the process (no `last` ever) simply stops. One document per line is what a user
//! searches, so the fragments are joined back here, with a byte cap ([`Fragments::new`]) so a line
//! that never ends cannot grow without bound, and a wait the caller enforces through
//! [`Fragments::waiting_since`] and [`Fragments::flush`].
//!
//! The invariant the shipper relies on (and the fuzz target `fragments` checks): the lines
//! handed out, in order, cover the entries pushed exactly once and in order: their messages
//! joined are the entries' lines joined, each line's `start` is the previous line's `end`, and no
//! message is over the cap unless a single entry is.

use std::time::Instant;

use crate::entry::LogEntry;
use crate::store::Position;

/// One line to ship: the entries stored from `start` to `end`, joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub start: Position,
    pub end: Position,
    /// The first fragment's time (the engine gives every fragment of a line the same).
    pub time_nano: i64,
    pub stream: String,
    pub message: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    line: Line,
    partial_id: String,
    since: Instant,
}

/// The line being rejoined, if any.
#[derive(Debug)]
pub struct Fragments {
    max: usize,
    pending: Option<Pending>,
}

impl Fragments {
    /// `max`: a rejoined message is cut into another line before it would pass this many bytes.
    pub fn new(max: usize) -> Self {
        Self { max, pending: None }
    }

    /// Takes the entry stored between `start` and `end`; returns the lines it completes, in
    /// order (at most two: a line it interrupts, and itself).
    pub fn push(&mut self, entry: LogEntry, start: Position, end: Position) -> [Option<Line>; 2] {
        let line = entry.line;
        if !entry.partial {
            let whole = Line {
                start,
                end,
                time_nano: entry.time_nano,
                stream: entry.source,
                message: line.to_vec(),
            };
            return [self.flush(), Some(whole)];
        }
        let meta = entry.partial_log_metadata.unwrap_or_default();
        let continues = self.pending.as_ref().is_some_and(|p| {
            p.partial_id == meta.id && p.line.message.len() + line.len() <= self.max
        });
        let interrupted = if continues { None } else { self.flush() };
        let pending = self.pending.get_or_insert_with(|| Pending {
            line: Line {
                start,
                end,
                time_nano: entry.time_nano,
                stream: entry.source,
                message: Vec::with_capacity(line.len() * 2),
            },
            partial_id: meta.id,
            since: Instant::now(),
        });
        pending.line.message.extend_from_slice(&line);
        pending.line.end = end;
        pending.since = Instant::now();
        let done = if meta.last { self.flush() } else { None };
        [interrupted, done]
    }

    /// When the last fragment of the pending line came, if one is pending.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.since)
    }

    /// The pending line as it is (its end never came, or will not be waited for).
    pub fn flush(&mut self) -> Option<Line> {
        self.pending.take().map(|p| p.line)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::PartialLogEntryMetadata;

    fn at(offset: u64) -> Position {
        Position { segment: 0, offset }
    }

    fn fragment(id: &str, text: &str, last: bool) -> LogEntry {
        LogEntry {
            source: "stdout".into(),
            time_nano: 7,
            line: text.as_bytes().to_vec().into(),
            partial: true,
            partial_log_metadata: Some(PartialLogEntryMetadata {
                last,
                id: id.into(),
                ordinal: 1,
            }),
        }
    }

    fn messages(lines: &[Line]) -> Vec<&str> {
        lines
            .iter()
            .map(|l| std::str::from_utf8(&l.message).unwrap())
            .collect()
    }

    #[test]
    fn fragments_join_until_last_and_a_whole_line_interrupts() {
        let mut f = Fragments::new(1 << 20);
        let mut out = Vec::new();
        let entries = [
            fragment("a", "he", false),
            fragment("a", "llo", true),
            fragment("b", "cut ", false),
            LogEntry {
                partial: false,
                partial_log_metadata: None,
                ..fragment("", "whole", false)
            },
        ];
        for (i, e) in entries.into_iter().enumerate() {
            out.extend(
                f.push(e, at(i as u64), at(i as u64 + 1))
                    .into_iter()
                    .flatten(),
            );
        }
        assert_eq!(messages(&out), ["hello", "cut ", "whole"]);
        assert_eq!((out[0].start, out[0].end), (at(0), at(2)));
        assert_eq!((out[1].start, out[1].end), (at(2), at(3)));
        assert!(f.is_empty());
    }

    #[test]
    fn a_line_that_never_ends_is_cut_at_the_cap() {
        let mut f = Fragments::new(8);
        let mut out = Vec::new();
        for i in 0..5 {
            out.extend(
                f.push(fragment("x", "abc", false), at(i), at(i + 1))
                    .into_iter()
                    .flatten(),
            );
        }
        out.extend(f.flush());
        assert_eq!(messages(&out), ["abcabc", "abcabc", "abc"]);
        assert!(f.waiting_since().is_none());
    }
}
