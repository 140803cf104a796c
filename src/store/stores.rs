//! All containers' stores under one root directory, opened once and cached while in use, with
//! the one compressor thread they share.
//!
//! A store holds a descriptor (its active segment) and some memory. The engine never says when a
//! container is removed, so a store kept open until then would be kept forever: one descriptor
//! per container ever seen, until the plugin runs out of them. So a store is closed as soon as
//! nothing uses it ([`Stores::close_idle`], called when a logging run, a ReadLogs stream or
//! a container's shipping ends) and opened again when needed.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::compress::Compressor;
use super::container::ContainerStore;
use super::segment;
use super::spool::Spool;
use super::{StoreError, StoreLimits};
use crate::container_id::ContainerId;

pub struct Stores {
    root: PathBuf,
    /// Open stores, one file descriptor each: in use, or not yet found idle by
    /// [`Stores::close_idle`]. Only one instance per container may exist (it alone knows its
    /// pin, its spool charges and its unsynced segments), so a store leaves this map only when
    /// no handle to it is held elsewhere.
    open: Mutex<HashMap<ContainerId, Arc<ContainerStore>>>,
    /// The active segment this process last appended to, per container whose store it closed:
    /// a store opened again may go on appending there, and only there (see
    /// `ContainerStore::take_over`). Entries go with the container's directory.
    written_here: Mutex<HashMap<ContainerId, u64>>,
    /// The host has not restarted since the stores were last opened: see
    /// [`Stores::open_after_boot_check`].
    same_boot: bool,
    /// Dropped after `open` (field order), so the thread is joined last.
    compressor: Compressor,
    spool: Arc<Spool>,
    /// See [`Stores::on_removed`].
    on_removed: Option<OnRemoved>,
}

/// Called with a container whose store [`Stores::remove_unused`] removed (or found gone).
type OnRemoved = Box<dyn Fn(&ContainerId) + Send + Sync>;

impl Stores {
    /// Opens the root (created 0700 if missing) and starts the compressor thread. `spool` is
    /// the budget every store's backlog shares.
    ///
    /// Every active segment found on disk is treated as written before a host crash: it is
    /// sealed before the next append (see [`Stores::open_after_boot_check`] for the plugin's
    /// way).
    pub fn open(root: PathBuf, spool: Arc<Spool>) -> Result<Self, StoreError> {
        Self::open_with(root, spool, |_| false)
    }

    /// [`Stores::open`], but an active segment an earlier process wrote during this same boot
    /// of the host is appended to again: the page cache kept everything that process wrote
    /// (a plugin crash, restart, disable/enable or upgrade loses nothing of it), so no id it
    /// handed out can be reused. Sealing it anyway would cost a segment of the `max-file`
    /// window of `docker logs` at every plugin restart. The boot is the kernel's `boot_id`,
    /// recorded in `<root>/.boot_id`.
    pub fn open_after_boot_check(root: PathBuf, spool: Arc<Spool>) -> Result<Self, StoreError> {
        Self::open_with(root, spool, boot::same_as_recorded)
    }

    /// `same_boot` judges the root once it exists.
    fn open_with(
        root: PathBuf,
        spool: Arc<Spool>,
        same_boot: impl FnOnce(&Path) -> bool,
    ) -> Result<Self, StoreError> {
        segment::create_dir(&root)?;
        let same_boot = same_boot(&root);
        Ok(Self {
            root,
            open: Mutex::new(HashMap::new()),
            written_here: Mutex::new(HashMap::new()),
            same_boot,
            compressor: Compressor::start()?,
            spool,
            on_removed: None,
        })
    }

