//! Real OpenSearch 2.19.6 nodes (the server and its modules from Maven Central, started by
//! `tools/opensearch/run-node`; see tools/opensearch/README.md), on free loopback ports, one JVM
//! each, as children of the test: a single node, or a three-node cluster whose members can be
//! killed and restarted; and a real Elasticsearch 8.19.21 node the same way (core APIs only).
//!
//! Every node is stopped by pid on drop (SIGTERM, then SIGKILL), and is told the test's pid
//! (`ESLP_PARENT_PID`) so it closes itself if the test process dies first. The launcher is built
//! once per test process (`run-node build`: nothing to do when it is built; Maven resolves the
//! jars on a fresh machine).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::noida::Noida;

/// How long a node may take from its JVM's start to a 200 from `_cluster/health` (observed
/// 7-22 s alone, 26-40 s for three at once on two shared cores).
const READY_LIMIT: Duration = Duration::from_secs(180);

fn run_node() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/opensearch/run-node")
}

/// Which server a node runs (`run-node --engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// OpenSearch 2.19.6 with the modules a log shipper needs (ingest, painless...).
    OpenSearch,
    /// Elasticsearch 8.19.21, core APIs only: its data-streams API, ingest processors and root
    /// endpoint are not published on Maven Central (the launcher answers `GET /` itself; see
    /// tools/opensearch/README.md). Bulk, data streams from templates, 409s and blocks are real.
    Elasticsearch,
}

impl Engine {
    fn arg(self) -> &'static str {
        match self {
            Engine::OpenSearch => "opensearch",
            Engine::Elasticsearch => "elasticsearch",
        }
    }
}

