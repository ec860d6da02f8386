//! Stacks as data: the return addresses read from parked green threads (`core/stack.rs`)
//! turned into [`ThreadStack`]s (`core/symbols.rs`), for snapshots and single requests.
//! Symbols are resolved by the thread that asks (the attach channel's, the stats endpoint's or
//! the caller's), never by a worker.

use greenhub_snapshot::ThreadStack;

use crate::core::registry::{RecordRef, StateView, registry};
use crate::core::stack;
use crate::core::symbols::fold;

/// Why a thread's stack cannot be shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// No live green thread has this id.
    #[error("no live green thread has id {0}")]
    NoSuchThread(u64),
    /// The thread is running or runnable (or not started): only a parked thread's stack can
    /// be read. Ask again; a thread that runs for long shows in the blocked-worker reports.
    #[error("green thread {0} is not parked in a wait (running, runnable or not started)")]
    NotParked(u64),
    /// This process cannot read stacks (the reason says why and what to change).
    #[error("stacks are unavailable: {0}")]
    Unsupported(&'static str),
}

/// The stack of the live green thread `id`, read while it is parked.
pub(crate) fn stack_of(id: u64) -> Result<ThreadStack, StackError> {
    let record = registry()
        .live_threads()
        .0
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(StackError::NoSuchThread(id))?;
    let mut read =
        stack::read_parked(std::slice::from_ref(&record)).map_err(StackError::Unsupported)?;
    match read.pop().flatten() {
        Some((_, ips)) => Ok(fold(&ips)),
        None => Err(StackError::NotParked(id)),
    }
}

/// The stacks of `records` with the state each was read in (each `None` when not parked), or
/// why none can be read.
pub(crate) fn stacks_of(
    records: &[RecordRef],
) -> Result<Vec<Option<(StateView, ThreadStack)>>, &'static str> {
    let read = stack::read_parked(records)?;
    Ok(read
        .into_iter()
        .map(|parked| parked.map(|(view, ips)| (view, fold(&ips))))
        .collect())
}
