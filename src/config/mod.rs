//! The configuration contract: the YAML model (serde + schemars), `${VAR}` expansion, and loading
//! with errors that name the field and its line. Cross-reference checks live in `snapshot`.

mod admin;
pub(crate) mod bounds;
mod cluster;
mod collect;
mod duration;
mod dynamic;
mod env;
mod ingress;
mod listener;
pub mod ngrok;
mod source_map;
mod sources;

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use admin::AdminConfig;
pub use cluster::{ClusterConfig, ClusterKind, RetryConfig};
pub(crate) use collect::deserialize_all;
pub use duration::{HumanDuration, parse_duration};
pub use dynamic::{
    BoundEndpoints, DEFAULT_VIRTUAL_CIDR, DiscoveredListener, DynamicResources, Expose, ExposeMode,
    ExposeOverride, ReadyWhen, parse_port_range,
};
pub use env::{EnvError, expand_yaml};
pub use ingress::{IngressConfig, MultiplexConfig, MultiplexFallback, PoolConfig, Transport};
pub use listener::{Limits, ListenerConfig, Protocol, RouteConfig, RouteMatch};
pub use ngrok::*;
pub use source_map::SourceMap;
pub use sources::{
    ConfigSourceConfig, ResourceDoc, ResourceSet, RestDocument, RestSourceConfig, SourceResources,
    check_version_info, parse_resource_file, parse_rest_document, shown_url,
};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Schema version; must be 1.
    pub version: u32,
    /// The local admin server (`/ready`, `/live`, `/listeners`, `/clusters`, `/config_dump`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Directory for credentials and persistent state (created 0700).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The ngrok API: registration (client certificate) and discovery. Only needed when this
    /// host provisions its own credentials or discovers bound endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ngrok: Option<NgrokConfig>,
    /// Binding ingresses that `binding_upstream` clusters reach endpoints through.
    #[serde(default)]
    pub ingresses: Vec<IngressConfig>,
    /// Listeners and clusters declared in this file.
    #[serde(default)]
    pub static_resources: StaticResources,
    /// Listeners and clusters discovered at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_resources: Option<DynamicResources>,
    /// Limits across every listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<GlobalLimits>,
}

/// Process-wide limits.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalLimits {
    /// Client connections open at once across all listeners; past it new ones are closed at
    /// accept (http: `503`), so the process keeps file descriptors for its upstreams, the admin
    /// server and reloads (Envoy's `global_downstream_max_connections`, HAProxy's global
    /// `maxconn`). Default: half the open-file limit, less 128 kept in reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticResources {
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
}

/// One problem in a config: where (path, line) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in when it is not the config file itself (a file of a `path`
    /// config source, a REST source's document).
    pub file: Option<String>,
    /// Dotted path of the field (`static_resources.listeners[0].address`); empty for the file.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write_printable(f, file)?;
            f.write_str(": ")?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            f.write_str("`")?;
            write_printable(f, &self.path)?;
            f.write_str("`: ")?;
        }
        write_printable(f, &self.message)
    }
}

/// Writes `text` with its control characters escaped (`\n`, `\u{1b}`): a message quotes what a
/// document said, and a document (a REST answer, a file someone else wrote, or dropped with a
/// name of its choosing into a `path` source's directory) must not be able to start a new log
/// line or colour a terminal through it. Every part of a config error goes through it.
pub fn write_printable(f: &mut impl fmt::Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(char::is_control) {
        f.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        write!(f, "{}", c.escape_default())?;
        rest = &rest[at + c.len_utf8()..];
    }
    f.write_str(rest)
}

/// Every problem found in one config, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write_printable(f, &self.source)?;
        writeln!(f, ": {n} error{}", if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A parsed config together with where each of its fields was written.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub source_map: SourceMap,
    /// The file name (or `<inline>`), for messages.
    pub source: String,
    /// The directory relative paths in the config are resolved against.
    pub base_dir: PathBuf,
}

impl LoadedConfig {
    /// Builds a located error for `path` (cross-reference checks use this).
    pub fn error_at(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        self.source_map.error_at(path, message)
    }

