//! Plays the Docker Engine against the real plugin binary: starts `es-logging-plugin serve` on a
//! private socket and state dir, creates FIFOs and holds them open read-write as the engine does,
//! writes framed LogEntries, and calls the plugin API over the unix socket.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use prost::Message;

pub use es_logging_plugin::entry::{LogEntry, PartialLogEntryMetadata};

/// The plugin binary running on a temp socket and state dir; killed on drop.
pub struct PluginProcess {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// Run the plugin as this uid and gid (no capabilities) instead of the test's user.
    uid: Option<u32>,
}

impl PluginProcess {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        Self::start_prepared(env, |_| {})
    }

    /// Like [`start_with_env`](Self::start_with_env), but `prepare` gets the state dir's path
    /// (not created yet) before the plugin starts: a fault test mounts a small file system there.
    pub fn start_prepared(env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("plugin.sock");
        let state = dir.path().join("state");
        let log = dir.path().join("plugin.log");
        prepare(&state);
        let mut plugin = Self {
            dir,
            socket,
            state,
            log,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            uid: None,
        };
        plugin.spawn();
        plugin
    }

    /// Like [`start_with_env`](Self::start_with_env), but the plugin runs as `uid` (and the
    /// same gid), so without any capability; its folder is given to that user. FIFOs for it must
    /// be made with [`EngineFifo::create_for`].
    pub fn start_as_user(uid: u32, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown the plugin dir");
        let mut plugin = Self {
            socket: dir.path().join("plugin.sock"),
            state: dir.path().join("state"),
            log: dir.path().join("plugin.log"),
            dir,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            uid: Some(uid),
        };
        plugin.spawn();
        plugin
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("plugin log");
        let mut command = plugin_command();
        if let Some(uid) = self.uid {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
        }
        let child = command
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .env("LOG_DRIVER_LEVEL", "debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start es-logging-plugin");
        self.child = Some(child);
        // Connectable, not just present: the file appears at bind(), a moment before listen()
        // (regression: a rare "Connect" error at the first StartLogging). An emulated binary
        // (ESLP_PLUGIN_RUNNER) translates its code as it first runs, several times slower.
        let limit = if runner().is_empty() { 5 } else { 60 };
        wait_until(Duration::from_secs(limit), "the plugin socket", || {
            // A plugin that exits at start (a library missing from an emulated binary's root)
            // fails here with its own words, not after the whole wait.
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the plugin exited with {status} before serving its socket:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
    }

    /// kill -9, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait, as `docker plugin disable` does.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "plugin did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sets (or replaces) an environment variable for the next start, as `docker plugin set`
    /// does between a disable and an enable.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Api {
        Api {
            socket: self.socket.clone(),
            client: Client::unix(),
        }
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The plugin binary the tests run: the one cargo built for these tests, or the one
/// `ESLP_PLUGIN_BIN` names (`make arm64-smoke`: the aarch64 build in the arm64 plugin folder).
pub fn plugin_binary() -> PathBuf {
    match std::env::var_os("ESLP_PLUGIN_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_es-logging-plugin")),
    }
}

