//! The table of open logging runs (FIFO path -> container Info), persisted so a restarted plugin
//! can reopen every FIFO the engine still holds: the engine does not repeat StartLogging after a
//! plugin crash, and a FIFO nobody reads blocks its container after the pipe fills.
//!
//! File: `<state dir>/runs.json`, `{"version":1,"runs":[{"file":"...","info":{...}}]}`, rewritten
//! whole on every change through a temporary file that is synced and renamed, so a crash leaves
//! either the old or the new table. `ContainerEnv` holds only what the plugin keeps of it (the
//! variables a container's `env`/`env-regex` log-opts select; see `plugin.rs`).
//!
//! Saves are group-committed: a change returns once a table holding it is on disk, and changes
//! made while one save is being written share the next save. Containers starting or stopping
//! together (a host reboot, `docker compose down`) then cost a few syncs, not one each: measured
//! here, 100 StopLoggings in a row took 450 ms of back-to-back fsyncs before.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomically;
use crate::protocol::Info;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub file: String,
    pub info: Info,
    /// The run ended but its lines are not all shipped yet: resume shipping after a restart.
    #[serde(default)]
    pub stopped: bool,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    runs: Vec<RunRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("cannot read the run table {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("run table {path} is not valid (version {VERSION} JSON expected): {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the run table {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

pub struct RunTable {
    path: PathBuf,
    runs: Mutex<Runs>,
    /// The change count of the table last written to disk; held while a save is written, so
    /// one save runs at a time and the temporary file is never shared.
    saved: Mutex<u64>,
    /// Tables written so far (seen by tests).
    writes: std::sync::atomic::AtomicU64,
}

/// The table in memory and how many changes it has had.
struct Runs {
    map: BTreeMap<String, RunRecord>,
    changes: u64,
}

impl RunTable {
    /// Loads the table in `state_dir` (empty when there is none yet).
    pub fn load(state_dir: &Path) -> Result<Self, RunsError> {
        let path = state_dir.join("runs.json");
        let runs = match std::fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk =
                    serde_json::from_slice(&bytes).map_err(|source| RunsError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                disk.runs.into_iter().map(|r| (r.file.clone(), r)).collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(RunsError::Read { path, source }),
        };
        Ok(Self::with(path, runs))
    }

    /// A table that starts empty and saves to `<state_dir>/runs.json`.
    pub fn empty(state_dir: &Path) -> Self {
        Self::with(state_dir.join("runs.json"), BTreeMap::new())
    }

    fn with(path: PathBuf, map: BTreeMap<String, RunRecord>) -> Self {
        Self {
            path,
            runs: Mutex::new(Runs { map, changes: 0 }),
            saved: Mutex::new(0),
            writes: Default::default(),
        }
    }

    pub fn all(&self) -> Vec<RunRecord> {
        self.lock().map.values().cloned().collect()
    }

    /// Adds a run; returns once it is on disk.
    pub fn insert(&self, record: RunRecord) -> Result<(), RunsError> {
        self.change(|runs| {
            runs.insert(record.file.clone(), record);
            true
        })
    }

    /// Marks a run as ended, kept until its container's lines are shipped. It replaces the
    /// container's earlier ended runs with the same log-opts: resuming shipping after a restart
    /// needs one per destination, and a container that keeps restarting while Elasticsearch is
    /// away would otherwise add a record on every run, each rewritten on every save.
    pub fn mark_stopped(&self, file: &str) -> Result<(), RunsError> {
        self.change(|runs| {
            let Some(run) = runs.get_mut(file) else {
                return false;
            };
            run.stopped = true;
            let (container, config) = (run.info.container_id.clone(), run.info.config.clone());
            runs.retain(|other, r| {
                other == file
                    || !(r.stopped && r.info.container_id == container && r.info.config == config)
            });
            true
        })
    }

    /// Forgets every ended run of a container (its lines are all shipped).
    pub fn remove_stopped(&self, container_id: &str) -> Result<(), RunsError> {
        self.change(|runs| {
            let before = runs.len();
            runs.retain(|_, r| !(r.stopped && r.info.container_id == container_id));
            runs.len() != before
        })
    }

    pub fn remove(&self, file: &str) -> Result<(), RunsError> {
        self.change(|runs| runs.remove(file).is_some())
    }

    /// Applies `edit` (which says whether it changed anything) and returns once a table holding
    /// the change is on disk.
    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, RunRecord>) -> bool,
    ) -> Result<(), RunsError> {
        let mine = {
            let mut runs = self.lock();
            if !edit(&mut runs.map) {
                return Ok(());
            }
            runs.changes += 1;
            runs.changes
        };
        self.persist(mine)
    }

    /// Writes the current table unless one holding change `mine` is on disk already (written
    /// by a save that started after the change, while this caller waited for its turn).
    fn persist(&self, mine: u64) -> Result<(), RunsError> {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if *saved >= mine {
            return Ok(());
        }
        let (bytes, changes) = {
            let runs = self.lock();
            let disk = OnDisk {
                version: VERSION,
                runs: runs.map.values().cloned().collect(),
            };
            (serde_json::to_vec(&disk), runs.changes)
        };
        let bytes = bytes.map_err(|e| RunsError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        // On failure `saved` stays behind: the next change writes the whole table again.
        write_atomically(&self.path, &bytes).map_err(|source| RunsError::Write {
            path: self.path.clone(),
            source,
        })?;
        *saved = changes;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        // A panic while holding the lock cannot leave the map half-changed (insert/remove are
        // single calls), so a poisoned lock is still a consistent table.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table writes the env it is given (the plugin gives it only what the container's
    /// env log-opts select, see `plugin::strip_secrets`) and reads it back for the documents.
    #[test]
    fn table_survives_a_reload_with_the_env_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let table = RunTable::load(dir.path()).unwrap();
        let info = Info {
            container_id: "c".repeat(64),
            container_env: vec!["DEPLOY=blue".into()],
            ..Info::default()
        };
        table
            .insert(RunRecord {
                file: "/f1".into(),
                info: info.clone(),
                stopped: false,
            })
            .unwrap();
        table
            .insert(RunRecord {
                file: "/f2".into(),
                info: info.clone(),
                stopped: false,
            })
            .unwrap();
        table.remove("/f1").unwrap();
        let again = RunTable::load(dir.path()).unwrap().all();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].file, "/f2");
        assert_eq!(again[0].info.container_env, ["DEPLOY=blue"]);
        let none = Info {
            container_env: Vec::new(),
            ..info
        };
        let raw = serde_json::to_string(&none).unwrap();
        assert!(!raw.contains("ContainerEnv"), "{raw}");
    }

    /// Regression: 100 containers stopping together cost 100 back-to-back table syncs (450 ms
    /// before the last StopLogging was answered). Changes made while a save is being written
    /// now share the next one.
    #[test]
    fn changes_made_during_a_save_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let table = std::sync::Arc::new(RunTable::load(dir.path()).unwrap());
        // Plays a save in progress: every change below waits for its turn behind it.
        let in_progress = table.saved.lock().unwrap();
        let threads: Vec<_> = (0..32)
            .map(|n| {
                let table = std::sync::Arc::clone(&table);
                std::thread::spawn(move || {
                    table
                        .insert(RunRecord {
                            file: format!("/fifo-{n}"),
                            info: Info {
                                container_id: format!("{n:064}"),
                                ..Info::default()
                            },
                            stopped: false,
                        })
                        .unwrap()
                })
            })
            .collect();
        while table.lock().changes < 32 {
            std::thread::yield_now();
        }
        drop(in_progress);
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(table.writes.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(RunTable::load(dir.path()).unwrap().all().len(), 32);
    }

    #[test]
    fn a_corrupt_table_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("runs.json"), b"{not json").unwrap();
        let err = RunTable::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("runs.json"), "{err}");
    }

    /// Regression: a container restarting while its lines were not all shipped (Elasticsearch
    /// away, a restart policy) left one ended run per restart in the table, all kept and
    /// rewritten on every save until shipping caught up.
    #[test]
    fn ended_runs_of_a_restarting_container_do_not_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let table = RunTable::empty(dir.path());
        let info = |config: &str| Info {
            container_id: "c".repeat(64),
            config: [("index".to_owned(), config.to_owned())].into(),
            ..Info::default()
        };
        for n in 0..100 {
            let file = format!("/run/docker/logging/{n}");
            table
                .insert(RunRecord {
                    file: file.clone(),
                    info: info("a"),
                    stopped: false,
                })
                .unwrap();
            table.mark_stopped(&file).unwrap();
        }
        // Another destination's ended run is kept beside it.
        table
            .insert(RunRecord {
                file: "/run/docker/logging/other".into(),
                info: info("b"),
                stopped: true,
            })
            .unwrap();
        table
            .insert(RunRecord {
                file: "/run/docker/logging/last".into(),
                info: info("a"),
                stopped: false,
            })
            .unwrap();
        table.mark_stopped("/run/docker/logging/last").unwrap();
        let files: Vec<String> = RunTable::load(dir.path())
            .unwrap()
            .all()
            .into_iter()
            .map(|r| r.file)
            .collect();
        assert_eq!(
            files,
            ["/run/docker/logging/last", "/run/docker/logging/other"]
        );
    }
}
