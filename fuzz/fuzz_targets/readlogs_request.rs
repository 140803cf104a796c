//! The ReadLogs request (src/protocol.rs, src/container_id.rs, src/readlogs.rs) as the plugin
//! takes it: a JSON body, then the container id and the Since/Until/Tail config. Two modes: any
//! bytes as the body, or any field values in a well-formed body. Properties:
//! - a refusal names its subject (the container id, or `Config.Since` / `Until` / `Tail`) and
//!   is bounded, whatever the size of what it quotes;
//! - an accepted id is 64 lowercase hex digits (so it can never name a path);
//! - an accepted config means what the engine means: Tail -1 is all, N >= 0 the last N; an
//!   empty or zero time is unset; a time that is set is the instant the text gives.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use es_logging_plugin::protocol::{ReadConfig, ReadLogs};
use es_logging_plugin::container_id::ContainerId;
use es_logging_plugin::readlogs::ReadRequest;
use libfuzzer_sys::fuzz_target;

/// The id and times are quoted in part (80 and 64 characters) with Debug escapes, up to 10
/// bytes a character (`\u{10ffff}`): bounded, whatever the size of the request.
const MAX_ERROR: usize = 1024;

#[derive(Debug, Arbitrary)]
struct Fields {
    id: String,
    since: String,
    until: String,
    tail: i64,
    follow: bool,
}

fn check(request: &ReadLogs) {
    match ContainerId::parse(&request.info.container_id) {
        Ok(id) => {
            let id = id.as_str();
            assert_eq!(id, request.info.container_id);
            assert!(id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("container id "), "{message}");
            assert!(message.len() <= MAX_ERROR, "{} bytes", message.len());
        }
    }
    let config = &request.config;
    match ReadRequest::parse(config) {
        Ok(read) => {
            match read.tail {
                None => assert_eq!(config.tail, -1),
                Some(n) => assert_eq!(i64::try_from(n).ok(), Some(config.tail)),
            }
            assert_eq!(read.follow, config.follow);
            for (text, time) in [(&config.since, read.since), (&config.until, read.until)] {
                if text.is_empty() {
                    assert_eq!(time, None);
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.len() <= MAX_ERROR, "{} bytes", message.len());
            let named = ["Config.Since", "Config.Until", "Config.Tail"]
                .iter()
                .any(|field| message.contains(field));
            assert!(named, "a refusal naming no field: {message}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Any body; the API refuses what does not parse, with serde's bounded message.
        if let Ok(request) = serde_json::from_slice::<ReadLogs>(rest) {
            check(&request);
        }
        return;
    }
    let Ok(fields) = Fields::arbitrary(&mut Unstructured::new(rest)) else {
        return;
    };
    let body = serde_json::json!({
        "Info": {"ContainerID": fields.id, "Config": null},
        "Config": {"Since": fields.since, "Until": fields.until, "Tail": fields.tail, "Follow": fields.follow},
    });
    let request: ReadLogs =
        serde_json::from_value(body).expect("a body shaped as the engine's is accepted");
    assert_eq!(
        request.config,
        ReadConfig {
            since: fields.since,
            until: fields.until,
            tail: fields.tail,
            follow: fields.follow,
        }
    );
    check(&request);
});
