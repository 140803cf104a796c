//! The shipper's pause before a retry: the crate's [`Backoff`] carrying out a
//! [`Wait`](super::retry::Wait), with what the operator is told about it rate-limited (a
//! destination that is down for hours says so every 30 s or 60 s, not at every retry).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::retry::Wait;
use crate::backoff::{Backoff, Cancelled};

/// At most one warning this often for retries that fix themselves.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// At most one error this often for retries that wait for an operator.
const ERROR_EVERY: Duration = Duration::from_secs(60);

pub struct Pause {
    backoff: Backoff,
    last_told: Option<Instant>,
}

impl Pause {
    pub fn new(init: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(init, max),
            last_told: None,
        }
    }

    /// Progress: the next pause is the first step again.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }

    /// Tells the operator what `wait` says (if it is time to), then sleeps as long as it says,
    /// or until `shutdown`. `destination` names the destination in the log line.
    pub async fn wait(
        &mut self,
        wait: &Wait,
        destination: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Cancelled> {
        match wait {
            Wait::No => return Ok(()),
            Wait::Step => {}
            Wait::Cap => self.backoff.jump_to_cap(),
            Wait::Warn(message) => {
                if self.time_to_tell(WARN_EVERY) {
                    tracing::warn!(%destination, "{message}; retrying with backoff (logs are kept locally)");
                }
            }
            Wait::Slow(message) => {
                if self.time_to_tell(ERROR_EVERY) {
                    tracing::error!(%destination, "{message}");
                }
                self.backoff.jump_to_cap();
            }
        }
        self.backoff.wait(shutdown).await
    }

    fn time_to_tell(&mut self, every: Duration) -> bool {
        let due = self.last_told.is_none_or(|t| t.elapsed() >= every);
        if due {
            self.last_told = Some(Instant::now());
        }
        due
    }
}
