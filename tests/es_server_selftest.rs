//! Checks the Elasticsearch imitation in `tests/support/es_server.rs` itself, with a plain HTTP
//! client, so that shipper tests built on it can trust what it answers.

mod support;
use support::es_server;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use es_server::{Auth, EsServer, Faults, Flavor, ServerOptions};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} answered non-JSON {:?}: {e}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a fresh connection, so that a dropped connection is the request's own error.
struct Client {
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    headers: Vec<(String, String)>,
}

impl Client {
    fn plain(server: &EsServer) -> Client {
        Client {
            port: server.port(),
            tls: None,
            headers: Vec::new(),
        }
    }

    fn with_roots(server: &EsServer, roots: rustls::RootCertStore) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client {
            port: server.port(),
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, Error> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port));
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::from(body)))?;
        let response = match &self.tls {
            None => {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
                let tls = connector.connect(name, tcp).await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], Vec::new()).await
    }

    async fn bulk(&self, path: &str, ndjson: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[("content-type", "application/x-ndjson")],
            ndjson.as_bytes().to_vec(),
        )
        .await
    }
}

/// NDJSON of `create` actions for `(id, message)` pairs into `index`.
fn creates(index: &str, docs: &[(&str, &str)]) -> String {
    docs.iter()
        .map(|(id, message)| {
            format!(
                "{}\n{}\n",
                json!({"create": {"_index": index, "_id": id}}),
                json!({"message": message})
            )
        })
        .collect()
}

fn numbered(index: &str, n: usize) -> String {
    let ids: Vec<String> = (1..=n).map(|i| format!("doc-{i}")).collect();
    let docs: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "line")).collect();
    creates(index, &docs)
}

fn statuses(answer: &Value) -> Vec<u64> {
    answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["create"]["status"].as_u64().expect("status"))
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn root_answers_like_elasticsearch_8_with_the_product_header() {
    let server = EsServer::start(ServerOptions::default()).await;
    assert!(server.url().starts_with("http://127.0.0.1:"));
    let reply = Client::plain(&server).get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-elastic-product"), Some("Elasticsearch"));
    let info = reply.json();
    assert_eq!(info["version"]["number"], "8.15.0");
    assert_eq!(info["version"]["build_flavor"], "default");
    assert_eq!(info["tagline"], "You Know, for Search");
    for key in [
        "lucene_version",
        "minimum_wire_compatibility_version",
        "minimum_index_compatibility_version",
    ] {
        assert!(
            info["version"][key].is_string(),
            "version.{key} missing: {info}"
        );
    }
    assert!(info["cluster_uuid"].is_string() && info["name"].is_string());
    assert!(info["version"].get("distribution").is_none());

    let head = Client::plain(&server)
        .send("HEAD", "/", &[], Vec::new())
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn root_answers_like_opensearch_without_the_product_header() {
    let server = EsServer::start(ServerOptions {
        flavor: Flavor::OpenSearch,
        ..Default::default()
    })
    .await;
    let reply = Client::plain(&server).get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-elastic-product"), None);
    let info = reply.json();
    assert_eq!(info["version"]["distribution"], "opensearch");
    assert!(info["version"]["number"]
        .as_str()
        .unwrap()
        .starts_with("2."));
    assert_eq!(
        info["tagline"],
        "The OpenSearch Project: https://opensearch.org/"
    );

    // OpenSearch has no require_data_stream parameter and refuses the whole request.
    let refused = Client::plain(&server)
        .bulk("/_bulk?require_data_stream=true", &numbered("logs", 1))
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["error"]["type"],
        "illegal_argument_exception"
    );
    assert_eq!(server.doc_count(), 0);
}

