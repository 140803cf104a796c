//! The engine's LogEntry message (proto/entry.proto), as prost generates it.
//!
//! The same bytes travel three ways: in frames on the FIFO from the engine, as record payloads in
//! the local store, and in frames of ReadLogs answers. Unknown fields (Docker 29.5's `attrs`) are
//! skipped by prost's decoder.

include!(concat!(env!("OUT_DIR"), "/docker.logdriver.rs"));

/// The only two `source` values the engine shows; ReadLogs entries with any other source are
/// dropped silently by the engine.
pub const STDOUT: &str = "stdout";
pub const STDERR: &str = "stderr";

impl LogEntry {
    /// True when this entry ends a line: a complete line, or the last fragment of a split one.
    /// ReadLogs appends a newline exactly to these.
    pub fn ends_line(&self) -> bool {
        !self.partial
            || self
                .partial_log_metadata
                .as_ref()
                .is_some_and(|meta| meta.last)
    }
}

/// The `time_nano` of an encoded LogEntry, read without building the entry: `None` when the
/// payload is anything but a well-formed LogEntry, and then only [`prost::Message::decode`]
/// may judge it.
///
/// Ingest needs nothing else from the engine's frames (the payload itself is what gets stored),
/// and at 100-byte lines the full decode, with its `String` for `source` and the reference-counted
/// `line`, was a fifth of the plugin's CPU. This walks the fields with prost's own wire
/// functions and checks what prost's decode checks (keys, the wire type of each known field,
/// lengths, UTF-8 of `source`, the nested metadata, unknown fields skipped), so it never accepts
/// a payload the full decode refuses; the last `time_nano` wins, as in prost.
pub fn time_of(payload: &[u8]) -> Option<i64> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut buf = payload;
    let mut time = 0i64;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        match (tag, wire_type) {
            (2, WireType::Varint) => time = decode_varint(&mut buf).ok()? as i64,
            (4, WireType::Varint) => {
                decode_varint(&mut buf).ok()?;
            }
            (1 | 3 | 5, WireType::LengthDelimited) => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let value = buf.get(..len)?;
                buf = &buf[len..];
                let valid = match tag {
                    // Nearly always one of the two the engine writes: no UTF-8 scan then.
                    1 => {
                        value == STDOUT.as_bytes()
                            || value == STDERR.as_bytes()
                            || std::str::from_utf8(value).is_ok()
                    }
                    5 => <PartialLogEntryMetadata as prost::Message>::decode(value).is_ok(),
                    _ => true,
                };
                if !valid {
                    return None;
                }
            }
            (1..=5, _) => return None,
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?,
        }
    }
    Some(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn entry() -> impl Strategy<Value = LogEntry> {
        (
            prop_oneof![Just(String::new()), Just(STDOUT.to_owned()), ".{0,8}"],
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
            proptest::option::of((any::<bool>(), ".{0,8}", any::<i32>())),
        )
            .prop_map(|(source, time_nano, line, partial, meta)| LogEntry {
                source,
                time_nano,
                line: line.into(),
                partial,
                partial_log_metadata: meta.map(|(last, id, ordinal)| PartialLogEntryMetadata {
                    last,
                    id,
                    ordinal,
                }),
            })
    }

    proptest! {
        #[test]
        fn time_of_reads_every_entry_the_engine_can_encode(entry in entry()) {
            prop_assert_eq!(time_of(&entry.encode_to_vec()), Some(entry.time_nano));
        }

        /// Whatever the bytes: accepted only when prost's decode accepts them too, with the same
        /// time. Mutations of real entries reach the interesting cases (bad UTF-8, wrong wire
        /// types, cut lengths) far more often than random bytes.
        #[test]
        fn time_of_never_accepts_what_prost_refuses(
            entry in entry(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            tail in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let mut bytes = entry.encode_to_vec();
            bytes.extend_from_slice(&tail);
            if !bytes.is_empty() {
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let full = LogEntry::decode(bytes.as_slice());
            match time_of(&bytes) {
                Some(time) => {
                    let full = full.map_err(|e| TestCaseError::fail(format!("prost refuses {bytes:?}: {e}")))?;
                    prop_assert_eq!(time, full.time_nano);
                }
                None => prop_assert!(full.is_err(), "time_of refused what prost takes: {:?}", bytes),
            }
        }
    }

    #[test]
    fn time_of_skips_unknown_fields_as_prost_does() {
        // Docker 29.5 adds field 6 (`attrs`, a repeated message).
        let mut bytes = LogEntry {
            source: STDERR.into(),
            time_nano: 42,
            ..LogEntry::default()
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x32, 0x03, 0x0a, 0x01, b'k']);
        assert_eq!(time_of(&bytes), Some(42));
        assert_eq!(LogEntry::decode(bytes.as_slice()).unwrap().time_nano, 42);
    }
}
