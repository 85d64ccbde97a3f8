//! `dynamic_resources.config_sources`: the sources' own settings (names, URLs, CA files).
//! What the sources serve is checked with the rest of the build, each resource at its origin.

use std::collections::HashSet;
use std::time::Duration;

use super::build::Checker;
use crate::config::ConfigSourceConfig;

/// Plain `http://` is allowed to these hosts only.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a REST source URL: `https://`, or `http://` to a loopback address.
pub(crate) fn check_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = crate::config::shown_url(raw);
    let parsed = reqwest::Url::parse(raw).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or("");
    match parsed.scheme() {
        "https" if !host.is_empty() => Ok(parsed),
        "http" if is_loopback_host(host) => Ok(parsed),
        "http" => Err(format!(
            "`{url}`: plain http is allowed only to a loopback address; use https"
        )),
        "https" => Err(format!("`{url}` has no host")),
        other => Err(format!("`{url}`: unsupported scheme `{other}`")),
    }
}

pub(super) fn check(c: &mut Checker<'_>, sources: &[ConfigSourceConfig]) {
    let mut names = HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        let path = format!("dynamic_resources.config_sources[{i}]");
        if s.name.is_empty() {
            c.err(
                format!("{path}.name"),
                "a config source needs a non-empty name",
            );
        } else if !names.insert(s.name.as_str()) {
            c.err(
                format!("{path}.name"),
                format!("duplicate config source name `{}`", s.name),
            );
        }
        match (&s.path, &s.rest) {
            (Some(_), Some(_)) => c.err(
                path.clone(),
                "a config source has either `path` or `rest`, not both",
            ),
            (None, None) => c.err(path.clone(), "a config source needs `path` or `rest`"),
            (Some(dir), None) => {
                let dir = c.loaded.resolve(dir);
                if !c.offline() && !dir.is_dir() {
                    c.err(
                        format!("{path}.path"),
                        format!("`{}` is not a directory", dir.display()),
                    );
                }
            }
            (None, Some(rest)) => {
                let path = format!("{path}.rest");
                if let Err(e) = check_url(&rest.url) {
                    c.err(format!("{path}.url"), e);
                }
                if rest.poll_interval.get() < Duration::from_millis(100) {
                    c.err(format!("{path}.poll_interval"), "must be at least 100ms");
                }
                if rest.timeout.get().is_zero() {
                    c.err(format!("{path}.timeout"), "must be more than 0s");
                }
                for (name, value) in &rest.headers {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        c.err(
                            format!("{path}.headers.{name}"),
                            format!("`{name}` is not a valid header name"),
                        );
                    } else if http::HeaderValue::from_str(value.expose()).is_err() {
                        // The value is a secret: say what is wrong without it.
                        c.err(
                            format!("{path}.headers.{name}"),
                            "the value has characters that cannot be sent in a header (after `${VAR}` expansion)",
                        );
                    }
                }
                if let (Some(ca), false) = (&rest.ca, c.offline()) {
                    let ca = c.loaded.resolve(ca);
                    if let Err(e) = crate::identity::load_trust_roots(Some(&ca), false) {
                        c.err(format!("{path}.ca"), format!("{}: {e}", ca.display()));
                    }
                }
            }
        }
    }
}
