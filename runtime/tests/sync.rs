//! Event, Semaphore and Mutex: many waiters, set-once, errors, timeouts and kills in the middle
//! of waits (no lost wake-ups, no leaked permits), fairness, OS threads, deadline scopes and the
//! registry.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{await_waiters, object, waiting_on};
use greenhub::ext::{ObjectKind, WaitOn};
use greenhub::{
    Event, Mutex, Semaphore, TimedOut, event::AlreadySet, event::EventError,
    semaphore::OverRelease, semaphore::Permit, spawn, thread::JoinError, with_timeout,
};

// ---------------------------------------------------------------------------------------------
// Event

#[test]
fn every_waiter_of_an_event_gets_the_value_green_and_os_threads_alike() {
    for _ in 0..20 {
        let ev: Event<String> = Event::new();
        let green: Vec<_> = (0..200)
            .map(|_| {
                let ev = ev.clone();
                spawn(move || ev.wait())
            })
            .collect();
        let os: Vec<_> = (0..4)
            .map(|_| {
                let ev = ev.clone();
                std::thread::spawn(move || ev.wait())
            })
            .collect();
        // Set from a plain OS thread: the green waiters must still wake.
        let setter = {
            let ev = ev.clone();
            std::thread::spawn(move || ev.set("ready".to_string()).unwrap())
        };
        setter.join().unwrap();
        for w in green {
            assert_eq!(w.wait().unwrap(), Ok("ready".to_string()));
        }
        for w in os {
            assert_eq!(w.join().unwrap(), Ok("ready".to_string()));
        }
        assert_eq!(object(ev.id()).waiters, 0);
    }
}

#[test]
fn an_event_is_set_once_and_reset_allows_another_value() {
    let ev: Event<u32, String> = Event::new();
    assert!(!ev.is_set());
    assert_eq!(ev.peek(), None);
    ev.set(1).unwrap();
    assert_eq!(ev.set(2), Err(AlreadySet(2)));
    assert_eq!(
        ev.set_error("late".into()),
        Err(AlreadySet("late".to_string()))
    );
    assert_eq!(
        ev.wait(),
        Ok(1),
        "the rejected values must not replace the first"
    );
    assert_eq!(ev.peek(), Some(Ok(1)));

    assert_eq!(ev.reset(), Some(Ok(1)));
    assert!(!ev.is_set());
    assert_eq!(
        ev.wait_timeout(Duration::from_millis(5)),
        Err(EventError::TimedOut)
    );
    ev.set_error("broken".into()).unwrap();
    assert_eq!(ev.wait(), Err(EventError::Failed("broken".to_string())));
    assert_eq!(ev.reset(), Some(Err("broken".to_string())));
    assert_eq!(ev.reset(), None);
}

#[test]
fn an_error_reaches_every_waiter() {
    let ev: Event<(), std::io::ErrorKind> = Event::new();
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let ev = ev.clone();
            spawn(move || ev.wait())
        })
        .collect();
    await_waiters(ev.id(), 50);
    ev.set_error(std::io::ErrorKind::ConnectionReset).unwrap();
    for w in waiters {
        assert_eq!(
            w.wait().unwrap(),
            Err(EventError::Failed(std::io::ErrorKind::ConnectionReset))
        );
    }
}

#[test]
fn event_waits_honour_timeouts_deadlines_and_kill_without_losing_the_wake_up() {
    for _ in 0..20 {
        let ev: Event<u64> = Event::new();
        // Waiters that time out, waiters inside deadline scopes, waiters that get killed, and
        // waiters that stay: only the last kind must see the value, and must see it.
        let impatient: Vec<_> = (0..20)
            .map(|i| {
                let ev = ev.clone();
                spawn(move || ev.wait_timeout(Duration::from_micros(200 + 10 * i)))
            })
            .collect();
        let scoped: Vec<_> = (0..20)
            .map(|_| {
                let ev = ev.clone();
                spawn(move || with_timeout(Duration::from_micros(300), || ev.wait()))
            })
            .collect();
        let victims: Vec<_> = (0..20)
            .map(|_| {
                let ev = ev.clone();
                spawn(move || ev.wait())
            })
            .collect();
        let patient: Vec<_> = (0..20)
            .map(|_| {
                let ev = ev.clone();
                spawn(move || ev.wait())
            })
            .collect();
        for v in &victims {
            v.kill();
        }
        for t in impatient {
            assert_eq!(t.wait().unwrap(), Err(EventError::TimedOut));
        }
        for t in scoped {
            // Inside the scope the wait returned a timed-out error, and the scope returns it.
            assert_eq!(t.wait().unwrap(), Err(EventError::TimedOut));
        }
        for v in victims {
            assert!(matches!(v.wait(), Err(JoinError::Killed { .. })));
        }
        ev.set(42).unwrap();
        for t in patient {
            assert_eq!(t.wait().unwrap(), Ok(42));
        }
        assert_eq!(object(ev.id()).waiters, 0);
    }
}

