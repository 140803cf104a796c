//! Merging the lines of one event (a stack trace) into one document: the `multiline.*` log-opts,
//! with Filebeat's meanings, and the grouping rule they give.
//!
//! A line is *marked* when it matches `pattern` (or, with `negate`, when it does not). With
//! `match=after` (Filebeat's default) marked lines are appended to the line before them: an
//! unmarked line begins a document and the marked lines after it continue it. With
//! `match=before` marked lines are prepended to the next unmarked line: a document runs until
//! and including an unmarked line. Presets ([`Preset`]) give the pattern for the usual stack
//! traces, so a user needs no regex for the common case.
//!
//! Differences from Filebeat, all so that no line is lost: a document that reaches `max_lines`
//! or `max_bytes` continues in a new document (Filebeat drops the rest), and the lines are
//! joined with `\n` exactly as written (the local copy and `docker logs` never change).
//!
//! # Crash safety
//! Every decision here depends on the lines alone (their text, their order within their
//! stream, and the caps counted from the document's first line), so a replay of the store makes
//! the same documents, with the same ids (from the first line's position). The one exception is
//! the wait (`timeout`): a document whose next line is late is shipped as it is, and that cut is
//! recorded as a split point before it ships (see `fragments`, which owns both grouping stages
//! and the points).

use std::time::{Duration, Instant};

use regex::bytes::Regex;

use super::line::Line;
use crate::store::Position;

/// Named patterns for the usual stack traces (`multiline.preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    Java,
    Python,
    Go,
    Dotnet,
    Node,
}

/// The presets by name, with their continuation patterns (all `negate=false`, `match=after`).
pub const PRESETS: [(&str, Preset, &str); 5] = [
    // "\tat com.x.Y.z(Y.java:1)", "\t... 12 more", "Caused by: ...", "\tSuppressed: ...".
    (
        "java",
        Preset::Java,
        r"^(?:\s+at\s|\s+\.\.\.\s+\d+\s+more|\s*Caused by:|\s*Suppressed:)",
    ),
    // The indented frames and source lines, the exception line that ends a traceback
    // ("ValueError: bad"), the traceback header itself (so it stays with the log message that
    // printed it), and the blank and linking lines of chained exceptions.
    (
        "python",
        Preset::Python,
        r"^(?:\s|$|Traceback \(most recent call last\):|During handling of the above exception|The above exception was the direct cause|[A-Za-z_][\w.]*(?:Error|Exception|Warning|Exit|Interrupt|Iteration)(?::|$))",
    ),
    // A panic or a goroutine dump: "goroutine 1 [running]:", function lines "main.main()",
    // tab-indented file lines, "created by ...", the blank lines between goroutines, and
    // "exit status 2".
    (
        "go",
        Preset::Go,
        r"^(?:\s|$|goroutine \d+ \[|[\w./*()\[\]-]+\(.*\)$|created by |\[signal |exit status \d+)",
    ),
    // "   at Ns.C.M() in /src/P.cs:line 5", " ---> System.Exception: inner",
    // "   --- End of inner exception stack trace ---".
    ("dotnet", Preset::Dotnet, r"^(?:\s+at\s|\s*--->|\s+---\s)"),
    // "    at f (/app/x.js:3:9)", "    ... 7 lines matching cause stack trace ...",
    // "  [cause]: Error: ...".
    (
        "node",
        Preset::Node,
        r"^(?:\s+at\s|\s+\.\.\.\s|\s+\[cause\]|\s*\})",
    ),
];

/// Where marked lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Match {
    /// Appended to the line before (a document begins with an unmarked line).
    After,
    /// Prepended to the next unmarked line (a document ends with one).
    Before,
}

