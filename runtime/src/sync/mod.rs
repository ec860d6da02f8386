//! The objects green threads talk through: [`event`], [`queue`], [`semaphore`] (with the
//! green mutex and its condition), [`rlock`], [`rwlock`], [`greenpool`], [`pool`] (reusable items), and
//! [`select`], one wait on several of them at once. Each serves its waiters in arrival order by handing the
//! item or permit to the first of them, works from plain OS threads too, and registers itself
//! in the registry.
//!
//! It may use `core`, `start.rs` and `green`; nothing above.

pub mod event;
pub mod greenpool;
pub mod pool;
pub mod queue;
pub mod rlock;
pub mod rwlock;
pub mod select;
pub mod semaphore;
