//! The embedding runtime's per-coroutine value: one per coroutine, made on first use, kept
//! across waits, dropped with the coroutine, absent on plain threads. Alone in its binary:
//! a program has one runtime-local type.

#[macro_use]
extern crate may;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

#[test]
fn one_value_per_coroutine_kept_across_waits_and_dropped_with_it() {
    assert!(
        // SAFETY (every call here): `State` is a `Cell<u32>`, sound on any thread.
        unsafe { may::with_runtime_local(|_: &State| ()) }.is_none(),
        "no value on a thread"
    );
    let before = DROPPED.load(Ordering::SeqCst);
    let seen = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (1..=50u32)
        .map(|i| {
            let seen = seen.clone();
            go!(move || {
                let first =
                    unsafe { may::with_runtime_local(|s: &State| s.id.replace(i)) }.unwrap();
                assert_eq!(first, 0, "a new coroutine's value is the default");
                for _ in 0..3 {
                    may::coroutine::yield_now();
                    let now = unsafe { may::with_runtime_local(|s: &State| s.id.get()) }.unwrap();
                    assert_eq!(now, i, "the value is the coroutine's own, across waits");
                }
                seen.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(seen.load(Ordering::SeqCst), 50);
    // A join returns before the worker drops the finished coroutine's storage: wait for it.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while DROPPED.load(Ordering::SeqCst) - before < 50 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        DROPPED.load(Ordering::SeqCst) - before,
        50,
        "every coroutine's value is dropped with it"
    );
}
