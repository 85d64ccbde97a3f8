//! `dynamic_resources.config_sources`: where listeners and clusters come from besides the config
//! file, and the documents those sources serve.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ClusterConfig, ConfigError, HumanDuration, ListenerConfig, SourceMap};
use crate::secret::Secret;

/// One named source: exactly one of `path` and `rest`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSourceConfig {
    /// Unique name, shown in `/config_dump`, metrics, logs and errors.
    pub name: String,
    /// A directory: every `*.yaml`, `*.yml` and `*.json` file in it (not in subdirectories;
    /// names starting with `.` are skipped) is one `{listeners: [...], clusters: [...]}`
    /// document. Watched, including a Kubernetes ConfigMap's `..data` symlink swap. Relative to
    /// the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// An HTTP(S) endpoint polled for `{"version_info": "...", "resources": {"listeners": [...],
    /// "clusters": [...]}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestSourceConfig>,
}

/// A REST source.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestSourceConfig {
    /// `https://` (verified with the system roots plus `ca`), or `http://` to a loopback address.
    /// Its query's values and any user info are secrets: `<redacted>` wherever it is shown.
    #[serde(serialize_with = "serialize_shown_url")]
    pub url: String,
    /// How often the document is asked for (each wait is jittered by up to a tenth). A failed
    /// fetch is retried sooner, backing off from 1s up to this interval.
    #[serde(default = "default_rest_poll_interval")]
    pub poll_interval: HumanDuration,
    /// Request headers, e.g. `authorization: "Bearer ${CONFIG_TOKEN}"`. Values are secrets:
    /// never logged, `<redacted>` in `/config_dump`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// A PEM CA bundle trusted in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// How long one fetch may take, connect to last byte.
    #[serde(default = "default_rest_timeout")]
    pub timeout: HumanDuration,
    /// Report each answer's fate back in the next poll's query string, as Envoy's REST xDS
    /// does: `version_info` (the version in force from this source) and, after a rejected
    /// answer, `error_detail` (why, first line, at most 512 bytes).
    #[serde(default)]
    pub report_status: bool,
}

/// `url` as logs, errors, `/config_dump` and `bindgate status` show it: any user info (a password)
/// and every value of its query (a token) are `<redacted>`, a query item without `=` whole; the
/// scheme, host, path and the query's names stay, so it can still be recognised.
pub fn shown_url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@');
    if at.is_none() && !rest.contains('?') {
        return Cow::Borrowed(url);
    }
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..start]);
    let after = match at {
        Some(at) => {
            out.push_str("<redacted>@");
            &rest[at + 1..]
        }
        None => rest,
    };
    let Some(q) = after.find('?') else {
        out.push_str(after);
        return Cow::Owned(out);
    };
    out.push_str(&after[..=q]);
    let (query, fragment) = match after[q + 1..].find('#') {
        Some(h) => after[q + 1..].split_at(h),
        None => (&after[q + 1..], ""),
    };
    for (i, item) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match item.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=<redacted>");
            }
            None if item.is_empty() => {}
            None => out.push_str("<redacted>"),
        }
    }
    out.push_str(fragment);
    Cow::Owned(out)
}

fn serialize_shown_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&shown_url(url))
}

fn default_rest_poll_interval() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_rest_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// What a source file holds, and what a REST answer's `resources` holds.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSet {
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
}

/// A REST source's answer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestDocument {
    /// The server's name for this version (shown in `/config_dump`, reported back).
    pub version_info: String,
    #[serde(default)]
    pub resources: ResourceSet,
}

/// One parsed document of a source (a file of a `path` source, a REST answer), with what is
/// needed to point an error at its line.
#[derive(Debug)]
pub struct ResourceDoc {
    /// The file's path, or the REST source's URL.
    pub file: String,
    /// Where the resources sit in the document: `""` for a file, `"resources."` for REST.
    pub prefix: &'static str,
    pub resources: ResourceSet,
    /// The text, kept to locate errors found after parsing (the map is built on first use, so
    /// a good document never pays for it).
    text: Arc<str>,
    map: OnceLock<SourceMap>,
}

