//! The aarch64 plugin under qemu-user (`make arm64-smoke`): the binary in the arm64 plugin
//! folder, started with that folder's rootfs as its library root, driven through the plugin API
//! over its unix socket as the engine drives it. No arm64 Docker Engine runs here: this proves
//! the cross build starts, serves the API, stores what a FIFO carries and reads it back, with the
//! libraries the rootfs ships.
//!
//! `make arm64-smoke` sets `ESLP_PLUGIN_BIN` (the aarch64 binary) and `ESLP_PLUGIN_RUNNER`
//! (`qemu-aarch64 -L <rootfs>`); tests/support/engine.rs starts the plugin through them.

mod support;
use support::engine;

use std::path::Path;
use std::time::Duration;

use engine::*;

/// ELF `e_machine` of AArch64 (the ELF for the Arm 64-bit Architecture ABI).
const EM_AARCH64: u16 = 183;

/// Panics unless `path` is a 64-bit little-endian ELF file for AArch64.
fn assert_aarch64_elf(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.len() >= 20 && bytes[..4] == *b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    // EI_CLASS 2: 64-bit; EI_DATA 1: little-endian; e_machine is the u16 at offset 18.
    assert_eq!(
        (bytes[4], bytes[5]),
        (2, 1),
        "{} is not 64-bit little-endian ELF",
        path.display()
    );
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    assert_eq!(
        machine,
        EM_AARCH64,
        "{} is ELF for machine {machine}, not AArch64",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the aarch64 build and qemu-user: run by make arm64-smoke"]
async fn aarch64_plugin_serves_the_api_and_stores_a_fifo_under_qemu() {
    let binary = plugin_binary();
    assert!(
        std::env::var_os("ESLP_PLUGIN_BIN").is_some(),
        "ESLP_PLUGIN_BIN is not set: this test checks the aarch64 build (make arm64-smoke)"
    );
    assert_aarch64_elf(&binary);
    let runner = runner();
    assert!(
        !runner.is_empty(),
        "ESLP_PLUGIN_RUNNER is not set: an aarch64 binary needs qemu-aarch64 on this host"
    );

    let mut plugin = PluginProcess::start();
    // The process serving the socket is the emulator running the aarch64 code, not some
    // x86_64 binary found by another path.
    let exe = std::fs::read_link(format!("/proc/{}/exe", plugin.pid())).expect("plugin exe");
    assert!(
        exe.to_string_lossy().contains("qemu-aarch64"),
        "the plugin runs as {}, not under qemu-aarch64",
        exe.display()
    );
    let api = plugin.client();

    api.assert_activates_as_log_driver().await;

    let id = container_id(64);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo-arm64");
    assert_eq!(api.start_logging(&fifo.path, &id, &[]).await, "");
    let t0 = 1_790_000_000_000_000_000i64;
    let mut written: Vec<LogEntry> = (0..200i64)
        .map(|i| {
            let source = if i % 2 == 0 { "stdout" } else { "stderr" };
            line(source, t0 + i * 1000, format!("arm64 line {i}").as_bytes())
        })
        .collect();
    // A line the engine split into fragments, reassembled by ReadLogs.
    let long: Vec<u8> = (0..40_000).map(|k| b'a' + (k % 26) as u8).collect();
    written.extend(fragments(t0 + 300_000, &long, "arm64-frag"));
    fifo.write_entries(&written);
    let want = as_shown(&written);

    // While the run is live: ReadLogs gets every line once the pipeline has stored them.
    let mut got = Vec::new();
    for _ in 0..600 {
        got = api.read_logs(&id, "", "", -1).await;
        if got.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_same_entries(&got, &want);

    assert_eq!(api.stop_logging(&fifo.path).await, "");
    drop(fifo);
    assert_same_entries(&api.read_logs(&id, "", "", -1).await, &want);
    assert_same_entries(
        &api.read_logs(&id, "", "", 3).await,
        &want[want.len() - 3..],
    );

    let status = plugin.terminate();
    assert!(
        status.success(),
        "the aarch64 plugin exited with {status} after SIGTERM:\n{}",
        plugin.output()
    );
}
