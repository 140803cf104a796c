//! The floor of the engine's plugin path: a logging plugin that reads its FIFO and discards
//! every byte, for `benches/engine.rs` to run beside es-logging-plugin and the engine's own
//! drivers. It declares no ReadLogs (so run it with `--log-opt cache-disabled=true`, or the
//! engine also writes everything into its own cache) and keeps the kernel's default pipe size,
//! as the simplest plugin would.
//!
//! std only: one thread per API connection (HTTP/1.1 with Content-Length bodies, as the engine's
//! plugin client sends them) and one per FIFO.
//!
//! Usage: `discard_plugin [SOCKET]` (default `/run/docker/plugins/discard.sock`, the managed
//! plugin's socket as its config.json names it).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

const DEFAULT_SOCKET: &str = "/run/docker/plugins/discard.sock";
/// Bound on a request body: the engine's StartLogging carries the container's config and env.
const MAX_BODY: usize = 16 << 20;

fn main() -> std::io::Result<()> {
    let socket = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
    );
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    eprintln!("discard plugin listening on {}", socket.display());
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(error) = serve(stream) {
                        eprintln!("connection: {error}");
                    }
                });
            }
            Err(error) => eprintln!("accept: {error}"),
        }
    }
    Ok(())
}

/// Answers requests on one connection until the engine closes it.
fn serve(stream: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        if length > MAX_BODY {
            return Err(std::io::Error::other(format!(
                "{path}: body of {length} bytes"
            )));
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let (status, answer) = route(&path, &body);
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: application/vnd.docker.plugins.v1+json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        )?;
        writer.flush()?;
    }
}

fn route(path: &str, body: &[u8]) -> (&'static str, String) {
    match path {
        "/Plugin.Activate" => ("200 OK", r#"{"Implements":["LogDriver"]}"#.into()),
        "/LogDriver.Capabilities" => ("200 OK", r#"{"Cap":{"ReadLogs":false}}"#.into()),
        "/LogDriver.StartLogging" => match fifo_of(body) {
            Some(fifo) => {
                std::thread::spawn(move || discard(fifo));
                ("200 OK", r#"{"Err":""}"#.into())
            }
            None => ("200 OK", r#"{"Err":"StartLogging without a File"}"#.into()),
        },
        // The engine closes its end after this answer; the reader then sees EOF and ends.
        "/LogDriver.StopLogging" => ("200 OK", r#"{"Err":""}"#.into()),
        _ => (
            "404 Not Found",
            format!(r#"{{"Err":"discard plugin: no endpoint {path}"}}"#),
        ),
    }
}

fn fifo_of(body: &[u8]) -> Option<PathBuf> {
    let request: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(PathBuf::from(request.get("File")?.as_str()?))
}

/// Reads the FIFO until the engine closes it, keeping nothing.
fn discard(fifo: PathBuf) {
    let mut file = match std::fs::File::open(&fifo) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("open {}: {error}", fifo.display());
            return;
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                eprintln!("read {}: {error}", fifo.display());
                return;
            }
        }
    }
}
