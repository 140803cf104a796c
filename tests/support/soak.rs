//! How long the fault and load tests run: short in `make test` (CI), longer in `make soak`.
//!
//! `ESLP_SOAK=N` multiplies every iteration count and duration a hardening test takes from here;
//! unset (or 1) is the CI size. `make soak` sets it (SOAK_SCALE, 20 by default), so the same
//! test code is the short check and the soak, and a soak finding is reproducible with the test's
//! name and the scale.
#![allow(dead_code)]

use std::time::Duration;

/// The multiplier from `ESLP_SOAK`: at least 1; anything unparsable is 1.
pub fn scale() -> u64 {
    std::env::var("ESLP_SOAK")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .max(1)
}

/// `short` iterations in CI, `short × scale()` in a soak.
pub fn iterations(short: u64) -> u64 {
    short.saturating_mul(scale())
}

/// `short` in CI, `short × scale()` in a soak.
pub fn duration(short: Duration) -> Duration {
    short.saturating_mul(u32::try_from(scale()).unwrap_or(u32::MAX))
}
