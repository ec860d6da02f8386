//! `run_until_idle`: returns once every green thread has ended and no `call_after` is
//! pending, never before (threads spawned by threads that end, calls that fire and spawn), and
//! times out while something still runs. One test: it watches the whole process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use greenhub::{TimedOut, call_after, run_until_idle, spawn};

/// A tree of green threads `depth` deep, each level handing on through a spawn or a timer,
/// each leaf counting itself.
fn grow(depth: u32, leaves: Arc<AtomicU64>) {
    if depth == 0 {
        leaves.fetch_add(1, Ordering::SeqCst);
        return;
    }
    for i in 0..3 {
        let leaves = leaves.clone();
        if i == 0 {
            let _ = call_after(Duration::from_micros(300), move || grow(depth - 1, leaves));
        } else {
            spawn(move || {
                if i == 1 {
                    greenhub::yield_now();
                }
                grow(depth - 1, leaves)
            });
        }
    }
}

#[test]
fn waits_for_every_thread_and_timer_and_only_for_them() {
    let _watchdog = common::watchdog(Duration::from_secs(120));
    for round in 0..30 {
        let leaves = Arc::new(AtomicU64::new(0));
        let l = leaves.clone();
        // The root ends at once; everything after it is spawned by threads that end.
        spawn(move || grow(4, l));
        run_until_idle(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(
            leaves.load(Ordering::SeqCst),
            81,
            "round {round}: returned before the work ended"
        );
    }

    // Something that never ends keeps it waiting until the timeout; once killed, it is idle.
    let forever = spawn(|| greenhub::sleep(Duration::from_secs(3600)));
    assert_eq!(
        run_until_idle(Some(Duration::from_millis(20))),
        Err(TimedOut)
    );
    let pending = call_after(Duration::from_secs(3600), || {});
    forever.kill();
    assert!(forever.wait().is_err());
    assert_eq!(
        run_until_idle(Some(Duration::from_millis(20))),
        Err(TimedOut),
        "a pending call is work to come"
    );
    pending.cancel();
    run_until_idle(Some(Duration::from_secs(10))).unwrap();

    // From a green thread: it does not wait for itself.
    let waiter = spawn(|| {
        let leaves = Arc::new(AtomicU64::new(0));
        grow(2, leaves.clone());
        run_until_idle(Some(Duration::from_secs(60))).map(|()| leaves.load(Ordering::SeqCst))
    });
    assert_eq!(waiter.wait().unwrap(), Ok(9));
}
