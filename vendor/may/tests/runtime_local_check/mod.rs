//! The check both runtime-local tests make, for a value kept inline in the coroutine's local
//! storage (`runtime_local.rs`) and for one too large for it, kept boxed
//! (`runtime_local_boxed.rs`). Each test is alone in its binary: a program has one
//! runtime-local type.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A runtime-local value that counts its drops in `DROPPED`.
pub trait Probe: Default + 'static {
    const DROPPED: &'static AtomicUsize;
    fn id(&self) -> &Cell<u32>;
}

/// One value per coroutine, made on first use, kept across waits, dropped with the coroutine
/// (exactly once each), absent on plain threads.
pub fn one_value_per_coroutine<P: Probe>() {
    assert!(
        // SAFETY (every call here): a probe is `Cell`s, sound on any thread.
        unsafe { may::with_runtime_local(|_: &P| ()) }.is_none(),
        "no value on a thread"
    );
    let before = P::DROPPED.load(Ordering::SeqCst);
    let seen = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (1..=50u32)
        .map(|i| {
            let seen = seen.clone();
            may::go!(move || {
                let first = unsafe { may::with_runtime_local(|s: &P| s.id().replace(i)) }.unwrap();
                assert_eq!(first, 0, "a new coroutine's value is the default");
                for _ in 0..3 {
                    may::coroutine::yield_now();
                    let now = unsafe { may::with_runtime_local(|s: &P| s.id().get()) }.unwrap();
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
    while P::DROPPED.load(Ordering::SeqCst) - before < 50 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Give a double drop time to show.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        P::DROPPED.load(Ordering::SeqCst) - before,
        50,
        "every coroutine's value is dropped with it, once"
    );
}
