//! How far a container's store has been shipped, kept across restarts.
//!
//! File: `<state>/checkpoints/<container id>.json`,
//! `{"version":1,"destination":"<label>","segment":N,"offset":M}`: the store position just after
//! the last entry Elasticsearch acknowledged (written, duplicate, or dead-lettered). Written
//! through a synced temporary file and a rename (see `runs::write_atomically`), at most once per
//! [`MIN_INTERVAL`] while shipping and always when a container is done: after a crash the
//! shipper replays at most that much, and deterministic ids turn the replay into 409s.
//!
//! A container new to a destination (no checkpoint, or one of another destination because the
//! options changed) starts at the store's end at StartLogging: the checkpoint is written then,
//! before the FIFO is read, so every line of that run is shipped and none written before it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::container_id::ContainerId;
use crate::runs::write_atomically;
use crate::store::Position;

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    destination: String,
    segment: u64,
    offset: u64,
}

pub struct Checkpoint {
    path: PathBuf,
    destination: String,
    saved: Position,
    /// Acknowledged but not yet written (rate limit).
    pending: Option<Position>,
    last_write: Option<Instant>,
}

impl Checkpoint {
    /// The saved position for this destination, if there is one.
    pub fn load(dir: &Path, id: &ContainerId, destination: &str) -> (Self, Option<Position>) {
        let path = dir.join(format!("{id}.json"));
        let found = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<OnDisk>(&bytes).ok())
            .filter(|disk| disk.version == VERSION && disk.destination == destination)
            .map(|disk| Position {
                segment: disk.segment,
                offset: disk.offset,
            });
        let checkpoint = Self {
            path,
            destination: destination.to_owned(),
            saved: found.unwrap_or_default(),
            pending: None,
            last_write: None,
        };
        (checkpoint, found)
    }

    pub fn saved(&self) -> Position {
        self.saved
    }

    /// Records `at`; writes it when `force` or when the last write is older than MIN_INTERVAL.
    pub fn advance(&mut self, at: Position, force: bool) -> std::io::Result<()> {
        if at == self.saved && self.last_write.is_some() {
            return Ok(());
        }
        let due = force || self.last_write.is_none_or(|t| t.elapsed() >= MIN_INTERVAL);
        if !due {
            self.pending = Some(at);
            return Ok(());
        }
        let disk = OnDisk {
            version: VERSION,
            destination: self.destination.clone(),
            segment: at.segment,
            offset: at.offset,
        };
        let bytes = serde_json::to_vec(&disk).map_err(std::io::Error::other)?;
        write_atomically(&self.path, &bytes)?;
        self.saved = at;
        self.pending = None;
        self.last_write = Some(Instant::now());
        Ok(())
    }

    /// Writes a position recorded but not yet written.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.pending {
            Some(at) => self.advance(at, true),
            None => Ok(()),
        }
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_survives_reload_and_is_per_destination() {
        let dir = tempfile::tempdir().unwrap();
        let id = ContainerId::parse(&"ab".repeat(32)).unwrap();
        let (mut cp, found) = Checkpoint::load(dir.path(), &id, "http://es:9200");
        assert_eq!(found, None);
        let at = Position {
            segment: 3,
            offset: 99,
        };
        cp.advance(at, false).unwrap();
        // Rate-limited: recorded, written on flush.
        cp.advance(
            Position {
                segment: 3,
                offset: 120,
            },
            false,
        )
        .unwrap();
        cp.flush().unwrap();
        assert_eq!(
            Checkpoint::load(dir.path(), &id, "http://es:9200").1,
            Some(Position {
                segment: 3,
                offset: 120
            })
        );
        assert_eq!(
            Checkpoint::load(dir.path(), &id, "http://other:9200").1,
            None
        );
    }
}
