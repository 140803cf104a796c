//! Episodes of documents held back: an index that answers "not ready" (privileges, a write
//! block, no index, a missing pipeline; see `bulk`) or an answer the plugin does not know.
//!
//! While it lasts every document to that index is held and retried, and every retry gets the
//! same answer; logging each would flood the plugin's log, logging none would hide the reason
//! shipping stopped. So an episode is logged at ERROR when it starts (naming index, status and
//! reason), again as a reminder at most every [`REMINDER`] while it lasts, and at WARN when
//! the index accepts a document again; the next refusal after that is a new episode. Episodes
//! are per index and shared by every worker of a destination, so two requests held at once
//! still log once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest an episode goes without an ERROR: an operator looking at the last minutes of
/// the log still finds why shipping is held.
pub const REMINDER: Duration = Duration::from_secs(300);

/// Why documents are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The destination is not ready for them.
    NotReady,
    /// An item answer this plugin does not know.
    Unknown,
}

/// What to log for a held document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A new episode: log it at ERROR.
    Started,
    /// Still held after [`REMINDER`] without a word: log it at ERROR again.
    Reminder { since: Duration, held: u64 },
    /// Already logged.
    Quiet,
}

/// An episode that ended: how long it lasted and how many sends it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub hold: Hold,
    pub lasted: Duration,
    pub held: u64,
}

struct Episode {
    hold: Hold,
    since: Instant,
    logged: Instant,
    held: u64,
}

/// The open episodes of one destination, by index.
#[derive(Default)]
pub struct Episodes {
    open: Mutex<HashMap<String, Episode>>,
}

impl Episodes {
    /// `n` documents for `index` were held for `hold` at `now`.
    pub fn held(&self, index: &str, hold: Hold, n: u64, now: Instant) -> Report {
        let mut open = self.lock();
        match open.get_mut(index) {
            Some(episode) if episode.hold == hold => {
                episode.held += n;
                if now.saturating_duration_since(episode.logged) >= REMINDER {
                    episode.logged = now;
                    Report::Reminder {
                        since: now.saturating_duration_since(episode.since),
                        held: episode.held,
                    }
                } else {
                    Report::Quiet
                }
            }
            // None, or the reason changed (a pipeline fixed, then a write block): a new episode.
            _ => {
                open.insert(
                    index.to_owned(),
                    Episode {
                        hold,
                        since: now,
                        logged: now,
                        held: n,
                    },
                );
                Report::Started
            }
        }
    }

    /// A document for `index` was accepted: ends its episode, if one is open.
    pub fn accepted(&self, index: &str, now: Instant) -> Option<Ended> {
        let episode = self.lock().remove(index)?;
        Some(Ended {
            hold: episode.hold,
            lasted: now.saturating_duration_since(episode.since),
            held: episode.held,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Indices open in a "not ready" episode (the gauge).
    pub fn not_ready(&self) -> u64 {
        self.lock()
            .values()
            .filter(|e| e.hold == Hold::NotReady)
            .count() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Episode>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_logged_once_then_reminded_then_ends() {
        let episodes = Episodes::default();
        let t0 = Instant::now();
        assert_eq!(
            episodes.held("logs", Hold::NotReady, 10, t0),
            Report::Started
        );
        assert_eq!(episodes.not_ready(), 1);
        // Every retry within the reminder period, from any worker: quiet.
        for s in 1..300 {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(episodes.held("logs", Hold::NotReady, 10, at), Report::Quiet);
        }
        let at = t0 + REMINDER;
        assert_eq!(
            episodes.held("logs", Hold::NotReady, 10, at),
            Report::Reminder {
                since: REMINDER,
                held: 3010
            }
        );
        assert_eq!(
            episodes.held("logs", Hold::NotReady, 1, at + Duration::from_secs(1)),
            Report::Quiet
        );
        let ended = episodes
            .accepted("logs", at + Duration::from_secs(2))
            .unwrap();
        assert_eq!(ended.held, 3011);
        assert_eq!(ended.lasted, REMINDER + Duration::from_secs(2));
        assert!(episodes.is_empty());
        assert_eq!(episodes.not_ready(), 0);
        // Failing again after it recovered is a new episode.
        assert_eq!(
            episodes.held("logs", Hold::NotReady, 1, at + Duration::from_secs(3)),
            Report::Started
        );
    }

    #[test]
    fn episodes_are_per_index_and_per_reason() {
        let episodes = Episodes::default();
        let t0 = Instant::now();
        assert_eq!(episodes.held("a", Hold::NotReady, 1, t0), Report::Started);
        assert_eq!(episodes.held("b", Hold::Unknown, 1, t0), Report::Started);
        assert_eq!(
            episodes.not_ready(),
            1,
            "unknown answers are not 'not ready'"
        );
        // Documents to another index going in end nothing here.
        assert_eq!(episodes.accepted("c", t0), None);
        assert_eq!(episodes.held("a", Hold::NotReady, 1, t0), Report::Quiet);
        assert_eq!(episodes.held("a", Hold::Unknown, 1, t0), Report::Started);
        assert_eq!(episodes.not_ready(), 0);
    }
}
