//! How far a container's store has been shipped, kept across restarts.
//!
//! File: `<state>/checkpoints/<container id>.json`, one per container (per store):
//!
//! ```text
//! {"version":2,"destination":"<label>","segment":N,"offset":M,"splits":[[S,O],...],
//!  "skip_to":[S,O],"streams":[["stdout",S,O],...]}
//! ```
//!
//! - `segment`, `offset`: where a replay starts (see `fragments::Fragments::resume`): every
//!   document before it is acknowledged by Elasticsearch (written, duplicate, or dead-lettered).
//! - `skip_to`, `streams` (only while a document is pending, e.g. with multiline merging): what
//!   a replay from the position skips because it is in documents already acknowledged (see
//!   `fragments::Resume`): the entries before `skip_to` of every stream not in `streams`, and of
//!   each stream in `streams` (`[name, segment, offset]`) those before its own position. A
//!   plugin that does not know these fields replays from the position without skipping; it
//!   sends some lines again, never loses one.
//! - `splits`: store positions where a split line was shipped in two documents because its
//!   rest was late (the fragment wait), each written here before that document was sent, so that
//!   a replay cuts the line at the same place and makes the same documents (the same ids). Only
//!   points after the position are kept.
//! - `destination`: the host list that wrote the file. Not a key: a checkpoint says what part of
//!   this store is shipped, and it stays true whatever the host list is now (a node added, the
//!   list reordered, `cloud_id` instead of hosts), so shipping resumes from it and the backlog is
//!   kept. A container moved to a genuinely different cluster therefore sends there what was not
//!   shipped yet, not the lines the old cluster already has; the change is logged at INFO.
//!   (Version 1 held the same fields but no `splits`, and was ignored when its `destination`
//!   differed, which skipped the backlog; it is read whatever its `destination`.)
//!
//! Written through a synced temporary file and a rename (see `fsutil::write_atomically`; a [`Save`]
//! is one such write, which the destination runs on the blocking pool, one at a time), at most
//! once per [`MIN_INTERVAL`] while shipping, always when a container is done, and at once when a
//! split point is recorded: after a crash the shipper replays at most that much, and
//! deterministic ids turn the replay into 409s.
//!
//! The file goes when the container's store is removed (`DESTROY_LOGS_ON_STOP`, the age sweep:
//! see [`delete`]), never before: while the store exists it may hold lines not yet shipped.
//!
//! A container new to shipping (no checkpoint) starts at the store's end at StartLogging: the
//! checkpoint is written then, before the FIFO is read, so every line of that run is shipped and
//! none written before it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::fragments::Resume;
use crate::container_id::ContainerId;
use crate::fsutil::write_atomically;
use crate::store::Position;

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    destination: String,
    segment: u64,
    offset: u64,
    /// Absent in version 1.
    #[serde(default)]
    splits: Vec<[u64; 2]>,
    /// Absent when nothing is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skip_to: Option<[u64; 2]>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    streams: Vec<(String, u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the shipping checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the shipping checkpoint {path} is not a checkpoint: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the shipping checkpoint {path} has version {version}, newer than this plugin reads ({VERSION})")]
    Version { path: PathBuf, version: u32 },
}

pub struct Checkpoint {
    path: PathBuf,
    destination: String,
    saved: Resume,
    /// Acknowledged but not yet written (rate limit).
    pending: Option<Resume>,
    last_write: Option<Instant>,
    /// Recorded split points after `saved`.
    splits: BTreeSet<Position>,
    /// The host list named in the file.
    written_for: Option<String>,
}

/// One write of a checkpoint file, made by [`Checkpoint`] and run wherever blocking on the disk
/// is harmless (it syncs the file and its folder).
pub struct Save {
    path: PathBuf,
    bytes: Result<Vec<u8>, String>,
    at: Resume,
    splits: BTreeSet<Position>,
}

impl Save {
    /// Writes the file through a synced temporary file and a rename. Blocks on the disk.
    pub fn run(&self) -> std::io::Result<()> {
        let bytes = self
            .bytes
            .as_ref()
            .map_err(|e| std::io::Error::other(e.clone()))?;
        #[cfg(test)]
        slow_sync::wait(&self.path);
        write_atomically(&self.path, bytes)
    }
}

