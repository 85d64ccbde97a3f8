//! bindgate: a declarative edge proxy that gives ordinary hosts private access to ngrok
//! Kubernetes-bound endpoints. The module tree mirrors the data path; see the README's design notes.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod bound_url;
pub mod cli;
pub mod config;
pub mod control;
pub mod filters;
pub mod fs_watch;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod http_body;
pub mod identity;
pub mod listener;
pub mod ngrok_api;
pub mod proxy;
pub mod retained;
pub mod secret;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;
pub mod wire;
