//! The `_bulk` exchange: the request body (NDJSON, gzip when asked) and what each answer means.
//!
//! Classification is a pure function of (HTTP status, body), following the table below (the
//! facts behind it: docs/elasticsearch.md). Each item answer is judged first by what it says
//! about the destination, then about the document: an answer that every document would get
//! until an operator fixes the cluster is never proof that this document is bad. The first row
//! that matches decides: a 5xx is passing whatever it names (a `cluster_block_exception` 503
//! while a master is elected), while a not-ready type decides before a 429 (a flood-stage
//! `read_only_allow_delete` block answers 429 and waits for an operator to free disk).
//!
//! | answer | verdict |
//! |---|---|
//! | item 200/201 | written |
//! | item 409 on `create` | already there (a replay): acknowledged, counted as duplicate |
//! | item 5xx | retry that item with backoff |
//! | item 401/403 (`security_exception`: the role or API key lacks `create_doc`/`auto_configure`), `cluster_block_exception` (a write block, e.g. `index.blocks.write`, `read_only_allow_delete`), `index_not_found_exception` (auto-create off), `index_closed_exception`, an error naming a missing ingest pipeline (`pipeline with id [..] does not exist`) or an alias without a write index | the destination is not ready: keep it, retry with backoff, ERROR once per episode (see `not_ready`) |
//! | item 429 (`es_rejected_execution_exception`) | back-pressure: retry that item with backoff |
//! | item 400 `document_parsing_exception`, `mapper_parsing_exception`, `strict_dynamic_mapping_exception`, `mapper_exception`, `illegal_argument_exception` (about the document) | the document itself can never go in: dead-letter it, never block |
//! | any other item answer | unknown, not proof the document is bad: keep it, retry slowly, log the reason |
//! | whole 413 | split the request in halves (one document alone: dead-letter) |
//! | whole 429/5xx/408, timeout, connection error | retry all with backoff, next host |
//! | whole 401/403 | credentials: log loudly, keep the data, retry slowly |
//! | other whole 4xx | the request itself is refused: log loudly, keep the data, retry slowly |
//!
//! The request asks for `filter_path=errors,items.*.error,items.*.status`, so a healthy answer
//! is a few bytes per item.

use std::fmt;
use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Deserialize;

/// The answer fields the shipper reads; everything else is filtered out by the server.
pub const FILTER_PATH: &str = "errors,items.*.error,items.*.status";
/// Longest reason kept from an answer, in bytes: enough for any real `type: reason`.
const MAX_REASON: usize = 300;

/// What became of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemVerdict {
    Written,
    Duplicate,
    /// A passing refusal (back-pressure, a shard or node failure): retry with backoff.
    Retry {
        status: u16,
        reason: String,
    },
    /// The destination is not ready for it (privileges, a write block, no index, a missing
    /// pipeline): every document to that index fails alike until an operator fixes the
    /// cluster. Keep it and retry with backoff; never dead-letter.
    NotReady {
        status: u16,
        reason: String,
    },
    /// An answer this table does not know: keep it and retry slowly.
    Unknown {
        status: u16,
        reason: String,
    },
    /// The document itself can never go in: dead-letter it.
    Reject {
        status: u16,
        reason: String,
    },
}

impl fmt::Display for ItemVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemVerdict::Written => f.write_str("written"),
            ItemVerdict::Duplicate => f.write_str("already indexed (409)"),
            ItemVerdict::Retry { status, reason } => {
                write!(f, "HTTP {status}: {reason} (passing; retried)")
            }
            ItemVerdict::NotReady { status, reason } => {
                write!(
                    f,
                    "HTTP {status}: {reason} (the destination is not ready; kept and retried)"
                )
            }
            ItemVerdict::Unknown { status, reason } => {
                write!(f, "HTTP {status}: {reason} (an answer this plugin does not know; kept and retried)")
            }
            ItemVerdict::Reject { status, reason } => {
                write!(f, "HTTP {status}: {reason} (the document can never go in)")
            }
        }
    }
}

