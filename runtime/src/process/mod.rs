//! The process and the OS around it: Unix signals as green waits ([`signal`]) and child
//! processes with green pipes and exits ([`child`]).
//!
//! This layer may use `core`, `start.rs`, `green`, `sync` and `net`; nothing below imports
//! it.

pub(crate) mod child;
pub(crate) mod signal;
