//! `workers = 1`: eventlet's single hub, where green threads run one at a time in order.

mod common;

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use greenhub::{sleep, spawn, yield_now, Config};

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| Config::new().workers(1).init().unwrap());
}

#[test]
fn yields_interleave_in_spawn_order_every_time() {
    setup();
    for _ in 0..50 {
        let log = Arc::new(Mutex::new(Vec::new()));
        // Spawned from one green thread so that all three start on the one worker's queue.
        let l = log.clone();
        spawn(move || {
            let ts: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .map(|name| {
                    let l = l.clone();
                    spawn(move || {
                        for round in 0..3 {
                            l.lock().unwrap().push(format!("{name}{round}"));
                            yield_now();
                        }
                    })
                })
                .collect();
            for t in ts {
                t.wait().unwrap();
            }
        })
        .wait()
        .unwrap();
        let got = log.lock().unwrap().join(" ");
        assert_eq!(got, "a0 b0 c0 a1 b1 c1 a2 b2 c2");
    }
}

#[test]
fn green_threads_never_run_in_parallel() {
    setup();
    let _watchdog = common::watchdog(Duration::from_secs(30));
    let inside = Arc::new(Mutex::new(0u32));
    let max_seen = Arc::new(Mutex::new(0u32));
    let ts: Vec<_> = (0..100)
        .map(|i| {
            let inside = inside.clone();
            let max_seen = max_seen.clone();
            spawn(move || {
                for _ in 0..20 {
                    {
                        let mut n = inside.lock().unwrap();
                        *n += 1;
                        let mut m = max_seen.lock().unwrap();
                        *m = (*m).max(*n);
                    }
                    // Work between the two halves, with a switch only at the sleep.
                    std::hint::black_box((0..1000).sum::<u64>());
                    *inside.lock().unwrap() -= 1;
                    sleep(Duration::from_millis(i % 3)).unwrap();
                }
            })
        })
        .collect();
    for t in ts {
        t.wait().unwrap();
    }
    assert_eq!(*max_seen.lock().unwrap(), 1);
    assert_eq!(greenhub::inspect::snapshot().runtime.workers, 1);
}

#[test]
fn a_timed_wake_returns_to_the_worker_thread() {
    setup();
    // may resumes a timed-out coroutine on its timer thread; greenhub moves it back, so all
    // user code of a single-worker runtime runs on one OS thread.
    let ids = spawn(|| {
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(std::thread::current().id());
            sleep(Duration::from_millis(2)).unwrap();
        }
        ids.push(std::thread::current().id());
        ids
    })
    .wait()
    .unwrap();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}
