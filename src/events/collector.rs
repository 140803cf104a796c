//! The reconnect loop: keeps one `/events` stream open for as long as the plugin runs and hands
//! every event, once and in order, to a sink.
//!
//! The rules (docs/events.md, "Replay and gaps"):
//!
//! - **Resume with `since`.** Every connection after the first asks for `since=` the newest
//!   `timeNano` delivered so far (the first uses the caller's `start_since`, the time of the last
//!   event shipped by an earlier run), so the engine replays what it still buffers.
//! - **Drop the replay of what was delivered.** `since` is inclusive: the events at exactly that
//!   nanosecond come again. The ids ([`Event::id`](super::Event::id)) of the last
//!   [`RECENT_IDS`] delivered events are remembered and a repeat is dropped, so within one
//!   process the sink never sees an event twice. (Across processes the ids make Elasticsearch
//!   answer 409 to the second `create`.)
//! - **Report gaps.** On a connection opened with `since=T`, the engine replays inclusively, so
//!   the first event to arrive is the one at `T` if the engine still buffers it. When the first
//!   event is strictly newer than `T`, the engine's buffer (its last 256 events, emptied by an
//!   engine restart) no longer reaches back to `T`, and events between `T` and that first event
//!   may be lost: the sink gets [`CollectorItem::Gap`] before that event, it is logged at ERROR
//!   and counted. (We cannot know that events were really lost, only that the engine can no
//!   longer prove they were not; a restarted engine with nothing new to say reports its gap when
//!   its first event arrives.) `start_since` is trusted to be the time of an event that matched
//!   the same filters; with other filters that event may not come again and a gap is reported.
//! - **Never give up.** Any failure (engine down, restart, refusal, broken stream) is retried
//!   with capped exponential backoff with jitter ([`crate::backoff`]), reset after each successful
//!   connect, the version renegotiated each time (an upgraded engine may speak another).
//! - **A socket that went stale ends the collector, when asked to.** In the plugin the engine's
//!   socket is a bind mount of the socket file the engine had when it started the plugin. An
//!   engine restarted with live-restore leaves the plugin running and listens on a new socket
//!   file; the mount still shows the old one, which refuses every connection for good. With
//!   [`Collector::with_stale_socket_limit`], a socket that served this collector and then
//!   refused every connection for that long ends [`Collector::run`] with
//!   [`Stopped::SocketStale`], so that the plugin can exit and the engine restart it with a
//!   fresh mount (an engine merely down is left the same way: it restarts the plugin when it
//!   comes back). A socket that never answered is a setup problem and is retried forever.
//! - **Never block the engine.** The engine drops events for a subscriber that does not read
//!   within 100 ms, so the stream is read promptly and the sink is an unbounded channel: the
//!   caller queues on its side.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::engine::{format_since, EngineClient, EngineError, EventLine};
use super::filters::Filters;
use crate::backoff::Backoff;

/// How many delivered ids are remembered for dropping replays. A replay holds only events at or
/// after the newest one delivered, so a handful would do; the engine's own buffer (256) times
/// four also covers events the engine published slightly out of time order.
pub const RECENT_IDS: usize = 1024;

/// The first retry's delay.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between retries: an engine restart takes seconds, and the events buffered
/// meanwhile are only 256, so waiting longer risks losing what a retry would still catch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the sink receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectorItem {
    Event(EventLine),
    /// Events after `after_nano` and before `before_nano` may be missing.
    Gap(Gap),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The newest event delivered before the gap (or the `start_since` given).
    pub after_nano: i64,
    /// The first event after the gap, which follows the Gap item in the sink.
    pub before_nano: i64,
}

/// Why [`Collector::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Shutdown,
    /// The sink's receiver was dropped: nobody wants events any more.
    SinkClosed,
    /// The socket served this collector, then refused every connection for the stale-socket
    /// limit (see the module docs).
    SocketStale,
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct CollectorStats {
    /// Events handed to the sink.
    pub events: AtomicU64,
    /// Replayed events dropped because they were delivered already.
    pub duplicates: AtomicU64,
    /// Gaps reported.
    pub gaps: AtomicU64,
    /// Connections opened (the first included).
    pub connects: AtomicU64,
    /// Failed attempts and broken or ended streams.
    pub disconnects: AtomicU64,
    /// Lines that were not events.
    pub skipped_lines: AtomicU64,
}

/// The ids of the last [`RECENT_IDS`] events delivered, oldest first out.
#[derive(Debug, Default)]
struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.order.len() == RECENT_IDS {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
    }
}

/// How one connection ended.
enum Ended {
    Stopped(Stopped),
    /// `None`: the engine closed the stream.
    Lost(Option<EngineError>),
}

/// The events collector: see the module docs.
#[derive(Debug)]
pub struct Collector {
    client: EngineClient,
    filters: Filters,
    min_backoff: Duration,
    max_backoff: Duration,
    stale_after: Option<Duration>,
    stats: Arc<CollectorStats>,
}

/// What survives reconnects within one run.
struct Progress {
    /// The newest `timeNano` delivered (or the start), the next `since`.
    newest: Option<i64>,
    recent: RecentIds,
}

impl Collector {
    pub fn new(client: EngineClient, filters: Filters) -> Collector {
        Collector {
            client,
            filters,
            min_backoff: MIN_BACKOFF,
            max_backoff: MAX_BACKOFF,
            stale_after: None,
            stats: Arc::default(),
        }
    }

