//! Disk faults under the real plugin binary: a container never blocks on a broken disk, and
//! every line it loses is counted and logged. The state dir is a small tmpfs
//! (a full disk: no blocks, or no inodes) or an ext4 loop image mounted `errors=remount-ro`, which
//! an injected file system error turns read-only as a failing disk does in production.
//!
//! Promises checked:
//! - the FIFO keeps draining: every write of the feeder (playing the container) completes within
//!   a bound, however broken the disk;
//! - every entry read from the FIFO is either stored or counted lost: stored + lost = sent exactly
//!   (`eslp_lines_read_total`, `eslp_lines_lost_total`, and what ReadLogs returns);
//! - each loss is logged at ERROR naming the container and the cause, rate-limited;
//! - when the disk is usable again, storing resumes by itself (no restart, no new StartLogging).
//!
//! Needs root (mount, loop devices), as the e2e tests need dockerd.

mod support;
use support::{engine, prereq, probe, soak};

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use engine::*;
use probe::{fetch_metrics, metric};

/// Why these tests need root.
const MOUNTS: &str = "to mount a tmpfs and an ext4 loop image as the state folder";

const T0: i64 = 1_790_000_000_000_000_000;
/// The longest a single FIFO write may take: the plugin drains a full pipe in milliseconds, so
/// anything near this means the container was blocked.
const WRITE_BOUND: Duration = Duration::from_secs(2);

/// A file system mounted for one test; detached on drop (lazily, so a plugin still holding
/// files there cannot make the unmount fail and leave the mount behind).
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(path: &Path, options: &str) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        run(
            "mount",
            &["-t", "tmpfs", "-o", options, "tmpfs", as_str(path)],
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// A new ext4 image at `image`, mounted `errors=remount-ro` on `path`.
    fn ext4(path: &Path, image: &Path, size: &str) -> Self {
        run("truncate", &["-s", size, as_str(image)]);
        run("mkfs.ext4", &["-q", "-F", as_str(image)]);
        std::fs::create_dir_all(path).expect("mount point");
        let mount = Self {
            path: path.to_owned(),
        };
        mount.mount_ext4(image);
        mount
    }

    fn mount_ext4(&self, image: &Path) {
        run(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                as_str(image),
                as_str(&self.path),
            ],
        );
    }

    /// An ext4 error as a failing disk reports one: with errors=remount-ro the file system turns
    /// read-only at once, for descriptors already open too.
    fn ext4_error(&self) {
        let source = run("findmnt", &["-n", "-o", "SOURCE", as_str(&self.path)]);
        let device = Path::new(source.trim())
            .file_name()
            .expect("a loop device")
            .to_owned();
        let trigger = Path::new("/sys/fs/ext4")
            .join(device)
            .join("trigger_fs_error");
        std::fs::write(&trigger, "1").unwrap_or_else(|e| panic!("{}: {e}", trigger.display()));
    }

    /// What an operator does after a read-only remount: unmount, fsck, mount again. The unmount
    /// is not lazy: it fails if the plugin still holds a file there.
    fn repair_ext4(&self, image: &Path) {
        run("umount", &[as_str(&self.path)]);
        let fsck = Command::new("e2fsck")
            .args(["-f", "-y", as_str(image)])
            .output()
            .expect("run e2fsck");
        // 0: clean, 1: errors corrected (the injected one); more is a real problem.
        assert!(
            fsck.status.code().is_some_and(|c| c <= 1),
            "e2fsck: {fsck:?}"
        );
        self.mount_ext4(image);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(path) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn as_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// Runs a command that must succeed; returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fills the file system at `dir` with `name` until a write fails (ENOSPC), then frees `leave`
/// bytes of it again.
fn fill(dir: &Path, name: &str, leave: u64) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.flush();
    let len = file.metadata().expect("filler size").len();
    file.set_len(len.saturating_sub(leave))
        .expect("shrink filler");
    path
}

/// Creates empty files under `dir` until the file system has no inode left.
fn exhaust_inodes(dir: &Path) {
    std::fs::create_dir_all(dir).expect("inode filler dir");
    for n in 0.. {
        if std::fs::File::create(dir.join(n.to_string())).is_err() {
            return;
        }
    }
}

/// Plays one container: numbered lines into its FIFO, timing each write.
struct Feeder {
    fifo: EngineFifo,
    sent: Vec<LogEntry>,
    slowest: Duration,
}

