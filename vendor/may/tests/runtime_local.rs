//! The embedding runtime's per-coroutine value: set by the runtime in each coroutine, kept
//! across waits, let go of once when the coroutine's local storage is dropped (after its other
//! locals), absent on plain threads. Alone in its binary: it counts releases process-wide.

#[macro_use]
extern crate may;

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

static RELEASED: AtomicUsize = AtomicUsize::new(0);

/// The drops of each coroutine's witness (a local of the map) and value, in order: `(id,
/// true)` for a witness, `(id, false)` for a value.
static DROPS: Mutex<Vec<(u32, bool)>> = Mutex::new(Vec::new());

struct State {
    id: Cell<u32>,
}

/// Frees a `State` made by `Box::into_raw`.
unsafe fn release(value: NonNull<()>) {
    let state = unsafe { Box::from_raw(value.cast::<State>().as_ptr()) };
    DROPS.lock().unwrap().push((state.id.get(), false));
    RELEASED.fetch_add(1, Ordering::SeqCst);
}

fn state() -> Option<&'static State> {
    // SAFETY: every value set here is a `State` that lives until its release, after the
    // coroutine's code has run.
    may::runtime_local().map(|v| unsafe { v.cast::<State>().as_ref() })
}

/// A coroutine-local of the map that records its drop.
struct Witness(u32);

impl Drop for Witness {
    fn drop(&mut self) {
        DROPS.lock().unwrap().push((self.0, true));
    }
}

coroutine_local!(static WITNESS: Cell<Option<Witness>> = Cell::new(None));

#[test]
fn one_value_per_coroutine_kept_across_waits_and_released_once_after_its_other_locals() {
    assert!(may::runtime_local().is_none(), "no value on a thread");
    let on_thread = Box::into_raw(Box::new(State { id: Cell::new(0) }));
    // SAFETY: `release` frees what `Box::into_raw` made; it is not called here.
    let set = unsafe { may::set_runtime_local(NonNull::new(on_thread).unwrap().cast(), release) };
    assert!(!set, "nothing is set on a thread");
    // SAFETY: not handed over: still ours.
    drop(unsafe { Box::from_raw(on_thread) });

    let before = RELEASED.load(Ordering::SeqCst);
    let seen = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (1..=50u32)
        .map(|i| {
            let seen = seen.clone();
            go!(move || {
                assert!(state().is_none(), "a new coroutine has no value");
                let value = NonNull::from(Box::leak(Box::new(State { id: Cell::new(i) })));
                // SAFETY: `release` frees the leaked box, once.
                assert!(unsafe { may::set_runtime_local(value.cast(), release) });
                let other = NonNull::from(Box::leak(Box::new(State { id: Cell::new(0) })));
                // SAFETY: refused, so still ours: freed right after.
                assert!(
                    !unsafe { may::set_runtime_local(other.cast(), release) },
                    "a value is set once"
                );
                drop(unsafe { Box::from_raw(other.as_ptr()) });
                WITNESS.with(|w| w.set(Some(Witness(i))));
                for _ in 0..3 {
                    may::coroutine::yield_now();
                    assert_eq!(
                        state().map(|s| s.id.get()),
                        Some(i),
                        "the value is the coroutine's own, across waits"
                    );
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
    while RELEASED.load(Ordering::SeqCst) - before < 50 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        RELEASED.load(Ordering::SeqCst) - before,
        50,
        "every coroutine's value is released once"
    );
    let drops = DROPS.lock().unwrap().clone();
    for i in 1..=50u32 {
        let order: Vec<bool> = drops
            .iter()
            .filter(|(id, _)| *id == i)
            .map(|(_, witness)| *witness)
            .collect();
        assert_eq!(
            order,
            [true, false],
            "coroutine {i}'s other locals are dropped before its value is released"
        );
    }
}
