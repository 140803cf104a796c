//! The store a logging run writes into, or, while it cannot be opened, the attempts to open it.
//!
//! A run reopened after a plugin restart must drain its FIFO whatever else fails: the engine
//! keeps writing into the pipe, and a pipe nobody reads blocks the container once full. So a run
//! whose store cannot be opened (a state dir turned read-only, a broken directory) starts all the
//! same, without a store: it drains, counts what it cannot keep as lost, and tries to open the
//! store again, backing off from [`FIRST_RETRY`] to [`LAST_RETRY`], when entries are there to
//! store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{ContainerStore, StoreError};

/// The first wait before the store is tried again, doubled after every failure up to
/// [`LAST_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const LAST_RETRY: Duration = Duration::from_secs(30);

/// Opens the run's store (and does whatever the owner must do once it is open, such as handing
/// it to the shipper).
pub type OpenStore = Box<dyn FnMut() -> Result<Arc<ContainerStore>, StoreError> + Send>;

pub enum StoreSlot {
    Open(Arc<ContainerStore>),
    Missing {
        open: OpenStore,
        /// No attempt before this.
        retry_at: Instant,
        backoff: Duration,
    },
}

impl StoreSlot {
    /// A slot without a store yet, whose first attempt is [`FIRST_RETRY`] from now (the owner
    /// has just failed to open it).
    pub fn missing(open: OpenStore) -> Self {
        Self::Missing {
            open,
            retry_at: Instant::now() + FIRST_RETRY,
            backoff: FIRST_RETRY,
        }
    }

    /// The store if it is open, or opens it if an attempt is due. An error is the failed
    /// attempt's (for the caller's log line); the slot then waits longer before the next one.
    pub fn get(&mut self) -> Result<Option<&Arc<ContainerStore>>, StoreError> {
        if let Self::Missing {
            open,
            retry_at,
            backoff,
        } = self
        {
            if Instant::now() < *retry_at {
                return Ok(None);
            }
            match open() {
                Ok(store) => {
                    tracing::warn!(
                        container = store.id().short(),
                        "the local copy opened again: log lines are stored from now on"
                    );
                    *self = Self::Open(store);
                }
                Err(error) => {
                    *backoff = (*backoff * 2).min(LAST_RETRY);
                    *retry_at = Instant::now() + *backoff;
                    return Err(error);
                }
            }
        }
        match self {
            Self::Open(store) => Ok(Some(store)),
            Self::Missing { .. } => Ok(None),
        }
    }

    /// The store, if it is open; never tries to open it.
    pub fn opened(&self) -> Option<&Arc<ContainerStore>> {
        match self {
            Self::Open(store) => Some(store),
            Self::Missing { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container_id::ContainerId;
    use crate::store::{Spool, StoreLimits, Stores};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_missing_store_is_tried_again_after_the_backoff_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stores =
            Arc::new(Stores::open(dir.path().join("root"), Arc::new(Spool::new(1 << 30))).unwrap());
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&tries);
        let mut slot = StoreSlot::missing(Box::new(move || {
            // Fails once, then opens.
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(StoreError::Removed {
                    path: "test".into(),
                });
            }
            let id = ContainerId::parse(&"cd".repeat(32)).unwrap();
            stores.open_container(&id, StoreLimits::default())
        }));
        assert!(slot.get().unwrap().is_none(), "tried before the first wait");
        assert_eq!(tries.load(Ordering::SeqCst), 0);
        std::thread::sleep(FIRST_RETRY);
        assert!(slot.get().is_err());
        assert!(
            slot.get().unwrap().is_none(),
            "tried again before the doubled wait"
        );
        std::thread::sleep(FIRST_RETRY * 2);
        assert!(slot.get().unwrap().is_some());
        assert!(slot.get().unwrap().is_some());
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }
}
