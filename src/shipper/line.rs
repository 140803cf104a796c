//! What the grouping stages hand out: the rejoined line of `fragments`, and the merged document
//! of `multiline`, which is made of them.

use crate::store::Position;

/// One line to ship (or, with multiline merging, one document of lines): the entries of one
/// stream from `start` to `end`, joined. Entries of other streams may lie between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub start: Position,
    pub end: Position,
    /// The first fragment's time (the engine gives every fragment of a line the same).
    pub time_nano: i64,
    pub stream: String,
    pub message: Vec<u8>,
}
