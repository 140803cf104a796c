//! osmem-server 0.1.6, an OpenSearch 3.8 imitation written by others and stricter than ours
//! (406 for an unknown Content-Type, 400 for a body without its final newline, a whole-request
//! 400 for `require_data_stream`), run as a process on a free loopback port. The binary comes
//! from its PyPI wheel; `make test` fetches it into `target/tools` and names it in
//! `OSMEM_SERVER` (see the Makefile and support/prereq.rs). Stopped by pid on drop, and told our pid so it exits if
//! the test process dies first.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Osmem {
    child: Child,
    url: String,
}

impl Osmem {
    /// Starts `binary`; the test finds it with `prereq::osmem_server` (`OSMEM_SERVER`).
    pub fn start(binary: &Path) -> Osmem {
        let mut child = Command::new(binary)
            .args(["-addr", "127.0.0.1:0", "-no-stdin-watch", "-parent-pid"])
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Its first line says where it listens: {"url":"http://127.0.0.1:PORT",...}.
        let mut first = String::new();
        let stdout = child.stdout.take().expect("osmem-server stdout");
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read osmem-server's first line");
        let url = serde_json::from_str::<serde_json::Value>(&first)
            .ok()
            .and_then(|v| v["url"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("osmem-server did not say where it listens: {first:?}"));
        Osmem { child, url }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address part of the URL, for a raw HTTP client.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("osmem-server's address")
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
