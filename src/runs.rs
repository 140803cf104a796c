//! The table of open logging runs (FIFO path -> container Info), persisted so a restarted plugin
//! can reopen every FIFO the engine still holds: the engine does not repeat StartLogging after a
//! plugin crash, and a FIFO nobody reads blocks its container after the pipe fills.
//!
//! File: `<state dir>/runs.json`, `{"version":1,"runs":[{"file":"...","info":{...}}]}`, rewritten
//! whole on every change through a temporary file that is synced and renamed, so a crash leaves
//! either the old or the new table. `ContainerEnv` is never written (it may hold secrets).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::api::types::Info;

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
    runs: Mutex<BTreeMap<String, RunRecord>>,
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
        Ok(Self {
            path,
            runs: Mutex::new(runs),
        })
    }

    /// A table that starts empty and saves to `<state_dir>/runs.json`.
    pub fn empty(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("runs.json"),
            runs: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn all(&self) -> Vec<RunRecord> {
        self.lock().values().cloned().collect()
    }

    pub fn insert(&self, record: RunRecord) -> Result<(), RunsError> {
        let mut runs = self.lock();
        runs.insert(record.file.clone(), record);
        self.save(&runs)
    }

    /// Marks a run as ended, kept until its container's lines are shipped.
    pub fn mark_stopped(&self, file: &str) -> Result<(), RunsError> {
        let mut runs = self.lock();
        if let Some(run) = runs.get_mut(file) {
            run.stopped = true;
            self.save(&runs)?;
        }
        Ok(())
    }

    /// Forgets every ended run of a container (its lines are all shipped).
    pub fn remove_stopped(&self, container_id: &str) -> Result<(), RunsError> {
        let mut runs = self.lock();
        let before = runs.len();
        runs.retain(|_, r| !(r.stopped && r.info.container_id == container_id));
        if runs.len() != before {
            self.save(&runs)?;
        }
        Ok(())
    }

    pub fn remove(&self, file: &str) -> Result<(), RunsError> {
        let mut runs = self.lock();
        if runs.remove(file).is_some() {
            self.save(&runs)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunRecord>> {
        // A panic while holding the lock cannot leave the map half-changed (insert/remove are
        // single calls), so a poisoned lock is still a consistent table.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, runs: &BTreeMap<String, RunRecord>) -> Result<(), RunsError> {
        let disk = OnDisk {
            version: VERSION,
            runs: runs.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(|e| RunsError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomically(&self.path, &bytes).map_err(|source| RunsError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Creates `dir` (and missing parents) private to the plugin's user, and takes group and other
/// permissions off it if it already existed: the state dir holds containers' output and the
/// run table holds their log-opts (credentials among them). `make install` creates the state
/// dir's host folder with `mkdir -p`, 0755.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_survives_a_reload_without_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let table = RunTable::load(dir.path()).unwrap();
        let info = Info {
            container_id: "c".repeat(64),
            container_env: vec!["SECRET=x".into()],
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
        assert!(again[0].info.container_env.is_empty());
        let raw = std::fs::read_to_string(dir.path().join("runs.json")).unwrap();
        assert!(!raw.contains("SECRET"));
    }

    #[test]
    fn a_corrupt_table_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("runs.json"), b"{not json").unwrap();
        let err = RunTable::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("runs.json"), "{err}");
    }
}
