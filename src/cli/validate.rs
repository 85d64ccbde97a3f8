//! `bindgate validate -c FILE`: the same load and build path as `run`, with nothing bound.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, ConfigError, ConfigErrors};

const EXIT_CODES: &str = "\
Exit codes:
  0  the config is valid
  1  the config has errors (every one is printed), or the file cannot be read
  2  command-line usage error

In CI, `bindgate validate -c FILE --offline --format json` checks everything but the referenced
key, certificate and CA files (a pipeline need not hold secrets), and prints one JSON object:
{\"ok\": bool, \"errors\": [{\"file\", \"line\", \"column\", \"path\", \"message\", \"text\"}]}.
The files of `path` config sources are checked with the config; REST sources are not fetched.";

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct ValidateArgs {
    /// The config file to check.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// Do not read the key, certificate and CA files the config references (ingress `ca`,
    /// `client_cert`, `client_key`); everything else is checked.
    #[arg(long)]
    pub offline: bool,
    /// `text`: `OK` or every error, one a line; `json`: one JSON object on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    let checked = config::load_file(&args.config)
        .and_then(|loaded| crate::control::sources::validate(&loaded, args.offline));
    match (args.format, &checked) {
        (Format::Text, Ok(())) => println!("OK"),
        (Format::Text, Err(errors)) => print!("{errors}"),
        (Format::Json, _) => {
            let errors = checked.as_ref().err();
            println!(
                "{}",
                json_report(&args.config.display().to_string(), errors)
            );
        }
    }
    if checked.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `{"ok": bool, "errors": [...]}`: each error with its file (the config's own unless it is in
/// another), line and column (null when unknown), dotted path, message, and `text`, the
/// `file:line:column: message` form that CI annotators read.
fn json_report(config_file: &str, errors: Option<&ConfigErrors>) -> serde_json::Value {
    let errors: Vec<serde_json::Value> = errors
        .map(|e| {
            e.errors
                .iter()
                .map(|e| json_error(config_file, e))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({ "ok": errors.is_empty(), "errors": errors })
}

fn json_error(config_file: &str, e: &ConfigError) -> serde_json::Value {
    let file = e.file.as_deref().unwrap_or(config_file);
    let text = match (e.line, e.column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {}", e.message),
        (Some(l), None) => format!("{file}:{l}: {}", e.message),
        _ => format!("{file}: {}", e.message),
    };
    serde_json::json!({
        "file": file,
        "line": e.line,
        "column": e.column,
        "path": e.path,
        "message": e.message,
        "text": text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_their_file_and_omit_unknown_positions() {
        let errors = ConfigErrors {
            source: "gw.yaml".into(),
            errors: vec![
                ConfigError {
                    file: None,
                    path: "version".into(),
                    line: Some(1),
                    column: Some(10),
                    message: "unsupported version 2".into(),
                },
                ConfigError {
                    file: Some("conf.d/a.yaml".into()),
                    path: String::new(),
                    line: None,
                    column: None,
                    message: "cannot read the file".into(),
                },
            ],
        };
        let got = json_report("gw.yaml", Some(&errors));
        assert_eq!(
            got,
            serde_json::json!({
                "ok": false,
                "errors": [
                    {
                        "file": "gw.yaml", "line": 1, "column": 10, "path": "version",
                        "message": "unsupported version 2",
                        "text": "gw.yaml:1:10: unsupported version 2",
                    },
                    {
                        "file": "conf.d/a.yaml", "line": null, "column": null, "path": "",
                        "message": "cannot read the file",
                        "text": "conf.d/a.yaml: cannot read the file",
                    },
                ],
            })
        );
        assert_eq!(
            json_report("gw.yaml", None),
            serde_json::json!({ "ok": true, "errors": [] })
        );
    }
}
