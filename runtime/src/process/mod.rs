//! The process and the OS around it: Unix signals as green waits ([`signal`]).
//!
//! This layer may use `core`, `start.rs`, `green`, `sync` and `net`; nothing below imports
//! it.

pub(crate) mod signal;