    /// `path` made absolute against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// The largest config file, config source file or REST answer bindgate reads.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// Reads a file of at most [`MAX_DOCUMENT_BYTES`]: a larger one (a wrong `-c`, a log file
/// dropped into a source's directory) is an `InvalidData` error naming the bound, and no more
/// than the bound is ever read into memory.
pub fn read_document(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is larger than {} MiB", MAX_DOCUMENT_BYTES >> 20),
        )
    };
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// `text` without a leading byte order mark, which editors on Windows write at the start of
/// UTF-8 files (and YAML and JSON allow there): the parser would read it as part of the first
/// key. Lines are unchanged, and columns are counted as an editor shows them.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// [`read_document`] of UTF-8 text.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_document(path)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not valid UTF-8 (at byte {}); a config file is UTF-8 text",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads and parses a config file, expanding variables from the process environment.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let text = read_text(path).map_err(|e| ConfigErrors {
        source: path.display().to_string(),
        errors: vec![ConfigError {
            file: None,
            path: String::new(),
            line: None,
            column: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse_file(path, &text)
}

/// Parses `text`, the content of the config file at `path` (whose directory relative paths in
/// it are resolved against), expanding variables from the process environment.
pub fn parse_file(path: &Path, text: &str) -> Result<LoadedConfig, ConfigErrors> {
    let source = path.display().to_string();
    let base_dir = path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
    parse(text, &source, base_dir, |k| std::env::var(k).ok())
}

/// The lists of a config file whose items are checked one by one once the file has errors.
const CONFIG_LISTS: &[&str] = &[
    "ingresses",
    "static_resources.listeners",
    "static_resources.clusters",
];

/// Parses config text: variable expansion, then strict YAML deserialization. Every schema error
/// is reported (up to a hundred), each with its path and line; a YAML syntax error is one.
pub fn parse(
    text: &str,
    source: &str,
    base_dir: PathBuf,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigErrors> {
    let text = without_bom(text);
    let fail = |errors| ConfigErrors {
        source: source.to_owned(),
        errors,
    };
    let loaded = |config, source_map| LoadedConfig {
        config,
        source_map,
        source: source.to_owned(),
        base_dir: base_dir.clone(),
    };
    // Text without variables is read directly, as a good file costs nothing more; serde's own
    // positions then locate its first error, which the collecting pass below finds again.
    let direct = if text.contains("${") {
        None // `expand_yaml` checks the bounds
    } else {
        // Nothing is built from text too deep or too large once read, or from text the walk
        // cannot read: past a syntax error nothing is checked (see `bounds`).
        bounds::check(text).map_err(|e| fail(vec![e]))?;
        match serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
            Ok(config) => return Ok(loaded(config, SourceMap::build(text))),
            Err(e) => Some(e),
        }
    };
    let (value, source_map, direct) = if let Some(direct) = direct {
        let source_map = SourceMap::build(text);
        match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
            Ok(v) => (v, source_map, Some(direct)),
            // Not YAML (a syntax error, a duplicate key): serde's first error is the one.
            Err(_) => return Err(fail(vec![located(direct, &source_map)])),
        }
    } else {
        // Variables are expanded inside the parsed values.
        match expand_yaml(text, &lookup) {
            Ok((v, marked)) => (v, SourceMap::build(&marked), None),
            Err(Some(errs)) => {
                return Err(fail(
                    errs.into_iter()
                        .map(|e| ConfigError {
                            file: None,
                            path: String::new(),
                            line: Some(e.line),
                            column: Some(e.column),
                            message: e.message,
                        })
                        .collect(),
                ));
            }
            Err(None) => {
                // Not YAML to the expanding reader: report serde_yaml's syntax error, and never
                // use a config with its references unexpanded when the two readers disagree.
                let error = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
                    Err(e) => syntax_error(&e),
                    Ok(_) => ConfigError {
                        file: None,
                        path: String::new(),
                        line: None,
                        column: None,
                        message: "the file could not be read for `${VAR}` expansion; simplify its YAML (one document, no tags)".into(),
                    },
                };
                return Err(fail(vec![error]));
            }
        }
    };
    match deserialize_all::<Config>(value, &source_map, CONFIG_LISTS) {
        Ok(config) => match direct {
            // The value tree accepted what the text reader refused: the refusal stands.
            Some(e) => Err(fail(vec![located(e, &source_map)])),
            None => Ok(loaded(config, source_map)),
        },
        Err(errors) => Err(fail(errors)),
    }
}

/// A YAML syntax error, at serde_yaml's position.
fn syntax_error(e: &serde_yaml_ng::Error) -> ConfigError {
    ConfigError {
        file: None,
        path: String::new(),
        line: e.location().map(|l| l.line()),
        column: e.location().map(|l| l.column()),
        message: strip_location(&e.to_string()),
    }
}

/// serde's error from reading the text directly, at the field's own line when we know it, else
/// serde_yaml's position, else the nearest enclosing field's line.
fn located(
    e: serde_path_to_error::Error<serde_yaml_ng::Error>,
    source_map: &SourceMap,
) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let path = if path == "." { String::new() } else { path };
    let (line, column) = match (source_map.exact(&path), inner.location()) {
        (Some((l, c)), _) => (Some(l), Some(c)),
        (None, Some(loc)) => (Some(loc.line()), Some(loc.column())),
        (None, None) => match source_map.locate(&path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        },
    };
    let message = strip_location(&inner.to_string());
    ConfigError {
        file: None,
        message: strip_path_prefix(&message, &path),
        path,
        line,
        column,
    }
}

/// serde_yaml appends " at line X column Y"; we print the position ourselves, once.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// serde_yaml prefixes messages with the (partial) path; we print the full path ourselves.
fn strip_path_prefix(message: &str, path: &str) -> String {
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.is_empty() && path.starts_with(head) {
            return rest.to_owned();
        }
    }
    message.to_owned()
}