#[tokio::test]
async fn create_answers_201_then_409_for_the_same_id() {
    let server = EsServer::start(ServerOptions::default()).await;
    let client = Client::plain(&server);
    let body = creates("logs-docker-default", &[("a", "one"), ("b", "two")]);

    let first = client.bulk("/_bulk", &body).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-elastic-product"), Some("Elasticsearch"));
    let first = first.json();
    assert_eq!(first["errors"], false);
    assert!(first["took"].is_u64());
    let item = &first["items"][0]["create"];
    assert_eq!(item["status"], 201);
    assert_eq!(item["result"], "created");
    assert_eq!(item["_index"], "logs-docker-default");
    assert_eq!(item["_id"], "a");
    assert_eq!(item["_version"], 1);
    assert_eq!(item["_primary_term"], 1);
    assert!(item["_seq_no"].is_u64() && item["_shards"]["successful"] == 1);
    assert_eq!(first["items"][1]["create"]["_seq_no"], 1);

    let second = client.bulk("/_bulk", &body).await.json();
    assert_eq!(second["errors"], true);
    assert_eq!(statuses(&second), vec![409, 409]);
    let error = &second["items"][0]["create"]["error"];
    assert_eq!(error["type"], "version_conflict_engine_exception");
    assert_eq!(
        error["reason"],
        "[a]: version conflict, document already exists (current version [1])"
    );

    let docs = server.docs();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].index, "logs-docker-default");
    assert_eq!(docs[0].id, "a");
    assert_eq!(docs[0].source, json!({"message": "one"}));
    assert_eq!(docs[1].id, "b");
    let stats = server.stats();
    assert_eq!(stats.bulk_requests, 2);
    assert_eq!(stats.created, 2);
    assert_eq!(stats.conflicts_409, 2);
    assert_eq!(stats.items_seen, 4);
    assert_eq!(stats.bulk_sizes, vec![2, 2]);
    assert_eq!(stats.item_statuses.get(&201), Some(&2));

    let refresh = client
        .send("POST", "/logs-docker-default/_refresh", &[], Vec::new())
        .await;
    assert_eq!(refresh.status, 200);
    assert!(refresh.json()["_shards"].is_object());
    assert_eq!(
        client.get("/logs-docker-default/_count").await.json()["count"],
        2
    );
    assert_eq!(client.get("/logs-*/_count").await.json()["count"], 2);
    assert_eq!(
        client
            .get("/other-*,logs-docker-default/_count")
            .await
            .json()["count"],
        2
    );
    assert_eq!(client.get("/nothing-*/_count").await.json()["count"], 0);
    let missing = client.get("/missing/_count").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "index_not_found_exception");

    server.clear_docs();
    assert_eq!(server.doc_count(), 0);
    let again = client.bulk("/_bulk", &body).await.json();
    assert_eq!(statuses(&again), vec![201, 201]);
}

