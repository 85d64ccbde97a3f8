//! The control path: publishes snapshots into the one `ArcSwap` the data path reads, and has the
//! listener manager reconcile sockets to them.

pub mod discovery;
pub mod endpoint_cache;
mod gateway;
pub mod plane;
pub mod registration;
pub mod sources;
mod start_only;

pub use plane::{ControlError, ControlPlane, ControlStatus, StatusView};

/// What sources tell the control loop.
#[derive(Debug)]
pub enum ControlEvent {
    /// A complete, successful discovery result.
    Discovered(std::collections::BTreeSet<crate::snapshot::BoundUrl>),
    /// A poll failed (after the API client's retries); the last good set stays.
    DiscoveryFailed(String),
    /// The API refused the key: discovery has ended. Static listeners and the endpoints
    /// discovered last keep serving.
    DiscoveryStopped(String),
    /// A config source answered (a changed directory, a new REST document).
    SourceAnswer(Box<sources::SourceAnswer>),
    /// A config source could not be read; its resources in force stay.
    SourceFailed {
        source: String,
        generation: u64,
        why: String,
    },
}

pub use gateway::{Gateway, StartError};
