//! The real plugin binary past the kernel's pipe budget, without touching the machine-wide
//! sysctl: no line is lost and no container blocks when the plugin's pipes are small.
//!
//! The kernel charges every pipe of a user to one budget, `fs.pipe-user-pages-soft`; past it,
//! a process without CAP_SYS_RESOURCE/CAP_SYS_ADMIN gets 2-slot (8 KiB) pipes and may not raise
//! them. A managed plugin is such a process (uid 0 without CAP_SYS_RESOURCE), sharing uid 0's
//! budget with dockerd and every container; a few dozen containers used it up. Here the plugin
//! runs as a user of its own, whose budget a helper process uses up first: its pipes are what a
//! managed plugin's are on a busy host, and nothing else on the machine is affected.

mod support;
use support::{engine, prereq, probe};

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use engine::*;

const T0: i64 = 1_790_000_000_000_000_000;

/// A process holding 1 MiB pipes of `uid` until its pipe budget is used up; killed on drop.
struct BudgetEater(Child);

impl BudgetEater {
    fn start(uid: u32) -> Self {
        let mut command = Command::new("sleep");
        command
            .arg("600")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe system calls between fork and exec, no allocation.
        unsafe {
            command.pre_exec(|| {
                // The pipes are left open (no CLOEXEC): sleep holds them.
                for _ in 0..4096 {
                    let mut fds = [0; 2];
                    if libc::pipe2(fds.as_mut_ptr(), 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 1 << 20) < 0 {
                        // EPERM: the budget is used up.
                        return Ok(());
                    }
                }
                Err(std::io::Error::other("the pipe budget never ran out"))
            });
        }
        Self(
            command
                .spawn()
                .expect("start the process that uses up the pipe budget"),
        )
    }
}