/// The multiline options of a container. Equal and hashed by the pattern's text.
#[derive(Debug, Clone)]
pub struct MultilineOptions {
    pub pattern: Regex,
    pub negate: bool,
    pub how: Match,
    pub max_lines: usize,
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl MultilineOptions {
    fn key(&self) -> (&str, bool, Match, usize, usize, Duration) {
        (
            self.pattern.as_str(),
            self.negate,
            self.how,
            self.max_lines,
            self.max_bytes,
            self.timeout,
        )
    }

    fn marked(&self, line: &[u8]) -> bool {
        self.pattern.is_match(line) != self.negate
    }
}

impl PartialEq for MultilineOptions {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for MultilineOptions {}

impl std::hash::Hash for MultilineOptions {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// A document being merged: lines of one stream.
#[derive(Debug)]
pub struct Group {
    pub line: Line,
    pub lines: usize,
    pub since: Instant,
}

/// The documents being merged, one per stream.
#[derive(Debug)]
pub struct Groups {
    options: MultilineOptions,
    /// In the order they began.
    pub pending: Vec<Group>,
}

impl Groups {
    pub fn new(options: MultilineOptions) -> Self {
        Self {
            options,
            pending: Vec::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// Takes a whole line; appends the documents it completes to `out`, in order. Past `cap`
    /// streams the oldest pending document is handed out as it is.
    pub fn push(&mut self, line: Line, cap: usize, out: &mut Vec<Line>) {
        let marked = self.options.marked(&line.message);
        let slot = self
            .pending
            .iter()
            .position(|g| g.line.stream == line.stream);
        let joins = slot.filter(|&i| {
            let g = &self.pending[i];
            // A document never passes the caps: the line begins another one instead.
            let fits = g.lines < self.options.max_lines
                && g.line.message.len() + 1 + line.message.len() <= self.options.max_bytes;
            fits && match self.options.how {
                Match::After => marked,
                // A pending document (marked lines so far) takes every line up to and
                // including the unmarked one that ends it.
                Match::Before => true,
            }
        });
        let i = match (slot, joins) {
            (_, Some(i)) => {
                let g = &mut self.pending[i];
                g.line.message.push(b'\n');
                g.line.message.extend_from_slice(&line.message);
                g.line.end = line.end;
                g.lines += 1;
                g.since = Instant::now();
                i
            }
            (slot, None) => {
                if let Some(i) = slot {
                    out.push(self.take(i));
                } else if self.pending.len() >= cap {
                    // A rule on the lines alone (as in `fragments`), so a replay does the same.
                    out.push(self.take(0));
                }
                self.pending.push(Group {
                    line,
                    lines: 1,
                    since: Instant::now(),
                });
                self.pending.len() - 1
            }
        };
        if self.options.how == Match::Before && !marked {
            out.push(self.take(i));
        }
    }

    /// The pending document of `stream`, if it ends at `end` (a split point there cuts it).
    pub fn cut_at(&mut self, stream: &str, end: Position) -> Option<Line> {
        let i = self
            .pending
            .iter()
            .position(|g| g.line.stream == stream && g.line.end == end)?;
        Some(self.take(i))
    }

    pub fn of_stream(&self, stream: &str) -> Option<&Group> {
        self.pending.iter().find(|g| g.line.stream == stream)
    }

    pub fn take(&mut self, i: usize) -> Line {
        self.pending.remove(i).line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> Regex {
        let (_, _, pattern) = PRESETS.iter().find(|(n, _, _)| *n == name).unwrap();
        Regex::new(pattern).unwrap()
    }

    /// Which lines of `text` begin a document under the preset (match=after).
    fn starts(name: &str, text: &str) -> Vec<bool> {
        let re = preset(name);
        text.lines().map(|l| !re.is_match(l.as_bytes())).collect()
    }

    #[test]
    fn java_trace_is_one_document_after_its_message() {
        let text = "ERROR boom\njava.lang.IllegalStateException: x\n\tat a.B.c(B.java:1)\n\t... 3 more\nCaused by: java.io.IOException: y\n\tat d.E.f(E.java:2)\n\tSuppressed: z\nnext line";
        assert_eq!(
            starts("java", text),
            [true, true, false, false, false, false, false, true]
        );
    }

    #[test]
    fn python_traceback_stays_whole_with_its_exception_line() {
        let text = "ERROR failed\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    f()\nZeroDivisionError: division by zero\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"x.py\", line 3\nKeyError: 'k'\nINFO next";
        let s = starts("python", text);
        assert!(s[0]);
        assert!(s[1..11].iter().all(|&b| !b), "{s:?}");
        assert!(s[11]);
    }

    #[test]
    fn go_panic_with_goroutines_is_one_document() {
        let text = "panic: runtime error: index out of range\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:5 +0x1d\nmain.(*T).Run(0xc000010000, {0x0, 0x0})\n\t/app/t.go:9 +0x2\ncreated by main.start\nexit status 2\nlisten on :8080";
        let s = starts("go", text);
        assert!(s[0]);
        assert!(s[1..9].iter().all(|&b| !b), "{s:?}");
        assert!(s[9]);
    }

    #[test]
    fn dotnet_and_node_frames_continue() {
        let dotnet = "Unhandled exception. System.Exception: boom\n ---> System.IO.IOException: inner\n   at P.M() in /src/P.cs:line 5\n   --- End of inner exception stack trace ---\nnext";
        assert_eq!(starts("dotnet", dotnet), [true, false, false, false, true]);
        let node = "Error: boom\n    at f (/app/x.js:3:9)\n    at node:internal/main:1:1 {\n  [cause]: Error: inner\n}\nlistening";
        assert_eq!(
            starts("node", node),
            [true, false, false, false, false, true]
        );
    }

    fn at(offset: u64) -> Position {
        Position { segment: 0, offset }
    }

    fn line(i: u64, stream: &str, text: &str) -> Line {
        Line {
            start: at(i),
            end: at(i + 1),
            time_nano: i as i64,
            stream: stream.into(),
            message: text.as_bytes().to_vec(),
        }
    }

    fn options(pattern: &str, negate: bool, how: Match, max_lines: usize) -> MultilineOptions {
        MultilineOptions {
            pattern: Regex::new(pattern).unwrap(),
            negate,
            how,
            max_lines,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
        }
    }

    fn run(groups: &mut Groups, lines: &[(&str, &str)]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (stream, text)) in lines.iter().enumerate() {
            groups.push(line(i as u64, stream, text), 4, &mut out);
        }
        out.extend(groups.pending.drain(..).map(|g| g.line));
        out.into_iter()
            .map(|l| String::from_utf8(l.message).unwrap())
            .collect()
    }

    #[test]
    fn match_after_appends_marked_lines_and_streams_never_mix() {
        let mut g = Groups::new(options(r"^\s", false, Match::After, 500));
        let out = run(
            &mut g,
            &[
                ("stdout", "a"),
                ("stderr", "E"),
                ("stdout", " a1"),
                ("stderr", " E1"),
                ("stdout", "b"),
            ],
        );
        assert_eq!(out, ["a\n a1", "E\n E1", "b"]);
    }

    #[test]
    fn match_before_with_negate_runs_up_to_the_unmarked_line() {
        // Lines not ending in ';' continue; a line ending in ';' ends the statement.
        let mut g = Groups::new(options(r";$", true, Match::Before, 500));
        let out = run(
            &mut g,
            &[
                ("stdout", "SELECT a"),
                ("stdout", "FROM t;"),
                ("stdout", "x;"),
            ],
        );
        assert_eq!(out, ["SELECT a\nFROM t;", "x;"]);
    }

    /// Filebeat drops the lines past max_lines; here they begin another document.
    #[test]
    fn lines_past_max_lines_begin_another_document_instead_of_being_dropped() {
        let mut g = Groups::new(options(r"^\s", false, Match::After, 2));
        let out = run(
            &mut g,
            &[
                ("stdout", "a"),
                ("stdout", " 1"),
                ("stdout", " 2"),
                ("stdout", " 3"),
            ],
        );
        assert_eq!(out, ["a\n 1", " 2\n 3"]);
    }
}
