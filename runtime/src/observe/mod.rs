//! Observability: the snapshot of the registry, the attach channel of `inspector attach` and
//! the HTTP stats endpoint (cargo feature `stats`, on by default). Both channels serve from OS threads of their own, so that they
//! answer while every worker is blocked.
//!
//! It reads `core` only (the registry, the monitor, the runtime's state, the stacks of parked
//! threads); the data it serves has its schema in `greenhub-snapshot`.

pub(crate) mod attach;
pub(crate) mod offload;
pub(crate) mod profile;
pub(crate) mod snapshot;
pub(crate) mod stacks;
#[cfg(feature = "stats")]
pub(crate) mod stats;