impl Drop for BudgetEater {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The size of a new pipe `uid` creates now (asked from a child running as `uid`).
fn new_pipe_size_of(uid: u32) -> usize {
    let mut report = [0; 2];
    // SAFETY: plain pipe2 into a local array.
    assert_eq!(
        unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    let write_end = report[1];
    let mut command = Command::new("true");
    command.uid(uid).gid(uid);
    // SAFETY: only async-signal-safe system calls between fork and exec, no allocation.
    unsafe {
        command.pre_exec(move || {
            let mut p = [0; 2];
            if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let size: i32 = libc::fcntl(p[0], libc::F_GETPIPE_SZ);
            libc::write(write_end, (&size as *const i32).cast(), 4);
            Ok(())
        });
    }
    assert!(command.status().expect("run true").success());
    let mut size = [0u8; 4];
    // SAFETY: descriptors created above, closed once; the buffer is 4 bytes.
    let n = unsafe {
        libc::close(write_end);
        let n = libc::read(report[0], size.as_mut_ptr().cast(), 4);
        libc::close(report[0]);
        n
    };
    assert_eq!(n, 4, "the child reports its pipe's size");
    i32::from_ne_bytes(size) as usize
}

/// A uid nobody else on the machine uses, so using up its pipe budget harms no one.
fn private_uid() -> u32 {
    1_900_000 + std::process::id() % 100_000
}

/// Lines of 12 KB, the 16 KiB fragments of a 200 KiB line, and lines of 100 KB, between short
/// lines, as the engine frames them.
fn large_lines(t0: i64) -> Vec<LogEntry> {
    let mut out = Vec::new();
    let mut t = t0;
    let mut push = |out: &mut Vec<LogEntry>, text: &[u8]| {
        t += 1000;
        out.push(line("stdout", t, text));
    };
    for i in 0..50u8 {
        push(&mut out, format!("short {i}").as_bytes());
        push(&mut out, &vec![b'a' + i % 26; 12_000]);
    }
    let long: Vec<u8> = (0..200 << 10).map(|k| b'A' + (k % 26) as u8).collect();
    out.extend(fragments(t0 + 999_999, &long, "long"));
    for i in 0..5u8 {
        push(&mut out, &vec![b'0' + i; 100_000]);
    }
    push(&mut out, b"last");
    out
}

/// Writes `entries` one blocking write each, as the engine does, then ends the run; checks
/// every entry is stored whole and the run skipped nothing.
async fn log_and_check(plugin: &PluginProcess, fifo: EngineFifo, id: &str, entries: &[LogEntry]) {
    let path = fifo.path.clone();
    let writer = {
        let entries = entries.to_vec();
        let mut fifo = fifo;
        std::thread::spawn(move || {
            fifo.write_entries(&entries);
            fifo
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !writer.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer was blocked for 30 s: the FIFO is not drained"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fifo = writer.join().expect("writer");
    assert_eq!(plugin.client().stop_logging(&path).await, "");
    drop(fifo);
    let stored = plugin.client().read_logs(id, "", "", -1).await;
    let want = as_shown(entries);
    let whole = stored.iter().zip(&want).filter(|(a, b)| a == b).count();
    eprintln!(
        "{}: sent {}, stored whole {whole}, stored {}",
        path.display(),
        entries.len(),
        stored.len()
    );
    assert_eq!(stored.len(), want.len(), "entries in the local copy");
    for (i, (got, want)) in stored.iter().zip(&want).enumerate() {
        assert!(
            got == want,
            "entry {i} differs ({} bytes sent, {} stored)",
            want.line.len(),
            got.line.len()
        );
    }
}

/// Regression: past the pipe budget the plugin's private pipe had 2 slots, the frame cap
/// followed it, and every frame over ~8 KiB was skipped ("oversized=50 lost=0", at INFO).
/// Also the FIFO left at its 64 KiB (the plugin's raise refused) with frames larger than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_the_plugins_pipes_arrive_whole_past_the_pipe_budget() {
    if !prereq::root(
        "frames_larger_than_the_plugins_pipes_arrive_whole_past_the_pipe_budget",
        "to run the plugin as a private uid",
    ) {
        return;
    }
    let uid = private_uid();
    let _eater = BudgetEater::start(uid);
    assert_eq!(
        new_pipe_size_of(uid),
        8 << 10,
        "the user's pipe budget is used up: its new pipes get 2 slots"
    );
    let metrics = probe::free_addr();
    let plugin = PluginProcess::start_as_user(uid, &[("METRICS_ADDR", metrics.as_str())]);

    // The FIFO as dockerd makes it (raised by the plugin: the FIFO is charged to dockerd's
    // budget); the plugin's own pipes are 8 KiB.
    let id = container_id(1);
    let fifo = EngineFifo::create_for(plugin.dir.path(), "fifo1", uid);
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id, &[]).await,
        ""
    );
    log_and_check(&plugin, fifo, &id, &large_lines(T0)).await;

    // dockerd's budget used up too: the FIFO stays at the engine's 64 KiB, below some frames.
    let id2 = container_id(2);
    let fifo = EngineFifo::create_for(plugin.dir.path(), "fifo2", uid);
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id2, &[]).await,
        ""
    );
    // SAFETY: fcntl on the descriptor the EngineFifo owns; the pipe is empty.
    let size = unsafe { libc::fcntl(fifo.file.as_raw_fd(), libc::F_SETPIPE_SZ, 64 << 10) };
    assert_eq!(size, 64 << 10);
    let mut entries = large_lines(T0 + 10_000_000_000);
    entries.push(line("stdout", T0 + 20_000_000_000, &vec![b'm'; 1_000_000]));
    entries.push(line("stdout", T0 + 20_000_001_000, b"after a million"));
    log_and_check(&plugin, fifo, &id2, &entries).await;

    for fifo in ["fifo1", "fifo2"] {
        let path = plugin.dir.path().join(fifo);
        let end = run_end_line(&plugin, &path);
        assert!(
            end.contains("oversized=0") && end.contains("lost=0") && end.contains("INFO"),
            "{end}"
        );
    }
    let text = probe::fetch_metrics(&metrics);
    assert_eq!(probe::metric(&text, "eslp_lines_lost_total"), 0, "{text}");
    assert_eq!(
        probe::metric(&text, "eslp_frames_skipped_total"),
        0,
        "{text}"
    );
}

/// The plugin's "logging run ended" line for `fifo`, waited for up to 10 s.
fn run_end_line(plugin: &PluginProcess, fifo: &Path) -> String {
    let file = fifo.display().to_string();
    let mut found = None;
    wait_until(Duration::from_secs(10), "the run's end line", || {
        found = plugin
            .output()
            .lines()
            .find(|l| l.contains("logging run ended") && l.contains(&file))
            .map(str::to_owned);
        found.is_some()
    });
    found.unwrap_or_default()
}
