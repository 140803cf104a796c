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
//! # Merging (multiline)
//! With `multiline.*` set, whole lines then go through a second stage (`multiline::Groups`):
//! one pending document per stream, ended by the grouping rule, its caps, the cap on streams, or
//! the wait.
//!
//! # Replay
//! A crash replays the store from the checkpoint, and the replay must cut the same documents as
//! the first pass, or a document's id (its first entry's position) is reused for different
//! text and Elasticsearch answers 409 to it. Everything here is decided by the entries alone,
//! except the wait: the caller records where it flushed early (a split point: the store
//! position where that stream's last entry ends) durably before shipping, and gives the
//! recorded points back to a replay ([`Fragments::with_splits`]). A split point cuts everything
//! pending in the stream of the entry that ends there, its line and its merged document, so one
//! recorded point serves both stages.
//!
//! Documents of different streams overlap in the store, so no single position is a clean place
//! to resume: "after the last document shipped" can fall inside a document still pending in the
//! other stream, and "before every pending document" inside one already shipped (with merging,
//! each stream nearly always has a document pending, so such a position would stop advancing
//! while both streams write). [`Fragments::resume`] therefore gives a [`Resume`]: for each
//! stream with something pending, where its first document not yet handed out starts; every
//! other entry before `skip_to` is in a document handed out. A replay reads from the lowest of
//! these and skips what is already handed out ([`Fragments::resuming`]), so each stream starts
//! exactly at a document's first entry.
//!
//! The invariant the shipper relies on (and the fuzz target `fragments` checks): the lines
//! handed out cover the entries pushed exactly once; each line's entries are of one stream and in
//! order, and no message is over the cap unless a single entry is.

use std::collections::BTreeSet;
use std::time::Instant;

pub use super::line::Line;
use super::multiline::{Groups, MultilineOptions};
use crate::entry::LogEntry;
use crate::store::Position;

/// Pending lines kept at once. The engine has two streams; the cap only bounds memory against
/// entries naming many (the FIFO's `source` is not checked): past it the oldest pending line is
/// handed out as it is. A rule on the entries alone, so a replay cuts the same way (while it
/// re-reads what other streams already shipped, a replay may see fewer streams pending than the
/// first pass did: with more than this many streams, which the engine never writes, a replay
/// can cut differently).
pub const MAX_STREAMS: usize = 4;

/// Where a replay starts so that it rebuilds exactly the documents not yet handed out (see the
/// module doc).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    /// The lowest of `skip_to` and the streams' positions: where the replay reads from.
    pub at: Position,
    /// Every entry before it whose stream is not in `streams` is in a document handed out (just
    /// after the last entry read, or a replay's own `skip_to` while it has not got there).
    pub skip_to: Position,
    /// Streams with something pending (or skipped by a replay), and where each one's first
    /// document not handed out starts: its entries before that are handed out.
    pub streams: Vec<(String, Position)>,
}

impl From<Position> for Resume {
    /// Nothing pending: everything before `at` is handed out.
    fn from(at: Position) -> Self {
        Resume {
            at,
            skip_to: at,
            streams: Vec::new(),
        }
    }
}

impl Resume {
    /// Whether a replay from here skips the entry of `stream` that starts at `start`.
    fn skips(&self, stream: &str, start: Position) -> bool {
        let from = self
            .streams
            .iter()
            .find(|(s, _)| s == stream)
            .map_or(self.skip_to, |&(_, p)| p);
        start < from
    }

    /// Of two resumes of one source, the one made later (both `skip_to` and `at` never go back
    /// as a source is read; `at` alone moves while a replay skips up to its `skip_to`).
    pub fn later(self, other: Self) -> Self {
        if other.is_after(&self) {
            other
        } else {
            self
        }
    }

    /// Made later than `other` (of the same source).
    pub fn is_after(&self, other: &Resume) -> bool {
        (self.skip_to, self.at) > (other.skip_to, other.at)
    }
}

#[derive(Debug)]
struct Pending {
    line: Line,
    partial_id: String,
    since: Instant,
}

