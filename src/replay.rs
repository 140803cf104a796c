//! After a plugin crash: recognising the round the dead process stored but had not consumed
//! from the FIFO yet, so that it is stored neither twice nor never.
//!
//! A pipeline stores a round, then consumes its bytes from the pipe (`fifo`). A crash between
//! the two leaves the round's entries at the end of the store *and* at the front of the pipe,
//! where the restarted plugin reads them again. Two distinct entries are never equal (each
//! carries the engine's nanosecond timestamp, and the fragments of one line differ in their
//! ordinal), so the round is exactly this: the first entries of the reopened FIFO that equal,
//! one after another, entries that run to the end of the store.
//!
//! # Bounded, whatever the store holds
//! - Only a FIFO that holds bytes when it is reopened can start with such a round; an empty one
//!   gets no filter.
//! - A round is one peek of the pipe: at most [`WANTED_PIPE_SIZE`] bytes of frames. A stored
//!   record carries 4 more bytes of framing than its frame, and a frame is at least 6 bytes, so
//!   the round lies within the store's last [`WINDOW_BYTES`]; the first entry is searched for
//!   there and nowhere else.
//! - The store is read as a stream, a step at a time; nothing is kept between entries but a
//!   cursor. The filter is dropped at the first entry that is not a replay.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::entry::LogEntry;
use crate::fifo::WANTED_PIPE_SIZE;
use crate::store::{ContainerStore, Cursor, Position, StoreError};

/// The part of a store's end a crash-time round can be in (see the module doc).
pub const WINDOW_BYTES: u64 = 2 * WANTED_PIPE_SIZE as u64;
/// Bytes of records read from the store per step.
const READ_STEP: usize = 64 << 10;

/// Drops the entries a crashed plugin had stored but not yet consumed from the FIFO.
pub struct ReplayFilter {
    store: Arc<ContainerStore>,
    /// The store's end when the FIFO was reopened: a replayed round ends there.
    end: Position,
    state: State,
}

enum State {
    /// No entry of the FIFO looked at yet.
    Searching,
    /// The FIFO's entries so far repeat the store up to the cursor: the next one is a replay if
    /// it equals the cursor's next entry.
    Following {
        cursor: Box<Cursor>,
        ahead: VecDeque<(LogEntry, Position)>,
    },
    /// Every entry from now on is new.
    Done,
}

impl ReplayFilter {
    /// A filter for a FIFO reopened after a restart, comparing with `store` as it is now.
    pub fn new(store: Arc<ContainerStore>) -> Self {
        let end = store.end();
        Self {
            store,
            end,
            state: State::Searching,
        }
    }

