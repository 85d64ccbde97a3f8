//! Subcommands, one file each. Each exposes a clap `Args` struct and an async `run`.

pub mod sandbox;
