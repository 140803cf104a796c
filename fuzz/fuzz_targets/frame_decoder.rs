//! The FIFO's frame decoder (src/frame.rs) on any byte stream, fed in any chunking, against a
//! model of the format. Properties:
//! - it never reads past the buffer it is given (`consumed` <= its length) and every payload it
//!   hands out lies inside that buffer and is at most the cap;
//! - fed in chunks the way the FIFO reader feeds it (the unconsumed rest first, newer bytes
//!   behind), it yields exactly the frames and oversized counts of the model, in order, and
//!   leaves exactly the model's incomplete tail;
//! - a payload that decodes as a LogEntry survives the ReadLogs encoding (src/readlogs.rs):
//!   decoded again it is the same entry, with the newline the engine expects on ends of lines;
//! - the ingest's quick read of a payload's time (`entry::time_of`) accepts only what prost's
//!   decode accepts, with the same time.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use es_logging_plugin::entry::{time_of, LogEntry};
use es_logging_plugin::frame::{FrameDecoder, PREFIX};
use es_logging_plugin::readlogs::encode_frame;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Debug, PartialEq)]
struct Model {
    frames: Vec<Vec<u8>>,
    oversized: u64,
    /// Bytes of an incomplete frame at the end (0 while an oversized frame is still skipped).
    tail: usize,
}

/// The format, read the simplest way: the whole stream at once.
fn model(stream: &[u8], cap: usize) -> Model {
    let mut out = Model {
        frames: Vec::new(),
        oversized: 0,
        tail: 0,
    };
    let mut at = 0usize;
    while stream.len() - at >= PREFIX {
        let len = u32::from_be_bytes(stream[at..at + PREFIX].try_into().unwrap()) as usize;
        if len > cap {
            out.oversized += 1;
            at = at.saturating_add(PREFIX + len);
            if at >= stream.len() {
                return out;
            }
            continue;
        }
        if stream.len() - at - PREFIX < len {
            break;
        }
        out.frames
            .push(stream[at + PREFIX..at + PREFIX + len].to_vec());
        at += PREFIX + len;
    }
    out.tail = stream.len() - at;
    out
}

fn check_roundtrip(payload: &[u8]) {
    let full = LogEntry::decode(payload);
    match (time_of(payload), &full) {
        (Some(time), Ok(entry)) => assert_eq!(time, entry.time_nano, "time_of's time"),
        (Some(_), Err(error)) => panic!("time_of took what prost refuses: {error}"),
        (None, _) => {}
    }
    let Ok(entry) = full else {
        return;
    };
    let mut out = BytesMut::new();
    encode_frame(&mut out, &entry);
    let len = u32::from_be_bytes(out[..PREFIX].try_into().unwrap()) as usize;
    assert_eq!(len, out.len() - PREFIX, "ReadLogs frame length prefix");
    let back = LogEntry::decode(&out[PREFIX..]).expect("a ReadLogs frame is a LogEntry");
    let mut want = entry.clone();
    if entry.ends_line() {
        let mut line = entry.line.to_vec();
        line.push(b'\n');
        want.line = line.into();
    }
    assert_eq!(back, want, "ReadLogs frame round trip");
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let cap = u16::arbitrary(&mut u).unwrap_or(0) as usize;
    let chunks: Vec<u8> = Vec::arbitrary(&mut u).unwrap_or_default();
    let stream = u.take_rest();

    let want = model(stream, cap);
    let mut decoder = FrameDecoder::new(cap);
    let mut pending: Vec<u8> = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut oversized = 0;
    let mut fed = 0;
    let mut sizes = chunks.iter().map(|&c| c as usize + 1).cycle();
    while fed < stream.len() {
        let n = sizes.next().unwrap_or(stream.len()).min(stream.len() - fed);
        pending.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let range = pending.as_ptr_range();
        let done = decoder.decode(&pending, |payload| {
            let inside = payload.is_empty()
                || (range.start <= payload.as_ptr() && payload.as_ptr_range().end <= range.end);
            assert!(inside, "a payload outside the buffer");
            assert!(payload.len() <= cap, "a payload over the cap");
            frames.push(payload.to_vec());
        });
        assert!(done.consumed <= pending.len(), "consumed past the buffer");
        oversized += done.oversized;
        pending.drain(..done.consumed);
    }
    for frame in &frames {
        check_roundtrip(frame);
    }
    let got = Model {
        frames,
        oversized,
        tail: pending.len(),
    };
    assert_eq!(got, want);
});
