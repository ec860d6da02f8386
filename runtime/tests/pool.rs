//! GreenPool and GreenPile: backpressure, member spawns, imap orders and laziness, waitall,
//! resize, failures that free their slot, deadline scopes, kills and the registry.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{await_waiters, object, waiting_on};
use greenhub::ext::{ObjectKind, WaitOn};
use greenhub::{
    Event, GreenPile, GreenPool, greenpool::PoolError, spawn, thread::JoinError, with_timeout,
};

/// Counts threads inside a section and remembers the peak.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

#[test]
fn spawn_waits_while_the_pool_is_full_and_every_task_runs_once() {
    for _ in 0..10 {
        let pool = GreenPool::new(5);
        let gauge = Gauge::default();
        let ran = Arc::new(parking_lot::Mutex::new(vec![0u8; 500]));
        for i in 0..500 {
            let (gauge, ran) = (gauge.clone(), ran.clone());
            pool.spawn(move || {
                gauge.enter();
                greenhub::yield_now();
                ran.lock()[i] += 1;
                gauge.leave();
            })
            .unwrap();
            assert!(pool.running() <= 5);
        }
        pool.waitall().unwrap();
        assert!(gauge.peak() <= 5, "peak {} in a pool of 5", gauge.peak());
        assert!(
            ran.lock().iter().all(|&c| c == 1),
            "a task ran twice or never"
        );
        assert_eq!((pool.running(), pool.free(), pool.waiting()), (0, 5, 0));
    }
}

#[test]
fn many_spawners_share_a_pool_from_green_and_os_threads() {
    let pool = GreenPool::new(8);
    let gauge = Gauge::default();
    let total = Arc::new(AtomicUsize::new(0));
    let feeders = |i: usize| {
        let (pool, gauge, total) = (pool.clone(), gauge.clone(), total.clone());
        move || {
            for _ in 0..100 {
                let (gauge, total) = (gauge.clone(), total.clone());
                pool.spawn(move || {
                    gauge.enter();
                    greenhub::sleep(Duration::from_micros(50 * (i as u64 % 3))).unwrap();
                    total.fetch_add(1, Ordering::SeqCst);
                    gauge.leave();
                })
                .unwrap();
            }
        }
    };
    let green: Vec<_> = (0..20).map(|i| spawn(feeders(i))).collect();
    let os: Vec<_> = (0..2).map(|i| std::thread::spawn(feeders(i))).collect();
    for g in green {
        g.wait().unwrap();
    }
    for t in os {
        t.join().unwrap();
    }
    pool.waitall().unwrap();
    assert_eq!(total.load(Ordering::SeqCst), 22 * 100);
    assert!(gauge.peak() <= 8);
    assert_eq!(pool.running(), 0);
}

#[test]
fn try_spawn_on_a_full_pool_is_refused_without_waiting() {
    let pool = GreenPool::new(1);
    let gate: Event = Event::new();
    let g = gate.clone();
    pool.spawn(move || g.wait().unwrap()).unwrap();
    assert!(matches!(pool.try_spawn(|| ()), Err(PoolError::Full)));
    assert_eq!(pool.free(), 0);
    gate.set(()).unwrap();
    pool.waitall().unwrap();
    assert_eq!(pool.try_spawn(|| 3).unwrap().wait().unwrap(), 3);
}

#[test]
fn a_spawn_from_inside_a_full_pool_does_not_deadlock() {
    // Every member spawns a child into the same full pool and waits for it: a pool that made
    // members wait for a slot would deadlock here.
    let pool = GreenPool::new(4);
    let parents: Vec<_> = (0..4)
        .map(|i| {
            let inner = pool.clone();
            pool.spawn(move || {
                let child = inner.spawn(move || i * 10).unwrap();
                let grandchild = inner.spawn(move || i * 100).unwrap();
                child.wait().unwrap() + grandchild.wait().unwrap()
            })
            .unwrap()
        })
        .collect();
    let got: Vec<_> = parents.into_iter().map(|p| p.wait().unwrap()).collect();
    assert_eq!(got, vec![0, 110, 220, 330]);
    pool.waitall().unwrap();
    assert_eq!(pool.running(), 0);
}