impl Checkpoint {
    /// The saved position of this container's store, if there is one, whatever destination
    /// wrote it. A file that cannot be read is logged at ERROR (the shipping start it held is
    /// lost: the caller starts at the store's end) and counts as none.
    pub fn load(dir: &Path, id: &ContainerId, destination: &str) -> (Self, Option<Position>) {
        let path = dir.join(format!("{id}.json"));
        let mut checkpoint = Self {
            path,
            destination: destination.to_owned(),
            saved: Resume::default(),
            pending: None,
            last_write: None,
            splits: BTreeSet::new(),
            written_for: None,
        };
        let disk = match read(&checkpoint.path) {
            Ok(Some(disk)) => disk,
            Ok(None) => return (checkpoint, None),
            Err(error) => {
                tracing::error!(%error, container = id.short(), "shipping starts where the store ends now: what it holds and was not shipped yet is not sent");
                return (checkpoint, None);
            }
        };
        if disk.destination != destination {
            tracing::info!(container = id.short(), from = %disk.destination, to = %destination, "the container's shipping destination changed; shipping resumes at its checkpoint: what was not shipped yet goes to the new destination, what was shipped is not sent again");
        }
        checkpoint.written_for = Some(disk.destination);
        let at = Position {
            segment: disk.segment,
            offset: disk.offset,
        };
        let position = |segment, offset| Position { segment, offset };
        // Skips are kept only as written: at the position or after it.
        checkpoint.saved = match disk.skip_to {
            Some([segment, offset]) if position(segment, offset) > at => Resume {
                at,
                skip_to: position(segment, offset),
                streams: disk
                    .streams
                    .into_iter()
                    .map(|(name, segment, offset)| (name, position(segment, offset).max(at)))
                    .collect(),
            },
            _ => Resume::from(at),
        };
        checkpoint.splits = disk
            .splits
            .iter()
            .map(|&[segment, offset]| Position { segment, offset })
            .filter(|&s| s > at)
            .collect();
        (checkpoint, Some(at))
    }

    pub fn saved(&self) -> Position {
        self.saved.at
    }

    /// The saved position with what a replay from it skips.
    pub fn resume(&self) -> Resume {
        self.saved.clone()
    }

    /// Split points recorded after the saved position, for a replay from it.
    pub fn splits(&self) -> impl Iterator<Item = Position> + '_ {
        self.splits.iter().copied()
    }

    /// The file was written for another host list (it is rewritten for this one at the next
    /// write).
    pub fn is_for_another_destination(&self) -> bool {
        self.written_for
            .as_ref()
            .is_some_and(|d| d != &self.destination)
    }

    /// Records `at`; writes it when `force` or when the last write is older than MIN_INTERVAL.
    pub fn advance(&mut self, at: Position, force: bool) -> std::io::Result<()> {
        match self.save_for(Resume::from(at), force) {
            Some(save) => self.write(save),
            None => Ok(()),
        }
    }

    /// Records split points (see the module doc) and writes them at once, with the latest
    /// acknowledged position: the documents they end must not be sent before this returns `Ok`.
    pub fn record_splits(&mut self, at: &[Position]) -> std::io::Result<()> {
        let save = self.save_splits(at);
        self.write(save)
    }

    /// Writes a position recorded but not yet written.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.save_pending() {
            Some(save) => self.write(save),
            None => Ok(()),
        }
    }

    fn write(&mut self, save: Save) -> std::io::Result<()> {
        save.run()?;
        self.saved_as(save);
        Ok(())
    }

    /// [`Checkpoint::advance`] in two steps, for a caller that runs the write elsewhere (off the
    /// threads that drain FIFOs): the write of `at` if one is due (`force`, or the last write
    /// is older than [`MIN_INTERVAL`]), else `at` is only recorded, for a later write. Nothing
    /// else changes until [`Checkpoint::saved_as`] is told the write succeeded. At most one
    /// write of a checkpoint may be under way at a time (they share a temporary file).
    pub fn save_for(&mut self, at: Resume, force: bool) -> Option<Save> {
        if at == self.saved && self.last_write.is_some() {
            return None;
        }
        let due = force || self.last_write.is_none_or(|t| t.elapsed() >= MIN_INTERVAL);
        if !due {
            self.pending = Some(at);
            return None;
        }
        Some(self.save(at, self.splits.clone()))
    }

    /// Records an acknowledged position without writing it (a write is under way): the next
    /// write or [`Checkpoint::save_pending`] takes it.
    pub fn hold(&mut self, at: Resume) {
        if at != self.saved {
            self.pending = Some(at);
        }
    }

    /// The write of a position recorded but not yet written, if there is one.
    pub fn save_pending(&mut self) -> Option<Save> {
        let at = self.pending.clone()?;
        self.save_for(at, true)
    }

    /// [`Checkpoint::record_splits`] in two steps: the write of the split points `at` with the
    /// latest acknowledged position. The documents they end may be sent once
    /// [`Checkpoint::saved_as`] took it (then [`Checkpoint::is_split`] is true for each).
    pub fn save_splits(&mut self, at: &[Position]) -> Save {
        let mut splits = self.splits.clone();
        splits.extend(at.iter().copied().filter(|&s| s > self.saved.at));
        let position = self.pending.clone().unwrap_or_else(|| self.saved.clone());
        self.save(position, splits)
    }

    /// A split point is recorded (on disk) at `at`.
    pub fn is_split(&self, at: Position) -> bool {
        self.splits.contains(&at)
    }

    fn save(&self, at: Resume, splits: BTreeSet<Position>) -> Save {
        // Points at or before the position are never reached by a replay from it.
        let splits: BTreeSet<Position> = splits.into_iter().filter(|&s| s > at.at).collect();
        let skips = at.skip_to > at.at;
        let disk = OnDisk {
            version: VERSION,
            destination: self.destination.clone(),
            segment: at.at.segment,
            offset: at.at.offset,
            splits: splits.iter().map(|s| [s.segment, s.offset]).collect(),
            skip_to: skips.then_some([at.skip_to.segment, at.skip_to.offset]),
            streams: if skips {
                at.streams
                    .iter()
                    .map(|(name, p)| (name.clone(), p.segment, p.offset))
                    .collect()
            } else {
                Vec::new()
            },
        };
        Save {
            path: self.path.clone(),
            // Encoding numbers and a string cannot fail; were it to, the write fails.
            bytes: serde_json::to_vec(&disk).map_err(|error| error.to_string()),
            at,
            splits,
        }
    }

    /// `save` is on disk (its [`Save::run`] returned `Ok`): the checkpoint is what it wrote.
    pub fn saved_as(&mut self, save: Save) {
        self.splits = save.splits;
        // An acknowledgement that came while it was written is still to write.
        self.pending = self.pending.take().filter(|p| p.is_after(&save.at));
        self.saved = save.at;
        self.last_write = Some(Instant::now());
        self.written_for = Some(self.destination.clone());
    }
}

