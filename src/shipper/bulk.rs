//! The `_bulk` exchange: the request body (NDJSON, gzip when asked) and what each answer means.
//!
//! Classification is a pure function of (HTTP status, body), following the table in
//! elasticsearch.md:
//!
//! | answer | verdict |
//! |---|---|
//! | item 200/201 | written |
//! | item 409 on `create` | already there (a replay): acknowledged, counted as duplicate |
//! | item 429, item 5xx | retry that item with backoff |
//! | item other 4xx | permanent: dead-letter it, never block |
//! | whole 413 | split the request in halves (one document alone: dead-letter) |
//! | whole 429/5xx/408, timeout, connection error | retry all with backoff, next host |
//! | whole 401/403 | credentials: log loudly, keep the data, retry slowly |
//! | other whole 4xx | the request itself is refused: log loudly, keep the data, retry slowly |
//!
//! The request asks for `filter_path=errors,items.*.error,items.*.status`, so a healthy answer
//! is a few bytes per item.

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
    Retry { status: u16, reason: String },
    Reject { status: u16, reason: String },
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

fn classify_item(status: u16, error: Option<&serde_json::Value>) -> ItemVerdict {
    let reason = || error.map(describe_error).unwrap_or_default();
    match status {
        200..=299 => ItemVerdict::Written,
        409 => ItemVerdict::Duplicate,
        429 | 500..=599 => ItemVerdict::Retry {
            status,
            reason: reason(),
        },
        _ => ItemVerdict::Reject {
            status,
            reason: reason(),
        },
    }
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
            r#"{{"items":[{{"create":{{"status":400,"error":{{"type":"t","reason":"{reason}"}}}}}}]}}"#
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
