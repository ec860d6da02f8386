//! A call that ends with no other call of its pool in flight wakes its caller directly, not
//! through the hub's inbox: there is nothing to batch it with, and the inbox's hop costs a
//! coroutine switch and a read. Alone in its process, so that the inbox's counters are this
//! test's.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenhub::spawn;
use greenhub_tpool::Pool;

/// Waits until `n` green threads are parked.
fn until_parked(n: usize) {
    while common::parked() < n {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn posted() -> u64 {
    greenhub::inspect::snapshot().runtime.inbox.posted
}

/// A green thread whose pool call returns `value` once `open` is set.
fn call_until(pool: &Pool, value: u64, open: &Arc<AtomicBool>) -> greenhub::GreenThread<u64> {
    let (p, o) = (pool.clone(), open.clone());
    spawn(move || {
        p.execute(move || {
            while !o.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(200));
            }
            value
        })
        .unwrap()
    })
}

/// A call whose caller is parked on it before it may end.
fn parked_call(pool: &Pool, value: u64) -> greenhub::GreenThread<u64> {
    let open = Arc::new(AtomicBool::new(false));
    let caller = call_until(pool, value, &open);
    until_parked(1);
    open.store(true, Ordering::SeqCst);
    caller
}

#[test]
fn a_lone_call_wakes_its_caller_directly_and_one_among_others_through_the_inbox() {
    greenhub::Config::new().workers(2).init().unwrap();
    let pool = Pool::builder().name("lone").threads(4).build().unwrap();
    let p = pool.clone();
    spawn(move || p.execute(|| ()).unwrap()).wait().unwrap();

    // Alone: each caller parked, each result delivered, and not one wake through the inbox.
    let before = posted();
    for i in 0..50 {
        assert_eq!(parked_call(&pool, i).wait().unwrap(), i);
    }
    assert_eq!(posted(), before, "lone calls went through the inbox");

    // With another call held in flight, the one that ends first is batched.
    let held = Arc::new(AtomicBool::new(false));
    let long = call_until(&pool, 7, &held);
    until_parked(1);
    let before = posted();
    let open = Arc::new(AtomicBool::new(false));
    let short = call_until(&pool, 8, &open);
    until_parked(2);
    open.store(true, Ordering::SeqCst);
    assert_eq!(short.wait().unwrap(), 8);
    assert_eq!(
        posted(),
        before + 1,
        "the call among others was not batched"
    );
    held.store(true, Ordering::SeqCst);
    assert_eq!(long.wait().unwrap(), 7);
    assert_eq!(
        posted(),
        before + 1,
        "the last call, alone, went through the inbox"
    );
    assert_eq!(pool.stats().completed, 53);
    assert!(greenhub::inspect::snapshot().runtime.inbox.running);
}
