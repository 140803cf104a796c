//! Removal of local copies nobody will read again. The engine never tells a logging plugin that
//! a container was removed, so a store whose container has had no logging run for
//! `LOCAL_LOGS_MAX_AGE` (default 7 days, by the time of its last write) is removed, checked at
//! start and then every [`SWEEP_EVERY`]. A store that anything uses (a logging run, a reader, a
//! shipper) is never touched, checked at the moment of removal (see
//! [`Stores::remove_unused`](crate::store::Stores::remove_unused)). `LOCAL_LOGS_MAX_AGE=0` keeps
//! every local copy until removed by hand. The sweep lists and deletes directories: it runs off
//! the runtime's threads, which drain the containers' pipes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::plugin::Plugin;
use crate::store::Removal;

pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Runs the sweep until shutdown.
pub async fn run(plugin: Arc<Plugin>, shutdown: CancellationToken) {
    let leftovers = Arc::clone(&plugin);
    let _ = tokio::task::spawn_blocking(move || leftovers.stores().delete_leftovers()).await;
    let Some(max_age) = plugin.settings().local_logs_max_age else {
        return;
    };
    loop {
        let sweeper = Arc::clone(&plugin);
        let swept =
            tokio::task::spawn_blocking(move || sweep(&sweeper, max_age, SystemTime::now()));
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
pub fn sweep(plugin: &Plugin, max_age: Duration, now: SystemTime) -> usize {
    let stores = match plugin.stores().list() {
        Ok(stores) => stores,
        Err(error) => {
            tracing::warn!(%error, "cannot list local copies for the age sweep");
            return 0;
        }
    };
    // A container with a run in the run table is not idle, however old its last line: its FIFO
    // may be being reopened after a restart (its store not open yet), or its backlog waiting to
    // be shipped.
    let recorded = plugin.recorded_containers();
    let mut removed = 0;
    for (id, last_write) in stores {
        let age = now.duration_since(last_write).unwrap_or_default();
        if age < max_age || recorded.contains(id.as_str()) {
            continue;
        }
        match plugin.stores().remove_unused(&id) {
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