/// `ESLP_PLUGIN_RUNNER` split on whitespace: the command that runs the plugin binary, e.g.
/// `qemu-aarch64 -L target/plugin-arm64/rootfs` for an aarch64 build on an x86_64 host. Empty:
/// the binary runs directly.
pub fn runner() -> Vec<String> {
    std::env::var("ESLP_PLUGIN_RUNNER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The command that starts [`plugin_binary`], through [`runner`] when one is set.
fn plugin_command() -> Command {
    let binary = plugin_binary();
    match runner().split_first() {
        None => Command::new(binary),
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
    }
}

pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The plugin API over its unix socket.
pub struct Api {
    socket: PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
}

impl Api {
    pub async fn call(&self, endpoint: &str, body: &str) -> Response<Incoming> {
        self.try_call(endpoint, body)
            .await
            .expect("plugin answered")
    }

    /// Like [`call`](Self::call), but a connection the plugin cut is an `Err`.
    pub async fn try_call(&self, endpoint: &str, body: &str) -> Result<Response<Incoming>, String> {
        self.try_call_bytes(endpoint, Bytes::from(body.to_owned()))
            .await
    }

    /// Like [`try_call`](Self::try_call) with any bytes as the body (not UTF-8, huge).
    pub async fn try_call_bytes(
        &self,
        endpoint: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, String> {
        let request = hyper::Request::post(Uri::new(&self.socket, endpoint))
            .header("Accept", "application/vnd.docker.plugins.v1.2+json")
            .body(Full::new(body))
            .expect("request");
        self.client
            .request(request)
            .await
            .map_err(|e| e.to_string())
    }

    /// Calls and returns the status and the whole body as text.
    pub async fn call_text(&self, endpoint: &str, body: &str) -> (u16, String) {
        let answer = self.call(endpoint, body).await;
        let status = answer.status().as_u16();
        let bytes = answer.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Asserts the answers the engine takes a logging plugin by: `/Plugin.Activate` implements
    /// LogDriver, `/LogDriver.Capabilities` offers ReadLogs.
    pub async fn assert_activates_as_log_driver(&self) {
        assert_eq!(
            self.call_text("/Plugin.Activate", "").await,
            (200, r#"{"Implements":["LogDriver"]}"#.into())
        );
        assert_eq!(
            self.call_text("/LogDriver.Capabilities", "").await,
            (200, r#"{"Cap":{"ReadLogs":true}}"#.into())
        );
    }

    /// Calls and returns the `Err` of the JSON answer ("" for success).
    pub async fn call_err(&self, endpoint: &str, body: &str) -> String {
        let (_, text) = self.call_text(endpoint, body).await;
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{endpoint} answered non-JSON {text:?}: {e}"));
        value
            .get("Err")
            .and_then(|e| e.as_str())
            .unwrap_or("")
            .to_owned()
    }

    pub async fn start_logging(&self, file: &Path, id: &str, config: &[(&str, &str)]) -> String {
        let body = Self::start_logging_body(file, id, config);
        self.call_err("/LogDriver.StartLogging", &body.to_string())
            .await
    }

    /// The StartLogging request the engine sends, for a test to change (labels, env) first.
    pub fn start_logging_body(file: &Path, id: &str, config: &[(&str, &str)]) -> serde_json::Value {
        let config: serde_json::Map<String, serde_json::Value> = config
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::json!({
            "File": file,
            "Info": {
                "Config": if config.is_empty() { serde_json::Value::Null } else { config.into() },
                "ContainerID": id,
                "ContainerName": "/test",
                "ContainerEntrypoint": "sh",
                "ContainerArgs": null,
                "ContainerImageID": "sha256:abc",
                "ContainerImageName": "busybox:local",
                "ContainerCreated": "2026-11-22T04:00:00.123456789Z",
                "ContainerEnv": ["SECRET_PASSWORD=hunter2"],
                "ContainerLabels": null,
                "LogPath": "",
                "DaemonName": "docker"
            }
        })
    }

    pub async fn stop_logging(&self, file: &Path) -> String {
        self.call_err(
            "/LogDriver.StopLogging",
            &serde_json::json!({ "File": file }).to_string(),
        )
        .await
    }

    pub fn read_logs_body(id: &str, since: &str, until: &str, tail: i64, follow: bool) -> String {
        serde_json::json!({
            "Info": { "ContainerID": id, "Config": null },
            "Config": { "Since": since, "Until": until, "Tail": tail, "Follow": follow }
        })
        .to_string()
    }

    /// A non-follow ReadLogs, decoded.
    pub async fn read_logs(&self, id: &str, since: &str, until: &str, tail: i64) -> Vec<LogEntry> {
        let answer = self
            .call(
                "/LogDriver.ReadLogs",
                &Self::read_logs_body(id, since, until, tail, false),
            )
            .await;
        assert_eq!(answer.status(), 200);
        let bytes = answer
            .into_body()
            .collect()
            .await
            .expect("stream")
            .to_bytes();
        decode_frames(&bytes)
    }
}

pub fn decode_frames(mut bytes: &[u8]) -> Vec<LogEntry> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert!(bytes.len() >= 4 + len, "truncated frame in answer");
        out.push(LogEntry::decode(&bytes[4..4 + len]).expect("frame is a LogEntry"));
        bytes = &bytes[4 + len..];
    }
    assert!(bytes.is_empty(), "stray bytes after the last frame");
    out
}

/// A FIFO the way the engine makes it: created, then held open read-write.
pub struct EngineFifo {
    pub path: PathBuf,
    pub file: File,
}

impl EngineFifo {
    pub fn create(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
            0,
            "mkfifo {path:?}"
        );
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open fifo rw");
        Self { path, file }
    }

    /// [`create`](Self::create) for a plugin running as `uid` (see
    /// [`PluginProcess::start_as_user`]): the FIFO is that user's.
    pub fn create_for(dir: &Path, name: &str, uid: u32) -> Self {
        let fifo = Self::create(dir, name);
        std::os::unix::fs::chown(&fifo.path, Some(uid), Some(uid)).expect("chown the FIFO");
        fifo
    }

    /// Writes one frame per entry, one write each, as the engine does.
    pub fn write_entries(&mut self, entries: &[LogEntry]) {
        for e in entries {
            self.file.write_all(&frame(e)).expect("write frame");
        }
    }
}

pub fn frame(entry: &LogEntry) -> Vec<u8> {
    let payload = entry.encode_to_vec();
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

pub fn container_id(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

pub fn line(source: &str, time_nano: i64, text: &[u8]) -> LogEntry {
    LogEntry {
        source: source.into(),
        time_nano,
        line: Bytes::copy_from_slice(text),
        partial: false,
        partial_log_metadata: None,
    }
}

/// A long line split the way the engine splits it: 16 KiB fragments, same id, ordinals from 1,
/// the first fragment's time, `last` on the final one.
pub fn fragments(time_nano: i64, text: &[u8], id: &str) -> Vec<LogEntry> {
    let chunks: Vec<&[u8]> = text.chunks(16 * 1024).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| LogEntry {
            source: "stdout".into(),
            time_nano,
            line: Bytes::copy_from_slice(chunk),
            partial: true,
            partial_log_metadata: Some(PartialLogEntryMetadata {
                last: i + 1 == n,
                id: id.into(),
                ordinal: i as i32 + 1,
            }),
        })
        .collect()
}

/// Joins ReadLogs entries back into text the way the engine shows it.
pub fn shown_text(entries: &[LogEntry]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|e| e.line.iter().copied())
        .collect()
}

/// The exact entries ReadLogs must return for what was written: same order, newline on complete
/// lines and last fragments.
pub fn as_shown(written: &[LogEntry]) -> Vec<LogEntry> {
    written
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e.ends_line() {
                let mut line = e.line.to_vec();
                line.push(b'\n');
                e.line = line.into();
            }
            e
        })
        .collect()
}

pub fn assert_same_entries(got: &[LogEntry], want: &[LogEntry]) {
    assert_eq!(got.len(), want.len(), "entry count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "entry {i} differs");
    }
}
