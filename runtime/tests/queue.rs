//! Queues: delivery exactly once under load, orders, capacities, close, tasks, timeouts, kills,
//! fairness, deadline scopes and what the registry shows.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{await_waiters, object, waiting_on};
use greenhub::ext::{ObjectKind, WaitOn};
use greenhub::{Queue, TimedOut, queue::GetError, queue::PutError, spawn, with_timeout};

/// Checks that `got` holds every value of `0..n` exactly once.
fn assert_exactly_once(got: &[u64], n: u64) {
    let mut seen = vec![0u8; n as usize];
    for &v in got {
        assert!(v < n, "value {v} was never put");
        seen[v as usize] += 1;
    }
    let lost = seen.iter().filter(|&&c| c == 0).count();
    let dup = seen.iter().filter(|&&c| c > 1).count();
    assert_eq!(
        (lost, dup),
        (0, 0),
        "{lost} values lost, {dup} delivered twice"
    );
}

#[test]
fn a_million_items_through_hundreds_of_green_threads_each_delivered_once_in_order_per_producer() {
    let _watchdog = common::watchdog(Duration::from_secs(60));
    const GREEN_PRODUCERS: u64 = 196;
    const OS_PRODUCERS: u64 = 4;
    const PER: u64 = 5_000;
    const N: u64 = (GREEN_PRODUCERS + OS_PRODUCERS) * PER;
    let q: Queue<u64> = Queue::bounded(1024);

    let consumers: Vec<_> = (0..100)
        .map(|_| {
            let q = q.clone();
            spawn(move || {
                let mut got = Vec::new();
                while let Ok(v) = q.get() {
                    got.push(v);
                }
                got
            })
        })
        .collect();
    let green: Vec<_> = (0..GREEN_PRODUCERS)
        .map(|p| {
            let q = q.clone();
            spawn(move || {
                for i in 0..PER {
                    q.put(p * PER + i).unwrap();
                }
            })
        })
        .collect();
    let os: Vec<_> = (GREEN_PRODUCERS..GREEN_PRODUCERS + OS_PRODUCERS)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..PER {
                    q.put(p * PER + i).unwrap();
                }
            })
        })
        .collect();
    for p in green {
        p.wait().unwrap();
    }
    for p in os {
        p.join().unwrap();
    }
    q.close();

    let mut all = Vec::with_capacity(N as usize);
    for c in consumers {
        let got = c.wait().unwrap();
        // One consumer takes items in queue order, so each producer's items reach it in the
        // order they were put.
        let mut last = vec![None; (GREEN_PRODUCERS + OS_PRODUCERS) as usize];
        for &v in &got {
            let p = (v / PER) as usize;
            assert!(
                last[p].is_none_or(|l| l < v),
                "producer {p}: {v} after {:?}",
                last[p]
            );
            last[p] = Some(v);
        }
        all.extend(got);
    }
    assert_exactly_once(&all, N);
    assert_eq!(q.len(), 0);
    assert_eq!(object(q.id()).totals["puts"], N);
    assert_eq!(object(q.id()).totals["gets"], N);
}

