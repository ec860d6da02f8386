//! One worker (eventlet's single hub): a green thread blocked in `std::thread::sleep` through
//! tpool leaves the worker to its neighbours.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use greenhub::{Config, sleep, spawn};

#[test]
fn a_blocking_sleep_through_tpool_lets_neighbours_run() {
    Config::new().workers(1).init().unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    let ticker = spawn(move || {
        for _ in 0..1000 {
            t.fetch_add(1, Ordering::SeqCst);
            if sleep(Duration::from_millis(1)).is_err() {
                break;
            }
        }
    });
    let t = ticks.clone();
    let sleeper = spawn(move || {
        let before = t.load(Ordering::SeqCst);
        greenhub_tpool::execute(|| std::thread::sleep(Duration::from_millis(200))).unwrap();
        t.load(Ordering::SeqCst) - before
    });
    let during = sleeper.wait().unwrap();
    // 200 ms of blocking on a pool thread; the ticker sleeps 1 ms per tick. Even a slow,
    // shared machine gives it many turns (without tpool it would get none).
    assert!(during >= 20, "the neighbour ticked only {during} times");
    ticker.kill();
    let _ = ticker.wait();

    // The same sleep made directly on the worker freezes the neighbour: the contrast shows
    // the test measures what it claims.
    let ticks2 = Arc::new(AtomicU64::new(0));
    let t = ticks2.clone();
    let ticker = spawn(move || {
        loop {
            t.fetch_add(1, Ordering::SeqCst);
            if sleep(Duration::from_millis(1)).is_err() {
                break;
            }
        }
    });
    while ticks2.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = ticks2.clone();
    let blocker = spawn(move || {
        let before = t.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        t.load(Ordering::SeqCst) - before
    });
    assert_eq!(blocker.wait().unwrap(), 0);
    ticker.kill();
    let _ = ticker.wait();
}