#[tokio::test]
async fn bulk_follows_the_target_ids_pipelines_and_actions() {
    let server = EsServer::start(ServerOptions::default()).await;
    let client = Client::plain(&server);
    let body = concat!(
        "{\"create\":{}}\n{\"n\":1}\n",
        "{\"create\":{\"_id\":\"x\",\"pipeline\":\"own\"}}\n{\"n\":2}\n",
        "{\"index\":{\"_index\":\"other\",\"_id\":\"y\"}}\n{\"n\":3}\n",
        "{\"index\":{\"_index\":\"other\",\"_id\":\"y\"}}\n{\"n\":4}\n",
        "{\"create\":{\"_id\":\"bad\"}}\n{\"n\": nope}\n",
        "{\"create\":{\"_index\":\"Upper\",\"_id\":\"z\"}}\n{\"n\":5}\n",
    );
    let answer = client
        .bulk(
            "/target/_bulk?pipeline=default-pipe&require_data_stream=false",
            body,
        )
        .await
        .json();
    assert_eq!(answer["errors"], true);
    let items = answer["items"].as_array().unwrap();
    assert_eq!(items[0]["create"]["status"], 201);
    assert_eq!(items[0]["create"]["_id"].as_str().unwrap().len(), 20);
    assert_eq!(items[2]["index"]["status"], 201);
    assert_eq!(items[3]["index"]["status"], 200);
    assert_eq!(items[3]["index"]["result"], "updated");
    assert_eq!(items[3]["index"]["_version"], 2);
    assert_eq!(items[4]["create"]["status"], 400);
    assert_eq!(
        items[4]["create"]["error"]["type"],
        "document_parsing_exception"
    );
    assert_eq!(items[5]["create"]["status"], 400);
    assert_eq!(
        items[5]["create"]["error"]["type"],
        "invalid_index_name_exception"
    );

    let docs = server.docs();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0].index, "target");
    assert_eq!(docs[0].pipeline.as_deref(), Some("default-pipe"));
    assert_eq!(
        (docs[1].id.as_str(), docs[1].pipeline.as_deref()),
        ("x", Some("own"))
    );
    assert_eq!(
        (docs[2].index.as_str(), &docs[2].source),
        ("other", &json!({"n": 4}))
    );
    let stats = server.stats();
    assert_eq!(
        stats.last_query_params.get("pipeline").map(String::as_str),
        Some("default-pipe")
    );
    assert_eq!(
        stats
            .last_bulk_headers
            .get("content-type")
            .map(String::as_str),
        Some("application/x-ndjson")
    );

    // Data streams take only `create`.
    let answer = client
        .bulk(
            "/_bulk?require_data_stream=true",
            "{\"index\":{\"_index\":\"logs-a-b\"}}\n{}\n",
        )
        .await
        .json();
    assert_eq!(answer["items"][0]["index"]["status"], 400);
}

#[tokio::test]
async fn bulk_refuses_what_elasticsearch_refuses() {
    let server = EsServer::start(ServerOptions {
        max_content_length: 1000,
        ..Default::default()
    })
    .await;
    let client = Client::plain(&server);

    let unterminated = client
        .bulk("/_bulk", "{\"create\":{\"_index\":\"a\"}}\n{}")
        .await;
    assert_eq!(unterminated.status, 400);
    assert_eq!(
        unterminated.json()["error"]["reason"],
        "The bulk request must be terminated by a newline [\\n]"
    );

    let text = client
        .send(
            "POST",
            "/_bulk",
            &[("content-type", "text/plain")],
            numbered("a", 1).into_bytes(),
        )
        .await;
    assert_eq!(text.status, 406);
    let json_type = client
        .send(
            "POST",
            "/_bulk",
            &[("content-type", "application/json; charset=UTF-8")],
            numbered("a", 1).into_bytes(),
        )
        .await;
    assert_eq!(json_type.status, 200);

    let old_type = client
        .bulk(
            "/_bulk",
            "{\"create\":{\"_index\":\"a\",\"_type\":\"_doc\"}}\n{}\n",
        )
        .await;
    assert_eq!(old_type.status, 400);
    let no_index = client.bulk("/_bulk", "{\"create\":{}}\n{}\n").await;
    assert_eq!(no_index.status, 400);
    assert_eq!(
        no_index.json()["error"]["type"],
        "action_request_validation_exception"
    );
    let get = client.send("GET", "/_bulk", &[], Vec::new()).await;
    assert_eq!(get.status, 405);

    // The limit is judged on the decompressed body: a small gzip of a large body is refused.
    let large = numbered("a", 40);
    assert!(large.len() > 1000);
    let compressed = gzip(large.as_bytes());
    assert!(compressed.len() < 1000);
    let too_large = client
        .send(
            "POST",
            "/_bulk",
            &[
                ("content-type", "application/x-ndjson"),
                ("content-encoding", "gzip"),
            ],
            compressed,
        )
        .await;
    assert_eq!(too_large.status, 413);
    assert!(too_large.body.is_empty());

    let unknown = client.get("/_nope").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"]
        .as_str()
        .unwrap()
        .contains("no handler found"));

    let stats = server.stats();
    assert_eq!(stats.bulk_refused.get(&400), Some(&3));
    assert_eq!(stats.bulk_refused.get(&406), Some(&1));
    assert_eq!(stats.bulk_refused.get(&413), Some(&1));
    assert_eq!(server.doc_count(), 1);
}