#[test]
fn os_threads_consume_what_green_threads_produce() {
    for round in 0..5 {
        let n = 20_000u64;
        let q: Queue<u64> = Queue::bounded(if round % 2 == 0 { 0 } else { 16 });
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(v) = q.get() {
                        got.push(v);
                    }
                    got
                })
            })
            .collect();
        let producers: Vec<_> = (0..50)
            .map(|p| {
                let q = q.clone();
                spawn(move || {
                    for i in 0..n / 50 {
                        q.put(p * (n / 50) + i).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.wait().unwrap();
        }
        q.close();
        let all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        assert_exactly_once(&all, n);
    }
}

#[test]
fn fifo_lifo_and_priority_orders() {
    let fifo: Queue<u32> = Queue::unbounded();
    let lifo: Queue<u32> = Queue::builder().lifo().build();
    let prio: Queue<u32> = Queue::builder().priority().build();
    for v in [3, 1, 4, 1, 5, 9, 2, 6] {
        fifo.put(v).unwrap();
        lifo.put(v).unwrap();
        prio.put(v).unwrap();
    }
    let drain = |q: &Queue<u32>| std::iter::from_fn(|| q.try_get().ok()).collect::<Vec<_>>();
    assert_eq!(drain(&fifo), [3, 1, 4, 1, 5, 9, 2, 6]);
    assert_eq!(drain(&lifo), [6, 2, 9, 5, 1, 4, 1, 3]);
    assert_eq!(drain(&prio), [1, 1, 2, 3, 4, 5, 6, 9]);
    assert_eq!(fifo.try_get(), Err(GetError::Empty));
}

#[test]
fn bounded_put_waits_while_full_and_try_put_says_full() {
    let q: Queue<u32> = Queue::bounded(2);
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert!(matches!(q.try_put(3), Err(PutError::Full(3))));
    let t0 = std::time::Instant::now();
    match q.put_timeout(3, Duration::from_millis(30)) {
        Err(PutError::TimedOut(3)) => {}
        other => panic!("expected TimedOut(3), got {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(30));

    let putter = {
        let q = q.clone();
        spawn(move || q.put(3))
    };
    await_waiters(q.id(), 1);
    assert_eq!(
        waiting_on(putter.id()),
        Some(WaitOn::Object {
            object: ObjectKind::QUEUE,
            id: q.id()
        })
    );
    assert_eq!(object(q.id()).counts["putters"], 1);
    assert_eq!(q.get(), Ok(1)); // makes room: the waiting put completes
    putter.wait().unwrap().unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q.get(), Ok(2));
    assert_eq!(q.get(), Ok(3));
}

#[test]
fn rendezvous_put_completes_only_when_taken() {
    let q: Queue<&'static str> = Queue::bounded(0);
    assert!(matches!(q.try_put("x"), Err(PutError::Full("x"))));
    let done = Arc::new(AtomicUsize::new(0));
    let putter = {
        let (q, done) = (q.clone(), done.clone());
        spawn(move || {
            q.put("hello").unwrap();
            done.store(1, Ordering::SeqCst);
        })
    };
    await_waiters(q.id(), 1);
    greenhub::sleep(Duration::from_millis(10)).unwrap();
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "put returned before the get"
    );
    assert_eq!(q.len(), 0);
    assert_eq!(q.get(), Ok("hello"));
    putter.wait().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 1);

    // A waiting getter makes try_put succeed.
    let getter = {
        let q = q.clone();
        spawn(move || q.get())
    };
    await_waiters(q.id(), 1);
    q.try_put("direct").unwrap();
    assert_eq!(getter.wait().unwrap(), Ok("direct"));
}

#[test]
fn close_wakes_every_waiter_and_getters_drain_first() {
    let q: Queue<u32> = Queue::bounded(1);
    q.put(7).unwrap();
    let putters: Vec<_> = (0..3)
        .map(|i| {
            let q = q.clone();
            spawn(move || q.put(100 + i))
        })
        .collect();
    await_waiters(q.id(), 3);
    q.close();
    for (i, p) in putters.into_iter().enumerate() {
        match p.wait().unwrap() {
            Err(PutError::Closed(v)) => assert_eq!(v, 100 + i as u32),
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    assert!(matches!(q.put(1), Err(PutError::Closed(1))));
    assert_eq!(q.get(), Ok(7)); // drained first
    assert_eq!(q.get(), Err(GetError::Closed));

    let empty: Queue<u32> = Queue::unbounded();
    let getters: Vec<_> = (0..5)
        .map(|_| {
            let q = empty.clone();
            spawn(move || q.get())
        })
        .collect();
    await_waiters(empty.id(), 5);
    empty.close();
    for g in getters {
        assert_eq!(g.wait().unwrap(), Err(GetError::Closed));
    }
    assert_eq!(empty.try_get(), Err(GetError::Closed));
}

#[test]
fn join_waits_for_every_task_done() {
    let q: Queue<u32> = Queue::unbounded();
    assert_eq!(q.task_done(), Err(greenhub::queue::TaskDoneError));
    for i in 0..100 {
        q.put(i).unwrap();
    }
    let processed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let (q, processed) = (q.clone(), processed.clone());
            spawn(move || {
                while let Ok(_item) = q.get() {
                    greenhub::sleep(Duration::from_micros(200)).unwrap();
                    processed.fetch_add(1, Ordering::SeqCst);
                    q.task_done().unwrap();
                }
            })
        })
        .collect();
    assert_eq!(q.join_timeout(Duration::from_micros(100)), Err(TimedOut));
    q.join().unwrap();
    assert_eq!(processed.load(Ordering::SeqCst), 100);
    assert_eq!(q.unfinished(), 0);
    q.close();
    for w in workers {
        w.wait().unwrap();
    }
}

#[test]
fn getters_are_served_in_arrival_order() {
    for _ in 0..20 {
        let q: Queue<usize> = Queue::unbounded();
        let getters: Vec<_> = (0..8)
            .map(|i| {
                let qc = q.clone();
                let g = spawn(move || qc.get().unwrap());
                await_waiters(q.id(), i + 1);
                g
            })
            .collect();
        for v in 0..8 {
            q.put(v).unwrap();
        }
        for (i, g) in getters.into_iter().enumerate() {
            assert_eq!(g.wait().unwrap(), i);
        }
    }
}

#[test]
fn putters_are_served_in_arrival_order() {
    let q: Queue<usize> = Queue::bounded(1);
    q.put(usize::MAX).unwrap();
    let putters: Vec<_> = (0..8)
        .map(|i| {
            let qc = q.clone();
            let p = spawn(move || qc.put(i).unwrap());
            await_waiters(q.id(), i + 1);
            p
        })
        .collect();
    assert_eq!(q.get(), Ok(usize::MAX));
    for i in 0..8 {
        assert_eq!(q.get(), Ok(i));
    }
    for p in putters {
        p.wait().unwrap();
    }
}

#[test]
fn timeouts_and_kills_in_the_middle_of_waits_lose_nothing() {
    for round in 0..30u64 {
        let n = 2_000u64;
        let q: Queue<u64> = Queue::bounded(if round % 3 == 0 { 0 } else { 4 });
        let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
        // Impatient getters that time out all the time, and getters that get killed.
        let impatient: Vec<_> = (0..20)
            .map(|i| {
                let (q, received) = (q.clone(), received.clone());
                spawn(move || {
                    loop {
                        match q.get_timeout(Duration::from_micros(100 + 50 * i)) {
                            Ok(v) => received.lock().push(v),
                            Err(GetError::TimedOut) => {}
                            Err(GetError::Closed) => return,
                            Err(GetError::Empty) => unreachable!(),
                        }
                    }
                })
            })
            .collect();
        let victims: Vec<_> = (0..20)
            .map(|_| {
                let (q, received) = (q.clone(), received.clone());
                spawn(move || {
                    while let Ok(v) = q.get() {
                        received.lock().push(v);
                    }
                })
            })
            .collect();
        // Putters with short timeouts retry what comes back.
        let producer = {
            let q = q.clone();
            spawn(move || {
                for v in 0..n {
                    let mut item = v;
                    loop {
                        match q.put_timeout(item, Duration::from_micros(300)) {
                            Ok(()) => break,
                            Err(PutError::TimedOut(back)) => item = back,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        };
        for (i, v) in victims.iter().enumerate() {
            if i % 2 == 0 {
                greenhub::sleep(Duration::from_micros(200)).unwrap();
                v.kill();
            }
        }
        producer.wait().unwrap();
        q.close();
        for t in impatient {
            t.wait().unwrap();
        }
        for v in victims {
            let _ = v.wait();
        }
        let mut all = received.lock().clone();
        all.extend(std::iter::from_fn(|| q.try_get().ok()));
        assert_exactly_once(&all, n);
    }
}

#[test]
fn every_queue_wait_honours_deadline_scopes() {
    // Inside the scope each wait returns its own timed-out error, and a put's item comes
    // back with it; the scope returns what the closure returned.
    let q: Queue<u32> = Queue::bounded(1);
    let r = with_timeout(Duration::from_millis(10), || q.get());
    assert_eq!(r, Err(GetError::TimedOut));
    q.put(1).unwrap();
    let r = with_timeout(Duration::from_millis(10), || q.put(2));
    assert!(matches!(r, Err(PutError::TimedOut(2))), "{r:?}");
    // The wait's own timeout is longer than the scope: the scope wins.
    let t0 = std::time::Instant::now();
    let r = with_timeout(Duration::from_millis(10), || {
        q.put_timeout(3, Duration::from_secs(5))
    });
    assert!(matches!(r, Err(PutError::TimedOut(3))), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let r = with_timeout(Duration::from_millis(10), || q.join());
    assert_eq!(r, Err(TimedOut));
    assert_eq!(q.len(), 1);
    assert_eq!(
        object(q.id()).waiters,
        0,
        "a timed-out waiter is still counted"
    );
}

#[test]
fn a_killed_waiter_unwinds_and_the_queue_stays_usable() {
    let q: Queue<u32> = Queue::unbounded();
    let g = {
        let q = q.clone();
        spawn(move || q.get())
    };
    await_waiters(q.id(), 1);
    g.kill();
    assert!(matches!(
        g.wait(),
        Err(greenhub::thread::JoinError::Killed { .. })
    ));
    assert_eq!(object(q.id()).waiters, 0);
    q.put(5).unwrap();
    assert_eq!(q.get(), Ok(5));
}

#[test]
fn the_snapshot_shows_the_queue_and_its_counts() {
    let q: Queue<u32> = Queue::bounded(8).named("jobs");
    q.put(1).unwrap();
    q.put(2).unwrap();
    let info = object(q.id());
    assert_eq!(info.kind, ObjectKind::QUEUE);
    assert_eq!(info.name.as_deref(), Some("jobs"));
    assert_eq!(info.counts["len"], 2);
    assert_eq!(info.counts["capacity"], 8);
    assert_eq!(info.counts["unfinished"], 2);
    assert!(greenhub::inspect::format_run_info().contains("\"jobs\""));
    let id = q.id();
    drop(q);
    assert!(
        greenhub::inspect::snapshot()
            .objects
            .iter()
            .all(|o| o.id != id)
    );
}
