//! `bindgate validate -c FILE`: the same load and build path as `run`, with nothing bound.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The config file to check.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    let checked = config::load_file(&args.config)
        .and_then(|loaded| crate::control::sources::validate(&loaded, false));
    match checked {
        Ok(_) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print!("{errors}");
            ExitCode::FAILURE
        }
    }
}