    /// What else goes with a removed store: `on_removed` is called with its container under
    /// the lock [`Stores::open_container`] takes, so it is done before a new store of that
    /// container can be created (and anything kept for the new store is written after it).
    /// The plugin deletes the container's shipping checkpoint there: it describes the store
    /// removed, and files of containers long gone must not pile up.
    pub fn on_removed(mut self, on_removed: impl Fn(&ContainerId) + Send + Sync + 'static) -> Self {
        self.on_removed = Some(Box::new(on_removed));
        self
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Opens (creating if needed) and caches the store for writing; if already open, updates its
    /// limits. Either way the store's writer is this process from now on: an active segment an
    /// earlier process wrote is sealed and a new one started (`ContainerStore::take_over`).
    pub fn open_container(
        &self,
        id: &ContainerId,
        limits: StoreLimits,
    ) -> Result<Arc<ContainerStore>, StoreError> {
        let mut open = self.lock();
        if let Some(store) = open.get(id) {
            store.set_limits(limits);
            store.take_over();
            return Ok(Arc::clone(store));
        }
        let store = Arc::new(self.open_store(id, Some(limits))?);
        store.take_over();
        open.insert(id.clone(), Arc::clone(&store));
        Ok(store)
    }

    /// Opens the store in its directory (which must exist).
    fn open_store(
        &self,
        id: &ContainerId,
        limits: Option<StoreLimits>,
    ) -> Result<ContainerStore, StoreError> {
        let dir = self.dir(id);
        if limits.is_some() {
            segment::create_dir(&dir)?;
        }
        let written_here = self.written_lock().get(id).copied();
        ContainerStore::open(
            id.clone(),
            dir,
            limits,
            self.compressor.queue(),
            Arc::clone(&self.spool),
            written_here,
            self.same_boot,
        )
    }

    /// The store if its directory exists (opened and cached), without creating anything. A
    /// store opened here compresses nothing until `open_container` gives it limits.
    pub fn existing(&self, id: &ContainerId) -> Result<Option<Arc<ContainerStore>>, StoreError> {
        let mut open = self.lock();
        if let Some(store) = open.get(id) {
            return Ok(Some(Arc::clone(store)));
        }
        let dir = self.dir(id);
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Open { path: dir, source }),
        }
        let store = Arc::new(self.open_store(id, None)?);
        open.insert(id.clone(), Arc::clone(&store));
        Ok(Some(store))
    }

    /// The store if it is open now; opens nothing.
    pub fn get_open(&self, id: &ContainerId) -> Option<Arc<ContainerStore>> {
        self.lock().get(id).cloned()
    }

    /// Closes every store nobody uses (no logging run, reader, shipper or compression job holds
    /// it: see `ContainerStore::is_idle`), after syncing it; returns how many.
    pub fn close_idle(&self) -> usize {
        let idle: Vec<Arc<ContainerStore>> = {
            let mut open = self.lock();
            let ids: Vec<ContainerId> = open
                .iter()
                // Only the map holds it, so nobody can take a new handle while it is checked.
                .filter(|(_, store)| Arc::strong_count(store) == 1 && store.is_idle())
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| open.remove(id)).collect()
        };
        for store in &idle {
            if let Err(error) = store.sync() {
                tracing::warn!(%error, container = store.id().short(), "cannot sync a local copy being closed");
            }
            let mut written_here = self.written_lock();
            match store.written_here() {
                Some(number) => written_here.insert(store.id().clone(), number),
                None => written_here.remove(store.id()),
            };
        }
        idle.len()
    }

    /// How many stores are open now.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// Deletes the container's directory and forgets it, unless something still uses the
    /// store: a logging run, a ReadLogs reader or a shipper (its handle or its pin). Background
    /// work on it (compression) is retired with it. The check and the unlinking of the directory happen under the map lock
    /// that [`Stores::open_container`] takes, so a container that starts again at that moment
    /// either holds its store first (and it stays) or gets a new, empty one afterwards: its new
    /// lines never go into a removed store.
    ///
    /// The directory is renamed aside under the lock and deleted after it, so a large copy being
    /// deleted never holds up a StartLogging.
    pub fn remove_unused(&self, id: &ContainerId) -> Result<Removal, StoreError> {
        let aside = {
            let mut open = self.lock();
            if let Some(store) = open.get(id) {
                // A logging run, a reader and a shipper each hold a handle; a shipper that let
                // go may still pin its backlog. Background work (compression, a sync) holds the
                // store's inner state only, and retiring it stops that work.
                if Arc::strong_count(store) > 1 || store.is_pinned() {
                    return Ok(Removal::InUse);
                }
                store.retire();
                open.remove(id);
            }
            // A store created here again is new to this process too.
            self.written_lock().remove(id);
            let dir = self.dir(id);
            let aside = self.root.join(format!(
                "{REMOVING_PREFIX}{}-{}",
                id.as_str(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ));
            let aside = match fs::rename(&dir, &aside) {
                Ok(()) => Some(aside),
                Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(StoreError::Delete { path: dir, source }),
            };
            if let Some(on_removed) = &self.on_removed {
                on_removed(id);
            }
            aside
        };
        if let Some(aside) = aside {
            delete_aside(&aside)?;
        }
        Ok(Removal::Removed)
    }

    /// Deletes what an interrupted [`Stores::remove_unused`] left renamed aside.
    pub fn delete_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(REMOVING_PREFIX))
            {
                if let Err(error) = delete_aside(&entry.path()) {
                    tracing::warn!(%error, "cannot delete a local copy removed before a restart");
                }
            }
        }
    }

    /// Every container directory with the time of its last write (the mtime of its newest
    /// segment, or of the directory if it has none). Names that are not container ids are
    /// skipped.
    pub fn list(&self) -> Result<Vec<(ContainerId, SystemTime)>, StoreError> {
        let list_error = |source| StoreError::List {
            path: self.root.clone(),
            source,
        };
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| ContainerId::parse(name).ok())
            else {
                continue;
            };
            match last_write(&entry.path()) {
                Ok(Some(time)) => found.push((id, time)),
                Ok(None) => {}
                // Removed meanwhile.
                Err(StoreError::List { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(found)
    }

    fn dir(&self, id: &ContainerId) -> PathBuf {
        self.root.join(id.as_str())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ContainerId, Arc<ContainerStore>>> {
        // The map stays valid whatever panicked while it was held.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn written_lock(&self) -> MutexGuard<'_, HashMap<ContainerId, u64>> {
        self.written_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The host's boot, as the kernel names it, against the one recorded beside the stores.
mod boot {
    use std::path::Path;

    const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
    const RECORDED: &str = ".boot_id";

    /// True when `<root>/.boot_id` names the boot the host is in now; records it either way
    /// (synced, so a later boot never reads this one's as its own). Anything unreadable counts
    /// as a new boot: sealing a segment costs one file, appending after a host crash could
    /// reuse document ids.
    pub(super) fn same_as_recorded(root: &Path) -> bool {
        let Ok(now) = std::fs::read_to_string(BOOT_ID) else {
            return false;
        };
        let now = now.trim();
        let path = root.join(RECORDED);
        let recorded = std::fs::read_to_string(&path).ok();
        let same = recorded.as_deref().map(str::trim) == Some(now);
        if !same {
            if let Err(error) = crate::fsutil::write_atomically(&path, now.as_bytes()) {
                tracing::warn!(%error, path = %path.display(), "cannot record the host's boot; the next start seals every active segment again");
            }
        }
        same
    }
}

/// What [`Stores::remove_unused`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The directory is gone (or was never there).
    Removed,
    /// Something uses the store: it stays.
    InUse,
}

/// Names a removed container directory takes until it is deleted: not a container id, so
/// [`Stores::list`] and [`Stores::existing`] never see it.
const REMOVING_PREFIX: &str = ".removing-";

fn delete_aside(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => Err(StoreError::Delete {
            path: path.to_owned(),
            source,
        }),
        _ => Ok(()),
    }
}

/// The mtime of the newest segment in `dir` (or of `dir`); None if `dir` is not a directory.
fn last_write(dir: &Path) -> Result<Option<SystemTime>, StoreError> {
    let stat_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::List { path, source }
    };
    let meta = fs::metadata(dir).map_err(stat_error(dir))?;
    if !meta.is_dir() {
        return Ok(None);
    }
    let newest = segment::list(dir)?
        .into_iter()
        .rfind(|(_, kind, _)| *kind != segment::Kind::Tmp);
    let meta = match newest {
        Some((_, _, path)) => match fs::metadata(&path) {
            Ok(meta) => meta,
            // Compressed or deleted meanwhile: the directory's mtime changed with it.
            Err(error) if error.kind() == io::ErrorKind::NotFound => meta,
            Err(source) => return Err(StoreError::List { path, source }),
        },
        None => meta,
    };
    meta.modified().map(Some).map_err(stat_error(dir))
}