/// The folder of the checkpoints, in the plugin's state folder.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoints")
}

/// Deletes the container's checkpoint (and a temporary file a write left). Only for a store
/// that is gone: a checkpoint is the only record of what of its store is shipped. Not synced:
/// a deletion undone by a power loss leaves a file that names positions of the removed store,
/// before every position of a new one (a new store's segment numbers start at the time it is
/// created), so it costs a file, never a line.
pub fn delete(dir: &Path, id: &ContainerId) {
    for path in [
        dir.join(format!("{id}.json")),
        dir.join(format!("{id}.tmp")),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "cannot delete the shipping checkpoint of a removed local copy")
            }
        }
    }
}

/// The file's content; `None` when there is no file.
fn read(path: &Path) -> Result<Option<OnDisk>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if disk.version > VERSION {
        return Err(CheckpointError::Version {
            path: path.to_owned(),
            version: disk.version,
        });
    }
    Ok(Some(disk))
}

/// A slow disk for tests: there is no device to make an fsync slow on the test hosts, so a
/// test names a checkpoint folder whose writes take that much longer, as a checkpoint write on
/// a busy or failing disk does (the file's and the folder's fsync). Keyed by folder, so tests
/// running beside it in the same process are not slowed.
#[cfg(test)]
pub mod slow_sync {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    static SLOW: Mutex<Vec<(PathBuf, Duration)>> = Mutex::new(Vec::new());
    /// Slowed writes begun, over every folder.
    static BEGUN: AtomicUsize = AtomicUsize::new(0);

    /// Writes of checkpoints in `dir` take `delay` longer from now on (`Duration::ZERO`: no
    /// longer slowed).
    pub fn set(dir: &Path, delay: Duration) {
        let mut slow = SLOW.lock().unwrap_or_else(|p| p.into_inner());
        slow.retain(|(d, _)| d != dir);
        if !delay.is_zero() {
            slow.push((dir.to_owned(), delay));
        }
    }

    /// How many slowed writes have begun so far.
    pub fn begun() -> usize {
        BEGUN.load(Ordering::SeqCst)
    }

