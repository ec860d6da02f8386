//! The core: what every green wait is made of, and the services that run under all of them.
//!
//! It owns the clock, the per-green-thread context, the wake [`token`](token::Token) and the
//! [`Waiter`](wait::Waiter), wait lists, the alarms (every deadline and timer), the switch
//! budget, the monitor, the registry of threads, timers, descriptors and objects, the wake inbox,
//! the configuration, the stack budget, panic capture, the timed-out error, the runtime's
//! started state, the barrier between the switch path and its watchers, and the
//! reading and naming of green threads' stacks.
//!
//! It may use `may`, `generator` and `greenhub-snapshot` (for the vocabulary of waits), and
//! nothing above it in this crate: `green`, `sync`, `net`, `observe` and `start.rs` build on
//! it, never the other way round. Within the core, imports run from the wait down to the
//! pieces it uses: `wait` → `token` → `budget` → `alarm` → `registry` → `clock`, and no file
//! imports one that imports it.

pub(crate) mod alarm;
pub(crate) mod barrier;
pub(crate) mod budget;
pub(crate) mod clock;
pub mod config;
pub(crate) mod context;
pub(crate) mod deadlock;
pub(crate) mod doze;
pub(crate) mod flight;
pub(crate) mod inbox;
pub(crate) mod limits;
pub(crate) mod monitor;
pub(crate) mod object;
pub(crate) mod panic;
pub(crate) mod quiescence;
pub(crate) mod registry;
pub(crate) mod report;
pub(crate) mod runtime;
pub(crate) mod sampler;
pub(crate) mod slots;
pub(crate) mod stack;
pub(crate) mod symbols;
pub(crate) mod timeout;
pub(crate) mod timing;
pub(crate) mod token;
pub(crate) mod trace;
pub(crate) mod wait;
pub(crate) mod waitlist;
