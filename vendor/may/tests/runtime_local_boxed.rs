//! The embedding runtime's per-coroutine value, too large to be kept inline in the
//! coroutine's local storage (so boxed), and more aligned than a word.

mod runtime_local_check;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static DROPPED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
#[repr(align(64))]
struct Large {
    id: Cell<u32>,
    rest: [Cell<u64>; 32],
}

impl Drop for Large {
    fn drop(&mut self) {
        assert_eq!(
            self as *const Large as usize % 64,
            0,
            "the value keeps its alignment"
        );
        assert!(self.rest.iter().all(|c| c.get() == 0));
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

impl runtime_local_check::Probe for Large {
    const DROPPED: &'static AtomicUsize = &DROPPED;
    fn id(&self) -> &Cell<u32> {
        &self.id
    }
}

#[test]
fn a_large_value_is_boxed_kept_across_waits_and_dropped_with_it() {
    runtime_local_check::one_value_per_coroutine::<Large>();
}