    pub(super) fn wait(path: &Path) {
        let delay = {
            let slow = SLOW.lock().unwrap_or_else(|p| p.into_inner());
            slow.iter()
                .find(|(dir, _)| Some(dir.as_path()) == path.parent())
                .map(|(_, delay)| *delay)
        };
        if let Some(delay) = delay {
            BEGUN.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ContainerId {
        ContainerId::parse(&"ab".repeat(32)).unwrap()
    }

    /// Regression (issue 12, item 9): the checkpoint was keyed to the ordered host list, so
    /// adding a node, reordering the hosts or moving to cloud_id found no checkpoint and shipping
    /// started at the store's end, skipping every unshipped line.
    #[test]
    fn a_changed_host_list_keeps_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let at = Position {
            segment: 3,
            offset: 99,
        };
        let (mut cp, _) = Checkpoint::load(dir.path(), &id(), "http://a:9200,http://b:9200");
        cp.advance(at, true).unwrap();
        for changed in [
            "http://b:9200,http://a:9200",
            "http://a:9200,http://b:9200,http://c:9200",
            "https://abcd.es.example.com:443",
        ] {
            assert_eq!(
                Checkpoint::load(dir.path(), &id(), changed).1,
                Some(at),
                "{changed}"
            );
        }
    }

    /// A checkpoint written by the previous version (version 1, with the host list it was for)
    /// is read whatever host list it names: it is the only record of what was shipped.
    #[test]
    fn a_version_1_checkpoint_of_another_host_list_is_read_for_migration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(format!("{}.json", id())),
            r#"{"version":1,"destination":"http://old:9200","segment":7,"offset":1234}"#,
        )
        .unwrap();
        assert_eq!(
            Checkpoint::load(dir.path(), &id(), "http://new:9200").1,
            Some(Position {
                segment: 7,
                offset: 1234
            })
        );
    }

    #[test]
    fn checkpoint_survives_reload_and_a_rate_limited_position_is_written_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cp, found) = Checkpoint::load(dir.path(), &id(), "http://es:9200");
        assert_eq!(found, None);
        let at = Position {
            segment: 3,
            offset: 99,
        };
        cp.advance(at, false).unwrap();
        // Rate-limited: recorded, written on flush.
        let later = Position {
            segment: 3,
            offset: 120,
        };
        cp.advance(later, false).unwrap();
        assert_eq!(
            Checkpoint::load(dir.path(), &id(), "http://es:9200").1,
            Some(at)
        );
        cp.flush().unwrap();
        assert_eq!(
            Checkpoint::load(dir.path(), &id(), "http://es:9200").1,
            Some(later)
        );
    }

    /// Split points are written at once, with the latest acknowledged position, read back for a
    /// replay, and dropped once the position passes them.
    #[test]
    fn split_points_are_kept_until_the_position_passes_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = |offset| Position { segment: 1, offset };
        let (mut cp, _) = Checkpoint::load(dir.path(), &id(), "http://es:9200");
        cp.advance(p(10), true).unwrap();
        // Acknowledged, not yet written (rate limit): written with the split points.
        cp.advance(p(20), false).unwrap();
        cp.record_splits(&[p(30), p(50)]).unwrap();
        let (loaded, found) = Checkpoint::load(dir.path(), &id(), "http://es:9200");
        assert_eq!(found, Some(p(20)));
        assert_eq!(loaded.splits().collect::<Vec<_>>(), [p(30), p(50)]);
        cp.advance(p(30), true).unwrap();
        let (loaded, _) = Checkpoint::load(dir.path(), &id(), "http://es:9200");
        assert_eq!(loaded.splits().collect::<Vec<_>>(), [p(50)]);
        let text = std::fs::read_to_string(dir.path().join(format!("{}.json", id()))).unwrap();
        assert_eq!(
            text,
            r#"{"version":2,"destination":"http://es:9200","segment":1,"offset":30,"splits":[[1,50]]}"#
        );
    }

    /// The two-step form the destination uses (the write runs on the blocking pool): nothing
    /// counts as written before `saved_as`, and an acknowledgement that comes while a write is
    /// under way is kept for the next write, not dropped by the one finishing.
    #[test]
    fn a_position_acknowledged_during_a_write_is_written_next() {
        let dir = tempfile::tempdir().unwrap();
        let p = |offset| Position { segment: 1, offset };
        let (mut cp, _) = Checkpoint::load(dir.path(), &id(), "http://es:9200");
        let first = cp
            .save_for(p(10).into(), true)
            .expect("a first write is due");
        cp.hold(p(20).into());
        first.run().unwrap();
        cp.saved_as(first);
        assert_eq!(cp.saved(), p(10));
        let next = cp
            .save_pending()
            .expect("the held position is still to write");
        next.run().unwrap();
        cp.saved_as(next);
        assert_eq!(
            Checkpoint::load(dir.path(), &id(), "http://es:9200").1,
            Some(p(20))
        );
        // Split points count as recorded only once their write is done.
        let splits = cp.save_splits(&[p(30)]);
        assert!(!cp.is_split(p(30)));
        splits.run().unwrap();
        cp.saved_as(splits);
        assert!(cp.is_split(p(30)));
        let (loaded, _) = Checkpoint::load(dir.path(), &id(), "http://es:9200");
        assert_eq!(loaded.splits().collect::<Vec<_>>(), [p(30)]);
    }

    /// A file that is not a checkpoint is not taken for one (and is logged at ERROR): the caller
    /// starts afresh and overwrites it.
    #[test]
    fn a_damaged_or_newer_checkpoint_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{}.json", id()));
        for bad in [
            "not json",
            r#"{"version":3,"destination":"x","segment":1,"offset":2}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(Checkpoint::load(dir.path(), &id(), "x").1, None, "{bad}");
        }
    }
}