#[test]
fn imap_yields_results_in_input_order_lazily() {
    let pool = GreenPool::new(4);
    let taken = Arc::new(AtomicUsize::new(0));
    let items = {
        let taken = taken.clone();
        (0..200u64).inspect(move |_| {
            taken.fetch_add(1, Ordering::SeqCst);
        })
    };
    // Later items finish first: the order must still be the input's.
    let mut it = pool.imap(items, |n| {
        greenhub::sleep(Duration::from_micros(200 - n)).unwrap();
        n * n
    });
    assert_eq!(
        taken.load(Ordering::SeqCst),
        0,
        "nothing is taken before the first next()"
    );
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert!(
        taken.load(Ordering::SeqCst) <= 5,
        "imap ran ahead of its window"
    );
    let rest: Vec<u64> = it.map(Result::unwrap).collect();
    assert_eq!(rest.len(), 199);
    assert!(
        rest.iter().zip(1u64..).all(|(&r, n)| r == n * n),
        "out of order"
    );
    assert_eq!(pool.running(), 0);
}

#[test]
fn imap_unordered_yields_every_result_once_as_threads_end() {
    let pool = GreenPool::new(16);
    let gauge = Gauge::default();
    let g = gauge.clone();
    let mut got: Vec<u64> = pool
        .imap_unordered(0..2_000u64, move |n| {
            g.enter();
            greenhub::sleep(Duration::from_micros(n % 7 * 30)).unwrap();
            g.leave();
            n
        })
        .map(Result::unwrap)
        .collect();
    assert!(gauge.peak() <= 16);
    assert_eq!(got.len(), 2_000, "results lost or duplicated");
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 2_000, "a result came twice");
}

#[test]
fn a_panicking_or_killed_task_frees_its_slot_and_imap_reports_it() {
    let pool = GreenPool::new(2);
    let r: Vec<_> = pool
        .imap(0..6u32, |n| {
            if n == 3 {
                panic!("task {n} failed");
            }
            n
        })
        .collect();
    assert_eq!(r.len(), 6);
    assert!(
        matches!(&r[3], Err(PoolError::Failed(JoinError::Panicked { .. }))),
        "{:?}",
        r[3]
    );
    assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 5);
    assert_eq!(pool.running(), 0);

    let unordered: Vec<_> = pool
        .imap_unordered(0..6u32, |n| {
            if n % 2 == 0 {
                panic!("even {n}");
            }
            n
        })
        .collect();
    assert_eq!(unordered.iter().filter(|x| x.is_err()).count(), 3);
    assert_eq!(pool.running(), 0);

    // A member killed while it waits frees its slot too.
    let stuck = pool
        .spawn(|| greenhub::sleep(Duration::from_secs(3600)))
        .unwrap();
    let stuck2 = pool
        .spawn(|| greenhub::sleep(Duration::from_secs(3600)))
        .unwrap();
    assert_eq!(pool.free(), 0);
    stuck.kill();
    stuck2.kill();
    assert!(matches!(stuck.wait(), Err(JoinError::Killed { .. })));
    let _ = stuck2.wait();
    pool.waitall().unwrap();
    assert_eq!(pool.free(), 2);
}

#[test]
fn a_thread_killed_before_it_starts_frees_its_slot() {
    for _ in 0..50 {
        let pool = GreenPool::new(1);
        let t = pool.spawn(|| 1).unwrap();
        t.kill();
        let _ = t.wait();
        pool.waitall().unwrap();
        assert_eq!(pool.running(), 0);
    }
}

