//! The embedding runtime's per-coroutine value, small enough to be kept inline in the
//! coroutine's local storage.

mod runtime_local_check;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static DROPPED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct State {
    id: Cell<u32>,
}

impl Drop for State {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

impl runtime_local_check::Probe for State {
    const DROPPED: &'static AtomicUsize = &DROPPED;
    fn id(&self) -> &Cell<u32> {
        &self.id
    }
}

#[test]
fn one_value_per_coroutine_kept_across_waits_and_dropped_with_it() {
    runtime_local_check::one_value_per_coroutine::<State>();
}
