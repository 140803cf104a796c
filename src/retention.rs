//! Removal of local copies nobody will read again. The engine never tells a logging plugin that
//! a container was removed, so a store whose container has had no logging run for
//! `LOCAL_LOGS_MAX_AGE` (default 7 days, by the time of its last write) is removed, checked at
//! start and then every [`SWEEP_EVERY`]. A store that anything uses (a logging run, a reader, a
//! shipper) is never touched, checked at the moment of removal (see
//! [`Stores::remove_unused`](crate::store::Stores::remove_unused)). `LOCAL_LOGS_MAX_AGE=0` keeps
//! every local copy until removed by hand. The sweep lists and deletes directories: it runs off
//! the runtime's threads, which drain the containers' pipes.
//!
//! Retention sits below the plugin: it names what it needs of its owner in [`Local`] (the
//! stores, and the containers the run table still holds), and `plugin.rs` provides it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::store::{Removal, Stores};

/// What the sweep works on.
pub trait Local: Send + Sync + 'static {
    /// The local copies.
    fn stores(&self) -> &Stores;
    /// Containers with a run in the run table: never idle, however old their last line.
    fn recorded_containers(&self) -> HashSet<String>;
}

/// Callers hold their owner in an `Arc` (the plugin's is shared by every task).
impl<L: Local> Local for Arc<L> {
    fn stores(&self) -> &Stores {
        L::stores(self)
    }

    fn recorded_containers(&self) -> HashSet<String> {
        L::recorded_containers(self)
    }
}

pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Deletes what interrupted removals left, then runs the sweep until shutdown; `max_age` is
/// `LOCAL_LOGS_MAX_AGE` (None: keep every copy).
pub async fn run<L: Local>(local: Arc<L>, max_age: Option<Duration>, shutdown: CancellationToken) {
    let leftovers = Arc::clone(&local);
    let _ = tokio::task::spawn_blocking(move || leftovers.stores().delete_leftovers()).await;
    let Some(max_age) = max_age else {
        return;
    };
    loop {
        let sweeper = Arc::clone(&local);
        let swept =
            tokio::task::spawn_blocking(move || sweep(&*sweeper, max_age, SystemTime::now()));
        if let Err(error) = swept.await {
            tracing::error!(%error, "the age sweep of local copies failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Removes every inactive store last written before `now - max_age`; returns how many.
pub fn sweep<L: Local>(local: &L, max_age: Duration, now: SystemTime) -> usize {
    let stores = match local.stores().list() {
        Ok(stores) => stores,
        Err(error) => {
            tracing::warn!(%error, "cannot list local copies for the age sweep");
            return 0;
        }
    };
    // A container with a run in the run table is not idle, however old its last line: its FIFO
    // may be being reopened after a restart (its store not open yet), or its backlog waiting to
    // be shipped.
    let recorded = local.recorded_containers();
    let mut removed = 0;
    for (id, last_write) in stores {
        let age = now.duration_since(last_write).unwrap_or_default();
        if age < max_age || recorded.contains(id.as_str()) {
            continue;
        }
        match local.stores().remove_unused(&id) {
            Ok(Removal::InUse) => {}
            Ok(Removal::Removed) => {
                removed += 1;
                tracing::info!(container = id.short(), age = %humantime::format_duration(Duration::from_secs(age.as_secs())), "local copy removed: no logging for longer than LOCAL_LOGS_MAX_AGE");
            }
            Err(error) => tracing::warn!(%error, "cannot remove an old local copy"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container_id::ContainerId;
    use crate::plugin::Plugin;
    use crate::settings::Settings;
    use crate::shipper::checkpoint::Checkpoint;
    use crate::store::{Batch, Position, StoreLimits};

    const ID: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

    /// A store with a line in it, and a checkpoint for it as a shipper writes one.
    fn shipped_store(plugin: &Plugin, state: &std::path::Path) -> std::path::PathBuf {
        let id = ContainerId::parse(ID).unwrap();
        let store = plugin
            .stores()
            .open_container(&id, StoreLimits::default())
            .unwrap();
        let mut batch = Batch::default();
        batch.push(b"not parsed here", 1);
        store.append(&batch).unwrap();
        let dir = state.join("checkpoints");
        std::fs::create_dir_all(&dir).unwrap();
        let (mut checkpoint, _) = Checkpoint::load(&dir, &id, "http://es:9200");
        checkpoint.advance(store.end(), true).unwrap();
        assert_eq!(
            Checkpoint::load(&dir, &id, "http://es:9200").1,
            Some(store.end())
        );
        assert_ne!(store.end(), Position::default());
        dir.join(format!("{ID}.json"))
    }

    /// Regression (issue 12, item 11): a container's checkpoint file stayed after the age sweep
    /// removed its local copy, one file per container ever shipped, forever.
    #[test]
    fn the_age_sweep_removes_a_copys_checkpoint_with_it() {
        let state = tempfile::tempdir().unwrap();
        let plugin =
            Plugin::open(Settings::default(), state.path(), CancellationToken::new()).unwrap();
        let checkpoint = shipped_store(&plugin, state.path());
        let later = SystemTime::now() + Duration::from_secs(3600);

        // In use (a run, a reader or a shipper holds it): the copy and its checkpoint stay.
        let held = plugin
            .stores()
            .get_open(&ContainerId::parse(ID).unwrap())
            .unwrap();
        assert_eq!(sweep(&plugin, Duration::ZERO, later), 0);
        assert!(checkpoint.exists(), "the checkpoint of a store in use went");
        drop(held);

        assert_eq!(sweep(&plugin, Duration::ZERO, later), 1);
        assert!(
            !checkpoint.exists(),
            "the checkpoint of a removed local copy is left behind"
        );
    }
}
