//! The log-opt parser (src/options/, with the Elasticsearch options of
//! src/options/es.rs and the `index` template of src/shipper/index.rs) on any map of
//! options, keys mostly ours. Properties:
//! - an error names a log-opt: one of ours, or the key given (a near-miss spelling), and it is
//!   bounded (outside text is quoted only in part), never the whole of a huge value;
//! - an error never repeats a credential (password, api_key, cloud_auth, or the password of a
//!   `user:password@` in hosts or proxy_url);
//! - what is accepted is within the documented ranges, and only keys that are neither ours
//!   nor the engine's are reported as ignored.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use es_logging_plugin::options::{LogOptions, OPTIONS};
use libfuzzer_sys::fuzz_target;

/// Longest error accepted: the option's name, what it accepts, and a bounded quote.
const MAX_ERROR: usize = 2048;

#[derive(Debug, Arbitrary)]
enum Key {
    /// One of ours, by its index in OPTIONS.
    Ours(u8),
    /// The engine's own keys and other drivers'.
    Engine(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    options: Vec<(Key, String)>,
    /// Host-wide defaults (plugin settings) for some of ours.
    defaults: Vec<(u8, String)>,
    null_config: bool,
}

/// The options holding credentials, and the text planted in each of them.
const SECRETS: [&str; 3] = ["password", "api_key", "cloud_auth"];
const MARKER: &str = "Zq7CredentialMarker7qZ";

const ENGINE: &[&str] = &[
    "mode",
    "max-buffer-size",
    "cache-disabled",
    "tag",
    "labels",
    "env",
];

fn name(i: u8) -> &'static str {
    OPTIONS[i as usize % OPTIONS.len()].name
}

/// The `password` of `user:password@` in hosts and proxy_url values, where it is long enough
/// to be told from other text and appears nowhere else in the options.
fn userinfo_passwords(
    config: &HashMap<String, String>,
    defaults: &HashMap<String, String>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for key in ["hosts", "proxy_url"] {
        let Some(value) = config.get(key).or_else(|| defaults.get(key)) else {
            continue;
        };
        for item in value.split(',') {
            // `scheme://user:password@host`: the scheme and host are shown, and may hold the
            // same text by chance.
            let Some((before, host)) = item.rsplit_once('@') else {
                continue;
            };
            let (scheme, userinfo) = match before.find("://") {
                Some(at) => before.split_at(at + 3),
                None => ("", before),
            };
            let shown = format!("{scheme}{host}");
            let Some((_, password)) = userinfo.split_once(':') else {
                continue;
            };
            let password = password.trim();
            let count = |map: &HashMap<String, String>| {
                map.values()
                    .filter(|v| format!("{v}{v:?}").contains(password))
                    .count()
            };
            let in_a_key = config.keys().any(|k| k.contains(password));
            let in_host = format!("{shown}{shown:?}").contains(password);
            if password.len() >= 12 && count(config) + count(defaults) == 1 && !in_a_key && !in_host
            {
                out.push((key, password.to_owned()));
            }
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let mut config: HashMap<String, String> = input
        .options
        .into_iter()
        .map(|(key, value)| {
            let key = match key {
                Key::Ours(i) => name(i).to_owned(),
                Key::Engine(i) => ENGINE[i as usize % ENGINE.len()].to_owned(),
                Key::Any(text) => text,
            };
            (key, value)
        })
        .collect();
    let mut defaults: HashMap<String, String> = input
        .defaults
        .into_iter()
        .map(|(i, value)| (name(i).to_owned(), value))
        .collect();
    for secret in SECRETS {
        for map in [&mut config, &mut defaults] {
            if let Some(value) = map.get_mut(secret) {
                value.push_str(MARKER);
            }
        }
    }
    let parsed = LogOptions::parse((!input.null_config).then_some(&config), &defaults);
    match parsed {
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.len() <= MAX_ERROR,
                "an error of {} bytes: {message:.300}",
                message.len()
            );
            let names_ours = OPTIONS
                .iter()
                .any(|o| message.contains(&format!("log-opt {}", o.name)));
            let names_given = config
                .keys()
                .any(|k| message.contains(&format!("log-opt {k:?}")));
            assert!(
                names_ours || names_given,
                "an error naming no option: {message}"
            );
            for (secret, value) in userinfo_passwords(&config, &defaults) {
                assert!(
                    !message.contains(&value),
                    "the password in {secret} in an error: {message}"
                );
            }
            // Every credential carries MARKER (planted before parsing); it never shows unless
            // the fuzzer also put it into another option.
            let planted = config.iter().chain(defaults.iter()).any(|(k, v)| {
                !SECRETS.contains(&k.as_str()) && format!("{k}{v:?}").contains(MARKER)
            });
            assert!(
                planted || !message.contains(MARKER),
                "a credential in an error: {message}"
            );
        }
        Ok(options) => {
            assert!(options.store.max_size > 0);
            assert!((1..=1000).contains(&options.store.max_file));
            assert!(!options.store.compress || options.store.max_file > 1);
            for key in &options.ignored {
                assert!(config.contains_key(key));
                assert!(OPTIONS.iter().all(|o| o.name != key), "{key} is ours");
            }
            if let Some(es) = options.es {
                assert!(!es.hosts.is_empty());
                assert!((1..=16).contains(&es.workers));
                assert!(es.compression_level <= 9);
                assert!((64 << 10..=90 << 20).contains(&es.bulk_max_bytes));
            }
        }
    }
});