#[test]
fn waitall_waits_for_every_member_and_refuses_from_inside() {
    let pool = GreenPool::new(10);
    let finished = Arc::new(AtomicUsize::new(0));
    for i in 0..30 {
        let finished = finished.clone();
        pool.spawn(move || {
            greenhub::sleep(Duration::from_micros(100 * (i % 5))).unwrap();
            finished.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    pool.waitall().unwrap();
    assert_eq!(finished.load(Ordering::SeqCst), 30);

    let inner = pool.clone();
    let r = pool.spawn(move || inner.waitall()).unwrap().wait().unwrap();
    assert!(matches!(r, Err(PoolError::InsidePool)));
}

#[test]
fn resize_at_run_time_admits_and_throttles() {
    let pool = GreenPool::new(1);
    let gate: Event = Event::new();
    let g = gate.clone();
    pool.spawn(move || g.wait().unwrap()).unwrap();
    // Three spawners wait for the single slot.
    let spawners: Vec<_> = (0..3)
        .map(|_| {
            let (pool, g) = (pool.clone(), gate.clone());
            spawn(move || pool.spawn(move || g.wait().unwrap()).map(drop))
        })
        .collect();
    await_waiters(pool.id(), 3);
    assert_eq!(pool.waiting(), 3);
    // Growing admits them all at once, while the first member still runs.
    pool.resize(4);
    for s in spawners {
        s.wait().unwrap().unwrap();
    }
    assert_eq!((pool.running(), pool.size(), pool.free()), (4, 4, 0));

    // Shrinking below the running count admits no one until enough have ended.
    pool.resize(2);
    assert_eq!(pool.free(), 0);
    assert!(matches!(pool.try_spawn(|| ()), Err(PoolError::Full)));
    gate.set(()).unwrap();
    pool.waitall().unwrap();
    assert_eq!(pool.free(), 2);

    let gauge = Gauge::default();
    for _ in 0..50 {
        let gauge = gauge.clone();
        pool.spawn(move || {
            gauge.enter();
            greenhub::yield_now();
            gauge.leave();
        })
        .unwrap();
    }
    pool.waitall().unwrap();
    assert!(gauge.peak() <= 2);
}

#[test]
fn resize_under_load_keeps_the_bound_and_loses_no_task() {
    let pool = GreenPool::new(4);
    let ran = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let (pool, ran) = (pool.clone(), ran.clone());
        spawn(move || {
            for _ in 0..3_000 {
                let ran = ran.clone();
                pool.spawn(move || {
                    greenhub::yield_now();
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
            }
        })
    };
    for size in [1, 8, 2, 16, 3].iter().cycle().take(40) {
        pool.resize(*size);
        std::thread::sleep(Duration::from_micros(300));
    }
    pool.resize(4);
    feeder.wait().unwrap();
    pool.waitall().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 3_000);
    assert_eq!(pool.running(), 0);
}

#[test]
fn waiting_spawners_are_admitted_in_arrival_order() {
    let pool = GreenPool::new(1);
    let gate: Event = Event::new();
    let g = gate.clone();
    pool.spawn(move || g.wait().unwrap()).unwrap();
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let spawners: Vec<_> = (0..6)
        .map(|i| {
            let (p, order) = (pool.clone(), order.clone());
            let s = spawn(move || {
                p.spawn(move || order.lock().push(i)).unwrap();
            });
            await_waiters(pool.id(), i + 1);
            s
        })
        .collect();
    gate.set(()).unwrap();
    for s in spawners {
        s.wait().unwrap();
    }
    pool.waitall().unwrap();
    assert_eq!(*order.lock(), (0..6).collect::<Vec<_>>());
}

#[test]
fn pool_waits_honour_deadline_scopes_and_kill() {
    let pool = GreenPool::new(1).named("workers");
    let gate: Event = Event::new();
    let g = gate.clone();
    pool.spawn(move || g.wait().unwrap()).unwrap();

    let r = with_timeout(Duration::from_millis(5), || pool.spawn(|| ()).map(drop));
    assert!(matches!(r, Err(PoolError::TimedOut)), "{r:?}");
    let r = with_timeout(Duration::from_millis(5), || pool.waitall());
    assert!(matches!(r, Err(PoolError::TimedOut)), "{r:?}");
    assert_eq!(
        pool.waiting(),
        0,
        "a timed-out spawner left its place in line"
    );

    let spawner = {
        let pool = pool.clone();
        spawn(move || pool.spawn(|| ()).map(drop))
    };
    await_waiters(pool.id(), 1);
    assert_eq!(
        waiting_on(spawner.id()),
        Some(WaitOn::Object {
            object: ObjectKind::GREENPOOL,
            id: pool.id()
        })
    );
    let info = object(pool.id());
    assert_eq!(info.name.as_deref(), Some("workers"));
    assert_eq!(
        (
            info.counts["size"],
            info.counts["running"],
            info.counts["spawners"]
        ),
        (1, 1, 1)
    );
    spawner.kill();
    assert!(matches!(spawner.wait(), Err(JoinError::Killed { .. })));
    gate.set(()).unwrap();
    pool.waitall().unwrap();
    assert_eq!(
        (pool.running(), pool.waiting()),
        (0, 0),
        "the killed spawner took a slot"
    );
}

#[test]
fn a_green_pile_returns_results_in_spawn_order() {
    let pool = GreenPool::new(3);
    let mut pile = GreenPile::new(&pool);
    for n in 0..50u64 {
        pile.spawn(move || {
            greenhub::sleep(Duration::from_micros((50 - n) * 20)).unwrap();
            n
        })
        .unwrap();
    }
    assert!(pool.running() <= 3);
    assert_eq!(pile.len(), 50);
    let got: Vec<u64> = pile.by_ref().map(Result::unwrap).collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert!(pile.is_empty());

    let mut pile = GreenPile::new(&pool);
    pile.spawn(|| 1u8).unwrap();
    pile.spawn(|| panic!("second fails")).unwrap();
    pile.spawn(|| 3u8).unwrap();
    let r: Vec<_> = pile.collect();
    assert!(matches!(
        r[..],
        [
            Ok(1),
            Err(PoolError::Failed(JoinError::Panicked { .. })),
            Ok(3)
        ]
    ));
}
