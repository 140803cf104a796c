//! What a process holds, read from /proc: resident memory and open file descriptors. The
//! hardening tests print these at the start and end of a case, so "memory and fds stay flat" is
//! a measured figure, not a claim.
#![allow(dead_code)]

use std::fmt;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// VmRSS in KiB.
    pub rss_kib: u64,
    pub fds: usize,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} open fds",
            self.rss_kib as f64 / 1024.0,
            self.fds
        )
    }
}

/// Reads `pid`'s resident memory and open descriptors; panics naming what it could not read.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count();
    Usage { rss_kib, fds }
}
