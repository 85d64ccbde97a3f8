//! Local exposure of discovered endpoints: which local address each one listens on (per
//! `expose.mode`), kept stable across polls and restarts by persisting the allocations in
//! `state_dir`, and the managed block of the hosts file that makes their names resolve locally.
//!
//! Nothing here binds sockets: placements go to the snapshot build, which turns them into
//! listeners, routes and clusters.

mod allocations;
mod cidr;
pub mod hosts_file;
mod shared;
mod virtual_ips;

pub use allocations::{Allocations, Exposure, Placement, place};
pub use cidr::Cidr;
pub use hosts_file::HostsFile;