    /// Other retry delays than [`MIN_BACKOFF`]..[`MAX_BACKOFF`].
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Collector {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    /// Ends [`Collector::run`] with [`Stopped::SocketStale`] once the socket, having served
    /// this collector, has refused every connection for `after` (see the module docs).
    pub fn with_stale_socket_limit(mut self, after: Duration) -> Collector {
        self.stale_after = Some(after);
        self
    }

    pub fn stats(&self) -> Arc<CollectorStats> {
        Arc::clone(&self.stats)
    }

    /// Streams events into `sink` until `shutdown` or until the sink is closed, resuming from
    /// `start_since` (unix ns, inclusive) when given, else from now.
    pub async fn run(
        &self,
        start_since: Option<i64>,
        sink: UnboundedSender<CollectorItem>,
        shutdown: CancellationToken,
    ) -> Stopped {
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff);
        let mut progress = Progress {
            newest: start_since,
            recent: RecentIds::default(),
        };
        let mut failures: u64 = 0;
        // Whether some connection of this run was opened, and since when every attempt has
        // been refused.
        let mut served = false;
        let mut refused_since: Option<tokio::time::Instant> = None;
        loop {
            let connects = self.stats.connects.load(Ordering::Relaxed);
            let error = match self
                .connection(&mut progress, &sink, &shutdown, &mut backoff, &mut failures)
                .await
            {
                Ended::Stopped(stopped) => return stopped,
                Ended::Lost(error) => error,
            };
            served |= self.stats.connects.load(Ordering::Relaxed) > connects;
            match (&error, self.stale_after) {
                (Some(error), Some(limit)) if served && error.is_refused() => {
                    let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= limit {
                        tracing::error!(socket = %self.client.socket().display(), refused_for = ?since.elapsed(), "the engine socket refuses every connection since it served events: the engine listens on a new socket (restarted with live-restore?), which only a restart of this process can see");
                        return Stopped::SocketStale;
                    }
                }
                _ => refused_since = None,
            }
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            failures += 1;
            let socket = self.client.socket().display();
            match &error {
                // Only the first failure in a row is worth more than DEBUG: an engine that is
                // down for minutes would otherwise fill the log every 10 s.
                Some(error) if failures > 1 => {
                    tracing::debug!(socket = %socket, %error, failures, "events retry failed");
                }
                // A refusal is our request or the engine's setup, not a restart: an operator
                // should look, though we keep retrying in case the engine is being fixed.
                Some(error @ EngineError::Status { .. }) => {
                    tracing::error!(socket = %socket, %error, "engine refused the events stream; retrying");
                }
                Some(error) => {
                    tracing::warn!(socket = %socket, %error, "events stream lost; reconnecting");
                }
                None => {
                    tracing::warn!(socket = %socket, "engine closed the events stream; reconnecting");
                }
            }
            if backoff.wait(&shutdown).await.is_err() {
                return Stopped::Shutdown;
            }
        }
    }

    /// One connection: negotiate, open the stream, deliver until it ends.
    async fn connection(
        &self,
        progress: &mut Progress,
        sink: &UnboundedSender<CollectorItem>,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        failures: &mut u64,
    ) -> Ended {
        let since = progress.newest;
        let opened = async {
            let api = self.client.negotiate().await?;
            let stream = self.client.events(api, since, &self.filters).await?;
            Ok::<_, EngineError>((api, stream))
        };
        let (api, mut stream) = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Stopped(Stopped::Shutdown),
            opened = opened => match opened {
                Ok(opened) => opened,
                Err(error) => return Ended::Lost(Some(error)),
            },
        };
        backoff.reset();
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let since_text = since.map(format_since).unwrap_or_default();
        if *failures > 0 {
            tracing::info!(%api, since = %since_text, after_failures = *failures, "events stream reconnected");
        } else {
            tracing::debug!(%api, since = %since_text, "events stream open");
        }
        *failures = 0;

        // Set until the first event of this connection shows whether the replay reached back.
        let mut replay_from = since;
        let mut skipped = 0;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Stopped(Stopped::Shutdown),
                next = stream.next() => next,
            };
            let newly_skipped = stream.skipped() - skipped;
            skipped = stream.skipped();
            self.stats
                .skipped_lines
                .fetch_add(newly_skipped, Ordering::Relaxed);
            let line = match next {
                Ok(Some(line)) => line,
                Ok(None) => return Ended::Lost(None),
                Err(error) => return Ended::Lost(Some(error)),
            };
            let time_nano = line.event.time_nano;
            if let Some(after_nano) = replay_from.take().filter(|&from| time_nano > from) {
                let gap = Gap {
                    after_nano,
                    before_nano: time_nano,
                };
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    after = %format_since(after_nano),
                    before = %format_since(time_nano),
                    "Docker events may be missing: the engine no longer buffers the time we were disconnected"
                );
                if sink.send(CollectorItem::Gap(gap)).is_err() {
                    return Ended::Stopped(Stopped::SinkClosed);
                }
            }
            let id = line.event.id();
            if progress.recent.contains(&id) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            progress.recent.insert(id);
            progress.newest = Some(progress.newest.map_or(time_nano, |n| n.max(time_nano)));
            if sink.send(CollectorItem::Event(line)).is_err() {
                return Ended::Stopped(Stopped::SinkClosed);
            }
            self.stats.events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut recent = RecentIds::default();
        for n in 0..RECENT_IDS + 5 {
            recent.insert(n.to_string());
        }
        assert!(!recent.contains("0"));
        assert!(!recent.contains("4"));
        assert!(recent.contains("5"));
        assert!(recent.contains(&(RECENT_IDS + 4).to_string()));
        assert_eq!(recent.set.len(), RECENT_IDS);
    }
}
