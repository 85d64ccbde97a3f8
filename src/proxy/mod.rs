//! Per-connection pipelines: admission, routing, upstream connect, splice.

pub mod limits;
pub mod splice;
pub mod tcp;
