//! The Elastic Common Schema (ECS) vocabulary that log documents (`shipper::document`) and
//! event documents (`events::document`) share, so one query finds a container's logs and its
//! events: the `agent.*` identity and `ecs.version`, the `@timestamp` format, the split of an
//! image into `container.image.name`/`.tag`, and the dedotting of label keys. It imports
//! nothing of ours.

use serde_json::{json, Map, Value};

/// `agent.type`: what kind of program shipped the document.
pub const AGENT_TYPE: &str = "es-logging-plugin";

/// The ECS version whose field names the documents use.
pub const ECS_VERSION: &str = "8.11.0";

/// The plugin's identity in every document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// `agent.name`: the `name` log-opt, else the caller's default (Beats use the host name).
    pub name: String,
    pub version: String,
    /// `agent.id`: stable for this plugin installation.
    pub id: String,
}

impl Agent {
    /// The `agent` object: `{"type","name","version","id"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "type": AGENT_TYPE,
            "name": self.name,
            "version": self.version,
            "id": self.id,
        })
    }
}

/// RFC 3339 UTC with exactly 9 fractional digits, from unix nanoseconds (negative times too:
/// -1 is `1969-12-31T23:59:59.999999999Z`).
pub fn format_timestamp(time_nano: i64, out: &mut Vec<u8>) {
    // Every i64 nanosecond count (years 1677 to 2262) lies within time's +-9999-year range, so
    // the fallback is never taken; it only spares a panic path.
    let utc = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_nano))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    // The year is positive and four digits long in that range.
    put_digits(&mut text[0..4], utc.year().unsigned_abs());
    put_digits(&mut text[5..7], u32::from(u8::from(utc.month())));
    put_digits(&mut text[8..10], u32::from(utc.day()));
    put_digits(&mut text[11..13], u32::from(utc.hour()));
    put_digits(&mut text[14..16], u32::from(utc.minute()));
    put_digits(&mut text[17..19], u32::from(utc.second()));
    put_digits(&mut text[20..29], utc.nanosecond());
    out.extend_from_slice(&text);
}

/// [`format_timestamp`] as a `String`, for documents built as `serde_json::Value`.
pub fn timestamp(time_nano: i64) -> String {
    let mut out = Vec::with_capacity(30);
    format_timestamp(time_nano, &mut out);
    // format_timestamp writes ASCII digits and punctuation only.
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `value` as decimal into all of `field`, zero-padded on the left.
fn put_digits(field: &mut [u8], mut value: u32) {
    for digit in field.iter_mut().rev() {
        // value % 10 < 10, so the cast keeps it whole.
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Splits the image as the user typed it into ECS `container.image.name` and `.tag`. The tag is
/// what follows the last `:` after the last `/`, so a registry port (`registry:5000/app`) is not
/// a tag. A digest (`@sha256:...`) pins content and is not a tag: it is dropped, and a tag
/// written before it (`app:v1@sha256:...`) is still the tag. An image id (`sha256:<hex>`, when
/// the container was started by id) is all name.
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    let reference = image.split_once('@').map_or(image, |(name, _digest)| name);
    let is_image_id = reference
        .strip_prefix("sha256:")
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if is_image_id {
        return (reference, None);
    }
    let last_part = reference.rfind('/').map_or(0, |slash| slash + 1);
    match reference[last_part..].rfind(':') {
        Some(colon) if last_part + colon + 1 < reference.len() => {
            let colon = last_part + colon;
            (&reference[..colon], Some(&reference[colon + 1..]))
        }
        // `app:` has no tag to show; keep the name clean.
        Some(colon) => (&reference[..last_part + colon], None),
        None => (reference, None),
    }
}

/// Map keys with `.` replaced by `_`, by the rule log documents follow for labels: a key written
/// without dots wins over one that dedots to the same name, then the first in sorted order; empty
/// keys are dropped (Elasticsearch refuses empty field names).
pub fn dedot<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Map<String, Value> {
    let mut sorted: Vec<(&String, &String)> = pairs
        .into_iter()
        .filter(|(key, _)| !key.is_empty())
        .collect();
    // Dotless keys first so they win; sorted within each group so the winner never depends on
    // the map's order.
    sorted.sort_by(|a, b| (a.0.contains('.'), a).cmp(&(b.0.contains('.'), b)));
    let mut out = Map::new();
    for (key, value) in sorted {
        out.entry(key.replace('.', "_"))
            .or_insert_with(|| Value::from(value.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T04:11:00.123456789Z
    const NOV_22_2026: i64 = 1_795_320_660_123_456_789;

    #[test]
    fn timestamps_are_rfc3339_utc_with_nine_digits() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(timestamp(1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(timestamp(-1_000_000_000), "1969-12-31T23:59:59.000000000Z");
        assert_eq!(timestamp(NOV_22_2026), "2026-11-22T04:11:00.123456789Z");
        assert_eq!(
            timestamp(1_700_000_000_100_000_000),
            "2023-11-14T22:13:20.100000000Z"
        );
        assert_eq!(
            timestamp(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(timestamp(i64::MIN), "1677-09-21T00:12:43.145224192Z");
        assert_eq!(timestamp(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        // The output is appended, not replaced.
        let mut out = b"x".to_vec();
        format_timestamp(0, &mut out);
        assert_eq!(out, b"x1970-01-01T00:00:00.000000000Z");
    }
}