    /// True when `entry` repeats the store; false ends the filter for good.
    pub fn is_replay(&mut self, entry: &LogEntry) -> bool {
        let checked = match std::mem::replace(&mut self.state, State::Done) {
            State::Done => return false,
            State::Searching => self.find(entry),
            State::Following {
                mut cursor,
                mut ahead,
            } => match self.next_stored(&mut cursor, &mut ahead) {
                Ok(Some(stored)) if stored == *entry => Ok(Some((cursor, ahead))),
                Ok(_) => Ok(None),
                Err(error) => Err(error),
            },
        };
        match checked {
            Ok(Some((cursor, ahead))) => {
                self.state = State::Following { cursor, ahead };
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot read the end of the local copy to recognise the round a crash left in the FIFO; those entries may be stored twice");
                false
            }
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// A cursor just after the last stored entry equal to `entry` within the window.
    #[allow(clippy::type_complexity)]
    fn find(
        &self,
        entry: &LogEntry,
    ) -> Result<Option<(Box<Cursor>, VecDeque<(LogEntry, Position)>)>, StoreError> {
        let (start, _) = self.store.tail_start_within(WINDOW_BYTES)?;
        let mut cursor = self.store.cursor(start);
        let mut found = None;
        'read: loop {
            let read = cursor.read(READ_STEP)?;
            if read.is_empty() {
                break;
            }
            for (stored, after) in read {
                if after > self.end {
                    break 'read;
                }
                if stored == *entry {
                    found = Some(after);
                }
            }
        }
        Ok(found.map(|after| (Box::new(self.store.cursor(after)), VecDeque::new())))
    }

    /// The next stored entry before the end the filter was made with.
    fn next_stored(
        &self,
        cursor: &mut Cursor,
        ahead: &mut VecDeque<(LogEntry, Position)>,
    ) -> Result<Option<LogEntry>, StoreError> {
        if ahead.is_empty() {
            if cursor.position() >= self.end {
                return Ok(None);
            }
            ahead.extend(cursor.read(READ_STEP)?);
        }
        Ok(ahead
            .pop_front()
            .filter(|(_, after)| *after <= self.end)
            .map(|(entry, _)| entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container_id::ContainerId;
    use crate::store::{Batch, Spool, StoreLimits, Stores};
    use prost::Message;

    fn entry(t: i64, len: usize) -> LogEntry {
        LogEntry {
            source: "stdout".into(),
            time_nano: t,
            line: vec![b'x'; len].into(),
            ..LogEntry::default()
        }
    }

    fn store_with(dir: &std::path::Path, entries: &[LogEntry]) -> Arc<ContainerStore> {
        let stores = Stores::open(dir.join("containers"), Arc::new(Spool::new(u64::MAX))).unwrap();
        let id = ContainerId::parse(&"ab".repeat(32)).unwrap();
        let store = stores.open_container(&id, StoreLimits::default()).unwrap();
        let mut batch = Batch::default();
        for e in entries {
            batch.push(&e.encode_to_vec(), e.time_nano);
        }
        store.append(&batch).unwrap();
        store
    }

    #[test]
    fn the_round_at_the_end_of_the_store_is_recognised_then_new_entries_pass() {
        let dir = tempfile::tempdir().unwrap();
        let stored: Vec<LogEntry> = (1..=10).map(|t| entry(t, 100)).collect();
        let mut filter = ReplayFilter::new(store_with(dir.path(), &stored));
        for e in &stored[6..] {
            assert!(filter.is_replay(e), "{}", e.time_nano);
        }
        assert!(!filter.is_replay(&entry(11, 100)));
        assert!(filter.is_done());
        // Once done, even an entry equal to a stored one is new.
        assert!(!filter.is_replay(&stored[9]));
    }

    #[test]
    fn a_fifo_starting_with_an_entry_the_store_lacks_is_all_new() {
        let dir = tempfile::tempdir().unwrap();
        let stored: Vec<LogEntry> = (1..=3).map(|t| entry(t, 10)).collect();
        let mut filter = ReplayFilter::new(store_with(dir.path(), &stored));
        assert!(!filter.is_replay(&entry(4, 10)));
        assert!(filter.is_done());
    }

    /// The store's end is read by bytes, not entries: a round of a whole pipe of tiny entries is
    /// found, and the search does not read what lies before the window.
    #[test]
    fn a_pipe_full_of_tiny_entries_is_recognised_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let stored: Vec<LogEntry> = (1..=120_000).map(|t| entry(t, 1)).collect();
        let mut filter = ReplayFilter::new(store_with(dir.path(), &stored));
        // What one full peek holds: 1 MiB of frames.
        let frame_len = 4 + stored[0].encoded_len();
        let round = WANTED_PIPE_SIZE / frame_len;
        for e in &stored[stored.len() - round..] {
            assert!(filter.is_replay(e));
        }
        assert!(!filter.is_replay(&entry(200_000, 1)));
    }

    #[test]
    fn an_entry_before_the_window_is_not_searched_for() {
        let dir = tempfile::tempdir().unwrap();
        let stored: Vec<LogEntry> = (1..=40).map(|t| entry(t, 100 << 10)).collect();
        let mut filter = ReplayFilter::new(store_with(dir.path(), &stored));
        assert!(!filter.is_replay(&stored[0]));
    }
}