#[tokio::test]
async fn bulk_accepts_a_gzip_body() {
    let server = EsServer::start(ServerOptions::default()).await;
    let body = gzip(numbered("logs", 3).as_bytes());
    let reply = Client::plain(&server)
        .send(
            "POST",
            "/_bulk",
            &[
                ("content-type", "application/x-ndjson"),
                ("content-encoding", "gzip"),
            ],
            body,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(statuses(&reply.json()), vec![201, 201, 201]);
    assert_eq!(server.doc_count(), 3);
    assert_eq!(server.stats().gzip_requests, 1);
}

#[tokio::test]
async fn filter_path_shrinks_the_answer() {
    let server = EsServer::start(ServerOptions::default()).await;
    let client = Client::plain(&server);
    client
        .bulk("/_bulk", &creates("logs", &[("b", "old")]))
        .await;
    let body = creates("logs", &[("a", "new"), ("b", "again")]);

    let errors_only = client
        .bulk("/_bulk?filter_path=errors", &creates("logs", &[("c", "x")]))
        .await;
    assert_eq!(errors_only.json(), json!({"errors": false}));

    let full = client
        .bulk(
            "/_bulk?filter_path=errors,items.*.error,items.*.status,items.*._id",
            &body,
        )
        .await
        .json();
    assert_eq!(full["errors"], true);
    assert!(full.get("took").is_none());
    let items = full["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "a status per item keeps every item: {full}");
    assert_eq!(items[0], json!({"create": {"_id": "a", "status": 201}}));
    assert_eq!(items[1]["create"]["status"], 409);
    assert_eq!(
        items[1]["create"]["error"]["type"],
        "version_conflict_engine_exception"
    );
    assert!(items[1]["create"].get("_index").is_none());

    // As in ES, items left with nothing are dropped: only the failed one remains.
    let only_errors = client
        .bulk(
            "/_bulk?filter_path=items.*.error",
            &creates("logs", &[("d", "x"), ("b", "y")]),
        )
        .await
        .json();
    let items = only_errors["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["create"]["error"]["type"],
        "version_conflict_engine_exception"
    );

    // Percent-encoded, `**` and exclusion.
    let encoded = client
        .bulk(
            "/_bulk?filter_path=items.%2A._id",
            &creates("logs", &[("e", "x")]),
        )
        .await
        .json();
    assert_eq!(encoded, json!({"items": [{"create": {"_id": "e"}}]}));
    let deep = client
        .bulk(
            "/_bulk?filter_path=**.result",
            &creates("logs", &[("f", "x")]),
        )
        .await
        .json();
    assert_eq!(deep, json!({"items": [{"create": {"result": "created"}}]}));
    let excluded = client
        .bulk(
            "/_bulk?filter_path=-items,-took",
            &creates("logs", &[("g", "x")]),
        )
        .await
        .json();
    assert_eq!(excluded, json!({"errors": false}));
    let root = client.get("/?filter_path=version.number").await.json();
    assert_eq!(root, json!({"version": {"number": "8.15.0"}}));
}

#[tokio::test]
async fn every_third_item_answers_429_until_retried() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        item_status_every: Some((429, 3)),
        item_fail_times: 1,
        ..Default::default()
    });
    let client = Client::plain(&server);
    let answer = client.bulk("/_bulk", &numbered("logs", 9)).await.json();
    assert_eq!(answer["errors"], true);
    assert_eq!(
        statuses(&answer),
        vec![201, 201, 429, 201, 201, 429, 201, 201, 429]
    );
    let error = &answer["items"][2]["create"]["error"];
    assert_eq!(error["type"], "es_rejected_execution_exception");
    assert_eq!(answer["items"][2]["create"]["_id"], "doc-3");
    assert_eq!(server.doc_count(), 6);

    // The retry of the three rejected items: each was failed once already, so all go in.
    let retry = creates(
        "logs",
        &[("doc-3", "line"), ("doc-6", "line"), ("doc-9", "line")],
    );
    let answer = client.bulk("/_bulk", &retry).await.json();
    assert_eq!(answer["errors"], false);
    assert_eq!(statuses(&answer), vec![201, 201, 201]);
    assert_eq!(server.doc_count(), 9);
    let stats = server.stats();
    assert_eq!(stats.rejected_by_fault.get(&429), Some(&3));
    assert_eq!(stats.item_statuses.get(&429), Some(&3));
    assert_eq!(stats.created, 9);
}