/// The JSON Schema of the config file, as committed in `schema/bindgate.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_a_config_error_is_shown_printable() {
        let errors = ConfigErrors {
            source: "/d/a\nb.yaml".into(),
            errors: vec![ConfigError {
                file: Some("/d/x\n2026-12-08T00:00:00Z  INFO forged\u{1b}[31m.yaml".into()),
                path: "listeners[0].name".into(),
                line: Some(2),
                column: None,
                message: "bad\tvalue".into(),
            }],
        };
        assert_eq!(
            errors.to_string(),
            "/d/a\\nb.yaml: 1 error\n  /d/x\\n2026-12-08T00:00:00Z  INFO forged\\u{1b}[31m.yaml: line 2: `listeners[0].name`: bad\\tvalue\n"
        );
    }

    fn parse_str(text: &str) -> Result<LoadedConfig, ConfigErrors> {
        parse(text, "test.yaml", PathBuf::from("/tmp"), |k| {
            (k == "SET").then(|| "127.0.0.1:7000".to_owned())
        })
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let err = parse_str(
            "version: 1\nstatic_resources:\n  listeners:\n    - name: a\n      adress: 127.0.0.1:1\n      routes: []\n",
        )
        .unwrap_err();
        let e = &err.errors[0];
        assert!(e.message.contains("unknown field `adress`"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.path.starts_with("static_resources.listeners[0]"), "{e}");
    }

    #[test]
    fn bad_duration_names_value_and_line() {
        let err = parse_str(
            "version: 1\nstatic_resources:\n  listeners:\n    - name: a\n      address: 127.0.0.1:1\n      routes: []\n      idle_timeout: 10 minutes\n",
        )
        .unwrap_err();
        let e = &err.errors[0];
        assert!(e.message.contains("`10 minutes`"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        assert_eq!(e.path, "static_resources.listeners[0].idle_timeout");
    }

    #[test]
    fn every_schema_error_is_reported_but_a_syntax_error_is_one() {
        // With and without `${VAR}` expansion (two readers), the same three errors.
        let text = "version: 1\nstatic_resources:\n  listeners:\n    - name: a\n      adress: 127.0.0.1:1\n      routes: []\n      idle_timeout: 10 minutes\n  clusters:\n    - type: static\n";
        for text in [text.to_owned(), text.replace("127.0.0.1:1", "${SET}")] {
            let err = parse_str(&text).unwrap_err();
            let got: Vec<(Option<usize>, &str)> = err
                .errors
                .iter()
                .map(|e| (e.line, e.path.as_str()))
                .collect();
            assert_eq!(
                got,
                [
                    (Some(5), "static_resources.listeners[0].adress"),
                    (Some(7), "static_resources.listeners[0].idle_timeout"),
                    (Some(9), "static_resources.clusters[0]"),
                ],
                "{err}"
            );
            assert_eq!(err.errors[2].message, "missing field `name`");
        }
        for (text, want) in [
            ("version: 1\nversion: 1\n", "duplicate field `version`"),
            ("version: 1\nadmin: { address: x\n", "did not find expected"),
        ] {
            let err = parse_str(text).unwrap_err();
            assert_eq!(err.errors.len(), 1, "{err}");
            assert!(err.errors[0].message.contains(want), "{err}");
            assert!(err.errors[0].line.is_some(), "{err}");
        }
    }

    #[test]
    fn env_expansion_feeds_typed_fields() {
        let cfg = parse_str(
            "version: 1\nstatic_resources:\n  clusters:\n    - name: c\n      type: static\n      endpoints: [ \"${SET}\" ]\n",
        )
        .unwrap();
        assert_eq!(
            cfg.config.static_resources.clusters[0].endpoints,
            Some(vec!["127.0.0.1:7000".to_owned()])
        );
        // A value is never YAML: `#` does not start a comment, a newline adds no field.
        let cfg = parse(
            "version: 1\nstate_dir: ${DIR}\nstatic_resources: { listeners: [], clusters: [ { name: c, type: static, endpoints: [ ${EP} ] } ] }\n",
            "test.yaml",
            PathBuf::from("/tmp"),
            |k| match k {
                "DIR" => Some("/var/lib/a#b\nversion: 2".to_owned()),
                "EP" => Some("127.0.0.1:7000".to_owned()),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(cfg.config.version, 1);
        assert_eq!(
            cfg.config.state_dir,
            Some(PathBuf::from("/var/lib/a#b\nversion: 2"))
        );
        assert_eq!(
            cfg.config.static_resources.clusters[0].endpoints,
            Some(vec!["127.0.0.1:7000".to_owned()])
        );
        let err = parse_str("version: 1\nstate_dir: ${UNSET_VAR}\n").unwrap_err();
        assert_eq!(err.errors[0].line, Some(2));
        assert!(err.errors[0].message.contains("`UNSET_VAR`"));
    }

    #[test]
    fn committed_schema_is_current() {
        let committed = include_str!("../../schema/bindgate.schema.json");
        assert!(
            committed == json_schema(),
            "schema/bindgate.schema.json is stale: run `cargo run -- schema > schema/bindgate.schema.json`"
        );
    }
}
