//! The plugin-wide spool budget: how much unshipped data may stay on disk beyond max-file.
//!
//! `max-size`/`max-file` bound what `docker logs` shows. A segment that leaves that window while
//! a shipper still needs it (it is at or after the store's pin, see
//! [`ContainerStore::set_pin`](super::ContainerStore::set_pin)) becomes backlog: it stays on
//! disk, hidden from `docker logs`, and its size on disk is charged here. When a charge does not
//! fit, the oldest backlog segment of the store that needs room is deleted instead: its entries
//! are lost for Elasticsearch, counted here and logged at ERROR by the store. Shipping past a
//! backlog segment deletes it and gives its charge back.
//!
//! # Segments waiting for compression
//! The charge follows the size on disk: a segment is charged raw while it waits for the
//! compressor and its charge is lowered to the `.gz` size when it is compressed (logs shrink
//! 5 to 100 times). Such a segment is judged at its final size, not guessed at: its raw bytes
//! count against a second allowance of the same size (`awaiting`), and only what is settled
//! (compressed, or never to be) counts against the budget proper. So a burst that outruns the
//! shipper and the compressor for a moment is kept whole while it fits once compressed; the
//! disk holds at most twice the budget meanwhile (an estimate of the ratio would be wrong as
//! soon as the logs change, and wrong one way it deletes lines that would have fitted). Once
//! the compressor is a whole budget of raw bytes behind, the oldest backlog goes, as when the
//! budget is full.

use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
pub struct Spool {
    max: u64,
    usage: Mutex<Usage>,
}

#[derive(Debug, Default)]
struct Usage {
    /// Bytes on disk of every charged segment.
    used: u64,
    /// The part of `used` that is raw segments waiting for compression.
    awaiting: u64,
    dropped_bytes: u64,
    dropped_entries: u64,
}

impl Usage {
    /// Bytes charged at their final size.
    fn settled(&self) -> u64 {
        self.used - self.awaiting
    }
}

impl Spool {
    pub fn new(max: u64) -> Self {
        Self {
            max,
            usage: Mutex::new(Usage::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Usage> {
        // Plain counters: valid whatever panicked while they were held.
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `bytes` from the budget if they fit: from the allowance for segments waiting for
    /// compression when `awaiting`, else from the budget proper.
    pub(crate) fn try_charge(&self, bytes: u64, awaiting: bool) -> bool {
        let mut usage = self.lock();
        let fits = if awaiting {
            usage.awaiting.saturating_add(bytes) <= self.max && usage.settled() <= self.max
        } else {
            usage.settled().saturating_add(bytes) <= self.max
        };
        if fits {
            usage.used += bytes;
            if awaiting {
                usage.awaiting += bytes;
            }
        }
        fits
    }

    /// Gives back a charge made by [`try_charge`](Self::try_charge) with the same `awaiting`.
    pub(crate) fn release(&self, bytes: u64, awaiting: bool) {
        let mut usage = self.lock();
        // Saturating: a release can never take the gauges below zero.
        usage.used = usage.used.saturating_sub(bytes);
        if awaiting {
            usage.awaiting = usage.awaiting.saturating_sub(bytes);
        }
        usage.awaiting = usage.awaiting.min(usage.used);
    }

    /// A segment charged `charged` bytes while it waited for compression now takes `size` on
    /// disk for good. True if the settled bytes are then over the budget (the caller deletes).
    pub(crate) fn settle(&self, charged: u64, size: u64) -> bool {
        let mut usage = self.lock();
        usage.used = usage.used.saturating_sub(charged).saturating_add(size);
        usage.awaiting = usage.awaiting.saturating_sub(charged).min(usage.used);
        usage.settled() > self.max
    }

    /// The settled bytes are over the budget.
    pub(crate) fn over_budget(&self) -> bool {
        self.lock().settled() > self.max
    }

    pub(crate) fn record_drop(&self, bytes: u64, entries: Option<u64>) {
        let mut usage = self.lock();
        usage.dropped_bytes += bytes;
        usage.dropped_entries += entries.unwrap_or(0);
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes of backlog on disk now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Bytes of backlog on disk now that wait for compression (part of [`used`](Self::used)).
    pub fn awaiting_compression(&self) -> u64 {
        self.lock().awaiting
    }

    /// Bytes of unshipped data deleted because the budget was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.lock().dropped_bytes
    }

    /// Entries deleted unshipped because the budget was full (segments whose count is unknown,
    /// found on disk at start, add their bytes only).
    pub fn dropped_entries(&self) -> u64 {
        self.lock().dropped_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_budget_and_releases_give_back() {
        let spool = Spool::new(100);
        assert!(spool.try_charge(60, false));
        assert!(!spool.try_charge(41, false));
        assert!(spool.try_charge(40, false));
        assert_eq!(spool.used(), 100);
        spool.release(60, false);
        assert_eq!(spool.used(), 40);
        spool.release(1000, false);
        assert_eq!(spool.used(), 0);
    }

    #[test]
    fn segments_waiting_for_compression_are_judged_at_their_compressed_size() {
        let spool = Spool::new(100);
        assert!(spool.try_charge(90, false));
        // Raw, waiting: fits the allowance although the budget proper is nearly full.
        assert!(spool.try_charge(80, true));
        assert!(
            !spool.try_charge(30, true),
            "a whole budget of raw bytes waits already"
        );
        assert_eq!((spool.used(), spool.awaiting_compression()), (170, 80));
        // Compressed to 8 bytes: settled, within the budget.
        assert!(!spool.settle(80, 8));
        assert_eq!((spool.used(), spool.awaiting_compression()), (98, 0));
        assert!(spool.try_charge(50, true));
        // Compressed to 5: over the budget now, the caller deletes.
        assert!(spool.settle(50, 5));
        assert!(spool.over_budget());
        spool.release(90, false);
        assert!(!spool.over_budget());
        assert_eq!(spool.used(), 13);
    }
}
