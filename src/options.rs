//! The log-opts a container may set (`--log-opt KEY=VALUE`), validated in StartLogging.
//!
//! Every option of ours is in [`OPTIONS`], with its default and what it accepts: the table is
//! the single source for parsing, error messages and the README. The engine passes more than the
//! user's options in the same map (its own `mode`, `max-buffer-size`, `cache-*` keys and any
//! daemon-wide default log-opts meant for other drivers): those are accepted and ignored. A key
//! that is plainly ours but wrong (a bad value, or a near-miss spelling of one of our names) is
//! refused with a message naming it and what is accepted, so `docker run` fails clearly instead of
//! running with a setting the user did not get.

use std::collections::HashMap;

use crate::store::StoreLimits;

/// One log-opt of ours.
pub struct OptionSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub accepts: &'static str,
    pub meaning: &'static str,
}

pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "max-size",
        default: "20m",
        accepts: "a size: a whole number with an optional k, m or g suffix (powers of 1024)",
        meaning: "size at which the local copy rotates to a new file",
    },
    OptionSpec {
        name: "max-file",
        default: "5",
        accepts: "a whole number from 1 to 1000",
        meaning: "files of the local copy kept for `docker logs` (the active one included)",
    },
    OptionSpec {
        name: "compress",
        default: "true",
        accepts: "true or false",
        meaning: "gzip rotated files of the local copy",
    },
];

/// Keys the engine itself puts into the map; never ours to judge.
const ENGINE_KEYS: &[&str] = &["mode", "max-buffer-size"];
const ENGINE_PREFIXES: &[&str] = &["cache-"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("log-opt {name}: {value:?} is not valid; it takes {accepts}")]
    BadValue {
        name: &'static str,
        value: String,
        accepts: &'static str,
    },
    #[error("log-opt {given:?} is not an option of this driver; did you mean {suggestion:?}? (options: {all})")]
    Misspelled {
        given: String,
        suggestion: &'static str,
        all: String,
    },
    #[error("log-opt compress=true needs max-file of 2 or more (a single file is never rotated into a compressed one)")]
    CompressSingleFile,
}

/// Everything the log-opts of one container decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    pub store: StoreLimits,
    /// Keys neither ours nor the engine's: kept to say in the log that they were ignored.
    pub ignored: Vec<String>,
}

impl LogOptions {
    /// Parses the `Config` map of StartLogging or ReadLogs (`None` when the engine sent null).
    pub fn parse(config: Option<&HashMap<String, String>>) -> Result<Self, OptionError> {
        let empty = HashMap::new();
        let config = config.unwrap_or(&empty);
        let value = |name: &'static str| -> &str {
            config
                .get(name)
                .map(String::as_str)
                .unwrap_or_else(|| spec(name).default)
        };
        let max_size =
            parse_size(value("max-size")).ok_or_else(|| bad("max-size", value("max-size")))?;
        let max_file = value("max-file")
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad("max-file", value("max-file")))?;
        let compress =
            parse_bool(value("compress")).ok_or_else(|| bad("compress", value("compress")))?;
        // The engine refuses compress with one file only when the user asked for compress; our
        // default is compress=true, so only an explicit compress=true with max-file=1 is an error.
        if compress && max_file == 1 && config.contains_key("compress") {
            return Err(OptionError::CompressSingleFile);
        }
        let mut ignored = Vec::new();
        let mut keys: Vec<&String> = config.keys().collect();
        keys.sort();
        for key in keys {
            if OPTIONS.iter().any(|o| o.name == key) || is_engine_key(key) {
                continue;
            }
            if let Some(suggestion) = near_miss(key) {
                return Err(OptionError::Misspelled {
                    given: key.clone(),
                    suggestion,
                    all: OPTIONS
                        .iter()
                        .map(|o| o.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            ignored.push(key.clone());
        }
        Ok(Self {
            store: StoreLimits {
                max_size,
                max_file,
                compress: compress && max_file > 1,
            },
            ignored,
        })
    }
}

fn spec(name: &str) -> &'static OptionSpec {
    OPTIONS
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("option {name} missing from OPTIONS"))
}

fn bad(name: &'static str, value: &str) -> OptionError {
    OptionError::BadValue {
        name: spec(name).name,
        value: value.chars().take(100).collect(),
        accepts: spec(name).accepts,
    }
}

fn is_engine_key(key: &str) -> bool {
    ENGINE_KEYS.contains(&key) || ENGINE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// One of our names within two edits of `key` (case and `_`/`-` ignored): a typo of ours rather
/// than another driver's option.
fn near_miss(key: &str) -> Option<&'static str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let key = norm(key);
    OPTIONS
        .iter()
        .map(|o| (o.name, edit_distance(&key, &norm(o.name))))
        .filter(|&(name, d)| d <= 2 && d < name.len() / 2 + 1)
        .min_by_key(|&(_, d)| d)
        .map(|(name, _)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Sizes as the engine's drivers take them: a whole number with an optional k, m or g suffix
/// (optionally followed by b), powers of 1024. Zero is refused: a store must hold a record.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => t.split_at(at),
        None => (t, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return None,
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&n| n > 0)
}

/// Booleans as Go's strconv.ParseBool takes them, which is what users of the engine's drivers
/// write.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Result<LogOptions, OptionError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LogOptions::parse(Some(&map))
    }

    #[test]
    fn defaults_are_the_local_drivers() {
        let o = LogOptions::parse(None).unwrap();
        assert_eq!(
            o.store,
            StoreLimits {
                max_size: 20 << 20,
                max_file: 5,
                compress: true
            }
        );
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("10MB"), Some(10 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("123"), Some(123));
        for bad in ["", "12q", "-1", "0", "1.5m", "m", "99999999999g"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_value_names_the_option_and_what_it_accepts() {
        let err = opts(&[("max-size", "12q")]).unwrap_err().to_string();
        assert!(
            err.contains("max-size") && err.contains("12q") && err.contains("k, m or g"),
            "{err}"
        );
        let err = opts(&[("max-file", "0")]).unwrap_err().to_string();
        assert!(
            err.contains("max-file") && err.contains("1 to 1000"),
            "{err}"
        );
        let err = opts(&[("compress", "yes")]).unwrap_err().to_string();
        assert!(
            err.contains("compress") && err.contains("true or false"),
            "{err}"
        );
    }

    #[test]
    fn misspelled_option_of_ours_is_refused_with_a_suggestion() {
        let err = opts(&[("max-sise", "1m")]).unwrap_err().to_string();
        assert!(
            err.contains("max-sise") && err.contains("max-size"),
            "{err}"
        );
        assert!(opts(&[("max_file", "2")]).is_err());
    }

    #[test]
    fn engine_keys_and_other_drivers_options_are_ignored() {
        let o = opts(&[
            ("mode", "non-blocking"),
            ("max-buffer-size", "4m"),
            ("cache-disabled", "true"),
            ("cache-max-size", "1m"),
            ("tag", "{{.Name}}"),
            ("labels", "a,b"),
            ("env", "X"),
            ("syslog-address", "udp://x"),
        ])
        .unwrap();
        assert_eq!(o.ignored, vec!["env", "labels", "syslog-address", "tag"]);
    }

    #[test]
    fn compress_with_a_single_file_is_an_error_only_when_asked_for() {
        assert_eq!(
            opts(&[("max-file", "1"), ("compress", "true")]),
            Err(OptionError::CompressSingleFile)
        );
        let o = opts(&[("max-file", "1")]).unwrap();
        assert!(!o.store.compress);
    }
}
