//! The process and the OS around it: Unix signals as green waits ([`signal`]), child
//! processes with green pipes and exits ([`child`]), and what the process tells its
//! supervisor ([`notify`]).
//!
//! This layer may use `core`, `start.rs`, `green`, `sync` and `net`; nothing below imports
//! it.

pub(crate) mod child;
pub(crate) mod notify;
pub(crate) mod signal;
