//! Green threads and time: spawning, joining, killing and linking threads, sleeping and
//! yielding, deadline scopes, and timers that run code later.
//!
//! It may use `core` and `start.rs` (a spawn starts the runtime), nothing else of this crate.

pub(crate) mod thread;
pub(crate) mod time;
pub(crate) mod timer;
