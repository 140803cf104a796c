//! Helpers shared by the integration and end-to-end tests, and the one way a test includes
//! them: `mod support;` at the top of the test file, then `use support::engine;` (or
//! `support::engine::...`). No test names a helper file by `#[path]`.
//!
//! Each file in `tests/` is its own crate and uses only some of these helpers, so unused ones
//! are not dead code for the suite as a whole.
//!
//! | module | provides |
//! |---|---|
//! | `engine` | the Docker Engine's side of the plugin API, against the real plugin binary |
//! | `es_server` | an in-process Elasticsearch imitation with fault injection |
//! | `es_check` | container lines, a timed FIFO feeder, and checks on what was indexed |
//! | `fake_engine` | a Docker Engine imitation for the events API |
//! | `noida` | noida-db, a third-party Elasticsearch imitation, in-process |
//! | `osmem` | osmem-server, a third-party OpenSearch imitation, as a process |
//! | `opensearch` | real OpenSearch and Elasticsearch nodes, as processes |
//! | `probe` | the plugin's metrics endpoint and its process seen through /proc |
//! | `prereq` | what a test needs beyond Rust (root, tools), checked up front |
//! | `soak` | how long fault and load tests run (`ESLP_SOAK`) |
//! | `docker` | a private dockerd with the plugin installed, for the end-to-end tests |
//! | `trixie` | which Docker Engine the end-to-end tests run against |
//! | `scenario` | end-to-end scenarios run in sequence on one engine |
//! | [`wait_for`] | polling with a deadline instead of sleeping |
#![allow(dead_code)]

pub mod docker;
pub mod engine;
pub mod es_check;
pub mod es_server;
pub mod fake_engine;
pub mod noida;
pub mod opensearch;
pub mod osmem;
pub mod prereq;
pub mod probe;
pub mod scenario;
pub mod soak;
pub mod trixie;

use std::time::{Duration, Instant};

/// Polls `probe` every 100 ms until it yields a value; panics naming `what` after `timeout`.
/// Tests wait with this instead of sleeping, so a slow machine is slower, not flaky.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