#[tokio::test]
async fn permanent_item_400_fails_on_every_retry() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        item_status_every: Some((400, 2)),
        item_fail_times: 0,
        ..Default::default()
    });
    let client = Client::plain(&server);
    let answer = client.bulk("/_bulk", &numbered("logs", 4)).await.json();
    assert_eq!(statuses(&answer), vec![201, 400, 201, 400]);
    assert_eq!(
        answer["items"][1]["create"]["error"]["type"],
        "document_parsing_exception"
    );

    server.set_faults(Faults {
        item_status_matching: Some((400, "poison".to_owned())),
        ..Default::default()
    });
    for _ in 0..3 {
        let answer = client
            .bulk(
                "/_bulk",
                &creates("logs", &[("p", "poison pill"), ("q", "fine")]),
            )
            .await
            .json();
        assert_eq!(answer["items"][0]["create"]["status"], 400);
    }
    assert!(server.docs().iter().all(|d| d.id != "p"));
    assert!(server.docs().iter().any(|d| d.id == "q"));
    assert_eq!(server.stats().rejected_by_fault.get(&400), Some(&5));
}

#[tokio::test]
async fn whole_request_faults_answer_with_elasticsearch_bodies() {
    let server = EsServer::start(ServerOptions::default()).await;
    let client = Client::plain(&server);
    let cases = [
        (503, Some("cluster_block_exception")),
        (429, Some("es_rejected_execution_exception")),
        (401, Some("security_exception")),
        (403, Some("security_exception")),
        (500, Some("exception")),
        (502, None),
        (413, None),
    ];
    for (status, kind) in cases {
        server.set_faults(Faults {
            whole_status: Some(status),
            whole_status_times: 2,
            ..Default::default()
        });
        for _ in 0..2 {
            let reply = client.bulk("/_bulk", &numbered("logs", 2)).await;
            assert_eq!(reply.status, status);
            match kind {
                Some(kind) => {
                    let body = reply.json();
                    assert_eq!(body["status"], status);
                    assert_eq!(body["error"]["type"], kind);
                    assert_eq!(body["error"]["root_cause"][0]["type"], kind);
                }
                None if status == 413 => assert!(reply.body.is_empty()),
                None => assert!(String::from_utf8_lossy(&reply.body).contains("502 Bad Gateway")),
            }
            if status == 401 {
                assert!(reply.header("www-authenticate").is_some());
            }
        }
        assert_eq!(
            server.doc_count(),
            0,
            "a refused request stores nothing ({status})"
        );
        // whole_status_times = 2: the third goes through.
        let reply = client.bulk("/_bulk", &numbered("logs", 2)).await;
        assert_eq!(reply.status, 200, "after {status}");
        server.clear_docs();
    }
    let stats = server.stats();
    for (status, _) in cases {
        assert_eq!(stats.whole_faults.get(&status), Some(&2), "{status}");
    }

    // whole_status_times = 0: until cleared.
    server.set_faults(Faults {
        whole_status: Some(503),
        ..Default::default()
    });
    for _ in 0..4 {
        assert_eq!(
            client.bulk("/_bulk", &numbered("logs", 1)).await.status,
            503
        );
    }
    assert_eq!(
        client.get("/").await.status,
        200,
        "faults apply to _bulk only"
    );
    server.set_faults(Faults::default());
    assert_eq!(
        client.bulk("/_bulk", &numbered("logs", 1)).await.status,
        200
    );
}

