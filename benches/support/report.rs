//! What the benchmarks print and write: medians, markdown tables, a bar chart in SVG.
//!
//! Every figure is a median of several rounds or a ratio against a baseline measured in the same
//! run (the machine is shared and noisy); nothing here judges a figure against a time limit.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Short runs for CI (`BENCH_SHORT=1`): small N, few rounds, the same code paths.
pub fn short() -> bool {
    std::env::var("BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether the section `name` runs: `BENCH_ONLY` (comma-separated section names, e.g.
/// `ingest,tail`) picks sections while profiling one; unset runs them all.
pub fn selected(name: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

/// `BENCH_RESULTS`, else `bench/results` in the source tree.
pub fn results_dir() -> PathBuf {
    let dir = std::env::var_os("BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The `p`-th percentile (0..=100) by nearest rank.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    assert!(!values.is_empty(), "percentile of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A figure with its unit, printed with three significant digits at most.
pub fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2} M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.0} k", value / 1e3)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// "met" / "missed" against a target, for the table.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

/// A markdown section: a heading, a note, a table.
pub struct Table {
    pub title: String,
    pub note: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            note: String::new(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "{}: row width", self.title);
        eprintln!("bench: {} | {}", self.title, cells.join(" | "));
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        if !self.note.is_empty() {
            out.push_str(&self.note);
            out.push_str("\n\n");
        }
        out.push_str(&format!("| {} |\n", self.headers.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(self.headers.len())));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out.push('\n');
        out
    }
}

/// One bar: a label, its value, and whether it is a baseline (drawn grey).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub baseline: bool,
}

/// A horizontal bar chart, one group of bars per heading, each group scaled to its own largest
/// bar (groups have different units). Plain SVG 1.1, no scripts, no fonts beyond sans-serif.
pub fn bar_chart_svg(title: &str, groups: &[(String, Vec<Bar>)]) -> String {
    const WIDTH: f64 = 900.0;
    const LABEL: f64 = 330.0;
    const BAR_AREA: f64 = WIDTH - LABEL - 110.0;
    const ROW: f64 = 22.0;
    let rows: usize = groups.iter().map(|(_, bars)| bars.len() + 2).sum();
    let height = 50.0 + rows as f64 * ROW;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="25" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let mut y = 50.0;
    for (heading, bars) in groups {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.0}" font-weight="bold">{}</text>"#,
            y + 15.0,
            escape(heading)
        );
        y += ROW;
        let max = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9);
        for bar in bars {
            let width = (bar.value / max * BAR_AREA).max(1.0);
            let fill = if bar.baseline { "#9e9e9e" } else { "#1f77b4" };
            let _ = writeln!(
                svg,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text><rect x="{LABEL}" y="{:.0}" width="{width:.1}" height="{:.0}" fill="{fill}"/><text x="{:.1}" y="{:.0}">{}</text>"#,
                LABEL - 8.0,
                y + 15.0,
                escape(&bar.label),
                y + 3.0,
                ROW - 6.0,
                LABEL + width + 6.0,
                y + 15.0,
                human(bar.value)
            );
            y += ROW;
        }
        y += ROW;
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `name` under the results folder and says where.
pub fn write(name: &str, text: &str) {
    let path = results_dir().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("bench: wrote {}", path.display());
}

/// The machine, for the results' header: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Resident set size of `pid` in bytes (VmRSS), or its peak (VmHWM).
pub fn rss_bytes(pid: u32, peak: bool) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let key = if peak { "VmHWM:" } else { "VmRSS:" };
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
