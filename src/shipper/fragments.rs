//! Rejoining split lines. The engine splits a line longer than 16 KiB into partial entries: the
//! same `partial_log_metadata.id`, ordinals from 1, `last` on the final one; a line that ends
//! with the process (no `last` ever) simply stops. One document per line is what a user
//! searches, so the fragments are joined back here, with a byte cap ([`Fragments::new`]) so a line
//! that never ends cannot grow without bound, and a wait the caller enforces through
//! [`Fragments::waiting_since`] and [`Fragments::flush_at`].
//!
//! Each stream (`source`: stdout, stderr) has its own pending line: the engine copies the two
//! pipes independently, so another stream's entries come between one line's fragments. A line
//! pending in one stream is ended only by its own stream: its last fragment, an entry that is not
//! its continuation, the cap, the caller (the wait), or more than [`MAX_STREAMS`] streams pending.
//!
//! # Replay
//! A crash replays the store from the checkpoint, and the replay must cut the same documents as
//! the first pass, or a document's id (its first fragment's position) is reused for different
//! text and Elasticsearch answers 409 to it. Everything here is decided by the entries alone,
//! except the wait: the caller records where it flushed a line early (a split point, the store
//! position where that document ends) durably before shipping it, and gives the recorded points
//! back to a replay ([`Fragments::with_splits`]), which cuts there too.
//!
//! Lines of different streams overlap in the store, so "the position after the last document
//! shipped" is not a safe place to resume: it can fall inside a line still pending in the other
//! stream. [`Fragments::resume`] gives the position a replay can start from and rebuild exactly
//! the documents not yet handed out: no pending line starts before it, and no line handed out
//! straddles it (each pending line carries an anchor: its start, or the anchor of a line pending
//! in another stream when it began, whichever is lower).
//!
//! The invariant the shipper relies on (and the fuzz target `fragments` checks): the lines
//! handed out cover the entries pushed exactly once; each line's entries are of one stream and in
//! order, and no message is over the cap unless a single entry is.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::entry::LogEntry;
use crate::store::Position;

/// Pending lines kept at once. The engine has two streams; the cap only bounds memory against
/// entries naming many (the FIFO's `source` is not checked): past it the oldest pending line is
/// handed out as it is. A rule on the entries alone, so a replay cuts the same way.
pub const MAX_STREAMS: usize = 4;

/// One line to ship: the entries of one stream from `start` to `end`, joined. Entries of other
/// streams may lie between.
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
    /// Where a replay must start to rebuild this line and every line it overlaps.
    anchor: Position,
}

/// The lines being rejoined, one per stream.
#[derive(Debug)]
pub struct Fragments {
    max: usize,
    /// In the order they began.
    pending: Vec<Pending>,
    /// Recorded split points not yet reached: a pending line whose fragment ends at one is cut
    /// there, as it was when the point was recorded.
    splits: BTreeSet<Position>,
}

