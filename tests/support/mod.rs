//! Helpers shared by the integration and end-to-end tests.
//!
//! Each file in `tests/` is its own crate and uses only some of these helpers, so unused ones
//! are not dead code for the suite as a whole.
#![allow(dead_code)]

pub mod docker;
pub mod noida;
pub mod opensearch;
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
