//! `workers = 1`: eventlet's single hub, where green threads run one at a time in order.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use greenhub::{Config, Event, Queue, sleep, spawn, yield_now};

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

/// Green threads that keep the one worker busy with local switches only, until `stop` is set
/// (or they give up after 10 s). Each returns whether it was stopped by the flag.
fn keep_busy(ping_pong: bool, stop: &Arc<AtomicBool>) -> Vec<greenhub::GreenThread<bool>> {
    let started = Arc::new(AtomicUsize::new(0));
    let give_up = Instant::now() + Duration::from_secs(10);
    let busy: Vec<_> = if ping_pong {
        let ping = Queue::<bool>::unbounded();
        let pong = Queue::<bool>::unbounded();
        let (stop_a, started_a) = (stop.clone(), started.clone());
        let (ping_a, pong_a) = (ping.clone(), pong.clone());
        let a = spawn(move || {
            started_a.fetch_add(1, Ordering::SeqCst);
            loop {
                let stopped = stop_a.load(Ordering::SeqCst);
                if stopped || Instant::now() > give_up {
                    ping_a.put(false).unwrap();
                    return stopped;
                }
                ping_a.put(true).unwrap();
                pong_a.get().unwrap();
            }
        });
        let (stop_b, started_b) = (stop.clone(), started.clone());
        let b = spawn(move || {
            started_b.fetch_add(1, Ordering::SeqCst);
            while ping.get().unwrap() {
                pong.put(true).unwrap();
            }
            stop_b.load(Ordering::SeqCst)
        });
        vec![a, b]
    } else {
        (0..3)
            .map(|_| {
                let (stop, started) = (stop.clone(), started.clone());
                spawn(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    loop {
                        let stopped = stop.load(Ordering::SeqCst);
                        if stopped || Instant::now() > give_up {
                            return stopped;
                        }
                        yield_now();
                    }
                })
            })
            .collect()
    };
    while started.load(Ordering::SeqCst) < busy.len() {
        std::thread::sleep(Duration::from_millis(1));
    }
    busy
}

fn assert_stopped_by_flag(busy: Vec<greenhub::GreenThread<bool>>, what: &str) {
    for t in busy {
        assert!(
            t.wait().unwrap(),
            "{what} was not served while the worker switched locally"
        );
    }
}

#[test]
fn wakes_spawns_and_timers_from_outside_reach_a_worker_busy_with_local_switches() {
    // may takes these through a global queue that a worker drains only when its local queue is
    // empty; greenhub's switch budget makes a local streak give way.
    setup();
    let _watchdog = common::watchdog(Duration::from_secs(120));
    for ping_pong in [false, true] {
        for _ in 0..5 {
            // A wake from a plain OS thread.
            let stop = Arc::new(AtomicBool::new(false));
            let event = Event::<()>::new();
            let (e, s) = (event.clone(), stop.clone());
            let waiter = spawn(move || {
                e.wait().unwrap();
                s.store(true, Ordering::SeqCst);
            });
            common::await_waiters(event.id(), 1);
            let busy = keep_busy(ping_pong, &stop);
            event.set(()).unwrap();
            assert_stopped_by_flag(busy, "a wake from an OS thread");
            waiter.wait().unwrap();

            // A spawn from a plain OS thread.
            let stop = Arc::new(AtomicBool::new(false));
            let busy = keep_busy(ping_pong, &stop);
            let s = stop.clone();
            let fresh = spawn(move || s.store(true, Ordering::SeqCst));
            assert_stopped_by_flag(busy, "a spawn from an OS thread");
            fresh.wait().unwrap();

            // The end of a sleep (timers wake through the alarm thread).
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let sleeper = spawn(move || {
                sleep(Duration::from_millis(20)).unwrap();
                s.store(true, Ordering::SeqCst);
            });
            let busy = keep_busy(ping_pong, &stop);
            assert_stopped_by_flag(busy, "the end of a sleep");
            sleeper.wait().unwrap();
        }
    }
}

#[test]
fn round_robin_order_holds_through_long_streaks_and_outside_wakes() {
    // Long enough for the switch budget to drain the worker many times, with a sleeper and an
    // OS thread waking green threads from outside meanwhile: the yielders still take turns.
    setup();
    let _watchdog = common::watchdog(Duration::from_secs(120));
    const YIELDERS: usize = 4;
    const ROUNDS: usize = 50_000;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::with_capacity(YIELDERS * ROUNDS)));
    let turns_taken = {
        let log = log.clone();
        move || log.lock().unwrap().len()
    };
    // Each returns how many of its wake-ups came while the yielders were still at it.
    let (s, taken) = (stop.clone(), turns_taken.clone());
    let sleeper = spawn(move || {
        let mut naps_during = 0u32;
        while !s.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(1)).unwrap();
            naps_during += u32::from(taken() < YIELDERS * ROUNDS);
        }
        naps_during
    });
    let event = Event::<()>::new();
    let (e, taken) = (event.clone(), turns_taken.clone());
    let woken = spawn(move || {
        e.wait().unwrap();
        taken() < YIELDERS * ROUNDS
    });
    let l = log.clone();
    let (waker_stop, waker_event) = (stop.clone(), event.clone());
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(3));
        waker_event.set(()).unwrap();
        while !waker_stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    spawn(move || {
        let ts: Vec<_> = (0..YIELDERS)
            .map(|i| {
                let l = l.clone();
                spawn(move || {
                    for _ in 0..ROUNDS {
                        l.lock().unwrap().push(i);
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
    stop.store(true, Ordering::SeqCst);
    assert!(
        sleeper.wait().unwrap() > 0,
        "the sleeper never woke during the streak"
    );
    assert!(
        woken.wait().unwrap(),
        "the OS thread's wake waited for the streak to end"
    );
    waker.join().unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), YIELDERS * ROUNDS);
    for (n, &i) in log.iter().enumerate() {
        assert_eq!(i, n % YIELDERS, "turn {n} out of order");
    }
}