/// Builds the launcher jar of `engine` once; panics with Maven's output if it cannot.
fn build_launcher(engine: Engine) {
    static BUILT: [OnceLock<()>; 2] = [OnceLock::new(), OnceLock::new()];
    BUILT[engine as usize].get_or_init(|| {
        let out = Command::new(run_node())
            .args(["build", "--engine", engine.arg()])
            .output()
            .unwrap_or_else(|e| panic!("cannot run tools/opensearch/run-node: {e}"));
        assert!(
            out.status.success(),
            "building the OpenSearch launcher failed (needs java 17 and mvn on PATH, and Maven \
             Central the first time):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One OpenSearch JVM. Its home (data, logs) lives as long as the value, so a killed node
/// restarts with its data and cluster state.
pub struct Node {
    pub name: String,
    pub http: u16,
    pub transport: u16,
    home: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn new(home: &Path, name: &str, http: u16, transport: u16, args: Vec<String>) -> Node {
        Node {
            name: name.to_owned(),
            http,
            transport,
            home: home.to_owned(),
            args,
            child: None,
        }
    }

    /// A single-node cluster with the node settings `settings` (`key=value`, e.g.
    /// `thread_pool.write.queue_size=1`), answering when this returns.
    pub fn start_single(home: &Path, settings: &[&str]) -> Node {
        Node::start_single_of(Engine::OpenSearch, home, settings)
    }

    /// [`Node::start_single`] of the server `engine`.
    pub fn start_single_of(engine: Engine, home: &Path, settings: &[&str]) -> Node {
        build_launcher(engine);
        let (http, transport) = (free_port(), free_port());
        let mut args = vec![
            "--single".to_owned(),
            "--engine".to_owned(),
            engine.arg().to_owned(),
        ];
        for setting in settings {
            args.push("-E".to_owned());
            args.push((*setting).to_owned());
        }
        let mut node = Node::new(home, "single", http, transport, args);
        node.spawn();
        node.wait_ready();
        node
    }

    /// Starts the JVM (`run-node exec`: the child is the JVM itself, so its pid is the node's).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.name);
        std::fs::create_dir_all(&self.home).expect("node home");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("node log");
        let child = Command::new(run_node())
            .arg("exec")
            .args(["--home", &self.home.to_string_lossy()])
            .args(["--name", &self.name])
            .args(["--http", &self.http.to_string()])
            .args(["--transport", &self.transport.to_string()])
            .args(&self.args)
            .env("ESLP_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start OpenSearch node {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Waits for a 200 from `_cluster/health`; panics with the end of the node's log.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if self.health_status() == Some(200) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "OpenSearch node {} exited ({status}) before answering; its log ends:\n{}",
                        self.name,
                        self.log_tail(30)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "OpenSearch node {} did not answer GET /_cluster/health within {READY_LIMIT:?}; \
                 its log ends:\n{}",
                self.name,
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn health_status(&self) -> Option<u16> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let request = format!(
            "GET /_cluster/health?timeout=1s HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.http
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// A small blocking client: `request`, `count`, `documents`.
    pub fn client(&self) -> Noida {
        Noida::client_for(([127, 0, 0, 1], self.http).into())
    }

    /// A composable template that makes every `logs-*-*` target a data stream, as
    /// Elasticsearch's built-in `logs` template does (OpenSearch has none): what an operator
    /// installs first.
    pub fn install_logs_template(&self, replicas: u32) {
        let template = serde_json::json!({
            "index_patterns": ["logs-*-*"],
            "data_stream": {},
            "priority": 200,
            "template": {
                "settings": {"number_of_shards": 1, "number_of_replicas": replicas},
                "mappings": {"properties": {"@timestamp": {"type": "date_nanos"}}},
            },
        });
        let (status, body) =
            self.client()
                .request("PUT", "/_index_template/eslp-logs", &template.to_string());
        assert_eq!(status, 200, "install the logs-*-* template: {body}");
    }

    /// Every document of `index` as (`_id`, `message`), in `@timestamp` order, read with a
    /// scroll (beyond the 10,000 one search returns).
    pub fn scan(&self, index: &str) -> Vec<(String, String)> {
        let client = self.client();
        client.request("POST", &format!("/{index}/_refresh"), "");
        let (status, body) = client.request(
            "POST",
            &format!("/{index}/_search?scroll=1m"),
            r#"{"size":5000,"_source":["message"],"sort":["@timestamp","_doc"],"query":{"match_all":{}}}"#,
        );
        assert_eq!(status, 200, "search {index}: {body}");
        let mut out = Vec::new();
        let mut page: serde_json::Value = serde_json::from_str(&body).expect("search answer");
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for hit in hits {
                out.push((
                    hit["_id"].as_str().unwrap_or_default().to_owned(),
                    hit["_source"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
            }
            let scroll_id = page["_scroll_id"].as_str().unwrap_or_default();
            let (status, body) = client.request(
                "POST",
                "/_search/scroll",
                &serde_json::json!({"scroll": "1m", "scroll_id": scroll_id}).to_string(),
            );
            assert_eq!(status, 200, "scroll {index}: {body}");
            page = serde_json::from_str(&body).expect("scroll answer");
        }
        client.request("DELETE", "/_search/scroll/_all", "");
        out
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9: a crash, its data dir left as the crash left it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a clean close), then SIGKILL if it takes more than 20 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_path(&self) -> PathBuf {
        self.home.join("node.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three OpenSearch JVMs forming one cluster (all three cluster-manager eligible), each with its
/// own home under `dir`.
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn start(dir: &Path) -> Cluster {
        build_launcher(Engine::OpenSearch);
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let seeds = ports
            .iter()
            .map(|(_, t)| format!("127.0.0.1:{t}"))
            .collect::<Vec<_>>()
            .join(",");
        let names: Vec<String> = (1..=3).map(|n| format!("n{n}")).collect();
        let mut nodes: Vec<Node> = ports
            .iter()
            .zip(&names)
            .map(|(&(http, transport), name)| {
                let args = vec![
                    "--cluster".to_owned(),
                    "eslp-three".to_owned(),
                    "--seeds".to_owned(),
                    seeds.clone(),
                    "--managers".to_owned(),
                    names.join(","),
                    "--heap".to_owned(),
                    "384m".to_owned(),
                ];
                Node::new(&dir.join(name), name, http, transport, args)
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_ready();
        }
        Cluster { nodes }
    }

    /// Every node's URL, comma-separated, as `hosts` takes them.
    pub fn hosts(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Creates the data stream `name` (from the logs template) and waits until every copy of
    /// its shards is started: shipping then starts at once, and a member may be lost without
    /// losing the only copy of a shard.
    pub fn create_data_stream(&self, name: &str) {
        let client = self.nodes[0].client();
        let (status, body) = client.request("PUT", &format!("/_data_stream/{name}"), "");
        assert_eq!(status, 200, "create the data stream {name}: {body}");
        self.wait_green(0);
    }

    /// Waits (up to 3 minutes) until the cluster, asked of `via`, is green: after a member
    /// came back, its copies have recovered.
    pub fn wait_green(&self, via: usize) {
        let (status, body) = self.nodes[via].client().request(
            "GET",
            "/_cluster/health?wait_for_status=green&timeout=180s",
            "",
        );
        assert!(
            status == 200 && body.contains(r#""status":"green""#),
            "the cluster did not turn green: {body}"
        );
    }

    /// The name of the elected cluster manager, asked of `via`.
    pub fn manager(&self, via: usize) -> String {
        let (status, body) =
            self.nodes[via]
                .client()
                .request("GET", "/_cat/cluster_manager?h=node", "");
        assert_eq!(status, 200, "_cat/cluster_manager: {body}");
        body.trim().to_owned()
    }
}
