//! Looking at a running plugin from outside: its Prometheus text endpoint (`METRICS_ADDR`) and
//! its process (resident memory, open descriptors, which files it holds) through /proc.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A free loopback address for METRICS_ADDR.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("its address")
        .port();
    format!("127.0.0.1:{port}")
}

/// The whole answer of GET /metrics (headers included).
pub fn fetch_metrics(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to METRICS_ADDR");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the answer");
    text
}

/// The value of a metric labelled with its destination, summed over destinations.
pub fn destination_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// The value of an unlabelled metric.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Resident memory (KiB) and open descriptors of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcUsage {
    pub rss_kib: u64,
    pub fds: usize,
}

impl std::fmt::Display for ProcUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} open fds",
            self.rss_kib as f64 / 1024.0,
            self.fds
        )
    }
}

/// Samples `pid`; zeros if it is gone.
pub fn usage(pid: u32) -> ProcUsage {
    try_usage(pid).unwrap_or(ProcUsage { rss_kib: 0, fds: 0 })
}

/// Samples `pid`; None if it is gone.
pub fn try_usage(pid: u32) -> Option<ProcUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(ProcUsage { rss_kib, fds })
}

/// What each open descriptor of a process points to.
pub fn open_files(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The descriptors a process holds under `dir`.
pub fn open_files_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    open_files(pid)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// What `pid`'s descriptors point at, one line each (`socket:[…]`, paths, `pipe:[…]`), most
/// common first: shown when a test finds descriptors left open.
pub fn fd_targets(pid: u32) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            let target = std::fs::read_link(entry.path())
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