/// What became of a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict {
    /// One verdict per document, in request order.
    Items(Vec<ItemVerdict>),
    /// Nothing was written (or we cannot know): send it all again later.
    RetryAll { reason: String },
    /// Too large for the server: split.
    TooLarge,
    /// Credentials refused: retry slowly, keep everything.
    Unauthorized { status: u16, reason: String },
    /// The request itself refused (a bad pipeline, a bad parameter): retry slowly.
    Refused { status: u16, reason: String },
}

impl fmt::Display for RequestVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestVerdict::Items(items) => {
                let written = items
                    .iter()
                    .filter(|v| matches!(v, ItemVerdict::Written | ItemVerdict::Duplicate))
                    .count();
                write!(f, "{written} of {} documents accepted", items.len())?;
                match items
                    .iter()
                    .find(|v| !matches!(v, ItemVerdict::Written | ItemVerdict::Duplicate))
                {
                    Some(first) => write!(f, "; first refusal: {first}"),
                    None => Ok(()),
                }
            }
            RequestVerdict::RetryAll { reason } => f.write_str(reason),
            RequestVerdict::TooLarge => {
                f.write_str("HTTP 413: the request is larger than the server accepts")
            }
            RequestVerdict::Unauthorized { status, reason } => {
                write!(f, "HTTP {status}: credentials refused: {reason}")
            }
            RequestVerdict::Refused { status, reason } => {
                write!(f, "HTTP {status}: request refused: {reason}")
            }
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, ItemAnswer>>,
}

#[derive(Deserialize)]
struct ItemAnswer {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: serde_json::Value,
}

/// Judges an answer to a request of `items` documents.
pub fn classify(status: u16, body: &[u8], items: usize) -> RequestVerdict {
    match status {
        200..=299 => classify_items(body, items),
        413 => RequestVerdict::TooLarge,
        401 | 403 => RequestVerdict::Unauthorized {
            status,
            reason: error_reason(body),
        },
        408 | 429 | 500..=599 => RequestVerdict::RetryAll {
            reason: format!("HTTP {status}: {}", error_reason(body)),
        },
        _ => RequestVerdict::Refused {
            status,
            reason: error_reason(body),
        },
    }
}

fn classify_items(body: &[u8], items: usize) -> RequestVerdict {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(error) => {
            return RequestVerdict::RetryAll {
                reason: format!("the bulk answer is not the JSON Elasticsearch sends ({error})"),
            }
        }
    };
    if answer.items.len() != items {
        // Without a verdict per document nothing can be acknowledged; ids make the resend
        // harmless for what was written.
        return RequestVerdict::RetryAll {
            reason: format!(
                "the bulk answer has {} items for {items} documents",
                answer.items.len()
            ),
        };
    }
    RequestVerdict::Items(
        answer
            .items
            .into_iter()
            .map(|item| match item.into_values().next() {
                Some(item) => classify_item(item.status, item.error.as_ref()),
                None => ItemVerdict::Retry {
                    status: 0,
                    reason: "an empty item in the bulk answer".into(),
                },
            })
            .collect(),
    )
}

/// Error types Elasticsearch gives a document it can never take, whatever the cluster's state:
/// its source does not fit the mapping (`document_parsing_exception` from 8.8 on,
/// `mapper_parsing_exception` before and in OpenSearch), a field a strict mapping does not
/// know, a value a field or analyzer refuses (`illegal_argument_exception`: an immense term, a
/// bad date; also what an ingest processor raises about the document).
const DOCUMENT_FAULTS: &[&str] = &[
    "document_parsing_exception",
    "mapper_parsing_exception",
    "strict_dynamic_mapping_exception",
    "mapper_exception",
    "illegal_argument_exception",
];

/// Error types that say the destination is not ready for any document: its privileges, a
/// block, a missing or closed index. Judged before the status (a flood-stage
/// `read_only_allow_delete` block answers 429).
const NOT_READY: &[&str] = &[
    "security_exception",
    "cluster_block_exception",
    "index_not_found_exception",
    "index_closed_exception",
];

