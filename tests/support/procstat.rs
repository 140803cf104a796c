//! What a process holds, from /proc: resident memory and open file descriptors. The load tests
//! sample the plugin process with it to show both stay flat.
#![allow(dead_code)]

use std::fmt;
use std::fs;

/// One sample of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// VmRSS, in KiB.
    pub rss_kib: u64,
    /// Entries of /proc/PID/fd.
    pub fds: usize,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} fds",
            self.rss_kib as f64 / 1024.0,
            self.fds
        )
    }
}

/// Samples `pid`; None if it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Usage { rss_kib, fds })
}

/// What `pid`'s descriptors point at, one line each (`socket:[…]`, paths, `pipe:[…]`), most
/// common first: shown when a test finds descriptors left open.
pub fn fd_targets(pid: u32) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            let target = fs::read_link(entry.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".into());
            // Group by kind: a socket's or pipe's inode, a store's container folder.
            let kind = match target.split_once(":[") {
                Some((kind, _)) => format!("{kind}:[…]"),
                None => target,
            };
            *counts.entry(kind).or_default() += 1;
        }
    }
    let mut rows: Vec<(String, usize)> = counts.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    rows.iter()
        .take(15)
        .map(|(kind, n)| format!("{n:5} {kind}"))
        .collect::<Vec<_>>()
        .join("\n")
}
