//! Reassembly of the `/events` stream into lines.
//!
//! The engine writes one JSON object per line, but the chunks of an HTTP body follow the
//! engine's flushes and the kernel's buffers, not its events: a chunk may end inside an event,
//! or hold several. (Fluent Bit's `docker_events` parses each read as an event and loses or
//! mangles the ones that straddle a read.) So bytes go into a buffer and come out by `\n`:
//!
//! - a line is the bytes before a `\n`, without it and without a `\r` before it;
//! - empty lines are skipped (the engine sends none, a proxy might);
//! - a line longer than the cap (not counting a `\r` before its `\n`) is not kept: its bytes are dropped as they come, and when its
//!   `\n` finally arrives it is reported as [`Line::Overlong`] with its length, so one runaway
//!   line costs at most the cap in memory and the stream goes on with the next line;
//! - bytes after the last `\n` when the stream ends are an event cut by the disconnect: see
//!   [`LineSplitter::pending`]. The collector resumes with `since=` and gets it again whole.

use bytes::{Bytes, BytesMut};

/// The largest line kept. The engine's largest events are containers with many labels, a few
/// kilobytes; a megabyte leaves room for any real one and bounds what garbage can cost.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One line out of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Complete(Bytes),
    /// A line longer than the cap, dropped; `bytes` is its length before the `\n` (a `\r`
    /// included).
    Overlong {
        bytes: usize,
    },
}

/// The state machine: feed it chunks with [`push`](Self::push), take lines with
/// [`next_line`](Self::next_line) until it answers `None`.
#[derive(Debug)]
pub struct LineSplitter {
    buffer: BytesMut,
    /// How much of `buffer` is known to hold no `\n`, so a line arriving in many small chunks
    /// is scanned once, not once per chunk.
    scanned: usize,
    /// Bytes of an overlong line already dropped, while waiting for its end.
    discarded: Option<usize>,
    cap: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(MAX_LINE_BYTES)
    }
}

impl LineSplitter {
    pub fn new(cap: usize) -> LineSplitter {
        LineSplitter {
            buffer: BytesMut::new(),
            scanned: 0,
            discarded: None,
            cap,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            let Some(at) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buffer.len();
                // One byte over the cap may be the `\r` before a newline still to come: a
                // line of exactly the cap must not depend on where a chunk ended.
                if self.buffer.len() > self.cap + 1 {
                    *self.discarded.get_or_insert(0) += self.buffer.len();
                    self.buffer.clear();
                    self.scanned = 0;
                }
                return None;
            };
            let end = self.scanned + at;
            let mut line = self.buffer.split_to(end + 1).freeze();
            self.scanned = 0;
            line.truncate(end);
            let dropped = self.discarded.take();
            let bytes = dropped.unwrap_or(0) + line.len();
            if line.ends_with(b"\r") {
                line.truncate(line.len() - 1);
            }
            if dropped.is_some() || line.len() > self.cap {
                return Some(Line::Overlong { bytes });
            }
            if !line.is_empty() {
                return Some(Line::Complete(line));
            }
        }
    }

    /// Bytes of an unfinished line (kept or being dropped): what a disconnect would cut.
    pub fn pending(&self) -> usize {
        self.buffer.len() + self.discarded.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(splitter: &mut LineSplitter, out: &mut Vec<Line>) {
        while let Some(line) = splitter.next_line() {
            out.push(line);
        }
    }

    fn split_all(chunks: &[&[u8]], cap: usize) -> (Vec<Line>, usize) {
        let mut splitter = LineSplitter::new(cap);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk);
            drain(&mut splitter, &mut out);
        }
        (out, splitter.pending())
    }

    /// Every split of `stream` in two gives `expected` and leaves nothing pending.
    fn assert_every_cut(stream: &[u8], cap: usize, expected: &[Line]) {
        for cut in 0..=stream.len() {
            let (head, tail) = stream.split_at(cut);
            let (lines, pending) = split_all(&[head, tail], cap);
            assert_eq!((lines.as_slice(), pending), (expected, 0), "cut at {cut}");
        }
    }

    fn complete(text: &str) -> Line {
        Line::Complete(Bytes::copy_from_slice(text.as_bytes()))
    }

    const STREAM: &[u8] = b"{\"a\":1}\n{\"b\":2}\r\n\n{\"c\":\"x\\ny\"}\n";

    #[test]
    fn every_cut_of_a_stream_gives_the_same_lines() {
        let expected = vec![
            complete("{\"a\":1}"),
            complete("{\"b\":2}"),
            complete("{\"c\":\"x\\ny\"}"),
        ];
        assert_eq!(split_all(&[STREAM], 1024), (expected.clone(), 0));
        assert_every_cut(STREAM, 1024, &expected);
        for first in 0..=STREAM.len() {
            for second in first..=STREAM.len() {
                let chunks = [&STREAM[..first], &STREAM[first..second], &STREAM[second..]];
                assert_eq!(
                    split_all(&chunks, 1024).0,
                    expected,
                    "cuts {first} {second}"
                );
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(split_all(&bytes, 1024), (expected, 0));
    }

    #[test]
    fn an_unfinished_line_is_pending_not_a_line() {
        let (lines, pending) = split_all(&[b"{\"a\":1}\n{\"b\""], 1024);
        assert_eq!(lines, vec![complete("{\"a\":1}")]);
        assert_eq!(pending, 4);
    }

    #[test]
    fn an_overlong_line_is_dropped_and_the_next_one_kept() {
        let mut long = vec![b'x'; 50];
        long.push(b'\n');
        let stream = [&b"ok\n"[..], &long, b"after\n"].concat();
        let expected = vec![
            complete("ok"),
            Line::Overlong { bytes: 50 },
            complete("after"),
        ];
        assert_every_cut(&stream, 10, &expected);
        // Fed a byte at a time, memory stays within the cap.
        let mut splitter = LineSplitter::new(10);
        let mut out = Vec::new();
        for byte in stream.chunks(1) {
            splitter.push(byte);
            drain(&mut splitter, &mut out);
            assert!(splitter.buffer.len() <= 11);
        }
        assert_eq!(out, expected);
    }

    proptest! {
        /// Any stream cut anywhere gives the lines a whole-buffer split gives, and never more
        /// than the cap plus one chunk in memory.
        #[test]
        fn any_cuts_give_the_lines_of_the_whole(
            stream in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..400),
            mut cuts in proptest::collection::vec(0..400usize, 0..8),
            cap in 1..64usize,
        ) {
            let (whole, whole_pending) = split_all(&[&stream], cap);
            cuts.push(stream.len());
            cuts.iter_mut().for_each(|cut| *cut = (*cut).min(stream.len()));
            cuts.sort_unstable();
            let mut splitter = LineSplitter::new(cap);
            let mut lines = Vec::new();
            let mut from = 0;
            for cut in cuts {
                splitter.push(&stream[from..cut]);
                drain(&mut splitter, &mut lines);
                prop_assert!(splitter.buffer.len() <= cap + 1);
                from = cut;
            }
            prop_assert_eq!(lines, whole);
            prop_assert_eq!(splitter.pending(), whole_pending);
        }
    }
}
