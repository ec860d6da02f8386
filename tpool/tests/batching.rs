//! Completions wake their callers through the hub in batches (alone in its process, so that
//! the hub's counters are this test's).

use std::time::Duration;

use greenhub::spawn;
use greenhub_tpool::Pool;

#[test]
fn a_burst_of_completions_costs_far_fewer_signals_than_wakes() {
    let pool = Pool::builder().name("burst").threads(8).build().unwrap();
    // Warm up: threads started, hub running.
    let p = pool.clone();
    spawn(move || p.execute(|| ()).unwrap()).wait().unwrap();
    let before = greenhub::inspect::snapshot().runtime.inbox;
    assert!(before.running);
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let p = pool.clone();
            spawn(move || {
                for _ in 0..10 {
                    // Long enough that every caller is parked when its result comes.
                    p.execute(|| std::thread::sleep(Duration::from_micros(100)))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in callers {
        t.wait().unwrap();
    }
    let after = greenhub::inspect::snapshot().runtime.inbox;
    let posted = after.posted - before.posted;
    let signals = after.signals - before.signals;
    let batches = after.batches - before.batches;
    eprintln!("{posted} wakes, {signals} signals, {batches} batches");
    assert_eq!(pool.stats().completed, 10_001);
    // Nearly every caller was parked, so nearly every completion posted a wake.
    assert!(posted > 9_000, "only {posted} wakes posted");
    assert!(
        signals * 2 < posted,
        "{signals} eventfd signals for {posted} wakes (batches {batches})"
    );
}
