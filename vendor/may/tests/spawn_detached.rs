//! `Builder::spawn_detached`: every coroutine runs once, its handle names and cancels it, and
//! a panic that escapes one is dropped without harming the others.

use may::coroutine::Builder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_detached_coroutine_runs_once_and_a_panic_harms_no_other() {
    may::config().set_workers(2);
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..2_000usize {
        let ran = ran.clone();
        let co = unsafe {
            Builder::new()
                .name(format!("detached-{i}"))
                .spawn_detached(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    if i % 100 == 0 {
                        panic!("a detached coroutine's panic");
                    }
                })
                .unwrap()
        };
        assert_eq!(co.name(), Some(format!("detached-{i}").as_str()));
    }
    wait_for("every coroutine", || ran.load(Ordering::SeqCst) == 2_000);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ran.load(Ordering::SeqCst), 2_000, "none ran twice");
}

#[test]
fn a_detached_coroutine_is_cancelled_through_its_handle() {
    may::config().set_workers(2);
    struct Unwound(Arc<AtomicUsize>);
    impl Drop for Unwound {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let unwound = Arc::new(AtomicUsize::new(0));
    let parked = Arc::new(AtomicUsize::new(0));
    let (u, p) = (unwound.clone(), parked.clone());
    let co = unsafe {
        Builder::new()
            .spawn_detached(move || {
                let _guard = Unwound(u);
                p.fetch_add(1, Ordering::SeqCst);
                loop {
                    may::coroutine::park();
                }
            })
            .unwrap()
    };
    wait_for("the park", || parked.load(Ordering::SeqCst) == 1);
    unsafe { co.cancel() };
    wait_for("the unwind", || unwound.load(Ordering::SeqCst) == 1);
}

#[test]
fn a_stack_that_cannot_be_allocated_is_an_error() {
    may::config().set_workers(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    // 128 TiB in words: more than a process's address space.
    let spawned = unsafe {
        Builder::new().stack_size(1 << 44).spawn_detached(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
    };
    assert!(spawned.is_err(), "spawned with a 128 TiB stack");
    // The spawner is fine, and so is the next coroutine.
    let r = ran.clone();
    unsafe {
        Builder::new().spawn_detached(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
    }
    .unwrap();
    wait_for("the next coroutine", || ran.load(Ordering::SeqCst) == 1);
}
