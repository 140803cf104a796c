//! Security, through the real plugin binary: the socket and everything in the
//! state dir private to the plugin's user; no credential and no container env in anything the
//! plugin prints, answers, exposes as a metric or writes to a dead-letter file; TLS verified
//! against the configured CA only; and a plugin config that asks the engine for nothing it does
//! not use.

mod support;
use support::{engine, es_server, probe};

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::*;
use es_server::{Auth, EsServer, Faults, ServerOptions};
use probe::{fetch_metrics, free_addr};

const T0: i64 = 1_790_000_000_000_000_000;

/// Every path under `dir` with its type and permission bits, the dir itself first.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::FileType, u32)>) {
    let meta = std::fs::symlink_metadata(dir).expect("metadata");
    out.push((
        dir.to_owned(),
        meta.file_type(),
        meta.permissions().mode() & 0o7777,
    ));
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            walk(&entry.expect("entry").path(), out);
        }
    }
}

fn lines(n: i64, text: &str) -> Vec<LogEntry> {
    (0..n)
        .map(|i| line("stdout", T0 + i, format!("{text} {i}").as_bytes()))
        .collect()
}

async fn wait_for_docs(server: &EsServer, want: usize, plugin: &PluginProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.doc_count() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {want} documents; plugin log:\n{}",
            server.doc_count(),
            plugin.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression: the checkpoint and dead-letter dirs were created 0755, and a state dir that
/// already existed (`make install` makes it with `mkdir -p`) kept its 0755.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_and_every_state_file_are_private_to_the_plugin() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        item_status_matching: Some((400, "refused".into())),
        ..Faults::default()
    });
    let mut plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &server.url()),
        ("ES_FLUSH_INTERVAL", "50ms"),
    ]);
    // As `make install` leaves the host folder before the first start.
    std::fs::set_permissions(&plugin.state, std::fs::Permissions::from_mode(0o755)).unwrap();
    plugin.restart();
    let api = plugin.client();
    let id = container_id(1);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo1");
    assert_eq!(
        api.start_logging(&fifo.path, &id, &[("max-size", "4k"), ("max-file", "5")])
            .await,
        ""
    );
    let mut written = lines(300, "private line");
    written.push(line("stdout", T0 + 300, b"refused line"));
    fifo.write_entries(&written);
    assert_eq!(api.stop_logging(&fifo.path).await, "");
    wait_for_docs(&server, written.len() - 1, &plugin).await;
    let dead_letters = plugin.state.join("dead-letter");
    wait_until(Duration::from_secs(20), "a dead-letter file", || {
        dead_letters.exists()
    });
    let dir = plugin.state.join("containers").join(&id);
    wait_until(Duration::from_secs(20), "a compressed segment", || {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".gz"))
            })
            .unwrap_or(false)
    });

    let socket = std::fs::metadata(&plugin.socket).unwrap();
    assert!(socket.file_type().is_socket());
    let socket_mode = socket.permissions().mode() & 0o777;
    let mut found = Vec::new();
    walk(&plugin.state, &mut found);
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut open_to_others = Vec::new();
    for (path, kind, mode) in &found {
        let name = path
            .strip_prefix(&plugin.state)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let class = if kind.is_dir() { "dir" } else { "file" };
        *kinds.entry(format!("{class} {mode:04o}")).or_default() += 1;
        let wanted = if kind.is_dir() { 0o700 } else { 0o600 };
        if mode & !wanted != 0 {
            open_to_others.push(format!("{name:?} {mode:04o}"));
        }
    }
    eprintln!(
        "permissions: socket {socket_mode:04o}; state dir entries by mode: {kinds:?}; checked {} paths (segments, gz, checkpoints, dead-letter, runs.json, agent-id)",
        found.len()
    );
    assert_eq!(socket_mode & 0o177, 0, "socket mode {socket_mode:04o}");
    assert!(
        open_to_others.is_empty(),
        "open to group or others: {open_to_others:?}"
    );
    for must in ["checkpoints", "dead-letter", "runs.json", "agent-id"] {
        assert!(
            found.iter().any(|(p, _, _)| p.ends_with(must)),
            "{must} was not created, so not checked"
        );
    }
}

/// The markers: unique strings that must never come out of the plugin.
struct Markers {
    password: &'static str,
    api_key: &'static str,
    cloud_auth: &'static str,
    proxy_password: &'static str,
    url_password: &'static str,
    option_password: &'static str,
    env: &'static str,
}

