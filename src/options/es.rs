//! The Elasticsearch log-opts parsed into [`EsOptions`] (the value lives in `shipper::config`;
//! it is parsed here, beside the other log-opts, so that the shipper never calls back into
//! `options`).
//!
//! Accepted forms, as the Elastic Logging Plugin takes them: `hosts` is a comma list of URLs or
//! `host[:port]` (scheme http, port 9200 by default, also with https: Beats' rules, see
//! [`parse_hosts`]); `api_key` is `id:key` or already base64;
//! `cloud_id` is `label:base64(host$es_id$kibana_id)` (a port may follow host or es_id, default
//! 443) and becomes `https://<es_id>.<host>:<port>`; `cloud_auth` is `user:password`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use elasticsearch::http::Url;

use super::{bad, parse_size, OptionError};
use crate::shipper::attributes::Attributes;
use crate::shipper::config::{Auth, EsOptions, Secret, Verification};
use crate::shipper::index::IndexTemplate;
use crate::shipper::statics::Statics;

impl EsOptions {
    /// `value(name)` gives the effective text of each option (log-opt, else setting, else
    /// default). `None` when neither hosts nor cloud_id is set.
    /// `dotted` are the `fields.<key>` log-opts as (`<key>`, value).
    pub fn parse<'a, 'b>(
        value: &impl Fn(&'static str) -> &'a str,
        dotted: impl IntoIterator<Item = (&'b str, &'b str)>,
    ) -> Result<Option<Self>, OptionError> {
        let text = |name: &'static str| Some(value(name).trim()).filter(|v| !v.is_empty());
        let hosts = match (text("hosts"), text("cloud_id")) {
            (Some(hosts), _) => parse_hosts(hosts)?,
            (None, Some(cloud_id)) => {
                vec![cloud_url(cloud_id).ok_or_else(|| bad("cloud_id", cloud_id))?]
            }
            (None, None) => return Ok(None),
        };
        // Conflicting or incomplete credentials are refused, never resolved silently: one of
        // them would be sent and the other ignored, and the cluster's 401 would not say which.
        let given = |names: &[&'static str]| names.iter().any(|&n| text(n).is_some());
        if text("password").is_some() && text("user").is_none() {
            return Err(OptionError::Credentials(
                "log-opt password is set without user; set user too (or use api_key)",
            ));
        }
        if given(&["api_key"]) && given(&["user", "password", "cloud_auth"]) {
            return Err(OptionError::Credentials(
                "log-opt api_key excludes user/password and cloud_auth (from log-opts or ES_* \
                 settings); set one kind of credentials",
            ));
        }
        if given(&["cloud_auth"]) && given(&["user", "password"]) {
            return Err(OptionError::Credentials(
                "log-opt cloud_auth excludes user/password (from log-opts or ES_* settings); \
                 set one of them",
            ));
        }
        let auth = match (text("api_key"), text("user"), text("cloud_auth")) {
            (Some(key), _, _) => Auth::ApiKey(Secret::from(encode_api_key(key))),
            (None, Some(user), _) => Auth::Basic {
                user: user.to_owned(),
                password: Secret::from(value("password").to_owned()),
            },
            (None, None, Some(cloud_auth)) => match cloud_auth.split_once(':') {
                Some((user, password)) => Auth::Basic {
                    user: user.to_owned(),
                    password: Secret::from(password.to_owned()),
                },
                None => return Err(bad_secret("cloud_auth")),
            },
            (None, None, None) => Auth::None,
        };
        let index = IndexTemplate::parse(value("index"))?;
        let dead_letter_index = match text("dead_letter_index") {
            Some(name) if name.contains("%{") => {
                return Err(OptionError::DeadLetterIndexPlaceholder(name.to_owned()))
            }
            Some(name) => {
                IndexTemplate::parse(name).map_err(OptionError::DeadLetterIndex)?;
                Some(name.to_owned())
            }
            None => None,
        };
        let duration = |name: &'static str, min: Duration, max: Duration| {
            humantime::parse_duration(value(name).trim())
                .ok()
                .filter(|d| (min..=max).contains(d))
                .ok_or_else(|| bad(name, value(name)))
        };
        let number = |name: &'static str, min: u64, max: u64| {
            value(name)
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| bad(name, value(name)))
        };
        let proxy_url = match text("proxy_url") {
            Some(p) => Some(
                Url::parse(p)
                    .ok()
                    .filter(|u| ["http", "https", "socks5", "socks5h"].contains(&u.scheme()))
                    // A proxy URL may carry `user:password@`: never echo it back.
                    .ok_or_else(|| bad("proxy_url", &strip_credentials(p)))?,
            ),
            None => None,
        };
        let verification = match value("ssl.verification_mode").trim() {
            "full" | "" => Verification::Full,
            "none" => Verification::None,
            other => return Err(bad("ssl.verification_mode", other)),
        };
        let bulk_max_bytes = parse_size(value("bulk_max_bytes"))
            .filter(|n| (64 << 10..=90 << 20).contains(n))
            .ok_or_else(|| bad("bulk_max_bytes", value("bulk_max_bytes")))?
            as usize;
        Ok(Some(Self {
            hosts,
            auth,
            index,
            pipeline: text("pipeline").map(str::to_owned),
            dead_letter_index,
            agent_name: text("name").map(str::to_owned),
            timeout: duration("timeout", Duration::from_secs(1), Duration::from_secs(3600))?,
            backoff_init: duration(
                "backoff_init",
                Duration::from_millis(1),
                Duration::from_secs(600),
            )?,
            backoff_max: duration(
                "backoff_max",
                Duration::from_millis(1),
                Duration::from_secs(3600),
            )?,
            proxy_url,
            ca_file: text("ssl.certificate_authorities").map(PathBuf::from),
            ca_fingerprint: match text("ssl.ca_trusted_fingerprint") {
                Some(pin) => Some(
                    crate::shipper::fingerprint::parse(pin)
                        .ok_or_else(|| bad("ssl.ca_trusted_fingerprint", pin))?,
                ),
                None => None,
            },
            verification,
            bulk_max_bytes,
            flush_interval: duration(
                "flush_interval",
                Duration::from_millis(10),
                Duration::from_secs(60),
            )?,
            workers: number("workers", 1, 16)? as usize,
            compression_level: number("compression_level", 0, 9)? as u32,
            statics: Statics::parse(value("tags"), value("fields"), dotted)?,
            attributes: Attributes::default(),
            json: None,
            multiline: None,
        }))
    }
}

