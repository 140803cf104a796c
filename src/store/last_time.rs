//! The gzip header's extra field of a compressed segment: `{"LastTime":"<RFC 3339 nanos>"}`, the
//! time of the segment's last entry, as the engine's `local` driver writes it. Go's JSON decoder
//! matches keys case-insensitively and its encoder trims trailing zeros of the fraction, so the
//! parser accepts any key case and 0 to 9 fraction digits.

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// The extra field for a segment whose last entry has `time_nano`.
pub(crate) fn header_extra(time_nano: i64) -> Vec<u8> {
    serde_json::json!({ "LastTime": format_rfc3339_nanos(time_nano) })
        .to_string()
        .into_bytes()
}

/// The LastTime in an extra field, if it holds one.
pub(crate) fn parse_header_extra(extra: &[u8]) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_slice(extra).ok()?;
    let (_, time) = value
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("LastTime"))?;
    parse_rfc3339(time.as_str()?)
}

/// UTC with all nine fraction digits: `2026-11-22T04:11:00.123456789Z`.
pub(crate) fn format_rfc3339_nanos(time_nano: i64) -> String {
    let seconds = time_nano.div_euclid(NANOS_PER_SECOND);
    let nanos = time_nano.rem_euclid(NANOS_PER_SECOND);
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let in_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// Unix nanoseconds of an RFC 3339 time (`Z` or a numeric offset), if it is one and fits.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = bytes.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators
        .iter()
        .any(|&(at, sep)| bytes.get(at) != Some(&sep))
        || !matches!(bytes.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60 is a leap second; Go folds it into the next minute the same way.
    if second > 60 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if bytes.get(at) == Some(&b'.') {
        let digits = bytes[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = number(at + 1..at + 1 + digits)? * 10i64.pow(9 - digits as u32);
        at += 1 + digits;
    }
    let offset_seconds = match bytes.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), ..] if bytes.len() == at + 6 && bytes[at + 3] == b':' => {
            let offset = number(at + 1..at + 3)? * 3600 + number(at + 4..at + 6)? * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset_seconds;
    // i128: the whole seconds of i64::MIN nanoseconds times 1e9 is below i64::MIN on its own.
    i64::try_from(i128::from(seconds) * i128::from(NANOS_PER_SECOND) + i128::from(nanos)).ok()
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Howard Hinnant's `days_from_civil`, the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_times() {
        assert_eq!(format_rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_rfc3339_nanos(1_795_320_660_123_456_789),
            "2026-11-22T04:11:00.123456789Z"
        );
        assert_eq!(format_rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            format_rfc3339_nanos(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn parses_what_go_writes() {
        assert_eq!(
            parse_rfc3339("2026-11-22T04:11:00.123456789Z"),
            Some(1_795_320_660_123_456_789)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T04:11:00.1234Z"),
            Some(1_795_320_660_123_400_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T05:11:00+01:00"),
            Some(1_795_320_660_000_000_000)
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-13-22T04:11:00Z",
            "2026-11-22T04:11:00.Z",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            parse_header_extra(br#"{"lastTime":"1970-01-01T00:00:01Z"}"#),
            Some(NANOS_PER_SECOND)
        );
        assert_eq!(parse_header_extra(b"not json"), None);
    }

    proptest! {
        #[test]
        fn round_trips(time_nano in any::<i64>()) {
            let text = format_rfc3339_nanos(time_nano);
            prop_assert_eq!(parse_rfc3339(&text), Some(time_nano));
            prop_assert_eq!(parse_header_extra(&header_extra(time_nano)), Some(time_nano));
        }
    }
}
