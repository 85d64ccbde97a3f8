//! Filters: the plugin-style middleware, each a tower `Layer` built from its typed config.
//!
//! Three stacks, each built once per snapshot:
//! - **network** filters (`listeners[].filters`) wrap a listener's protocol pipeline; one call
//!   per accepted connection ([`network::ConnService`]);
//! - **http** filters (`routes[].filters`, http listeners) wrap the forwarding of one request
//!   to the route's cluster ([`http::HttpService`]);
//! - the **connect** stack (a cluster's `retry`, `circuit_breaker`, connect timeout) wraps the
//!   cluster's transport ([`connect::ConnectService`]).
//!
//! A filter is one file (its config type, strict and in the schema, plus its layer) and one line
//! in a registry below. State that must outlive a snapshot (counters, buckets, budgets,
//! breakers) comes from [`crate::retained::Retained`], keyed by owner and config.

pub mod access_log;
pub mod connect;
pub mod http;
pub mod network;
pub mod rate;
pub mod timeouts;

use std::net::SocketAddr;
use std::path::Path;

use crate::config::Protocol;
use crate::retained::{Retained, StateKey};

/// What a filter's layer is built with.
pub struct BuildCtx<'a> {
    pub retained: &'a Retained,
    /// The config file's directory (relative paths in filter configs are resolved against it).
    pub base_dir: &'a Path,
    /// The owner of the chain: a listener name, or `listener/route` for http filters.
    pub owner: &'a str,
    /// The filter's position in its chain (state keys include it, so two filters of a kind in
    /// one chain keep separate state).
    pub index: usize,
    pub protocol: Protocol,
}

impl BuildCtx<'_> {
    /// Retained state for this filter, keyed by owner, position and config.
    pub fn state<T: std::any::Any + Send + Sync>(
        &self,
        kind: &'static str,
        config: &impl serde::Serialize,
        make: impl FnOnce() -> T,
    ) -> std::sync::Arc<T> {
        self.retained.get_or_insert(
            StateKey::new(kind, format!("{}#{}", self.owner, self.index), config),
            make,
        )
    }
}

/// What a filter's semantic check may look at.
pub struct CheckCtx<'a> {
    pub protocol: Protocol,
    pub base_dir: &'a Path,
}

impl CheckCtx<'static> {
    /// A tcp listener in the current directory (unit tests).
    pub fn any() -> Self {
        CheckCtx {
            protocol: Protocol::Tcp,
            base_dir: Path::new("."),
        }
    }
}

/// A config problem found beyond the schema: the field under the filter, and what is wrong.
pub type FilterIssue = (String, String);

/// The peer address of a connection, as http filters see it (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Declares a registry: a config enum whose variants are the filters (each entry a one-key map
/// in YAML: the filter's name, then its config) and how each builds its layer.
macro_rules! registry {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident: $Filter:ident {
            $( $(#[$vmeta:meta])* $name:ident => $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        #[allow(non_camel_case_types)]
        pub enum $Enum {
            $( $(#[$vmeta])* $name($ty), )*
        }

        /// A one-key map, `name: config`, in YAML and JSON alike.
        impl<'de> serde::Deserialize<'de> for $Enum {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct OneKeyMap;
                impl<'de> serde::de::Visitor<'de> for OneKeyMap {
                    type Value = $Enum;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a one-key map: the filter's name, then its config")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$Enum, A::Error> {
                        use serde::de::Error;
                        const NAMES: &[&str] = &[$( stringify!($name) ),*];
                        let Some(key) = map.next_key::<String>()? else {
                            return Err(A::Error::custom(format!(
                                "an empty map; name one filter: {}",
                                NAMES.join(", ")
                            )));
                        };
                        let filter = match key.as_str() {
                            $( stringify!($name) => $Enum::$name(map.next_value()?), )*
                            other => return Err(A::Error::unknown_variant(other, NAMES)),
                        };
                        if let Some(extra) = map.next_key::<String>()? {
                            return Err(A::Error::custom(format!(
                                "one filter per list entry: `{extra}` follows `{key}`; give it an entry of its own (`- {extra}: ...`)"
                            )));
                        }
                        Ok(filter)
                    }
                }
                d.deserialize_map(OneKeyMap)
            }
        }

        impl $Enum {
            /// The filter's name, as written in the config.
            pub fn name(&self) -> &'static str {
                match self { $( $Enum::$name(_) => stringify!($name), )* }
            }

            /// The filter behind the config.
            pub fn filter(&self) -> &dyn $Filter {
                match self { $( $Enum::$name(c) => c, )* }
            }
        }
    };
}
pub(crate) use registry;

/// Makes a filter's layer a tower `Layer` whose service calls the layer's
/// `around(next, request)` with the rest of the stack: a filter writes only what it does around
/// one call.
macro_rules! around_layer {
    ($Layer:ident => $Service:ident, $Req:ty, $Res:ty) => {
        impl<S> tower::Layer<S> for $Layer {
            type Service = $Service<S>;
            fn layer(&self, inner: S) -> Self::Service {
                $Service {
                    inner,
                    layer: self.clone(),
                }
            }
        }

        /// The layer's service: calls the layer around the rest of the stack.
        #[derive(Clone)]
        pub struct $Service<S> {
            inner: S,
            layer: $Layer,
        }

        impl<S> tower::Service<$Req> for $Service<S>
        where
            S: tower::Service<$Req, Response = $Res, Error = std::convert::Infallible>
                + Clone
                + Send
                + 'static,
            S::Future: Send,
        {
            type Response = $Res;
            type Error = std::convert::Infallible;
            type Future =
                futures_util::future::BoxFuture<'static, Result<$Res, std::convert::Infallible>>;

            fn poll_ready(
                &mut self,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: $Req) -> Self::Future {
                self.layer.around(self.inner.clone(), req)
            }
        }
    };
}
pub(crate) use around_layer;
