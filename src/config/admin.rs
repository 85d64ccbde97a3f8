//! `admin:` the local admin server's settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin server listens. Loopback unless `allow_non_loopback` is set.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Permit a non-loopback admin address (the admin API exposes topology and state).
    #[serde(default)]
    pub allow_non_loopback: bool,
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".into()
}
