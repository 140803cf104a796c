//! The `_bulk` answer classification (src/shipper/bulk.rs). Two modes: any status and any
//! body, or a well-formed answer built from chosen item statuses. Properties:
//! - the verdict follows the table at the top of bulk.rs: 413 is TooLarge, 401/403
//!   Unauthorized, 408/429/5xx RetryAll, and a per-item verdict only for a 2xx answer with one
//!   item per document sent, never more or fewer;
//! - each item's verdict follows its status: 2xx written, 409 duplicate, 429/5xx retried, any
//!   other a permanent rejection (dead-lettered);
//! - every reason is bounded (they go into log lines and dead-letter files), however large the
//!   body.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use es_logging_plugin::shipper::bulk::{classify, ItemVerdict, RequestVerdict};
use libfuzzer_sys::fuzz_target;

const MAX_REASON: usize = 1024;

#[derive(Debug, Arbitrary)]
struct Item {
    action: u8,
    status: u16,
    error_type: Option<String>,
    reason: String,
}

fn bounded(reason: &str) {
    assert!(
        reason.len() <= MAX_REASON,
        "a reason of {} bytes: {reason:.200}",
        reason.len()
    );
}

fn check(status: u16, body: &[u8], items: usize) -> RequestVerdict {
    let verdict = classify(status, body, items);
    match &verdict {
        RequestVerdict::Items(verdicts) => {
            assert!(
                (200..=299).contains(&status),
                "items judged on HTTP {status}"
            );
            assert_eq!(verdicts.len(), items, "one verdict per document");
            for v in verdicts {
                if let ItemVerdict::Retry { reason, .. }
                | ItemVerdict::NotReady { reason, .. }
                | ItemVerdict::Unknown { reason, .. }
                | ItemVerdict::Reject { reason, .. } = v
                {
                    bounded(reason);
                }
            }
        }
        RequestVerdict::TooLarge => assert_eq!(status, 413),
        RequestVerdict::Unauthorized { status: s, reason } => {
            assert!(matches!(status, 401 | 403) && *s == status);
            bounded(reason);
        }
        RequestVerdict::RetryAll { reason } => {
            assert!(
                matches!(status, 200..=299 | 408 | 429 | 500..=599),
                "RetryAll on {status}"
            );
            bounded(reason);
        }
        RequestVerdict::Refused { status: s, reason } => {
            assert!(
                *s == status
                    && !matches!(status, 200..=299 | 401 | 403 | 408 | 413 | 429 | 500..=599)
            );
            bounded(reason);
        }
    }
    verdict
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mode) = u8::arbitrary(&mut u) else {
        return;
    };
    if mode & 1 == 0 {
        let status = u16::arbitrary(&mut u).unwrap_or(200);
        let items = u8::arbitrary(&mut u).unwrap_or(0) as usize;
        check(status, u.take_rest(), items);
        return;
    }
    let Ok(items) = Vec::<Item>::arbitrary(&mut u) else {
        return;
    };
    let answer = serde_json::json!({
        "errors": items.iter().any(|i| i.status >= 300),
        "items": items.iter().map(|i| {
            let action = ["create", "index", "delete", "update"][i.action as usize % 4];
            let mut item = serde_json::json!({"status": i.status});
            if let Some(kind) = &i.error_type {
                item["error"] = serde_json::json!({"type": kind, "reason": i.reason});
            }
            serde_json::json!({ action: item })
        }).collect::<Vec<_>>(),
    });
    let body = serde_json::to_vec(&answer).expect("JSON");
    let RequestVerdict::Items(verdicts) = check(200, &body, items.len()) else {
        panic!("a well-formed answer not judged per item");
    };
    for (item, verdict) in items.iter().zip(&verdicts) {
        // The table in bulk.rs: written and duplicate by status alone; a refusal keeps its
        // status; only a 4xx other than 409 and 429 can be dead-lettered (a document fault),
        // and a passing retry is only ever a 429 or a 5xx.
        let ok = match (item.status, verdict) {
            (200..=299, ItemVerdict::Written) => true,
            (409, ItemVerdict::Duplicate) => true,
            (s, ItemVerdict::Retry { status, .. }) => *status == s && matches!(s, 429 | 500..=599),
            (s, ItemVerdict::NotReady { status, .. } | ItemVerdict::Unknown { status, .. }) => {
                *status == s && !matches!(s, 200..=299 | 409)
            }
            (s, ItemVerdict::Reject { status, .. }) => {
                *status == s && matches!(s, 400..=499) && !matches!(s, 409 | 429)
            }
            _ => false,
        };
        assert!(ok, "item {} judged {verdict:?}", item.status);
    }
});