impl ResourceDoc {
    /// A located error for `path` (a full path inside the document).
    pub fn error_at(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: Some(self.file.clone()),
            ..self.source_map().error_at(path, message)
        }
    }

    /// Whether it came over the network (a REST answer) rather than from a file on this host.
    pub fn is_remote(&self) -> bool {
        self.prefix == "resources."
    }

    /// Where the resource at `path` starts: `file, line N`.
    pub fn describe(&self, path: &str) -> String {
        match self.source_map().locate(path) {
            Some((line, _)) => format!("{}, line {line}", self.file),
            None => self.file.clone(),
        }
    }

    fn source_map(&self) -> &SourceMap {
        self.map.get_or_init(|| SourceMap::build(&self.text))
    }
}

/// What one source provides at one version.
#[derive(Debug)]
pub struct SourceResources {
    /// The source's name.
    pub source: String,
    pub version_info: String,
    pub docs: Vec<ResourceDoc>,
}

impl SourceResources {
    pub fn listeners(&self) -> usize {
        self.docs.iter().map(|d| d.resources.listeners.len()).sum()
    }

    pub fn clusters(&self) -> usize {
        self.docs.iter().map(|d| d.resources.clusters.len()).sum()
    }
}

/// Parses one file of a `path` source (YAML, which includes JSON). `${VAR}` is not expanded in
/// source documents: what a source serves must not be able to pull this host's secrets out.
pub fn parse_resource_file(text: &str, file: &str) -> Result<ResourceDoc, Vec<ConfigError>> {
    let text = super::without_bom(text);
    let resources: ResourceSet = if text.trim().is_empty() {
        ResourceSet::default()
    } else {
        deserialize_located(text, file, true, &["listeners", "clusters"])?
    };
    Ok(ResourceDoc {
        file: file.to_owned(),
        prefix: "",
        resources,
        text: text.into(),
        map: OnceLock::new(),
    })
}

/// Parses a REST source's answer: JSON, or YAML when `yaml`. Returns its `version_info` and
/// the resources.
pub fn parse_rest_document(
    text: &str,
    url: &str,
    yaml: bool,
) -> Result<(String, ResourceDoc), Vec<ConfigError>> {
    let text = super::without_bom(text);
    let lists = ["resources.listeners", "resources.clusters"];
    let doc: RestDocument = deserialize_located(text, url, yaml, &lists)?;
    let resources = ResourceDoc {
        file: url.to_owned(),
        prefix: "resources.",
        resources: doc.resources,
        text: text.into(),
        map: OnceLock::new(),
    };
    if let Err(why) = check_version_info(&doc.version_info) {
        return Err(vec![resources.error_at("version_info", why)]);
    }
    Ok((doc.version_info, resources))
}

/// The longest `version_info` taken, in bytes: room for a commit id, a timestamp, a Kubernetes
/// `resourceVersion` or a semantic version with build metadata.
pub const MAX_VERSION_INFO_BYTES: usize = 256;

/// A server's `version_info` is written into log lines, `/config_dump` and `bindgate status`:
/// it must be short, and hold no control characters (a newline in it would forge log lines).
pub fn check_version_info(version: &str) -> Result<(), String> {
    if version.len() > MAX_VERSION_INFO_BYTES {
        return Err(format!(
            "is {} bytes long; at most {MAX_VERSION_INFO_BYTES} are taken",
            version.len()
        ));
    }
    if let Some(c) = version.chars().find(|c| c.is_control()) {
        return Err(format!(
            "holds the control character {:?}; a version is printable text",
            c
        ));
    }
    Ok(())
}

