//! Completions wake their callers through the hub in batches (alone in its process, so that
//! the hub's counters are this test's, and on one worker, which the test holds while the
//! completions arrive: however busy the machine, they all land before the hub can drain).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::spawn;
use greenhub_tpool::Pool;

const CALLERS: usize = 1000;

#[test]
fn a_burst_of_completions_costs_far_fewer_signals_than_wakes() {
    greenhub::Config::new().workers(1).init().unwrap();
    let pool = Pool::builder().name("burst").threads(8).build().unwrap();
    // Warm up: threads started. (A lone call wakes its caller directly: the inbox starts with
    // the first wake batched.)
    let p = pool.clone();
    spawn(move || p.execute(|| ()).unwrap()).wait().unwrap();
    let before = greenhub::inspect::snapshot().runtime.inbox;
    let submitted = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    // No call completes before every caller is parked on its call.
    let open = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (p, submitted, done, open) =
                (pool.clone(), submitted.clone(), done.clone(), open.clone());
            spawn(move || {
                submitted.fetch_add(1, Ordering::SeqCst);
                // The call is queued at once and the caller parks until its result comes.
                p.execute(move || {
                    while !open.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
            })
        })
        .collect();
    // Once every caller is parked, the calls may complete, and the hub's only worker is held
    // until they all have: each completion finds the inbox undrained.
    let holder = {
        let (submitted, done) = (submitted.clone(), done.clone());
        spawn(move || {
            while submitted.load(Ordering::SeqCst) < CALLERS || common::parked() < CALLERS {
                greenhub::sleep(Duration::from_millis(1)).unwrap();
            }
            open.store(true, Ordering::SeqCst);
            let t0 = Instant::now();
            while done.load(Ordering::SeqCst) < CALLERS && t0.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    holder.wait().unwrap();
    for t in callers {
        t.wait().unwrap();
    }
    let after = greenhub::inspect::snapshot().runtime.inbox;
    assert!(after.running);
    let posted = after.posted - before.posted;
    let signals = after.signals - before.signals;
    let batches = after.batches - before.batches;
    eprintln!("{posted} wakes, {signals} signals, {batches} batches");
    assert_eq!(pool.stats().completed, CALLERS as u64 + 1);
    // Every caller was parked, so every completion with another call in flight posted a
    // wake (the last one, alone, wakes its caller directly)...
    assert!(posted >= CALLERS as u64 - 1, "only {posted} wakes posted");
    // ...and the wakes that arrived while the hub was held shared a handful of signals.
    assert!(
        signals * 10 < posted,
        "{signals} eventfd signals for {posted} wakes (batches {batches})"
    );
}