#[tokio::test]
async fn max_docs_per_request_answers_413_to_larger_bulks() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        max_docs_per_request: Some(4),
        ..Default::default()
    });
    let client = Client::plain(&server);
    let reply = client.bulk("/_bulk", &numbered("logs", 8)).await;
    assert_eq!(reply.status, 413);
    assert!(reply.body.is_empty());
    assert_eq!(server.doc_count(), 0);
    let reply = client.bulk("/_bulk", &numbered("logs", 4)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(server.doc_count(), 4);
    let stats = server.stats();
    assert_eq!(stats.bulk_sizes, vec![8, 4]);
    assert_eq!(stats.whole_faults.get(&413), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_outlasts_a_client_timeout_but_the_documents_are_stored() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        delay: Some(Duration::from_millis(800)),
        ..Default::default()
    });
    let client = Client::plain(&server);
    let body = numbered("logs", 2);
    let started = std::time::Instant::now();
    let timed_out =
        tokio::time::timeout(Duration::from_millis(200), client.bulk("/_bulk", &body)).await;
    assert!(timed_out.is_err(), "the answer came before the delay");
    assert_eq!(server.doc_count(), 2, "stored before the delay");

    // Slow, but it does answer; the replay of the timed-out request sees 409s.
    let answer = client.bulk("/_bulk", &body).await;
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(statuses(&answer.json()), vec![409, 409]);
    assert_eq!(server.stats().delayed_requests, 2);
}

#[tokio::test]
async fn drop_connection_closes_without_an_answer_and_stores_nothing() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        drop_connection: true,
        drop_times: 2,
        ..Default::default()
    });
    let client = Client::plain(&server);
    let body = numbered("logs", 2);
    for _ in 0..2 {
        let result = client
            .try_send(
                "POST",
                "/_bulk",
                &[("content-type", "application/x-ndjson")],
                body.clone().into_bytes(),
            )
            .await;
        let error = result.err().expect("the connection was dropped");
        assert!(!error.to_string().is_empty());
    }
    assert_eq!(server.doc_count(), 0);
    let reply = client.bulk("/_bulk", &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(server.doc_count(), 2);
    let stats = server.stats();
    assert_eq!(stats.dropped_connections, 2);
    assert_eq!(stats.bulk_requests, 3);
}

#[tokio::test]
async fn basic_auth_is_required_and_checked() {
    let server = EsServer::start(ServerOptions {
        auth: Some(Auth::Basic {
            user: "elastic".to_owned(),
            password: "changeme".to_owned(),
        }),
        ..Default::default()
    })
    .await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    let anonymous = Client::plain(&server).get("/").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("x-elastic-product"), None);
    assert_eq!(
        anonymous.headers.get_all("www-authenticate").iter().count(),
        3
    );
    let body = anonymous.json();
    assert_eq!(body["error"]["type"], "security_exception");
    assert_eq!(
        body["error"]["reason"],
        "missing authentication credentials for REST request [/]"
    );

    let wrong = Client::plain(&server)
        .header("authorization", &format!("Basic {}", b64("elastic:wrong")))
        .bulk("/_bulk", &numbered("logs", 1))
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.json()["error"]["reason"],
        "unable to authenticate user [elastic] for REST request [/_bulk]"
    );
    assert_eq!(server.doc_count(), 0);

    let right = Client::plain(&server).header(
        "authorization",
        &format!("Basic {}", b64("elastic:changeme")),
    );
    assert_eq!(right.get("/").await.status, 200);
    assert_eq!(right.bulk("/_bulk", &numbered("logs", 1)).await.status, 200);
    assert_eq!(server.doc_count(), 1);
    assert_eq!(server.stats().auth_failures, 2);
}