const MARKERS: Markers = Markers {
    password: "pw-7f3a1c-marker",
    api_key: "key-51e0d2-marker",
    cloud_auth: "cloud-9b44aa-marker",
    proxy_password: "proxy-03d8e1-marker",
    url_password: "urlpw-c2b7f0-marker",
    option_password: "optpw-6a91bd-marker",
    env: "env-e8f215-marker",
};

impl Markers {
    fn all(&self) -> [&'static str; 7] {
        [
            self.password,
            self.api_key,
            self.cloud_auth,
            self.proxy_password,
            self.url_password,
            self.option_password,
            self.env,
        ]
    }
}

/// Starts logging with the marker in the container's env; returns the `Err` of the answer.
async fn start_with_env_marker(
    api: &Api,
    fifo: &Path,
    id: &str,
    config: &[(&str, &str)],
) -> String {
    let mut body = Api::start_logging_body(fifo, id, config);
    body["Info"]["ContainerEnv"] =
        serde_json::json!([format!("DB_PASSWORD={}", MARKERS.env), "PATH=/bin"]);
    api.call_err("/LogDriver.StartLogging", &body.to_string())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_container_env_reaches_a_log_an_answer_a_metric_or_a_dead_letter() {
    let m = &MARKERS;
    // Wants other credentials than the plugin has: every request is a 401.
    let locked = EsServer::start(ServerOptions {
        auth: Some(Auth::Basic {
            user: "elastic".into(),
            password: "the-right-one".into(),
        }),
        ..ServerOptions::default()
    })
    .await;
    let tls = EsServer::start(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    })
    .await;
    // Open, but refuses some documents for good: dead letters.
    let open = EsServer::start(ServerOptions::default()).await;
    open.set_faults(Faults {
        item_status_matching: Some((400, "refused".into())),
        ..Faults::default()
    });
    let metrics_addr = free_addr();
    let plugin = PluginProcess::start_with_env(&[
        ("ES_HOSTS", &locked.url()),
        ("ES_USER", "elastic"),
        ("ES_PASSWORD", m.password),
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "100ms"),
        ("ES_FLUSH_INTERVAL", "50ms"),
        ("METRICS_ADDR", &metrics_addr),
        ("LOG_DRIVER_LEVEL", "trace"),
    ]);
    let api = plugin.client();
    let dead_addr = free_addr();
    let url_with_password = locked
        .url()
        .replace("http://", &format!("http://elastic:{}@", m.url_password));
    let proxy = format!("http://proxyuser:{}@{dead_addr}", m.proxy_password);
    let bad_proxy = format!("ftp://proxyuser:{}@{dead_addr}", m.proxy_password);
    let api_key = format!("id:{}", m.api_key);
    let bad_host = format!("http://u:{}@/", m.url_password);
    let open_url = open.url();
    let tls_url = tls.url();
    // A container's own cloud_auth replaces the host's ES_USER/ES_PASSWORD (set together they
    // would be refused as conflicting credentials).
    let cloud_auth = format!("elastic:{}", m.cloud_auth);
    // Containers that start and ship into trouble: 401s, a dead proxy, a TLS failure, dead
    // letters.
    let accepted: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("api_key", api_key.as_str())],
        vec![("hosts", url_with_password.as_str())],
        vec![("hosts", open_url.as_str()), ("proxy_url", proxy.as_str())],
        vec![
            ("hosts", tls_url.as_str()),
            ("user", "u"),
            ("password", m.option_password),
        ],
        vec![
            ("hosts", open_url.as_str()),
            ("user", "u"),
            ("password", m.option_password),
        ],
        vec![("cloud_auth", cloud_auth.as_str())],
        // Asks for some of the environment: only that is shipped and kept, never the marker.
        vec![
            ("hosts", open_url.as_str()),
            ("env", "PATH"),
            ("env-regex", "^PA"),
        ],
    ];
    // Options refused at StartLogging: the error must not repeat the credential.
    let refused: Vec<Vec<(&str, &str)>> = vec![
        vec![("password", m.option_password), ("workers", "0")],
        vec![
            ("hosts", open_url.as_str()),
            ("user", ""),
            ("cloud_auth", m.cloud_auth),
        ],
        vec![
            ("hosts", open_url.as_str()),
            ("proxy_url", bad_proxy.as_str()),
        ],
        vec![("hosts", bad_host.as_str())],
        vec![
            ("hosts", open_url.as_str()),
            ("api_key", api_key.as_str()),
            ("timeout", "soon"),
        ],
    ];
    let mut answers = Vec::new();
    let mut fifos = Vec::new();
    for (n, config) in accepted.iter().enumerate() {
        let id = container_id(10 + n as u8);
        let mut fifo = EngineFifo::create(plugin.dir.path(), &format!("ok{n}"));
        let err = start_with_env_marker(&api, &fifo.path, &id, config).await;
        assert_eq!(err, "", "{config:?}");
        let mut entries = lines(20, "a line");
        entries.push(line("stdout", T0 + 99, b"refused for good"));
        fifo.write_entries(&entries);
        fifos.push(fifo);
    }
    for (n, config) in refused.iter().enumerate() {
        let fifo = EngineFifo::create(plugin.dir.path(), &format!("bad{n}"));
        let err =
            start_with_env_marker(&api, &fifo.path, &container_id(30 + n as u8), config).await;
        assert!(!err.is_empty(), "{config:?} was accepted");
        answers.push(err);
    }
    // ReadLogs and StopLogging answers too.
    for (n, fifo) in fifos.iter().enumerate() {
        let id = container_id(10 + n as u8);
        let (_, text) = api
            .call_text(
                "/LogDriver.ReadLogs",
                &Api::read_logs_body(&id, "", "", 5, false),
            )
            .await;
        answers.push(text);
        answers.push(api.stop_logging(&fifo.path).await);
    }
    // Let every failure be met and logged: credentials refused, proxy down, TLS refused,
    // documents dead-lettered.
    let output_has = |what: &str| plugin.output().to_lowercase().contains(what);
    wait_until(
        Duration::from_secs(30),
        "401s, TLS and proxy failures in the log",
        || {
            output_has("refused our credentials")
                && output_has("certificate")
                && output_has("connection refused")
        },
    );
    wait_until(Duration::from_secs(30), "a dead-letter file", || {
        plugin.state.join("dead-letter").exists()
    });
    let metrics = fetch_metrics(&metrics_addr);

    let mut places: Vec<(String, String)> = vec![
        ("plugin stdout/stderr".into(), plugin.output()),
        ("/metrics".into(), metrics),
        ("API answers".into(), answers.join("\n")),
    ];
    let mut found = Vec::new();
    walk(&plugin.state.join("dead-letter"), &mut found);
    walk(&plugin.state.join("checkpoints"), &mut found);
    for (path, _, _) in found.iter().filter(|(_, k, _)| k.is_file()) {
        let bytes = std::fs::read(path).unwrap_or_default();
        places.push((
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    // What reached Elasticsearch: the variables asked for, never one that was not.
    let shipped: Vec<String> = open.docs().iter().map(|d| d.source.to_string()).collect();
    assert!(
        shipped
            .iter()
            .any(|d| d.contains("\"env_vars\":[\"PATH=/bin\"]")),
        "no document carries the env the container asked for"
    );
    places.push(("documents indexed".into(), shipped.join("\n")));
    // The run table keeps log-opts (to resume shipping after a crash) and the env asked for,
    // never the rest of it.
    let runs = std::fs::read_to_string(plugin.state.join("runs.json")).unwrap_or_default();
    places.push((
        "runs.json (env only)".into(),
        runs.replace(m.api_key, "")
            .replace(m.cloud_auth, "")
            .replace(m.proxy_password, "")
            .replace(m.url_password, "")
            .replace(m.option_password, ""),
    ));
    let mut leaks = Vec::new();
    for (place, text) in &places {
        for marker in m.all() {
            if text.contains(marker) {
                let at = text.find(marker).unwrap_or(0);
                let context: String = text[at.saturating_sub(120)..].chars().take(240).collect();
                leaks.push(format!("{marker} in {place}: ...{context}..."));
            }
        }
    }
    let printed = plugin.output();
    eprintln!(
        "secrets: {} markers searched in {} places ({} bytes of plugin output, {} API answers, {} dead-letter/checkpoint files); {} leaks",
        m.all().len(),
        places.len(),
        printed.len(),
        answers.len(),
        found.iter().filter(|(_, k, _)| k.is_file()).count(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "leaked:\n{}", leaks.join("\n"));
    assert!(
        open.docs()
            .iter()
            .any(|d| d.source["message"] == "a line 0"),
        "the open destination received lines (so its path was exercised)"
    );
}

/// TLS: a CA that did not sign the server's certificate is refused like no CA at all (verified
/// by default: tests/shipping.rs has no CA, the right CA, `verification_mode=none` and the
/// fingerprint pin); the lines stay in the local copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_server_is_refused() {
    let server = EsServer::start(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    })
    .await;
    let other = EsServer::start(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    })
    .await;
    let plugin = PluginProcess::start_with_env(&[
        ("ES_BACKOFF_INIT", "20ms"),
        ("ES_BACKOFF_MAX", "100ms"),
        ("ES_FLUSH_INTERVAL", "50ms"),
    ]);
    let api = plugin.client();
    let right = plugin.dir.path().join("right.pem");
    let wrong = plugin.dir.path().join("wrong.pem");
    std::fs::write(&right, server.ca_pem().unwrap()).unwrap();
    std::fs::write(&wrong, other.ca_pem().unwrap()).unwrap();
    let url = server.url();
    let mut ran = Vec::new();
    for (tag, ca) in [(1u8, &wrong), (2, &right)] {
        let id = container_id(tag);
        let mut fifo = EngineFifo::create(plugin.dir.path(), &format!("fifo{tag}"));
        let ca = ca.display().to_string();
        assert_eq!(
            api.start_logging(
                &fifo.path,
                &id,
                &[("hosts", &url), ("ssl.certificate_authorities", &ca)]
            )
            .await,
            ""
        );
        let written = lines(200, &format!("tls {tag}"));
        fifo.write_entries(&written);
        assert_eq!(api.stop_logging(&fifo.path).await, "");
        ran.push((id, written));
    }
    wait_for_docs(&server, 200, &plugin).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let docs = server.docs();
    let shipped = |id: &str| {
        docs.iter()
            .filter(|d| d.source["container"]["id"] == id)
            .count()
    };
    let kept = api.read_logs(&ran[0].0, "", "", -1).await.len();
    eprintln!(
        "TLS wrong CA: sent 200, indexed {}, kept locally {kept}; right CA: sent 200, indexed {}; handshakes refused by the plugin {}",
        shipped(&ran[0].0),
        shipped(&ran[1].0),
        server.stats().tls_handshake_failures
    );
    assert_eq!(
        shipped(&ran[0].0),
        0,
        "shipped to a server its CA option does not trust"
    );
    assert_eq!(shipped(&ran[1].0), 200);
    assert_eq!(
        kept, 200,
        "the untrusted container's lines are kept locally"
    );
    assert!(server.stats().tls_handshake_failures > 0);
    assert!(plugin.output().to_lowercase().contains("certificate"));
}

