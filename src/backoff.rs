//! The one retry pause of the plugin: capped exponential backoff with "equal jitter", every
//! sleep raced against shutdown. Used by the shipper (a bulk request that must go again) and the
//! events collector (a lost `/events` stream).
//!
//! Each delay is half the current step plus a random part of the other half, so many
//! destinations (or many plugins restarted with one engine) do not retry in lockstep, and no
//! delay is shorter than half a step; the step doubles after each delay up to the cap, and goes
//! back to the first step on [`Backoff::reset`] (after progress).
//!
//! Imports nothing of ours: a floor module anything may use.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Shutdown came while waiting: the caller stops instead of retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shut down while waiting to retry")]
pub struct Cancelled;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    /// Steps from `min` up to `max` (a `max` below `min` is taken as `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            step: min,
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// The delay before the next retry; the one after is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        self.draws += 1;
        // std's hasher is seeded at random per process: enough randomness for jitter without a
        // crate for it.
        let random = self.random.hash_one(self.draws);
        let half = self.step / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(random % spread.saturating_add(1));
        self.step = (self.step * 2).min(self.max);
        half + jitter
    }

    /// Progress: the next delay is the first step again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The next delay is a step at the cap (for answers worth retrying only slowly).
    pub fn jump_to_cap(&mut self) {
        self.step = self.max;
    }

    /// Sleeps for [`Backoff::next_delay`], or until `shutdown`, whichever comes first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> Result<(), Cancelled> {
        let pause = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(pause) => Ok(()),
            _ = shutdown.cancelled() => Err(Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        let mut backoff = Backoff::new(min, max);
        let mut step = min;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(max);
        }
        assert_eq!(step, max);
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay >= min / 2 && delay <= min, "{delay:?}");
        // Jitter: not every delay of a long run at the cap is the same.
        let delays: HashSet<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn a_jump_to_the_cap_makes_the_next_delay_a_capped_one() {
        let max = Duration::from_secs(10);
        let mut backoff = Backoff::new(Duration::from_millis(100), max);
        backoff.jump_to_cap();
        let delay = backoff.next_delay();
        assert!(delay >= max / 2 && delay <= max, "{delay:?}");
    }

    #[tokio::test]
    async fn a_wait_ends_at_shutdown() {
        let mut long = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert_eq!(long.wait(&shutdown).await, Err(Cancelled));
        let mut short = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        assert_eq!(short.wait(&CancellationToken::new()).await, Ok(()));
    }
}
