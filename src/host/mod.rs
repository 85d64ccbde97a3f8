//! Local exposure of discovered endpoints: which local address each one listens on, kept stable
//! across polls and restarts by persisting the allocations in `state_dir`.

mod allocations;

pub use allocations::{Allocations, Placement, place};