#[tokio::test]
async fn api_key_auth_is_required_and_checked() {
    let server = EsServer::start(ServerOptions {
        auth: Some(Auth::ApiKey {
            id: "VuaCfGcBCdbkQm-e5aOx".to_owned(),
            key: "ui2lp2axTNmsyakw9tvNnw".to_owned(),
        }),
        ..Default::default()
    })
    .await;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode("VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw");
    let right = Client::plain(&server).header("authorization", &format!("ApiKey {encoded}"));
    assert_eq!(right.bulk("/_bulk", &numbered("logs", 1)).await.status, 200);

    let not_encoded = Client::plain(&server).header(
        "authorization",
        "ApiKey VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw",
    );
    assert_eq!(not_encoded.get("/").await.status, 401);
    let as_basic = Client::plain(&server).header("authorization", &format!("Basic {encoded}"));
    assert_eq!(as_basic.get("/").await.status, 401);
    assert_eq!(Client::plain(&server).get("/").await.status, 401);
    assert_eq!(server.doc_count(), 1);
    assert_eq!(server.stats().auth_failures, 3);
}

#[tokio::test]
async fn tls_is_trusted_with_the_ca_and_refused_without_it() {
    let server = EsServer::start(ServerOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    assert_eq!(server.url(), format!("https://127.0.0.1:{}", server.port()));
    let pem = server.ca_pem().expect("CA PEM");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let ca = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM parses");
    let fingerprint: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&ca)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(server.ca_fingerprint_sha256(), Some(fingerprint.clone()));
    assert_eq!(fingerprint.len(), 64);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("CA accepted as a root");
    let trusting = Client::with_roots(&server, roots);
    let reply = trusting.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["version"]["number"], "8.15.0");
    assert_eq!(
        trusting.bulk("/_bulk", &numbered("logs", 2)).await.status,
        200
    );
    assert_eq!(server.doc_count(), 2);

    let untrusting = Client::with_roots(&server, rustls::RootCertStore::empty());
    let error = untrusting
        .try_send("GET", "/", &[], Vec::new())
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("certificate"), "{error}");

    // Plain HTTP to the TLS port gets no answer.
    assert!(Client::plain(&server)
        .try_send("GET", "/", &[], Vec::new())
        .await
        .is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.stats().tls_handshake_failures < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "handshake failures not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn start_blocking_serves_plain_tests_and_stops_on_drop() {
    let server = EsServer::start_blocking(ServerOptions::default());
    let port = server.port();
    let body = numbered("logs", 2);
    let request = format!(
        "POST /_bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"errors\":false"), "{answer}");
    assert_eq!(server.doc_count(), 2);

    drop(server);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after drop"
    );
}

#[tokio::test]
async fn cut_answer_sends_headers_and_half_the_body_after_storing() {
    let server = EsServer::start(ServerOptions::default()).await;
    server.set_faults(Faults {
        cut_answer: true,
        cut_times: 1,
        ..Default::default()
    });
    let body = numbered("logs", 3);
    let port = server.port();
    let raw = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            tcp,
            "POST /_bulk HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).unwrap();
        String::from_utf8(raw).unwrap()
    })
    .await
    .unwrap();
    let (head, got) = raw.split_once("\r\n\r\n").expect("headers were sent");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let promised: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a Content-Length")
        .parse()
        .unwrap();
    assert!(
        !got.is_empty() && got.len() < promised,
        "{} of {promised} bytes",
        got.len()
    );
    assert_eq!(
        server.doc_count(),
        3,
        "the documents are stored before the cut"
    );
    assert_eq!(server.stats().cut_answers, 1);
    let reply = Client::plain(&server)
        .bulk("/_bulk", &numbered("logs", 3))
        .await;
    assert_eq!(reply.status, 200, "only the first answer is cut");
}
