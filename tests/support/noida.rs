//! noida-db, an Elasticsearch 8.15 imitation written by others, run in-process on a free
//! loopback port (see docs/elasticsearch.md), and a small blocking HTTP client to ask it
//! what it holds. Its listener thread lives as long as the test process.
//!
//! It does not check credentials and has no data-stream API (`require_data_stream` is accepted
//! and ignored); documents become searchable after `_refresh`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Noida {
    addr: SocketAddr,
}

impl Noida {
    pub fn start() -> Noida {
        let addr = noida::elasticsearch::spawn("127.0.0.1:0").expect("start noida-db");
        Noida { addr }
    }

    /// The same blocking client for another server of the same API at `addr` (osmem-server):
    /// `request`, `count` and `documents` work against any of them.
    pub fn client_for(addr: SocketAddr) -> Noida {
        Noida { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request, `Connection: close`; returns the status and the body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).expect("connect to noida-db");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set a read timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .expect("send to noida-db");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read from noida-db");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .expect("an HTTP answer from noida-db");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("an HTTP status from noida-db");
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            unchunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    }

    /// How many documents `index` holds (0 if it does not exist yet).
    pub fn count(&self, index: &str) -> usize {
        self.request("POST", &format!("/{index}/_refresh"), "");
        let (status, body) = self.request("GET", &format!("/{index}/_count"), "");
        if status != 200 {
            return 0;
        }
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0) as usize
    }

    /// Every document of `index` as (`_id`, `_source`).
    pub fn documents(&self, index: &str) -> Vec<(String, serde_json::Value)> {
        self.request("POST", &format!("/{index}/_refresh"), "");
        let (status, body) = self.request(
            "POST",
            &format!("/{index}/_search"),
            r#"{"size":10000,"query":{"match_all":{}}}"#,
        );
        assert_eq!(status, 200, "search {index} in noida-db: {body}");
        let answer: serde_json::Value =
            serde_json::from_str(&body).expect("noida-db search answer is JSON");
        answer["hits"]["hits"]
            .as_array()
            .map(|hits| {
                hits.iter()
                    .map(|hit| {
                        (
                            hit["_id"].as_str().unwrap_or_default().to_owned(),
                            hit["_source"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
