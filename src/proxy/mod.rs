//! Per-connection pipelines: admission, routing, upstream connect, splice.
//! tcp: one fixed cluster; tls: routed by the ClientHello's SNI, passed through; http: routed
//! per request, over pooled upstream HTTP/1.1 connections.

pub mod http;
pub mod http_pool;
pub mod limits;
pub mod sni;
pub mod splice;
pub mod tcp;
pub mod tls;