/// The lines being rejoined, one per stream, and with multiline merging the documents being
/// merged, one per stream.
#[derive(Debug)]
pub struct Fragments {
    max: usize,
    /// In the order they began.
    pending: Vec<Pending>,
    /// Recorded split points not yet reached: everything pending in the stream of the entry
    /// that ends at one is cut there, as it was when the point was recorded.
    splits: BTreeSet<Position>,
    /// The second stage, when the container merges lines (`multiline`).
    merge: Option<Groups>,
    /// For a replay: what was handed out before it (until `skip_to` is passed).
    skip: Option<Resume>,
}

impl Fragments {
    /// `max`: a rejoined message is cut into another line before it would pass this many bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            pending: Vec::new(),
            splits: BTreeSet::new(),
            merge: None,
            skip: None,
        }
    }

    /// Whole lines are then merged into documents by `options` (see `multiline`).
    pub fn merging(mut self, options: Option<MultilineOptions>) -> Self {
        self.merge = options.map(Groups::new);
        self
    }

    /// For a replay: cut pending lines at these split points (see the module doc).
    pub fn with_splits(mut self, splits: impl IntoIterator<Item = Position>) -> Self {
        self.splits.extend(splits);
        self
    }

    /// For a replay from `resume.at`: entries already in documents handed out are skipped.
    pub fn resuming(mut self, resume: Resume) -> Self {
        self.skip = (resume.at < resume.skip_to).then_some(resume);
        self
    }

    /// Takes the entry stored between `start` and `end`; appends the documents it completes to
    /// `out`, in order.
    pub fn push(&mut self, entry: LogEntry, start: Position, end: Position, out: &mut Vec<Line>) {
        let skipped = match &self.skip {
            Some(resume) if start < resume.skip_to => resume.skips(&entry.source, start),
            Some(_) => {
                self.skip = None;
                false
            }
            None => false,
        };
        if !skipped {
            self.take_entry(entry, start, end, out);
        }
        // Points at or before this entry can no longer be reached.
        while self.splits.first().is_some_and(|&s| s <= end) {
            self.splits.pop_first();
        }
    }

    fn take_entry(&mut self, entry: LogEntry, start: Position, end: Position, out: &mut Vec<Line>) {
        let split = self.splits.contains(&end);
        // A split point cuts everything pending in its stream (see `flush_at`): with merging,
        // the stream's document too.
        let cut_document = (split && self.merge.is_some()).then(|| entry.source.clone());
        for line in self
            .push_entry(entry, start, end, split)
            .into_iter()
            .flatten()
        {
            self.pass(line, out);
        }
        if let Some(stream) = cut_document {
            if let Some(group) = self.merge.as_mut().and_then(|m| m.cut_at(&stream, end)) {
                out.push(group);
            }
        }
    }

    /// A whole line into the second stage, or out.
    fn pass(&mut self, line: Line, out: &mut Vec<Line>) {
        match self.merge.as_mut() {
            Some(merge) => merge.push(line, MAX_STREAMS, out),
            None => out.push(line),
        }
    }

    fn push_entry(
        &mut self,
        entry: LogEntry,
        start: Position,
        end: Position,
        split: bool,
    ) -> [Option<Line>; 2] {
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
                });
                (self.pending.len() - 1, ended)
            }
        };
        let pending = &mut self.pending[i];
        pending.line.message.extend_from_slice(&line);
        pending.line.end = end;
        pending.since = Instant::now();
        let cut = meta.last || split;
        [ended, cut.then(|| self.take(i))]
    }

    fn take(&mut self, i: usize) -> Line {
        self.pending.remove(i).line
    }

    /// How long a stream may wait for the rest of what is pending before it is shipped as it
    /// is: the multiline `timeout` when merging, else `default`.
    pub fn wait(&self, default: std::time::Duration) -> std::time::Duration {
        self.merge.as_ref().map_or(default, Groups::timeout)
    }

    /// For every stream with something pending: where its last entry ends, and when it came.
    pub fn waiting_since(&self) -> impl Iterator<Item = (Position, Instant)> + '_ {
        let lines = self.pending.iter().map(|p| (p.line.end, p.since));
        // A stream's merged document waits only while no line of it is pending (its line is
        // later and says when the stream last wrote).
        let groups = self.merge.iter().flat_map(move |m| {
            m.pending
                .iter()
                .filter(move |g| !self.pending.iter().any(|p| p.line.stream == g.line.stream))
                .map(|g| (g.line.end, g.since))
        });
        lines.chain(groups)
    }

    /// Everything pending in the stream whose last entry ends at `end`, as it is (the caller will
    /// not wait for the rest and has recorded `end` as a split point, which a replay cuts at the
    /// same way).
    pub fn flush_at(&mut self, end: Position, out: &mut Vec<Line>) {
        let stream = if let Some(i) = self.pending.iter().position(|p| p.line.end == end) {
            let line = self.take(i);
            let stream = line.stream.clone();
            self.pass(line, out);
            stream
        } else if let Some(stream) = self.merge.as_ref().and_then(|m| {
            m.pending
                .iter()
                .find(|g| g.line.end == end)
                .map(|g| g.line.stream.clone())
        }) {
            stream
        } else {
            return;
        };
        if let Some(group) = self.merge.as_mut().and_then(|m| m.cut_at(&stream, end)) {
            out.push(group);
        }
    }

    /// Every pending line and document as it is, in the order they began: no more of them will
    /// come (the container's logging stopped), so no split point is needed.
    pub fn flush(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        while !self.pending.is_empty() {
            let line = self.take(0);
            self.pass(line, &mut out);
        }
        if let Some(merge) = self.merge.as_mut() {
            out.extend(merge.pending.drain(..).map(|g| g.line));
        }
        out
    }

    /// Where a replay must start, and what it skips, so that it rebuilds from the entries alone
    /// and the recorded split points every document not yet handed out and no part of one
    /// handed out (see the module doc); `read_to` is just after the last entry pushed.
    pub fn resume(&self, read_to: Position) -> Resume {
        let mut streams: Vec<(String, Position)> = Vec::new();
        let groups = self
            .merge
            .iter()
            .flat_map(|m| m.pending.iter().map(|g| &g.line));
        for line in self.pending.iter().map(|p| &p.line).chain(groups) {
            match streams.iter_mut().find(|(s, _)| *s == line.stream) {
                Some((_, start)) => *start = (*start).min(line.start),
                None => streams.push((line.stream.clone(), line.start)),
            }
        }
        // A replay still skipping: what it skips is handed out. A stream that had something
        // pending is handed out up to where that began (or up to here), every other stream up
        // to the old `skip_to`.
        let mut skip_to = read_to;
        if let Some(skip) = &self.skip {
            skip_to = skip.skip_to.max(read_to);
            for (stream, from) in &skip.streams {
                if !streams.iter().any(|(s, _)| s == stream) {
                    streams.push((stream.clone(), (*from).max(read_to)));
                }
            }
        }
        let at = streams.iter().map(|&(_, p)| p).fold(skip_to, Position::min);
        Resume {
            at,
            skip_to,
            streams,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.merge.as_ref().is_none_or(|m| m.pending.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::PartialLogEntryMetadata;

    fn at(offset: u64) -> Position {
        Position { segment: 0, offset }
    }

    /// The documents one push hands out.
    fn push(f: &mut Fragments, e: LogEntry, start: Position, end: Position) -> Vec<Line> {
        let mut out = Vec::new();
        f.push(e, start, end, &mut out);
        out
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
            out.extend(push(&mut f, e, at(i as u64), at(i as u64 + 1)));
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
            out.extend(push(&mut f, e, at(i as u64), at(i as u64 + 1)));
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
            out.extend(push(&mut f, fragment("x", "abc", false), at(i), at(i + 1)));
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
        out.extend(push(&mut first, e0, at(0), at(1)));
        let (end, _) = first.waiting_since().next().unwrap();
        first.flush_at(end, &mut out);
        out.extend(push(&mut first, e1, at(1), at(2)));
        assert_eq!(messages(&out), ["slow ", "line"]);

        let mut replay = Fragments::new(1 << 20).with_splits([end]);
        let mut again = Vec::new();
        for (i, e) in entries().into_iter().enumerate() {
            again.extend(push(&mut replay, e, at(i as u64), at(i as u64 + 1)));
        }
        assert_eq!(again, out);
    }

    /// A replay from `resume` rebuilds a pending line whole, and skips the rest of a line of the
    /// other stream handed out meanwhile rather than shipping it again as a line of its own.
    #[test]
    fn resume_starts_each_stream_at_its_first_line_not_handed_out() {
        let mut f = Fragments::new(1 << 20);
        push(&mut f, fragment("a", "out1 ", false), at(0), at(1));
        let err = LogEntry {
            source: "stderr".into(),
            ..fragment("b", "err1 ", false)
        };
        push(&mut f, err.clone(), at(1), at(2));
        let done = push(&mut f, fragment("a", "out2", true), at(2), at(3));
        assert_eq!(done[0].message, b"out1 out2");
        let resume = f.resume(at(3));
        assert_eq!(
            resume,
            Resume {
                at: at(1),
                skip_to: at(3),
                streams: vec![("stderr".into(), at(1))],
            }
        );
        // The replay from 1 finds "out2" (handed out in "out1 out2") and skips it.
        let mut replay = Fragments::new(1 << 20).resuming(resume);
        let mut again = push(&mut replay, err, at(1), at(2));
        again.extend(push(&mut replay, fragment("a", "out2", true), at(2), at(3)));
        again.extend(replay.flush());
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message, b"err1 ");
        f.flush();
        assert_eq!(f.resume(at(3)), Resume::from(at(3)));
    }

    /// Regression (found in design): with merging each stream nearly always has a document
    /// pending, and a single resume position "before every pending document and every document
    /// overlapping one" stopped advancing while both streams wrote, so the checkpoint and the
    /// store's pin stayed at the first line (a crash replayed everything, and retention took
    /// shipped data for unshipped backlog).
    #[test]
    fn the_resume_position_follows_both_busy_streams_when_merging() {
        let options = crate::shipper::multiline::MultilineOptions {
            pattern: regex::bytes::Regex::new("^ ").unwrap(),
            negate: false,
            how: crate::shipper::multiline::Match::After,
            max_lines: 500,
            max_bytes: 1 << 20,
            timeout: std::time::Duration::from_secs(5),
        };
        let mut f = Fragments::new(1 << 20).merging(Some(options));
        for i in 0..100 {
            let stream = if i % 2 == 0 { "stdout" } else { "stderr" };
            push(&mut f, whole(stream, "line"), at(i), at(i + 1));
        }
        // Each stream's last line is pending (it may go on); everything before is handed out.
        assert_eq!(f.resume(at(100)).at, at(98));
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
            out.extend(push(&mut f, e, at(i), at(i + 1)));
        }
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].stream.as_str(), out[0].start), ("s0", at(0)));
        assert_eq!(f.waiting_since().count(), MAX_STREAMS);
    }

    mod replay {
        use super::*;
        use crate::shipper::multiline::Match;
        use proptest::prelude::*;
        use proptest::test_runner::TestCaseError;

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
            // Letters from `a`; one entry in three begins with `x` (marked when merging).
            let text: String = (0..len)
                .map(|k| (b'a' + ((i + k) % 23) as u8) as char)
                .collect();
            let text = if i % 3 == 1 { format!("x{text}") } else { text };
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

        /// Merging marks the lines that begin with `x`.
        fn merging(how: Match, max_lines: usize, max_bytes: usize) -> MultilineOptions {
            MultilineOptions {
                pattern: regex::bytes::Regex::new("^x").unwrap(),
                negate: false,
                how,
                max_lines,
                max_bytes,
                timeout: std::time::Duration::from_secs(5),
            }
        }

        /// The documents in store order (the order streams flush in may differ).
        fn by_start(lines: &[Line]) -> Vec<&Line> {
            let mut sorted: Vec<&Line> = lines.iter().collect();
            sorted.sort_by_key(|l| l.start);
            sorted
        }

        /// The lines a replay from `resume` hands out, and (when `resumes`) its resume position
        /// after each entry with the count handed out by then.
        fn replay(
            entries: &[LogEntry],
            splits: &[Position],
            cap: usize,
            merge: &Option<MultilineOptions>,
            resume: Resume,
            resumes: bool,
        ) -> (Vec<Line>, Vec<(usize, Resume)>) {
            let mut replay = Fragments::new(cap)
                .merging(merge.clone())
                .with_splits(splits.iter().copied().filter(|&s| s > resume.at))
                .resuming(resume.clone());
            let mut again = Vec::new();
            let mut taken = Vec::new();
            for (i, e) in entries.iter().enumerate().skip(resume.at.offset as usize) {
                again.extend(push(&mut replay, e.clone(), at(i as u64), at(i as u64 + 1)));
                if resumes {
                    taken.push((again.len(), replay.resume(at(i as u64 + 1))));
                }
            }
            again.extend(replay.flush());
            (again, taken)
        }

        /// A crash after any line handed out: everything before the resume position was
        /// handed out by then, and a replay from there (entries alone, plus the split points
        /// recorded) hands out exactly the lines of the first pass that start at or after it,
        /// the same ones: no line lost, none cut differently (an id reused for other text).
        fn replay_rebuilds_the_same_lines(
            steps: &[Step],
            cap: usize,
            merge: Option<MultilineOptions>,
        ) -> Result<(), TestCaseError> {
            let mut entries = Vec::new();
            let mut first = Fragments::new(cap).merging(merge.clone());
            let mut splits = Vec::new();
            let mut out: Vec<Line> = Vec::new();
            // After each step that handed lines out: how many, and the resume position then
            // (the lines of one step go into one batch, acknowledged whole).
            let mut resumes: Vec<(usize, Resume)> = Vec::new();
            for s in steps {
                match *s {
                    Step::Entry {
                        stderr,
                        partial,
                        id,
                        last,
                        len,
                    } => {
                        let i = entries.len();
                        let e = entry(i, stderr, partial, id, last, len);
                        entries.push(e.clone());
                        out.extend(push(&mut first, e, at(i as u64), at(i as u64 + 1)));
                    }
                    Step::Wait => {
                        let oldest = first.waiting_since().next();
                        if let Some((end, _)) = oldest {
                            splits.push(end);
                            first.flush_at(end, &mut out);
                        }
                    }
                }
                resumes.push((out.len(), first.resume(at(entries.len() as u64))));
            }
            out.extend(first.flush());
            resumes.push((out.len(), Resume::from(at(entries.len() as u64))));
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
                // Merged lines are joined with '\n'; the entries hold none.
                let message: Vec<u8> = line
                    .message
                    .iter()
                    .copied()
                    .filter(|&b| b != b'\n')
                    .collect();
                prop_assert_eq!(&joined, &message);
            }
            prop_assert!(
                covered.iter().all(|&c| c == 1),
                "an entry in no line or in two"
            );

            for (k, (handed_out, resume)) in resumes.iter().enumerate() {
                for line in &out[*handed_out..] {
                    prop_assert!(
                        line.start >= resume.at,
                        "{:?} starts before {:?}",
                        line,
                        resume
                    );
                }
                // A crash in the middle of this replay, too (for one resume of the first pass: a
                // replay's own resumes carry what it skips).
                let nested = k == resumes.len() / 2;
                let (again, replay_resumes) =
                    replay(&entries, &splits, cap, &merge, resume.clone(), nested);
                prop_assert_eq!(
                    by_start(&again),
                    by_start(&out[*handed_out..]),
                    "replay from {:?}",
                    resume
                );
                for (handed_out_again, resume_again) in replay_resumes {
                    let (twice, _) =
                        replay(&entries, &splits, cap, &merge, resume_again.clone(), false);
                    prop_assert_eq!(
                        by_start(&twice),
                        by_start(&again[handed_out_again..]),
                        "replay from {:?} within the replay from {:?}",
                        resume_again,
                        resume
                    );
                }
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn a_replay_from_resume_rebuilds_the_same_lines(
                steps in proptest::collection::vec(step(), 1..60),
                cap in 3usize..12,
            ) {
                replay_rebuilds_the_same_lines(&steps, cap, None)?;
            }

            /// The same with lines merged (multiline): the merge comes out the same after a crash,
            /// whatever the split of lines into fragments, the interleaving of the streams, the
            /// caps and where the wait cut a document.
            #[test]
            fn a_replay_from_resume_merges_the_same_documents(
                steps in proptest::collection::vec(step(), 1..80),
                cap in 3usize..12,
                before: bool,
                max_lines in 1usize..5,
                max_bytes in 4usize..30,
            ) {
                let how = if before { Match::Before } else { Match::After };
                replay_rebuilds_the_same_lines(&steps, cap, Some(merging(how, max_lines, max_bytes)))?;
            }
        }
    }
}