fn bad_secret(name: &'static str) -> OptionError {
    // Never echo a credential back: docker run output and the plugin log would show it.
    bad(name, "<hidden>")
}

/// `hosts` as Beats reads `output.elasticsearch.hosts` (libbeat's `MakeURL` with port 9200):
/// a URL or `host[:port]`; no scheme means http; **no port means 9200, whatever the scheme**
/// (`https://es1` is `https://es1:9200`, not 443); a path is a prefix of every API path; an
/// IPv6 address may come without brackets when it has no port.
fn parse_hosts(text: &str) -> Result<Vec<Url>, OptionError> {
    let mut hosts = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let with_scheme = if item.contains("://") {
            item.to_owned()
        } else if item.matches(':').count() > 1 && !item.contains('[') {
            format!("http://[{item}]")
        } else {
            format!("http://{item}")
        };
        let mut url = Url::parse(&with_scheme)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| bad("hosts", &strip_credentials(item)))?;
        // `Url` reads an explicit :443 on https (or :80 on http) as no port at all: only a
        // port the text does not give is defaulted.
        if url.port().is_none() && !has_port(item) {
            let _ = url.set_port(Some(9200));
        }
        hosts.push(url);
    }
    if hosts.is_empty() {
        return Err(bad("hosts", text));
    }
    Ok(hosts)
}

/// Whether a `hosts` item names its port (`es:443`, `https://es:443/x`, `[::1]:9300`).
fn has_port(item: &str) -> bool {
    let rest = item.split_once("://").map_or(item, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = match host_port.rfind(']') {
        Some(end) => &host_port[end + 1..],
        None if host_port.matches(':').count() > 1 => "",
        None => host_port,
    };
    after_host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty())
}

/// An item of `hosts` (or a proxy URL) as it may be shown in an error: without a
/// `user:password@` part.
pub(super) fn strip_credentials(item: &str) -> String {
    let Some(at) = item.rfind('@') else {
        return item.to_owned();
    };
    match item.find("://").filter(|&scheme| scheme < at) {
        Some(scheme) => format!("{}{}", &item[..scheme + 3], &item[at + 1..]),
        // No scheme before the `@` (`user:password@host`, or `user:password@host://...`).
        None => item[at + 1..].to_owned(),
    }
}

fn encode_api_key(key: &str) -> String {
    // `id:key` is encoded here; anything without a colon is taken as already encoded.
    if key.contains(':') {
        base64::engine::general_purpose::STANDARD.encode(key)
    } else {
        key.to_owned()
    }
}

/// `label:base64(host$es_id$kibana_id)` -> `https://es_id.host:port`.
fn cloud_url(cloud_id: &str) -> Option<Url> {
    let encoded = cloud_id.rsplit(':').next()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let mut parts = decoded.split('$');
    let host_part = parts.next()?;
    let es_part = parts.next()?;
    let (host, host_port) = split_port(host_part);
    let (es_id, es_port) = split_port(es_part);
    if host.is_empty() || es_id.is_empty() {
        return None;
    }
    let port = es_port.or(host_port).unwrap_or(443);
    Url::parse(&format!("https://{es_id}.{host}:{port}")).ok()
}

