//! The binding upgrade's wire format, from the `bindgate-wire` crate it shares with the sandbox:
//! `ConnRequest` / `ConnResponse` and their framing (shared PROTOCOL.md §1).

pub use bindgate_wire::*;
