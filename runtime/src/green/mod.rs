//! Green threads and time: spawning, joining, killing and linking threads, sleeping and
//! yielding, deadline scopes, timers that run code later, and async futures run from green
//! threads (`block_on`).
//!
//! It may use `core` and `start.rs` (a spawn starts the runtime), nothing else of this crate.

pub(crate) mod future;
pub(crate) mod local;
pub(crate) mod thread;
pub(crate) mod time;
pub(crate) mod timer;
