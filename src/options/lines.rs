//! The log-opts that change what a line means in its document: `json.*` (JSON lines into
//! fields, `shipper::json_lines`) and `multiline.*` (lines merged into one document,
//! `shipper::multiline`). Both are off by default and need a switch: `json=true`, and a
//! `multiline.pattern` or `multiline.preset`. Their other options given without the switch are
//! refused, so a user never runs believing a feature is on.

use std::time::Duration;

use regex::bytes::Regex;

use super::{bad, parse_bool, parse_size, spec, OptionError};
use crate::shipper::json_lines::JsonOptions;
use crate::shipper::multiline::{Match, MultilineOptions, PRESETS};

const JSON_OPTIONS: [&str; 5] = [
    "json.keys_under_root",
    "json.overwrite_keys",
    "json.message_key",
    "json.add_error_key",
    "json.ecs",
];

const MULTILINE_OPTIONS: [&str; 5] = [
    "multiline.negate",
    "multiline.match",
    "multiline.max_lines",
    "multiline.max_bytes",
    "multiline.timeout",
];

/// `value(name)` gives the effective text of each option (log-opt, else setting, else default).
pub fn json<'a>(
    value: &impl Fn(&'static str) -> &'a str,
) -> Result<Option<JsonOptions>, OptionError> {
    let flag =
        |name: &'static str| parse_bool(value(name).trim()).ok_or_else(|| bad(name, value(name)));
    if !flag("json")? {
        needs_switch(value, &JSON_OPTIONS, "json=true")?;
        return Ok(None);
    }
    Ok(Some(JsonOptions {
        keys_under_root: flag("json.keys_under_root")?,
        overwrite_keys: flag("json.overwrite_keys")?,
        message_key: Some(value("json.message_key").trim())
            .filter(|k| !k.is_empty())
            .map(str::to_owned),
        add_error_key: flag("json.add_error_key")?,
        ecs: flag("json.ecs")?,
    }))
}

pub fn multiline<'a>(
    value: &impl Fn(&'static str) -> &'a str,
) -> Result<Option<MultilineOptions>, OptionError> {
    let preset = value("multiline.preset").trim();
    let pattern = value("multiline.pattern");
    let pattern = match (preset, pattern.is_empty()) {
        ("", true) => {
            needs_switch(
                value,
                &MULTILINE_OPTIONS,
                "multiline.pattern or multiline.preset",
            )?;
            return Ok(None);
        }
        ("", false) => Regex::new(pattern).map_err(|error| OptionError::Pattern {
            pattern: pattern.chars().take(100).collect(),
            reason: error
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned(),
        })?,
        (name, true) => {
            let (_, _, pattern) = PRESETS
                .iter()
                .find(|(n, _, _)| *n == name)
                .ok_or_else(|| bad("multiline.preset", name))?;
            // The presets are checked by the tests of `multiline`.
            Regex::new(pattern).map_err(|_| bad("multiline.preset", name))?
        }
        (_, false) => return Err(OptionError::PresetAndPattern),
    };
    let how = match value("multiline.match").trim() {
        "after" => Match::After,
        "before" => Match::Before,
        other => return Err(bad("multiline.match", other)),
    };
    let number = |name: &'static str, max: u64| {
        value(name)
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad(name, value(name)))
    };
    let max_bytes = parse_size(value("multiline.max_bytes"))
        .filter(|n| (1 << 10..=10 << 20).contains(n))
        .ok_or_else(|| bad("multiline.max_bytes", value("multiline.max_bytes")))?;
    let timeout = humantime::parse_duration(value("multiline.timeout").trim())
        .ok()
        .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(600)).contains(d))
        .ok_or_else(|| bad("multiline.timeout", value("multiline.timeout")))?;
    Ok(Some(MultilineOptions {
        pattern,
        negate: parse_bool(value("multiline.negate").trim())
            .ok_or_else(|| bad("multiline.negate", value("multiline.negate")))?,
        how,
        max_lines: number("multiline.max_lines", 100_000)? as usize,
        max_bytes: max_bytes as usize,
        timeout,
    }))
}

/// Refuses any of `names` set to other than its default while the feature is off.
fn needs_switch<'a>(
    value: &impl Fn(&'static str) -> &'a str,
    names: &[&'static str],
    switch: &'static str,
) -> Result<(), OptionError> {
    match names.iter().find(|&&n| value(n).trim() != spec(n).default) {
        Some(&name) => Err(OptionError::NeedsSwitch { name, switch }),
        None => Ok(()),
    }
}