/// Judges one item answer. Pure: its table is the module's, tested with canned answers.
pub fn classify_item(status: u16, error: Option<&serde_json::Value>) -> ItemVerdict {
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let text = error
        .and_then(|e| e.get("reason"))
        .and_then(|r| r.as_str())
        .unwrap_or("");
    let reason = || error.map(describe_error).unwrap_or_default();
    match status {
        200..=299 => ItemVerdict::Written,
        409 => ItemVerdict::Duplicate,
        // A shard or node failing is passing, whatever it names (a 503 block while the
        // cluster has no master lifts by itself).
        500..=599 => ItemVerdict::Retry {
            status,
            reason: reason(),
        },
        _ if status == 401
            || status == 403
            || NOT_READY.contains(&kind)
            || names_missing_target(text) =>
        {
            ItemVerdict::NotReady {
                status,
                reason: reason(),
            }
        }
        429 => ItemVerdict::Retry {
            status,
            reason: reason(),
        },
        400 if DOCUMENT_FAULTS.contains(&kind) => ItemVerdict::Reject {
            status,
            reason: reason(),
        },
        _ => ItemVerdict::Unknown {
            status,
            reason: reason(),
        },
    }
}

/// An error reason naming a piece of the destination that is missing rather than something
/// wrong with the document: an ingest pipeline that does not exist (the `pipeline` option, or
/// an index's default or final pipeline), an alias without a write index. Elasticsearch gives
/// both as `illegal_argument_exception`, the type of many document faults too.
fn names_missing_target(reason: &str) -> bool {
    (reason.starts_with("pipeline with id [") && reason.contains("] does not exist"))
        || reason.starts_with("no write index is defined for alias [")
}

/// The `_index` of one NDJSON bulk item (its action line, then its source): the index an
/// answer about that item is about (the answer itself is filtered down to status and error).
pub fn action_index(item: &[u8]) -> Option<String> {
    let action = item.split(|&b| b == b'\n').next()?;
    let action: std::collections::HashMap<String, serde_json::Value> =
        serde_json::from_slice(action).ok()?;
    action
        .into_values()
        .next()?
        .get("_index")?
        .as_str()
        .map(str::to_owned)
}

/// `type: reason` of an Elasticsearch error object, bounded: reasons can quote documents.
fn describe_error(error: &serde_json::Value) -> String {
    let kind = error
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("error");
    let reason = error.get("reason").and_then(|r| r.as_str()).unwrap_or("");
    bounded(format!("{kind}: {reason}"))
}

/// `text` cut to at most [`MAX_REASON`] bytes (and an ellipsis): reasons come from the server
/// and go into log lines and dead-letter records.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let cut = (0..=MAX_REASON)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn error_reason(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(answer) => match answer.error {
            // A proxy's or an old version's `{"error":"<text>"}`: as long as the server likes.
            serde_json::Value::String(text) => bounded(text),
            other => describe_error(&other),
        },
        Err(_) if body.is_empty() => "empty answer".into(),
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            format!("answer not JSON: {text}")
        }
    }
}