/// Strict deserialization. A document that reads first try costs one pass; otherwise every
/// error is reported (see `deserialize_all`; the items of `lists` one at a time), each located
/// at the field's own line, or the parser's position for a syntax error.
fn deserialize_located<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    yaml: bool,
    lists: &[&str],
) -> Result<T, Vec<ConfigError>> {
    // Nothing is read past the bounds (see `bounds`): YAML by a walk of its events, JSON by a
    // pass over its bytes (and, should it not parse, by the walk too before its errors are
    // located, which reads it as YAML).
    let bounded = if yaml {
        super::bounds::check(text)
    } else {
        super::bounds::check_json(text)
    };
    bounded.map_err(|e| {
        vec![ConfigError {
            file: Some(file.to_owned()),
            ..e
        }]
    })?;
    let (path, message, position) = if yaml {
        match serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let pos = inner.location().map(|l| (l.line(), l.column()));
                (path, super::strip_location(&inner.to_string()), pos)
            }
        }
    } else {
        let mut de = serde_json::Deserializer::from_str(text);
        let trim = |msg: String| match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        };
        let at = |e: &serde_json::Error| (e.line() > 0).then(|| (e.line(), e.column()));
        match serde_path_to_error::deserialize(&mut de) {
            Ok(v) => match de.end() {
                Ok(()) => return Ok(v),
                Err(e) => (String::new(), trim(e.to_string()), at(&e)),
            },
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                (path, trim(inner.to_string()), at(&inner))
            }
        }
    };
    let path = if path == "." { String::new() } else { path };
    if !yaml && super::bounds::check(text).is_err() {
        // Locating every error reads the text again as YAML, several times its size: beyond
        // the bounds, serde's first error is the one.
        let (line, column) = position.unzip();
        return Err(vec![ConfigError {
            file: Some(file.to_owned()),
            message: super::strip_path_prefix(&message, &path),
            path,
            line,
            column,
        }]);
    }
    let map = SourceMap::build(text);
    // Well-formed text: look for every error, not only the first.
    if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        if let Err(mut errors) = super::deserialize_all::<T>(value, &map, lists) {
            for e in &mut errors {
                e.file = Some(file.to_owned());
            }
            return Err(errors);
        }
    }
    let (line, column) = match (map.exact(&path), position) {
        (Some(p), _) | (None, Some(p)) => (Some(p.0), Some(p.1)),
        (None, None) => match map.locate(&path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        },
    };
    Err(vec![ConfigError {
        file: Some(file.to_owned()),
        message: super::strip_path_prefix(&message, &path),
        path,
        line,
        column,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_error_names_file_field_and_line() {
        let text = "listeners:\n  - name: a\n    address: 127.0.0.1:0\n    routes: [{cluster: c}]\n    idle_timeout: soon\n";
        let errs = parse_resource_file(text, "/d/a.yaml").unwrap_err();
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(e.file.as_deref(), Some("/d/a.yaml"));
        assert_eq!(e.path, "listeners[0].idle_timeout");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("`soon`"), "{e}");
    }

    #[test]
    fn a_rest_document_parses_as_json_or_yaml() {
        let json = r#"{"version_info": "v7", "resources": {"clusters": [{"name": "c", "type": "static", "endpoints": ["127.0.0.1:1"]}]}}"#;
        let (v, doc) = parse_rest_document(json, "http://127.0.0.1/r", false).unwrap();
        assert_eq!(v, "v7");
        assert_eq!(doc.resources.clusters[0].name, "c");
        let yaml = "version_info: v8\nresources:\n  clusters:\n    - name: c\n      type: static\n      endpoints: [127.0.0.1:1]\n";
        let (v, _) = parse_rest_document(yaml, "http://127.0.0.1/r", true).unwrap();
        assert_eq!(v, "v8");
        // A typo in JSON: named with its line.
        let bad = "{\"version_info\": \"v9\",\n \"resources\": {\"clusters\": [\n  {\"name\": \"c\", \"typo\": 1}]}}";
        let e = &parse_rest_document(bad, "u", false).unwrap_err()[0];
        assert!(e.message.contains("unknown field `typo`"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        // Every mistake at once, each at its line.
        let two = "{\"version_info\": \"v9\",\n \"resources\": {\"clusters\": [\n  {\"name\": \"c\", \"typo\": 1},\n  {\"name\": \"d\", \"type\": \"nope\"}]}}";
        let errs = parse_rest_document(two, "u", false).unwrap_err();
        let lines: Vec<Option<usize>> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(3), Some(4)], "{errs:?}");
        assert!(errs.iter().all(|e| e.file.as_deref() == Some("u")));
        // Trailing garbage is refused, not ignored.
        assert!(parse_rest_document("{\"version_info\": \"1\"} x", "u", false).is_err());
    }

    #[test]
    fn a_leading_byte_order_mark_is_not_part_of_the_document() {
        let json = "\u{feff}{\"version_info\": \"v7\", \"resources\": {}}";
        assert_eq!(parse_rest_document(json, "u", false).unwrap().0, "v7");
        assert_eq!(parse_rest_document(json, "u", true).unwrap().0, "v7");
        let doc = parse_resource_file("\u{feff}", "/d/a.yaml").unwrap();
        assert_eq!(doc.resources, ResourceSet::default());
        let errs =
            parse_resource_file("\u{feff}listeners: []\ntypo: 1\n", "/d/a.yaml").unwrap_err();
        assert_eq!(
            (errs[0].line, errs[0].column),
            (Some(2), Some(1)),
            "{:?}",
            errs[0]
        );
    }

    #[test]
    fn a_version_info_too_long_or_with_control_characters_is_refused_at_its_line() {
        let answer = |v: &str| format!("{{\"resources\": {{}},\n \"version_info\": {v}}}");
        let longest = format!("\"{}\"", "v".repeat(MAX_VERSION_INFO_BYTES));
        assert!(parse_rest_document(&answer(&longest), "u", false).is_ok());
        let longer = format!("\"{}\"", "v".repeat(MAX_VERSION_INFO_BYTES + 1));
        for (version, says) in [
            (longer.as_str(), "is 257 bytes long; at most 256"),
            ("\"v1\\nINFO forged line\"", "control character '\\n'"),
            ("\"v1\\u001b[31m\"", "control character '\\u{1b}'"),
        ] {
            let errs = parse_rest_document(&answer(version), "u", false).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            let e = &errs[0];
            assert_eq!(
                (e.file.as_deref(), e.path.as_str(), e.line),
                (Some("u"), "version_info", Some(2)),
                "{e}"
            );
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn aliases_that_repeat_too_much_are_refused_before_anything_is_built() {
        let list = vec!["x"; 2_000].join(", ");
        let uses = vec!["*e"; 600].join(", ");
        let file = format!("clusters: []\nlisteners: []\nx-list: &e [{list}]\ny: [{uses}]\n");
        let e = &parse_resource_file(&file, "/d/a.yaml").unwrap_err()[0];
        assert_eq!(
            (e.file.as_deref(), e.line),
            (Some("/d/a.yaml"), Some(4)),
            "{e}"
        );
        assert!(e.message.contains("YAML aliases"), "{e}");
        let answer = format!("version_info: v1\nx-list: &e [{list}]\ny: [{uses}]\n");
        let e = &parse_rest_document(&answer, "u", true).unwrap_err()[0];
        assert_eq!((e.file.as_deref(), e.line), (Some("u"), Some(3)), "{e}");
        assert!(e.message.contains("YAML aliases"), "{e}");
    }

    #[test]
    fn a_url_is_shown_without_its_secrets() {
        for (url, shown) in [
            ("https://config.internal/r", "https://config.internal/r"),
            (
                "https://config.internal/r?token=s3cret&env=prod",
                "https://config.internal/r?token=<redacted>&env=<redacted>",
            ),
            (
                "https://user:pw@config.internal:8443/r",
                "https://<redacted>@config.internal:8443/r",
            ),
            (
                "http://127.0.0.1:9/r?s3cret#frag",
                "http://127.0.0.1:9/r?<redacted>#frag",
            ),
            ("https://h/r?a=1&&b", "https://h/r?a=<redacted>&&<redacted>"),
            // Not a URL: still nothing after `?` or before `@` shows.
            ("u:pw@h?t=1", "<redacted>@h?t=<redacted>"),
            ("https://h/a@b", "https://h/a@b"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }

    #[test]
    fn errors_found_after_parsing_are_located_lazily() {
        let doc = parse_resource_file(
            "clusters:\n  - name: c\n    type: static\n    endpoints: [127.0.0.1:1]\n",
            "/d/c.yaml",
        )
        .unwrap();
        assert_eq!(doc.describe("clusters[0]"), "/d/c.yaml, line 2");
        let e = doc.error_at("clusters[0].endpoints", "bad");
        assert_eq!((e.line, e.file.as_deref()), (Some(4), Some("/d/c.yaml")));
    }
}