impl Fragments {
    /// `max`: a rejoined message is cut into another line before it would pass this many bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            pending: Vec::new(),
            splits: BTreeSet::new(),
        }
    }

    /// For a replay: cut pending lines at these split points (see the module doc).
    pub fn with_splits(mut self, splits: impl IntoIterator<Item = Position>) -> Self {
        self.splits.extend(splits);
        self
    }

    /// Takes the entry stored between `start` and `end`; returns the lines it completes, in
    /// order (at most two: a line it interrupts or pushes out, and its own).
    pub fn push(&mut self, entry: LogEntry, start: Position, end: Position) -> [Option<Line>; 2] {
        let out = self.push_entry(entry, start, end);
        // Points at or before this entry can no longer be reached.
        while self.splits.first().is_some_and(|&s| s <= end) {
            self.splits.pop_first();
        }
        out
    }

    fn push_entry(&mut self, entry: LogEntry, start: Position, end: Position) -> [Option<Line>; 2] {
        let line = entry.line;
        let slot = self
            .pending
            .iter()
            .position(|p| p.line.stream == entry.source);
        if !entry.partial {
            let whole = Line {
                start,
                end,
                time_nano: entry.time_nano,
                stream: entry.source,
                message: line.to_vec(),
            };
            return [slot.map(|i| self.take(i)), Some(whole)];
        }
        let meta = entry.partial_log_metadata.unwrap_or_default();
        let continues = slot.filter(|&i| {
            let p = &self.pending[i];
            p.partial_id == meta.id && p.line.message.len() + line.len() <= self.max
        });
        let (i, ended) = match (slot, continues) {
            (_, Some(i)) => (i, None),
            (slot, None) => {
                let ended = match slot {
                    Some(i) => Some(self.take(i)),
                    None if self.pending.len() >= MAX_STREAMS => Some(self.take(0)),
                    None => None,
                };
                // A line that begins while others are pending overlaps them: a replay must
                // start where the earliest of them would.
                let anchor = self
                    .pending
                    .iter()
                    .map(|p| p.anchor)
                    .min()
                    .map_or(start, |a| a.min(start));
                self.pending.push(Pending {
                    line: Line {
                        start,
                        end,
                        time_nano: entry.time_nano,
                        stream: entry.source,
                        message: Vec::with_capacity(line.len() * 2),
                    },
                    partial_id: meta.id,
                    since: Instant::now(),
                    anchor,
                });
                (self.pending.len() - 1, ended)
            }
        };
        let pending = &mut self.pending[i];
        pending.line.message.extend_from_slice(&line);
        pending.line.end = end;
        pending.since = Instant::now();
        let cut = meta.last || self.splits.contains(&end);
        [ended, cut.then(|| self.take(i))]
    }

    fn take(&mut self, i: usize) -> Line {
        self.pending.remove(i).line
    }

    /// Every pending line's end, and when its last fragment came.
    pub fn waiting_since(&self) -> impl Iterator<Item = (Position, Instant)> + '_ {
        self.pending.iter().map(|p| (p.line.end, p.since))
    }

    /// The pending line that ends at `end`, as it is (the caller will not wait for the rest and
    /// has recorded `end` as a split point).
    pub fn flush_at(&mut self, end: Position) -> Option<Line> {
        let i = self.pending.iter().position(|p| p.line.end == end)?;
        Some(self.take(i))
    }

    /// Every pending line as it is, in the order they began: no more of them will come (the
    /// container's logging stopped), so no split point is needed.
    pub fn flush(&mut self) -> Vec<Line> {
        self.pending.drain(..).map(|p| p.line).collect()
    }

    /// Where a replay must start so that it rebuilds, from the entries alone and the recorded
    /// split points, every line not yet handed out and no part of one handed out: `read_to`
    /// (just after the last entry pushed) unless a line is pending.
    pub fn resume(&self, read_to: Position) -> Position {
        self.pending
            .iter()
            .map(|p| p.anchor)
            .min()
            .map_or(read_to, |a| a.min(read_to))
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
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

    fn whole(stream: &str, text: &str) -> LogEntry {
        LogEntry {
            source: stream.into(),
            partial: false,
            partial_log_metadata: None,
            ..fragment("", text, false)
        }
    }

    /// Regression (issue 12, item 9): one pending line for both streams cut a long stdout line
    /// wherever the container wrote to stderr between its fragments (the engine interleaves the
    /// streams between fragments).
    #[test]
    fn a_long_stdout_line_interleaved_with_stderr_lines_is_one_document() {
        let mut f = Fragments::new(1 << 20);
        let mut out = Vec::new();
        let entries = [
            fragment("x", "first ", false),
            whole("stderr", "an error"),
            fragment("x", "second ", false),
            whole("stderr", "another"),
            fragment("x", "third", true),
        ];
        for (i, e) in entries.into_iter().enumerate() {
            out.extend(
                f.push(e, at(i as u64), at(i as u64 + 1))
                    .into_iter()
                    .flatten(),
            );
        }
        assert_eq!(
            messages(&out),
            ["an error", "another", "first second third"]
        );
        assert_eq!(out[2].stream, "stdout");
        assert_eq!((out[2].start, out[2].end), (at(0), at(5)));
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
        assert!(f.waiting_since().next().is_none());
    }

    /// A line flushed early at a recorded split point is cut there again by a replay, so the
    /// documents (and their ids) come out the same.
    #[test]
    fn a_replay_cuts_a_line_at_its_recorded_split_point() {
        let entries = || [fragment("x", "slow ", false), fragment("x", "line", true)];
        let mut first = Fragments::new(1 << 20);
        let mut out = Vec::new();
        let [e0, e1] = entries();
        out.extend(first.push(e0, at(0), at(1)).into_iter().flatten());
        let (end, _) = first.waiting_since().next().unwrap();
        out.extend(first.flush_at(end));
        out.extend(first.push(e1, at(1), at(2)).into_iter().flatten());
        assert_eq!(messages(&out), ["slow ", "line"]);

        let mut replay = Fragments::new(1 << 20).with_splits([end]);
        let mut again = Vec::new();
        for (i, e) in entries().into_iter().enumerate() {
            again.extend(
                replay
                    .push(e, at(i as u64), at(i as u64 + 1))
                    .into_iter()
                    .flatten(),
            );
        }
        assert_eq!(again, out);
    }

    /// A replay from `resume` rebuilds a pending line whole, and a line of the other stream
    /// handed out meanwhile is not cut in two by the start of the replay.
    #[test]
    fn resume_is_before_every_pending_line_and_every_line_overlapping_one() {
        let mut f = Fragments::new(1 << 20);
        f.push(fragment("a", "out1 ", false), at(0), at(1));
        let err = LogEntry {
            source: "stderr".into(),
            ..fragment("b", "err1 ", false)
        };
        f.push(err, at(1), at(2));
        let done = f.push(fragment("a", "out2", true), at(2), at(3));
        assert_eq!(done[1].as_ref().unwrap().message, b"out1 out2");
        // The stderr line pending since 1 overlaps the stdout line handed out (0 to 3): a replay
        // from 1 would find "out2" without its start.
        assert_eq!(f.resume(at(3)), at(0));
        f.flush();
        assert_eq!(f.resume(at(3)), at(3));
    }

    #[test]
    fn more_streams_than_the_cap_push_out_the_oldest_pending_line() {
        let mut f = Fragments::new(1 << 20);
        let mut out = Vec::new();
        for i in 0..=MAX_STREAMS as u64 {
            let e = LogEntry {
                source: format!("s{i}"),
                ..fragment("x", "p", false)
            };
            out.extend(f.push(e, at(i), at(i + 1)).into_iter().flatten());
        }
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].stream.as_str(), out[0].start), ("s0", at(0)));
        assert_eq!(f.waiting_since().count(), MAX_STREAMS);
    }

    mod replay {
        use super::*;
        use proptest::prelude::*;

        /// One step of a first pass: an entry stored, or the wait running out for the oldest
        /// pending line (the caller flushes it and records a split point).
        #[derive(Debug, Clone)]
        enum Step {
            Entry {
                stderr: bool,
                partial: bool,
                id: u8,
                last: bool,
                len: usize,
            },
            Wait,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                8 => (any::<bool>(), any::<bool>(), 0u8..3, any::<bool>(), 1usize..6).prop_map(
                    |(stderr, partial, id, last, len)| Step::Entry { stderr, partial, id, last, len }
                ),
                1 => Just(Step::Wait),
            ]
        }

        fn entry(
            i: usize,
            stderr: bool,
            partial: bool,
            id: u8,
            last: bool,
            len: usize,
        ) -> LogEntry {
            let text: String = (0..len)
                .map(|k| (b'a' + ((i + k) % 26) as u8) as char)
                .collect();
            LogEntry {
                source: if stderr { "stderr" } else { "stdout" }.into(),
                time_nano: i as i64,
                line: text.into_bytes().into(),
                partial,
                partial_log_metadata: partial.then(|| PartialLogEntryMetadata {
                    last,
                    id: format!("id{id}"),
                    ordinal: 1,
                }),
            }
        }

        proptest! {
            /// A crash after any line handed out: everything before the resume position was
            /// handed out by then, and a replay from there (entries alone, plus the split points
            /// recorded) hands out exactly the lines of the first pass that start at or after it,
            /// the same ones: no line lost, none cut differently (an id reused for other text).
            #[test]
            fn a_replay_from_resume_rebuilds_the_same_lines(
                steps in proptest::collection::vec(step(), 1..60),
                cap in 3usize..12,
            ) {
                let mut entries = Vec::new();
                let mut first = Fragments::new(cap);
                let mut splits = Vec::new();
                let mut out: Vec<Line> = Vec::new();
                // After each step that handed lines out: how many, and the resume position then
                // (the lines of one step go into one batch, acknowledged whole).
                let mut resumes: Vec<(usize, Position)> = Vec::new();
                for s in &steps {
                    match *s {
                        Step::Entry { stderr, partial, id, last, len } => {
                            let i = entries.len();
                            let e = entry(i, stderr, partial, id, last, len);
                            entries.push(e.clone());
                            out.extend(first.push(e, at(i as u64), at(i as u64 + 1)).into_iter().flatten());
                        }
                        Step::Wait => {
                            let oldest = first.waiting_since().next();
                            if let Some((end, _)) = oldest {
                                splits.push(end);
                                out.extend(first.flush_at(end));
                            }
                        }
                    }
                    resumes.push((out.len(), first.resume(at(entries.len() as u64))));
                }
                out.extend(first.flush());
                resumes.push((out.len(), at(entries.len() as u64)));
                // Every entry in exactly one line: a line is its stream's entries from its
                // start to its end.
                let mut covered = vec![0u8; entries.len()];
                for line in &out {
                    prop_assert!(line.start < line.end);
                    let mut joined = Vec::new();
                    for i in line.start.offset as usize..line.end.offset as usize {
                        if entries[i].source == line.stream {
                            covered[i] += 1;
                            joined.extend_from_slice(&entries[i].line);
                        }
                    }
                    prop_assert_eq!(&joined, &line.message);
                }
                prop_assert!(covered.iter().all(|&c| c == 1), "an entry in no line or in two");

                for &(handed_out, resume) in &resumes {
                    for line in &out[handed_out..] {
                        prop_assert!(line.start >= resume, "{:?} starts before {:?}", line, resume);
                    }
                    let mut replay = Fragments::new(cap)
                        .with_splits(splits.iter().copied().filter(|&s| s > resume));
                    let mut again = Vec::new();
                    for (i, e) in entries.iter().enumerate().skip(resume.offset as usize) {
                        again.extend(
                            replay
                                .push(e.clone(), at(i as u64), at(i as u64 + 1))
                                .into_iter()
                                .flatten(),
                        );
                    }
                    again.extend(replay.flush());
                    let mut want: Vec<&Line> = out.iter().filter(|l| l.start >= resume).collect();
                    let mut got: Vec<&Line> = again.iter().collect();
                    want.sort_by_key(|l| l.start);
                    got.sort_by_key(|l| l.start);
                    prop_assert_eq!(got, want, "replay from {:?}", resume);
                }
            }
        }
    }
}