#[test]
fn a_waiter_shows_as_waiting_on_the_event_with_its_counts() {
    let ev: Event = Event::new().named("started");
    let w = {
        let ev = ev.clone();
        spawn(move || ev.wait())
    };
    await_waiters(ev.id(), 1);
    assert_eq!(
        waiting_on(w.id()),
        Some(WaitOn::Object {
            object: ObjectKind::EVENT,
            id: ev.id()
        })
    );
    let info = object(ev.id());
    assert_eq!(info.kind, ObjectKind::EVENT);
    assert_eq!(info.name.as_deref(), Some("started"));
    assert_eq!(info.counts["set"], 0);
    ev.set(()).unwrap();
    w.wait().unwrap().unwrap();
    assert_eq!(object(ev.id()).counts["set"], 1);
}

// ---------------------------------------------------------------------------------------------
// Semaphore

#[test]
fn a_semaphore_never_admits_more_than_its_permits_and_loses_none() {
    const PERMITS: usize = 3;
    for _ in 0..10 {
        let sem = Semaphore::new(PERMITS);
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let entries = Arc::new(AtomicUsize::new(0));
        let green: Vec<_> = (0..100)
            .map(|_| {
                let (sem, inside, peak, entries) =
                    (sem.clone(), inside.clone(), peak.clone(), entries.clone());
                spawn(move || {
                    for _ in 0..20 {
                        let _p = sem.acquire().unwrap();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        greenhub::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        entries.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // OS threads compete for the same permits.
        let os: Vec<_> = (0..2)
            .map(|_| {
                let (sem, inside, peak, entries) =
                    (sem.clone(), inside.clone(), peak.clone(), entries.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _p = sem.acquire().unwrap();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        entries.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for g in green {
            g.wait().unwrap();
        }
        for t in os {
            t.join().unwrap();
        }
        assert!(
            peak.load(Ordering::SeqCst) <= PERMITS,
            "peak {peak:?} > {PERMITS}"
        );
        assert_eq!(entries.load(Ordering::SeqCst), 100 * 20 + 2 * 200);
        assert_eq!(sem.available(), PERMITS);
        assert_eq!(sem.waiting(), 0);
    }
}

#[test]
fn timeouts_and_kills_in_the_middle_of_acquire_leak_no_permit() {
    const PERMITS: usize = 2;
    for round in 0..30u64 {
        let sem = Semaphore::bounded(PERMITS);
        let done = Arc::new(AtomicUsize::new(0));
        let holders: Vec<_> = (0..40)
            .map(|i| {
                let (sem, done) = (sem.clone(), done.clone());
                spawn(move || {
                    loop {
                        // A mix of timed, scoped and plain waits, all racing with releases.
                        let got = match i % 3 {
                            0 => sem.acquire_timeout(Duration::from_micros(50 + 7 * i)),
                            1 => with_timeout(Duration::from_micros(80 + 5 * i), || sem.acquire()),
                            _ => sem.acquire(),
                        };
                        if let Ok(_p) = got {
                            greenhub::sleep(Duration::from_micros(20 * (round % 4))).unwrap();
                            if done.fetch_add(1, Ordering::SeqCst) > 300 {
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        for h in holders.iter().step_by(2) {
            h.kill();
        }
        for (i, h) in holders.into_iter().enumerate() {
            let r = h.wait();
            if i % 2 == 1 {
                r.unwrap();
            }
        }
        // Every permit came back: none leaked to a killed or timed-out waiter.
        assert_eq!(sem.available(), PERMITS, "round {round}");
        assert_eq!(sem.waiting(), 0);
        let p1 = sem.try_acquire().unwrap();
        let p2 = sem.try_acquire().unwrap();
        assert!(sem.try_acquire().is_none());
        drop((p1, p2));
    }
}

#[test]
fn a_bounded_semaphore_refuses_over_release_a_plain_one_grows() {
    let bounded = Semaphore::bounded(2);
    assert_eq!(bounded.release(), Err(OverRelease { limit: 2 }));
    assert_eq!(bounded.available(), 2);
    let p = bounded.acquire().unwrap();
    p.forget();
    assert_eq!(bounded.available(), 1);
    bounded.release().unwrap();
    assert_eq!(bounded.available(), 2);
    assert!(bounded.release().is_err());

    let plain = Semaphore::new(0);
    assert!(plain.try_acquire().is_none());
    plain.release().unwrap();
    plain.release().unwrap();
    assert_eq!(plain.available(), 2);
}

#[test]
fn a_released_permit_goes_to_the_first_waiter_not_to_a_newcomer() {
    for _ in 0..10 {
        let sem = Semaphore::new(0);
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let waiters: Vec<_> = (0..8)
            .map(|i| {
                let (s, order) = (sem.clone(), order.clone());
                let w = spawn(move || {
                    let p = s.acquire().unwrap();
                    order.lock().push(i);
                    p.forget();
                });
                await_waiters(sem.id(), i + 1);
                w
            })
            .collect();
        for k in 1..=8 {
            sem.release().unwrap();
            // A barging try_acquire right after a release must not steal the handed-off permit.
            assert!(sem.try_acquire().is_none());
            // One release at a time, so the order recorded is the order permits were granted.
            while order.lock().len() < k {
                std::thread::yield_now();
            }
        }
        for w in waiters {
            w.wait().unwrap();
        }
        assert_eq!(*order.lock(), (0..8).collect::<Vec<_>>());
    }
}

#[test]
fn semaphore_waits_honour_deadline_scopes_and_show_in_the_registry() {
    let sem = Semaphore::new(0).named("slots");
    let r = with_timeout(Duration::from_millis(5), || sem.acquire().map(drop));
    assert_eq!(r, Err(TimedOut));
    let r = with_timeout(Duration::from_millis(5), || {
        sem.acquire_timeout(Duration::from_secs(10)).map(drop)
    });
    // The scope is earlier than the wait's own timeout.
    assert_eq!(r, Err(TimedOut));
    assert_eq!(sem.waiting(), 0);
    let w = {
        let s = sem.clone();
        spawn(move || s.acquire().map(Permit::forget))
    };
    await_waiters(sem.id(), 1);
    assert_eq!(
        waiting_on(w.id()),
        Some(WaitOn::Object {
            object: ObjectKind::SEMAPHORE,
            id: sem.id()
        })
    );
    let info = object(sem.id());
    assert_eq!(info.name.as_deref(), Some("slots"));
    assert_eq!(info.counts["permits"], 0);
    sem.release().unwrap();
    w.wait().unwrap().unwrap();
    assert_eq!(object(sem.id()).totals["acquired"], 1);
}

// ---------------------------------------------------------------------------------------------
// Mutex

#[test]
fn a_green_mutex_held_across_yields_loses_no_update() {
    for _ in 0..10 {
        let m = Arc::new(Mutex::new(0u64));
        let green: Vec<_> = (0..100)
            .map(|_| {
                let m = m.clone();
                spawn(move || {
                    for _ in 0..50 {
                        let mut g = m.lock().unwrap();
                        let seen = *g;
                        greenhub::yield_now();
                        *g = seen + 1;
                    }
                })
            })
            .collect();
        let os: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let mut g = m.lock().unwrap();
                        let seen = *g;
                        std::thread::yield_now();
                        *g = seen + 1;
                    }
                })
            })
            .collect();
        for g in green {
            g.wait().unwrap();
        }
        for t in os {
            t.join().unwrap();
        }
        assert_eq!(*m.lock().unwrap(), 100 * 50 + 2 * 500);
        assert!(!m.is_locked());
    }
}

#[test]
fn a_killed_or_panicking_holder_releases_the_mutex() {
    let m = Arc::new(Mutex::new(Vec::<u32>::new()).named("state"));
    let holder = {
        let m = m.clone();
        spawn(move || {
            let mut g = m.lock().unwrap();
            g.push(1);
            greenhub::sleep(Duration::from_secs(3600)).unwrap();
            g.push(99);
        })
    };
    while !m.is_locked() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let info = object(m.id());
    assert_eq!(info.kind, ObjectKind::MUTEX);
    assert_eq!(info.counts["locked"], 1);
    assert_eq!(info.detail.as_ref().unwrap()["holder"], holder.id());

    let waiter = {
        let m = m.clone();
        spawn(move || m.lock().unwrap().clone())
    };
    await_waiters(m.id(), 1);
    assert_eq!(
        waiting_on(waiter.id()),
        Some(WaitOn::Object {
            object: ObjectKind::MUTEX,
            id: m.id()
        })
    );
    holder.kill();
    assert!(matches!(holder.wait(), Err(JoinError::Killed { .. })));
    assert_eq!(waiter.wait().unwrap(), vec![1]);

    let panicker = {
        let m = m.clone();
        spawn(move || {
            let _g = m.lock().unwrap();
            panic!("boom while holding the lock");
        })
    };
    assert!(matches!(panicker.wait(), Err(JoinError::Panicked { .. })));
    assert!(
        m.try_lock().is_some(),
        "no poisoning: the lock is free and usable"
    );
}

#[test]
fn mutex_lock_timeout_and_deadline_scopes() {
    let m = Mutex::new(5);
    let g = m.lock().unwrap();
    assert!(m.try_lock().is_none());
    assert_eq!(
        m.lock_timeout(Duration::from_millis(5)).err(),
        Some(TimedOut)
    );
    assert_eq!(
        with_timeout(Duration::from_millis(5), || m.lock().map(|_| ())),
        Err(TimedOut)
    );
    drop(g);
    assert_eq!(*m.lock_timeout(Duration::from_millis(5)).unwrap(), 5);
    let mut m = m;
    *m.get_mut() += 1;
    assert_eq!(m.into_inner(), 6);
}

#[test]
fn timeouts_and_kills_among_lock_waiters_never_leave_it_held() {
    for _ in 0..30 {
        let m = Arc::new(Mutex::new(0u64));
        let increments = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..30)
            .map(|i| {
                let (m, increments) = (m.clone(), increments.clone());
                spawn(move || {
                    for _ in 0..30 {
                        let g = if i % 2 == 0 {
                            m.lock_timeout(Duration::from_micros(30 + i))
                        } else {
                            m.lock()
                        };
                        if let Ok(mut g) = g {
                            *g += 1;
                            increments.fetch_add(1, Ordering::SeqCst);
                            // A kill lands here, with the lock held.
                            greenhub::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in threads.iter().step_by(3) {
            t.kill();
        }
        for t in threads {
            let _ = t.wait();
        }
        assert!(!m.is_locked());
        // Every increment made under the lock is there exactly once.
        assert_eq!(
            *m.lock().unwrap() as usize,
            increments.load(Ordering::SeqCst)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fairness

/// Runs `threads` green threads that each take a lock in a loop (`locked` runs its argument
/// while holding it, across a switch) until `total` acquisitions were made in all, and returns
/// each thread's count.
///
/// All threads first wait at a gate opened from a green thread, so that they all contend from
/// the start: how `may` first schedules newly spawned threads is not what this measures.
fn contend(
    threads: usize,
    total: usize,
    locked: impl Fn(&mut dyn FnMut() -> bool) -> bool + Send + Sync + 'static,
) -> Vec<usize> {
    let locked = Arc::new(locked);
    let gate: Event = Event::new();
    let taken = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (locked, gate, taken) = (locked.clone(), gate.clone(), taken.clone());
            spawn(move || {
                gate.wait().unwrap();
                let mut mine = 0usize;
                let mut turn = || {
                    if taken.fetch_add(1, Ordering::SeqCst) >= total {
                        return false;
                    }
                    mine += 1;
                    // Hold across a switch so that the others queue up behind.
                    greenhub::yield_now();
                    true
                };
                while locked(&mut turn) {}
                mine
            })
        })
        .collect();
    await_waiters(gate.id(), threads);
    let opener = gate.clone();
    spawn(move || opener.set(()).unwrap()).wait().unwrap();
    let counts: Vec<usize> = handles.into_iter().map(|h| h.wait().unwrap()).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        total,
        "acquisitions lost or counted twice"
    );
    counts
}

#[test]
fn no_waiter_starves_under_contention() {
    // With arrival-order hand-off each thread gets close to its share; none is starved.
    const THREADS: usize = 50;
    const TOTAL: usize = 50_000;
    let m = Arc::new(Mutex::new(()));
    let counts = contend(THREADS, TOTAL, move |turn| {
        let _g = m.lock().unwrap();
        turn()
    });
    let min = *counts.iter().min().unwrap();
    assert!(
        min >= TOTAL / THREADS / 2,
        "a lock waiter was starved: {counts:?}"
    );
}

#[test]
fn no_semaphore_waiter_starves_under_contention() {
    const THREADS: usize = 40;
    const TOTAL: usize = 40_000;
    let sem = Semaphore::new(4);
    let counts = contend(THREADS, TOTAL, move |turn| {
        let _p = sem.acquire().unwrap();
        turn()
    });
    let min = *counts.iter().min().unwrap();
    assert!(
        min >= TOTAL / THREADS / 2,
        "a semaphore waiter was starved: {counts:?}"
    );
}

#[test]
fn rwlock_readers_share_writers_are_alone_and_no_write_is_lost() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let lock = Arc::new(greenhub::RwLock::new(0u64));
    let (reading, writing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let most_readers = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..200u64)
        .map(|i| {
            let (lock, reading, writing, most) = (
                lock.clone(),
                reading.clone(),
                writing.clone(),
                most_readers.clone(),
            );
            greenhub::spawn(move || {
                if i % 4 == 0 {
                    let mut w = lock.write().unwrap();
                    assert_eq!(
                        reading.load(Ordering::SeqCst),
                        0,
                        "a reader beside a writer"
                    );
                    assert_eq!(writing.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                    let seen = *w;
                    greenhub::yield_now();
                    *w = seen + 1;
                    writing.fetch_sub(1, Ordering::SeqCst);
                } else {
                    let r = lock.read().unwrap();
                    assert_eq!(
                        writing.load(Ordering::SeqCst),
                        0,
                        "a writer beside a reader"
                    );
                    let now = reading.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    greenhub::yield_now();
                    let _ = *r;
                    reading.fetch_sub(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.wait().unwrap();
    }
    assert_eq!(*lock.read().unwrap(), 50, "every write counted once");
    assert!(
        most_readers.load(Ordering::SeqCst) > 1,
        "readers never shared"
    );
}

#[test]
fn rwlock_serves_in_arrival_order_so_a_waiting_writer_is_not_starved() {
    let lock = Arc::new(greenhub::RwLock::new(()));
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let first = lock.read().unwrap();
    // A writer waits behind the reader; a reader that comes after waits behind the writer.
    let spawn = |name: &'static str, write: bool| {
        let (lock, order) = (lock.clone(), order.clone());
        let t = greenhub::spawn(move || {
            if write {
                let _w = lock.write().unwrap();
                order.lock().unwrap().push(name);
            } else {
                let _r = lock.read().unwrap();
                order.lock().unwrap().push(name);
            }
        });
        // Each is queued before the next comes.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while greenhub::inspect::snapshot()
            .threads
            .iter()
            .all(|th| th.id != t.id() || th.state != greenhub::inspect::ThreadState::Waiting)
        {
            assert!(std::time::Instant::now() < deadline, "{name} never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
        t
    };
    let w = spawn("writer", true);
    let r = spawn("late reader", false);
    assert!(
        lock.try_read().is_none(),
        "a reader may not pass a queued writer"
    );
    drop(first);
    w.wait().unwrap();
    r.wait().unwrap();
    assert_eq!(*order.lock().unwrap(), ["writer", "late reader"]);
}

#[test]
fn rwlock_timeouts_and_kills_lose_nothing() {
    let lock = Arc::new(greenhub::RwLock::new(0u32));
    let reader = lock.read().unwrap();
    assert!(lock.write_timeout(Duration::from_millis(20)).is_err());
    // A writer killed while it waits does not block the next one.
    let l = lock.clone();
    let doomed = greenhub::spawn(move || l.write().map(|_| ()));
    std::thread::sleep(Duration::from_millis(20));
    doomed.kill();
    assert!(doomed.wait().is_err());
    let l = lock.clone();
    let next = greenhub::spawn(move || {
        *l.write().unwrap() += 1;
    });
    drop(reader);
    next.wait().unwrap();
    assert_eq!(*lock.read().unwrap(), 1);
    assert!(lock.try_write().is_some(), "free again");
}

#[test]
fn condition_hands_every_item_to_exactly_one_consumer() {
    use std::collections::VecDeque;
    let shared = Arc::new((
        greenhub::Mutex::new((VecDeque::<u32>::new(), false)),
        greenhub::Condition::new(),
    ));
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let shared = shared.clone();
            greenhub::spawn(move || {
                let (lock, cond) = &*shared;
                let mut got = Vec::new();
                let mut g = lock.lock().unwrap();
                loop {
                    if let Some(item) = g.0.pop_front() {
                        got.push(item);
                        continue;
                    }
                    if g.1 {
                        return got;
                    }
                    g = cond.wait(g).unwrap();
                }
            })
        })
        .collect();
    for i in 0..2000u32 {
        let (lock, cond) = &*shared;
        lock.lock().unwrap().0.push_back(i);
        cond.notify_one();
        if i % 100 == 0 {
            greenhub::yield_now();
        }
    }
    {
        let (lock, cond) = &*shared;
        lock.lock().unwrap().1 = true;
        cond.notify_all();
    }
    let mut all: Vec<u32> = Vec::new();
    for c in consumers {
        let got = c.wait().unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "each consumer in order"
        );
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (0..2000).collect::<Vec<_>>(), "none lost, none twice");
}

#[test]
fn a_condition_wait_that_times_out_leaves_the_mutex_unlocked() {
    let lock = greenhub::Mutex::new(());
    let cond = greenhub::Condition::new();
    let g = lock.lock().unwrap();
    assert!(cond.wait_timeout(g, Duration::from_millis(20)).is_err());
    assert!(lock.try_lock().is_some(), "unlocked after the timeout");
    assert!(!cond.notify_one(), "nobody waits any more");
}

#[test]
fn rlock_is_reentrant_for_its_holder_and_exclusive_for_others() {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let lock = greenhub::RLock::new();
    let inside = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let (lock, inside, total) = (lock.clone(), inside.clone(), total.clone());
            greenhub::spawn(move || {
                let _outer = lock.lock().unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                // Re-entered across a wait: the same green thread, maybe another worker.
                greenhub::yield_now();
                let _inner = lock.lock().unwrap();
                let seen = total.load(Ordering::SeqCst);
                greenhub::yield_now();
                total.store(seen + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in threads {
        t.wait().unwrap();
    }
    assert_eq!(total.load(Ordering::SeqCst), 100);
    assert!(!lock.is_locked());
    // A plain OS thread is an owner too, and another one waits for it.
    let held = lock.lock().unwrap();
    let again = lock.try_lock();
    assert!(again.is_some(), "re-entrant on an OS thread");
    let other = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.lock_timeout(Duration::from_millis(20)).is_err())
    };
    assert!(other.join().unwrap(), "another thread got a held lock");
    drop(again);
    drop(held);
    // A waiter killed while it waits does not keep it from the next one.
    let holder = lock.lock().unwrap();
    let l = lock.clone();
    let doomed = greenhub::spawn(move || l.lock().map(|_| ()));
    std::thread::sleep(Duration::from_millis(20));
    doomed.kill();
    let _ = doomed.wait();
    drop(holder);
    let l = lock.clone();
    assert!(greenhub::spawn(move || l.lock().is_ok()).wait().unwrap());
    assert!(!lock.is_locked());
}