fn split_port(text: &str) -> (&str, Option<u16>) {
    match text.rsplit_once(':') {
        Some((name, port)) => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (text, None),
        },
        None => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<Option<EsOptions>, OptionError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        let value = |name: &'static str| -> &str {
            map.get(name).copied().unwrap_or_else(|| {
                crate::options::OPTIONS
                    .iter()
                    .find(|o| o.name == name)
                    .map(|o| o.default)
                    .unwrap_or("")
            })
        };
        EsOptions::parse(&value, [])
    }

    /// Regression: a refused `proxy_url` was quoted whole in the error, `user:password@`
    /// included, so the password reached `docker run`'s output and the plugin log.
    #[test]
    fn a_refused_proxy_url_or_host_is_quoted_without_its_credentials() {
        for (name, value) in [
            ("proxy_url", "ftp://proxyuser:s3cret-proxy-pass@proxy:21"),
            ("hosts", "ftp://esuser:s3cret-proxy-pass@es:9200"),
            ("hosts", "esuser:s3cret-proxy-pass@es://x"),
        ] {
            let err = parse(&[("hosts", "es"), (name, value)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("log-opt {name}")), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn no_hosts_means_local_copy_only() {
        assert_eq!(parse(&[]).unwrap(), None);
    }

    #[test]
    fn hosts_default_to_http_and_9200() {
        let es = parse(&[("hosts", "es1, https://es2:9243,http://es3")])
            .unwrap()
            .unwrap();
        let urls: Vec<String> = es.hosts.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            urls,
            ["http://es1:9200/", "https://es2:9243/", "http://es3:9200/"]
        );
        assert_eq!(es.workers, 2);
        assert_eq!(es.bulk_max_bytes, 5 << 20);
        assert_eq!(es.timeout, Duration::from_secs(90));
    }

    /// `hosts` as Beats reads it (its documentation of `output.elasticsearch.hosts`: "a URL or
    /// IP:PORT ... If no port is specified, 9200 is used"; a path is a prefix of every call).
    #[test]
    fn hosts_follow_the_beats_rules() {
        for (given, url) in [
            ("192.15.3.2", "http://192.15.3.2:9200/"),
            ("http://192.15.3.2", "http://192.15.3.2:9200/"),
            ("https://es.found.io:9230", "https://es.found.io:9230/"),
            ("192.24.3.2:9300", "http://192.24.3.2:9300/"),
            // Regression: https without a port meant 443; to Beats it is 9200.
            ("https://es1", "https://es1:9200/"),
            ("HTTPS://es1", "https://es1:9200/"),
            ("https://es1:443", "https://es1:443/"),
            ("http://es1:80", "http://es1:80/"),
            ("es1:443", "http://es1:443/"),
            ("http://es1/prefix", "http://es1:9200/prefix"),
            ("https://es1:9243/es/", "https://es1:9243/es/"),
            ("localhost", "http://localhost:9200/"),
            ("2001:db8::1", "http://[2001:db8::1]:9200/"),
            ("[2001:db8::1]:9300", "http://[2001:db8::1]:9300/"),
            ("https://[::1]", "https://[::1]:9200/"),
            ("http://elastic:pw@es1", "http://es1:9200/"),
        ] {
            let es = parse(&[("hosts", given)]).unwrap().unwrap();
            // Where requests go: the port a default hides in `Url`'s own form is spelled out.
            let shown: Vec<String> = es
                .hosts
                .iter()
                .map(|u| {
                    let host = u.host_str().unwrap_or_default();
                    let port = u.port_or_known_default().unwrap_or_default();
                    format!("{}://{host}:{port}{}", u.scheme(), u.path())
                })
                .collect();
            assert_eq!(shown, [url], "hosts={given}");
        }
    }

    /// Regression: `password` without `user` sent no authentication; `api_key` silently won
    /// over `user`/`password`; `cloud_auth` was ignored when `user` was set.
    #[test]
    fn conflicting_or_incomplete_credentials_are_refused_by_name() {
        for (pairs, names) in [
            (vec![("password", "pw")], vec!["password", "user"]),
            (
                vec![("api_key", "id:key"), ("user", "u")],
                vec!["api_key", "user"],
            ),
            (
                vec![("api_key", "id:key"), ("password", "pw"), ("user", "u")],
                vec!["api_key"],
            ),
            (
                vec![("api_key", "id:key"), ("cloud_auth", "u:p")],
                vec!["api_key", "cloud_auth"],
            ),
            (
                vec![("cloud_auth", "u:p"), ("user", "u"), ("password", "pw")],
                vec!["cloud_auth", "user"],
            ),
        ] {
            let mut all = vec![("hosts", "es")];
            all.extend(pairs.iter().copied());
            let err = parse(&all).unwrap_err().to_string();
            for name in names {
                assert!(err.contains(name), "{pairs:?}: {err}");
            }
            assert!(
                !err.contains("pw") && !err.contains("id:key"),
                "a secret echoed: {err}"
            );
        }
        // One kind each is fine; `user` alone is a user with an empty password.
        for pairs in [
            vec![("user", "u"), ("password", "pw")],
            vec![("user", "u")],
            vec![("api_key", "id:key")],
            vec![("cloud_auth", "u:p")],
        ] {
            let mut all = vec![("hosts", "es")];
            all.extend(pairs.iter().copied());
            assert!(parse(&all).is_ok(), "{pairs:?}");
        }
    }

    #[test]
    fn api_key_is_encoded_once() {
        let es = parse(&[("hosts", "es"), ("api_key", "id:secret")])
            .unwrap()
            .unwrap();
        assert_eq!(
            es.auth,
            Auth::ApiKey(Secret::from("aWQ6c2VjcmV0".to_owned()))
        );
        let es = parse(&[("hosts", "es"), ("api_key", "aWQ6c2VjcmV0")])
            .unwrap()
            .unwrap();
        assert_eq!(
            es.auth,
            Auth::ApiKey(Secret::from("aWQ6c2VjcmV0".to_owned()))
        );
    }

    #[test]
    fn cloud_id_becomes_the_es_url() {
        // label:base64("us-east-1.aws.found.io$abc123$kib456")
        let id = format!(
            "my-deploy:{}",
            base64::engine::general_purpose::STANDARD
                .encode("us-east-1.aws.found.io$abc123$kib456")
        );
        assert_eq!(
            cloud_url(&id).unwrap().as_str(),
            "https://abc123.us-east-1.aws.found.io/"
        );
        let id = base64::engine::general_purpose::STANDARD.encode("host.io:9243$es1$kb");
        assert_eq!(
            cloud_url(&id).unwrap().as_str(),
            "https://es1.host.io:9243/"
        );
        let id = base64::engine::general_purpose::STANDARD.encode("host.io$es1:9244$kb");
        assert_eq!(
            cloud_url(&id).unwrap().as_str(),
            "https://es1.host.io:9244/"
        );
        assert!(cloud_url("garbage!").is_none());
    }

    #[test]
    fn bad_values_name_the_option_and_never_show_secrets() {
        let err = parse(&[("hosts", "ftp://x")]).unwrap_err().to_string();
        assert!(err.contains("log-opt hosts"), "{err}");
        let err = parse(&[("hosts", "https://elastic:hunter2@/")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse(&[("hosts", "es"), ("cloud_auth", "nocolon-hunter2")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        for (name, v) in [
            ("workers", "0"),
            ("timeout", "forever"),
            ("compression_level", "10"),
            ("ssl.verification_mode", "certificate"),
            ("bulk_max_bytes", "1g"),
        ] {
            let err = parse(&[("hosts", "es"), (name, v)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let es = parse(&[("hosts", "es"), ("user", "u"), ("password", "hunter2")])
            .unwrap()
            .unwrap();
        assert!(!format!("{es:?}").contains("hunter2"));
    }

    /// Regression: hosts and proxy_url are URLs, and Url's Debug shows a `user:password@`.
    #[test]
    fn credentials_in_urls_do_not_show_in_debug() {
        let es = parse(&[
            ("hosts", "http://elastic:hunter2@es1:9200,es2"),
            ("proxy_url", "http://proxyuser:swordfish@proxy:3128"),
        ])
        .unwrap()
        .unwrap();
        let shown = format!("{es:?}");
        for secret in ["hunter2", "swordfish", "proxyuser", "elastic:"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("http://<redacted>@es1:9200/") && shown.contains("http://es2:9200/"),
            "{shown}"
        );
        assert!(shown.contains("http://<redacted>@proxy:3128/"), "{shown}");
    }

    /// Regression: an invalid proxy_url was echoed whole, credentials included, into the
    /// StartLogging error (`docker run`'s output) and the plugin log.
    #[test]
    fn a_bad_proxy_url_is_refused_without_its_credentials() {
        let err = parse(&[("hosts", "es"), ("proxy_url", "ftp://u:swordfish@proxy:21")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log-opt proxy_url") && !err.contains("swordfish"),
            "{err}"
        );
    }
}