impl Feeder {
    fn new(fifo: EngineFifo) -> Self {
        Self {
            fifo,
            sent: Vec::new(),
            slowest: Duration::ZERO,
        }
    }

    /// Writes `n` lines of about 100 bytes, one write each, as the engine does.
    fn feed(&mut self, phase: &str, n: usize) {
        for _ in 0..n {
            let seq = self.sent.len();
            let text = format!("{phase} line {seq:08} {}", "x".repeat(80));
            let entry = line("stdout", T0 + seq as i64, text.as_bytes());
            let frame = frame(&entry);
            let started = Instant::now();
            self.fifo.file.write_all(&frame).expect("write to the FIFO");
            self.slowest = self.slowest.max(started.elapsed());
            self.sent.push(entry);
        }
        assert!(
            self.slowest < WRITE_BOUND,
            "a FIFO write took {:?}: the container was blocked",
            self.slowest
        );
    }
}

/// Stored and lost entries, from the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counted {
    stored: u64,
    lost: u64,
}

fn counted(addr: &str) -> Counted {
    let text = fetch_metrics(addr);
    Counted {
        stored: metric(&text, "eslp_lines_read_total"),
        lost: metric(&text, "eslp_lines_lost_total"),
    }
}

/// Waits until the plugin has accounted for every entry sent (stored or lost): the FIFO is
/// drained. A plugin that stops draining fails here.
async fn drained(addr: &str, sent: usize) -> Counted {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = counted(addr);
        if now.stored + now.lost == sent as u64 {
            return now;
        }
        assert!(
            now.stored + now.lost < sent as u64,
            "more accounted than sent: {now:?} of {sent}"
        );
        assert!(
            Instant::now() < deadline,
            "not drained: {now:?} of {sent} sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ERROR lines reporting lost entries for this container with this cause.
fn loss_errors(plugin: &PluginProcess, id: &str, cause: &str) -> usize {
    plugin
        .output()
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains(&id[..12]) && l.contains(cause))
        .count()
}

/// Checks what ReadLogs returns against what was sent: in order, nothing twice, nothing that
/// was not sent, as many as the plugin counted stored, and every line of `must` (the phases
/// written while the disk was healthy) among them.
fn check_stored(got: &[LogEntry], feeder: &Feeder, stored: u64, must: &[&str]) {
    let mut sent = feeder.sent.iter();
    for entry in got {
        let text = entry.line.strip_suffix(b"\n").expect("a whole line");
        assert!(
            sent.any(|s| s.time_nano == entry.time_nano && s.line == text),
            "ReadLogs returned an entry out of order, twice, or never sent: {entry:?}"
        );
    }
    assert_eq!(got.len() as u64, stored, "ReadLogs count vs stored metric");
    for phase in must {
        let want = feeder
            .sent
            .iter()
            .filter(|s| s.line.starts_with(phase.as_bytes()))
            .count();
        let have = got
            .iter()
            .filter(|g| g.line.starts_with(phase.as_bytes()))
            .count();
        assert_eq!(have, want, "lines of {phase} stored");
    }
}

/// The end of a fault case: an ERROR names the container and `cause`; after StopLogging,
/// ReadLogs holds what the plugin counted stored and every line of `must`; the figures printed.
#[allow(clippy::too_many_arguments)]
async fn finish(
    plugin: &PluginProcess,
    addr: &str,
    id: &str,
    feeder: &Feeder,
    must: &[String],
    cause: &str,
    case: &str,
    start: probe::ProcUsage,
) {
    let errors = loss_errors(plugin, id, cause);
    assert!(
        errors >= 1,
        "no ERROR naming the container and {cause:?}:\n{}",
        plugin.output()
    );
    let api = plugin.client();
    assert_eq!(api.stop_logging(&feeder.fifo.path).await, "");
    let at_end = counted(addr);
    let got = api.read_logs(id, "", "", -1).await;
    let must: Vec<&str> = must.iter().map(String::as_str).collect();
    check_stored(&got, feeder, at_end.stored, &must);
    let end = probe::usage(plugin.pid());
    eprintln!(
        "{case}: sent {} stored {} lost-and-counted {} (stored + lost = sent: {}); slowest FIFO write {:?}; ERROR lines {errors}; RSS {} -> {} KiB, fds {} -> {}",
        feeder.sent.len(),
        at_end.stored,
        at_end.lost,
        at_end.stored + at_end.lost == feeder.sent.len() as u64,
        feeder.slowest,
        start.rss_kib,
        end.rss_kib,
        start.fds,
        end.fds
    );
}

fn start_plugin(prepare: impl FnOnce(&Path)) -> (PluginProcess, String) {
    let addr = probe::free_addr();
    let plugin = PluginProcess::start_prepared(&[("METRICS_ADDR", addr.as_str())], prepare);
    (plugin, addr)
}

/// A container logging to `plugin` (StartLogging done), and the plugin's usage before it.
async fn start_container(plugin: &PluginProcess, tag: u8) -> (String, Feeder, probe::ProcUsage) {
    let start = probe::usage(plugin.pid());
    let id = container_id(tag);
    let feeder = Feeder::new(EngineFifo::create(plugin.dir.path(), &format!("fifo{tag}")));
    let api = plugin.client();
    assert_eq!(api.start_logging(&feeder.fifo.path, &id, OPTS).await, "");
    (id, feeder, start)
}

/// No compression and no retention: every byte stored stays, so the filler alone decides when
/// the disk is full. Small segments: a failing batch often spans a rotation (regression: its
/// records before the rotation were stored but counted lost, so ReadLogs held more than the
/// stored count).
const OPTS: &[(&str, &str)] = &[
    ("max-size", "16k"),
    ("max-file", "1000"),
    ("compress", "false"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_counts_every_lost_line_and_recovers_when_space_returns() {
    if !prereq::root(
        "full_disk_counts_every_lost_line_and_recovers_when_space_returns",
        MOUNTS,
    ) {
        return;
    }
    let mut mount = None;
    let (plugin, addr) = start_plugin(|state| mount = Some(Mount::tmpfs(state, "size=8m")));
    let _mount = mount;
    let (id, mut feeder, start) = start_container(&plugin, 0xd1).await;
    let mut must = vec![];
    let mut lost = 0;
    // Each cycle: fill the disk, write more than fits, free the space, write again.
    for cycle in 0..soak::iterations(2) {
        let healthy = format!("c{cycle}-before");
        feeder.feed(&healthy, 1000);
        must.push(healthy);
        // Stored while the disk had room, before it fills (regression: filled at once, a slow
        // plugin read these lines only once the disk was full, and the test took that loss
        // for the plugin's: "lines of c0-before stored: 0 of 1000").
        let before = drained(&addr, feeder.sent.len()).await;
        assert_eq!(
            before.lost, lost,
            "cycle {cycle}: lost while the disk had room"
        );
        let filler = fill(&plugin.state, "filler", 1 << 20);
        feeder.feed(&format!("c{cycle}-full"), 20_000);
        let now = drained(&addr, feeder.sent.len()).await;
        assert!(
            now.lost > lost,
            "cycle {cycle}: nothing lost on a full disk? {now:?}"
        );
        lost = now.lost;
        std::fs::remove_file(filler).expect("free the space");
        let after = format!("c{cycle}-after");
        feeder.feed(&after, 5000);
        must.push(after);
        let now = drained(&addr, feeder.sent.len()).await;
        assert_eq!(now.lost, lost, "cycle {cycle}: lost after space returned");
    }
    finish(
        &plugin,
        &addr,
        &id,
        &feeder,
        &must,
        "No space left on device",
        "full disk (tmpfs 8 MiB)",
        start,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_state_dir_counts_every_lost_line_and_recovers_after_repair() {
    if !prereq::root(
        "read_only_state_dir_counts_every_lost_line_and_recovers_after_repair",
        MOUNTS,
    ) {
        return;
    }
    let images = tempfile::tempdir().expect("image dir");
    let image = images.path().join("state.ext4");
    let mut mount = None;
    let (plugin, addr) = start_plugin(|state| mount = Some(Mount::ext4(state, &image, "32M")));
    let mount = mount.expect("mounted");
    let (id, mut feeder, start) = start_container(&plugin, 0xd2).await;
    let mut must = vec![];
    for cycle in 0..soak::iterations(2) {
        let healthy = format!("c{cycle}-before");
        feeder.feed(&healthy, 5000);
        must.push(healthy);
        let before = drained(&addr, feeder.sent.len()).await;
        // The emergency remount drops dirty pages: what the plugin wrote must be on the disk
        // first, or the file system (not the plugin) loses it.
        run("sync", &["-f", as_str(&plugin.state)]);
        mount.ext4_error();
        feeder.feed(&format!("c{cycle}-ro"), 5000);
        let now = drained(&addr, feeder.sent.len()).await;
        assert!(
            now.lost > before.lost,
            "cycle {cycle}: nothing lost read-only? {now:?}"
        );
        // The plugin lets go of the dead file system, so it can be unmounted and repaired.
        wait_until(
            Duration::from_secs(10),
            "the plugin to close its files",
            || probe::open_files_under(plugin.pid(), &plugin.state).is_empty(),
        );
        mount.repair_ext4(&image);
        let after = format!("c{cycle}-after");
        feeder.feed(&after, 5000);
        must.push(after);
        let after_repair = drained(&addr, feeder.sent.len()).await;
        assert_eq!(
            after_repair.lost, now.lost,
            "cycle {cycle}: lost after the repair"
        );
    }
    finish(
        &plugin,
        &addr,
        &id,
        &feeder,
        &must,
        "Read-only file system",
        "read-only state dir (ext4 errors=remount-ro)",
        start,
    )
    .await;
}

/// Decided: a container whose store cannot be created (no inode for its directory or first
/// segment) is refused at StartLogging with an error naming the path and the cause, as the
/// engine's own drivers refuse a container whose log file they cannot create: `docker run`
/// says why instead of running a container whose logs go nowhere. A store that can be created
/// on a disk with no free blocks starts, and counts its losses until space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_at_start_logging_is_a_clear_error_or_counted_losses() {
    if !prereq::root(
        "no_space_at_start_logging_is_a_clear_error_or_counted_losses",
        MOUNTS,
    ) {
        return;
    }
    let mut mount = None;
    let (plugin, addr) =
        start_plugin(|state| mount = Some(Mount::tmpfs(state, "size=8m,nr_inodes=400")));
    let _mount = mount;
    let api = plugin.client();

    // No inode left: refused, then accepted once one is free.
    let inodes = plugin.state.join("inode-filler");
    exhaust_inodes(&inodes);
    let id = container_id(0xd3);
    let mut feeder = Feeder::new(EngineFifo::create(plugin.dir.path(), "fifo-noinode"));
    let err = api.start_logging(&feeder.fifo.path, &id, OPTS).await;
    assert!(
        err.contains("cannot open the local copy")
            && err.contains(&id)
            && err.contains("No space left on device"),
        "{err}"
    );
    std::fs::remove_dir_all(&inodes).expect("free the inodes");
    assert_eq!(api.start_logging(&feeder.fifo.path, &id, OPTS).await, "");
    feeder.feed("inodes-back", 1000);
    drained(&addr, feeder.sent.len()).await;

    // No block left: accepted (a directory and an empty segment take none), losses counted.
    let filler = fill(&plugin.state, "filler", 0);
    let id2 = container_id(0xd4);
    let mut feeder2 = Feeder::new(EngineFifo::create(plugin.dir.path(), "fifo-noblock"));
    assert_eq!(api.start_logging(&feeder2.fifo.path, &id2, OPTS).await, "");
    feeder2.feed("no-blocks", 2000);
    let full = drained(&addr, feeder.sent.len() + feeder2.sent.len()).await;
    assert_eq!(full.lost, 2000, "{full:?}");
    std::fs::remove_file(filler).expect("free the space");
    feeder2.feed("blocks-back", 2000);
    let at_end = drained(&addr, feeder.sent.len() + feeder2.sent.len()).await;
    assert_eq!(at_end.lost, 2000, "lost after space returned: {at_end:?}");
    for (feeder, id) in [(&feeder, &id), (&feeder2, &id2)] {
        assert_eq!(api.stop_logging(&feeder.fifo.path).await, "");
        let got = api.read_logs(id, "", "", -1).await;
        let must = ["inodes-back", "blocks-back"];
        let stored = feeder.sent.len() as u64 - if id == &id2 { 2000 } else { 0 };
        check_stored(&got, feeder, stored, &must);
    }
    eprintln!(
        "no space at start: inodes exhausted -> StartLogging refused: {err:?}; blocks exhausted -> started, sent {} stored {} lost-and-counted {}",
        feeder.sent.len() + feeder2.sent.len(),
        at_end.stored,
        at_end.lost
    );
}