/// The managed plugin's config.json asks the engine for exactly what the plugin uses. Adding a
/// capability, a device or a host namespace later fails here, with the reason to think twice.
#[test]
fn plugin_config_asks_for_nothing_it_does_not_use() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plugin/config.json"))
        .expect("plugin/config.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
    let keys: Vec<&str> = config
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let allowed = [
        "description",
        "documentation",
        "entrypoint",
        "interface",
        "network",
        "mounts",
        "env",
    ];
    for key in &keys {
        assert!(
            allowed.contains(key),
            "config.json asks for {key:?}: the plugin needs no linux capabilities, devices, \
             host IPC/PID namespaces, propagated mounts, args or user; if it now does, say why \
             here and in the README"
        );
    }
    assert_eq!(
        config["interface"],
        serde_json::json!({"types": ["docker.logdriver/1.0"], "socket": "es-logging.sock"})
    );
    // "host" is the only network type with network access at all: Elasticsearch may be on the
    // host's loopback, the metrics endpoint listens there, and host.name is the host's UTS name.
    assert_eq!(config["network"], serde_json::json!({"type": "host"}));
    let mounts: Vec<(&str, &str, &str)> = config["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or(""),
                m["destination"].as_str().unwrap_or(""),
                m["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("state", "/var/lib/es-logging-plugin", "bind"),
            ("docker-socket", "/var/run/docker.sock", "bind"),
        ],
        "mounts: the state dir (local copies survive upgrades) and the engine socket (events)"
    );
    for forbidden in [
        "linux",
        "ipchost",
        "pidhost",
        "propagatedMount",
        "user",
        "args",
    ] {
        assert!(config.get(forbidden).is_none(), "{forbidden} is set");
    }
    assert_eq!(
        config["entrypoint"],
        serde_json::json!(["/bin/es-logging-plugin", "serve"])
    );
}
