//! The plugin-wide spool budget: how much unshipped data may stay on disk beyond max-file.
//!
//! `max-size`/`max-file` bound what `docker logs` shows. A segment that leaves that window while
//! a shipper still needs it (it is at or after the store's pin, see
//! [`ContainerStore::set_pin`](super::ContainerStore::set_pin)) becomes backlog: it stays on
//! disk, hidden from `docker logs`, and its size on disk is charged here. When a charge does not
//! fit, the oldest backlog segment of the store that needs room is deleted instead: its entries
//! are lost for Elasticsearch, counted here and logged at ERROR by the store. Shipping past a
//! backlog segment deletes it and gives its charge back.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Spool {
    max: u64,
    used: AtomicU64,
    dropped_bytes: AtomicU64,
    dropped_entries: AtomicU64,
}

impl Spool {
    pub fn new(max: u64) -> Self {
        Self {
            max,
            used: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            dropped_entries: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` from the budget if they fit.
    pub(crate) fn try_charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    pub(crate) fn release(&self, bytes: u64) {
        // Saturating: a release can never take the gauge below zero.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub(crate) fn record_drop(&self, bytes: u64, entries: Option<u64>) {
        self.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(entries) = entries {
            self.dropped_entries.fetch_add(entries, Ordering::Relaxed);
        }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes of backlog on disk now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes of unshipped data deleted because the budget was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes.load(Ordering::Relaxed)
    }

    /// Entries deleted unshipped because the budget was full (segments whose count is unknown,
    /// found on disk at start, add their bytes only).
    pub fn dropped_entries(&self) -> u64 {
        self.dropped_entries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_budget_and_releases_give_back() {
        let spool = Spool::new(100);
        assert!(spool.try_charge(60));
        assert!(!spool.try_charge(41));
        assert!(spool.try_charge(40));
        assert_eq!(spool.used(), 100);
        spool.release(60);
        assert_eq!(spool.used(), 40);
        spool.release(1000);
        assert_eq!(spool.used(), 0);
    }
}