/// The body as sent: gzip at `level` (0 = none).
pub fn encode_body(ndjson: &[u8], level: u32) -> std::io::Result<Bytes> {
    if level == 0 {
        return Ok(Bytes::copy_from_slice(ndjson));
    }
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(ndjson.len() / 4),
        Compression::new(level),
    );
    encoder.write_all(ndjson)?;
    Ok(Bytes::from(encoder.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_answers_follow_the_table() {
        let body = br#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"busy"}}},
            {"create":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"x"}}},
            {"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"bad field"}}}]}"#;
        let RequestVerdict::Items(items) = classify(200, body, 5) else {
            panic!()
        };
        assert_eq!(items[0], ItemVerdict::Written);
        assert_eq!(items[1], ItemVerdict::Duplicate);
        assert!(matches!(items[2], ItemVerdict::Retry { status: 429, .. }));
        assert!(matches!(items[3], ItemVerdict::Retry { status: 503, .. }));
        assert_eq!(
            items[4],
            ItemVerdict::Reject {
                status: 400,
                reason: "document_parsing_exception: bad field".into()
            }
        );
    }

    /// Which verdict each kind of item answer gets, as Elasticsearch 8 (and 7, and OpenSearch)
    /// words it. The kinds: written, duplicate, retry, not ready, unknown, reject.
    const ITEM_TABLE: &[(&str, &str, &str)] = &[
        ("created", r#"{"status":201}"#, "written"),
        ("overwritten", r#"{"status":200}"#, "written"),
        (
            "replayed create",
            r#"{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[x]: version conflict, document already exists (current version [1])"}}"#,
            "duplicate",
        ),
        (
            "back-pressure",
            r#"{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of primary operation"}}"#,
            "retry",
        ),
        (
            "shard down",
            r#"{"status":503,"error":{"type":"unavailable_shards_exception","reason":"[logs][0] primary shard is not active"}}"#,
            "retry",
        ),
        (
            "node failure",
            r#"{"status":500,"error":{"type":"node_not_connected_exception","reason":"[n1] Node not connected"}}"#,
            "retry",
        ),
        (
            "no master (a passing block)",
            r#"{"status":503,"error":{"type":"cluster_block_exception","reason":"blocked by: [SERVICE_UNAVAILABLE/2/no master];"}}"#,
            "retry",
        ),
        (
            "role lacks create_doc",
            r#"{"status":403,"error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized for user [x] with effective roles [y] on indices [z], this action is granted by the index privileges [create_doc,create,index,write,all]"}}"#,
            "not ready",
        ),
        (
            "role lacks auto_configure",
            r#"{"status":403,"error":{"type":"security_exception","reason":"action [indices:admin/auto_create] is unauthorized for user [x] with effective roles [y] on indices [logs-docker-default], this action is granted by the index privileges [auto_configure,create_index,manage,all]"}}"#,
            "not ready",
        ),
        (
            "item 401",
            r#"{"status":401,"error":{"type":"security_exception","reason":"unable to authenticate user [x]"}}"#,
            "not ready",
        ),
        (
            "a 403 of another type",
            r#"{"status":403,"error":{"type":"forbidden_exception","reason":"no"}}"#,
            "not ready",
        ),
        (
            "write block",
            r#"{"status":403,"error":{"type":"cluster_block_exception","reason":"index [logs] blocked by: [FORBIDDEN/8/index write (api)];"}}"#,
            "not ready",
        ),
        (
            "flood-stage block",
            r#"{"status":429,"error":{"type":"cluster_block_exception","reason":"index [logs] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}"#,
            "not ready",
        ),
        (
            "auto-create off",
            r#"{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [logs]","index":"logs"}}"#,
            "not ready",
        ),
        (
            "no data stream template",
            r#"{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [logs-x-y] and [require_data_stream] request flag is [true] and [logs-x-y] is not a data stream"}}"#,
            "not ready",
        ),
        (
            "closed index",
            r#"{"status":400,"error":{"type":"index_closed_exception","reason":"closed","index":"logs"}}"#,
            "not ready",
        ),
        (
            "missing pipeline",
            r#"{"status":400,"error":{"type":"illegal_argument_exception","reason":"pipeline with id [docker-logs] does not exist"}}"#,
            "not ready",
        ),
        (
            "alias without a write index",
            r#"{"status":400,"error":{"type":"illegal_argument_exception","reason":"no write index is defined for alias [logs]. The write index may be explicitly disabled using is_write_index=false or the alias points to multiple indices without one being designated as a write index"}}"#,
            "not ready",
        ),
        (
            "mapping conflict (8.8+)",
            r#"{"status":400,"error":{"type":"document_parsing_exception","reason":"[1:42] failed to parse field [message] of type [long] in document with id 'x'"}}"#,
            "reject",
        ),
        (
            "mapping conflict (7.x, OpenSearch)",
            r#"{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n] of type [long]"}}"#,
            "reject",
        ),
        (
            "strict mapping",
            r#"{"status":400,"error":{"type":"strict_dynamic_mapping_exception","reason":"[1:2] mapping set to strict, dynamic introduction of [x] within [_doc] is not allowed"}}"#,
            "reject",
        ),
        (
            "an immense term",
            r#"{"status":400,"error":{"type":"illegal_argument_exception","reason":"Document contains at least one immense term in field=\"message\" (whose UTF8 encoding is longer than the max length 32766)"}}"#,
            "reject",
        ),
        (
            "too many fields",
            r#"{"status":400,"error":{"type":"illegal_argument_exception","reason":"Limit of total fields [1000] has been exceeded while adding new fields [3]"}}"#,
            "reject",
        ),
        (
            "a 400 of an unknown type",
            r#"{"status":400,"error":{"type":"some_new_exception","reason":"who knows"}}"#,
            "unknown",
        ),
        (
            "a 404 that is not about the index",
            r#"{"status":404,"error":{"type":"resource_not_found_exception","reason":"gone"}}"#,
            "unknown",
        ),
        (
            "an unusual status",
            r#"{"status":418,"error":{"type":"teapot_exception","reason":"short and stout"}}"#,
            "unknown",
        ),
        ("an error without a type", r#"{"status":400}"#, "unknown"),
    ];

    fn kind(verdict: &ItemVerdict) -> &'static str {
        match verdict {
            ItemVerdict::Written => "written",
            ItemVerdict::Duplicate => "duplicate",
            ItemVerdict::Retry { .. } => "retry",
            ItemVerdict::NotReady { .. } => "not ready",
            ItemVerdict::Unknown { .. } => "unknown",
            ItemVerdict::Reject { .. } => "reject",
        }
    }

    /// Regression: every item answer other than 2xx/409/429/5xx was dead-lettered, so a role
    /// without `create_doc`, a write block, auto-create off or a pipeline typo sent every
    /// document to the dead-letter file and moved the checkpoint past it.
    #[test]
    fn item_answers_are_classified_by_the_table() {
        for (case, raw, expected) in ITEM_TABLE {
            let item: ItemAnswer = serde_json::from_str(raw).unwrap();
            let verdict = classify_item(item.status, item.error.as_ref());
            assert_eq!(kind(&verdict), *expected, "{case}: {verdict}");
            // The same answer inside a whole bulk answer gets the same verdict.
            let body = format!(
                r#"{{"errors":true,"items":[{{"create":{item}}}]}}"#,
                item = raw
            );
            let RequestVerdict::Items(items) = classify(200, body.as_bytes(), 1) else {
                panic!("{case}")
            };
            assert_eq!(items, vec![verdict], "{case}");
        }
    }

    #[test]
    fn verdicts_read_well_for_an_operator() {
        let verdict = classify_item(
            403,
            Some(
                &serde_json::json!({"type": "cluster_block_exception", "reason": "index [logs] blocked by: [FORBIDDEN/8/index write (api)];"}),
            ),
        );
        assert_eq!(
            verdict.to_string(),
            "HTTP 403: cluster_block_exception: index [logs] blocked by: [FORBIDDEN/8/index write (api)]; (the destination is not ready; kept and retried)"
        );
        let whole = classify(200, br#"{"items":[{"create":{"status":201}},{"create":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [x]"}}}]}"#, 2);
        assert_eq!(
            whole.to_string(),
            "1 of 2 documents accepted; first refusal: HTTP 404: index_not_found_exception: no such index [x] (the destination is not ready; kept and retried)"
        );
        assert_eq!(
            classify(401, br#"{"error":{"type":"security_exception","reason":"missing authentication credentials"}}"#, 1).to_string(),
            "HTTP 401: credentials refused: security_exception: missing authentication credentials"
        );
    }

    #[test]
    fn the_index_of_an_item_comes_from_its_action_line() {
        assert_eq!(
            action_index(b"{\"create\":{\"_index\":\"logs-docker-default\",\"_id\":\"a\"}}\n{\"message\":\"x\"}\n"),
            Some("logs-docker-default".into())
        );
        assert_eq!(action_index(b"not json\n{}\n"), None);
        assert_eq!(action_index(b"{\"create\":{}}\n{}\n"), None);
    }

    #[test]
    fn filtered_success_answer_is_all_written() {
        let RequestVerdict::Items(items) = classify(
            200,
            br#"{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#,
            2,
        ) else {
            panic!()
        };
        assert_eq!(items, vec![ItemVerdict::Written, ItemVerdict::Written]);
    }

    #[test]
    fn whole_request_answers_follow_the_table() {
        assert_eq!(classify(413, b"", 10), RequestVerdict::TooLarge);
        assert!(matches!(classify(429, br#"{"error":{"type":"es_rejected_execution_exception","reason":"queue full"},"status":429}"#, 1), RequestVerdict::RetryAll { .. }));
        assert!(matches!(
            classify(503, b"", 1),
            RequestVerdict::RetryAll { .. }
        ));
        assert!(matches!(
            classify(502, b"<html>bad gateway</html>", 1),
            RequestVerdict::RetryAll { .. }
        ));
        match classify(401, br#"{"error":{"type":"security_exception","reason":"missing authentication credentials"},"status":401}"#, 1) {
            RequestVerdict::Unauthorized { status: 401, reason } => assert!(reason.contains("security_exception"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(400, br#"{"error":"no handler"}"#, 1),
            RequestVerdict::Refused { status: 400, .. }
        ));
    }

    #[test]
    fn truncated_or_mismatched_answers_retry_everything() {
        assert!(matches!(
            classify(200, br#"{"errors":false,"items":[{"create":{"sta"#, 1),
            RequestVerdict::RetryAll { .. }
        ));
        assert!(matches!(
            classify(200, b"not json", 1),
            RequestVerdict::RetryAll { .. }
        ));
        assert!(matches!(
            classify(200, br#"{"errors":false,"items":[]}"#, 3),
            RequestVerdict::RetryAll { .. }
        ));
    }

    #[test]
    fn long_reasons_are_bounded() {
        let reason = "x".repeat(5000);
        let body = format!(
            r#"{{"items":[{{"create":{{"status":400,"error":{{"type":"document_parsing_exception","reason":"{reason}"}}}}}}]}}"#
        );
        let RequestVerdict::Items(items) = classify(200, body.as_bytes(), 1) else {
            panic!()
        };
        let ItemVerdict::Reject { reason, .. } = &items[0] else {
            panic!()
        };
        assert!(reason.len() < 400);
    }

    /// Regression (found by the bulk_answer fuzz target): an error given as a plain string
    /// (`{"error":"<text>"}`) was kept whole in the reason, however long, and went whole into
    /// every retry warning.
    #[test]
    fn a_long_string_error_in_a_whole_answer_is_bounded() {
        let body = format!(r#"{{"error":"{}"}}"#, "é".repeat(5000));
        for status in [401, 400, 503] {
            let reason = match classify(status, body.as_bytes(), 1) {
                RequestVerdict::Unauthorized { reason, .. }
                | RequestVerdict::Refused { reason, .. }
                | RequestVerdict::RetryAll { reason } => reason,
                other => panic!("{other:?}"),
            };
            assert!(reason.len() < 400, "HTTP {status}: {} bytes", reason.len());
            assert!(reason.ends_with('…'));
        }
    }

    #[test]
    fn gzip_body_round_trips() {
        let body = encode_body(b"{\"a\":1}\n", 1).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
            .unwrap();
        assert_eq!(out, "{\"a\":1}\n");
        assert_eq!(&encode_body(b"x\n", 0).unwrap()[..], b"x\n");
    }
}
