//! Deadlock detection: deliberate deadlocks of each kind are reported with the right threads,
//! what each holds and waits on, and where; busy programs without deadlocks never are.
//!
//! Tests of this binary run side by side, so each looks only at the deadlocks made of its own
//! threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::inspect::{Deadlock, DeadlockKind};
use greenhub::thread::{GreenThread, kill};
use greenhub::{Event, Mutex, Queue};

mod common;

/// Where `n` green threads meet: each [`Meet::arrive`]s and goes on once all have.
struct Meet {
    arrived: AtomicUsize,
    n: usize,
    all: Event,
}

impl Meet {
    fn new(n: usize) -> Meet {
        Meet {
            arrived: AtomicUsize::new(0),
            n,
            all: Event::new(),
        }
    }

    fn arrive(&self) {
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.all.set(()).unwrap();
        } else {
            self.all.wait().unwrap();
        }
    }
}

/// The deadlock that contains thread `id`, waited for (up to a minute: the monitor reports one
/// at its second check, later on a busy machine).
fn deadlock_of(id: u64) -> Deadlock {
    let t0 = Instant::now();
    loop {
        let snap = greenhub::inspect::snapshot();
        if let Some(d) = snap
            .deadlocks
            .into_iter()
            .find(|d| d.threads.iter().any(|t| t.id == id))
        {
            return d;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no deadlock reported with thread #{id}:\n{}",
            greenhub::inspect::format_run_info()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until no reported deadlock contains thread `id` any more.
fn await_no_deadlock_of(id: u64) {
    let t0 = Instant::now();
    while greenhub::inspect::snapshot()
        .deadlocks
        .iter()
        .any(|d| d.threads.iter().any(|t| t.id == id))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the deadlock of #{id} is still listed after it ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ids(d: &Deadlock) -> Vec<u64> {
    let mut ids: Vec<u64> = d.threads.iter().map(|t| t.id).collect();
    ids.sort_unstable();
    ids
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// Two green threads that each take one mutex, meet, and then want the other's: a cycle.
fn lock_in_opposite_orders(
    a: &Arc<Mutex<i32>>,
    b: &Arc<Mutex<i32>>,
) -> (GreenThread<()>, GreenThread<()>) {
    let both = Arc::new(Meet::new(2));
    let spawn_one = |first: Arc<Mutex<i32>>, second: Arc<Mutex<i32>>| {
        let both = both.clone();
        greenhub::spawn(move || {
            let _one = first.lock().unwrap();
            both.arrive();
            let _two = second.lock().unwrap();
        })
    };
    (
        spawn_one(a.clone(), b.clone()),
        spawn_one(b.clone(), a.clone()),
    )
}

#[test]
fn two_mutexes_taken_in_opposite_orders_are_a_reported_cycle() {
    common::capture_logs(log::LevelFilter::Warn);
    let a = Arc::new(Mutex::new(0).named("accounts"));
    let b = Arc::new(Mutex::new(0).named("ledger"));
    let (t1, t2) = lock_in_opposite_orders(&a, &b);

    let d = deadlock_of(t1.id());
    assert_eq!(d.kind, DeadlockKind::Cycle);
    assert_eq!(ids(&d), sorted(vec![t1.id(), t2.id()]));
    let one = d.threads.iter().find(|t| t.id == t1.id()).unwrap();
    assert_eq!(one.holds.len(), 1);
    assert_eq!(one.holds[0].id, a.id());
    assert_eq!(one.holds[0].name.as_deref(), Some("accounts"));
    assert_eq!(one.waiting_on_name.as_deref(), Some("ledger"));
    assert!(one.spawn_site.contains("deadlock.rs"), "{}", one.spawn_site);
    assert_eq!(one.deadline_in_us, None);
    // Where it waits: in `Mutex::lock`, called from this file (the workspace builds with
    // frame pointers, so stacks are readable).
    let stack = one
        .stack
        .as_ref()
        .expect("the stack of a deadlocked thread");
    assert!(
        stack.frames[0].function.contains("Mutex<T>::lock"),
        "{stack:?}"
    );
    assert!(
        stack.frames[1..].iter().any(|f| f
            .file
            .as_deref()
            .is_some_and(|p| p.ends_with("tests/deadlock.rs"))),
        "{stack:?}"
    );
    // Said once, in the log, naming both threads.
    let said = common::logged(&format!("deadlock #{} (", d.seq));
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&format!("thread #{}", t1.id())),
        "{}",
        said[0]
    );
    assert!(
        said[0].contains(&format!("thread #{}", t2.id())),
        "{}",
        said[0]
    );
    assert!(said[0].contains("\"accounts\""), "{}", said[0]);
    let totals = greenhub::inspect::snapshot().totals;
    assert!(totals.deadlocks_found >= 1 && totals.deadlocked >= 2);

    // Killing one ends it: the other gets its lock and finishes.
    t2.kill();
    assert!(t1.wait().is_ok());
    await_no_deadlock_of(t1.id());
}

#[test]
fn threads_joining_each_other_are_a_reported_cycle() {
    let handles: Arc<Queue<GreenThread<()>>> = Arc::new(Queue::unbounded());
    let other: Arc<Queue<GreenThread<()>>> = Arc::new(Queue::unbounded());
    let (h1, o1) = (handles.clone(), other.clone());
    let first = greenhub::spawn(move || {
        let second = h1.get().unwrap();
        let _ = second.wait();
        drop(o1);
    });
    let (h2, o2) = (handles.clone(), other.clone());
    let second = greenhub::spawn(move || {
        let first = o2.get().unwrap();
        let _ = first.wait();
        drop(h2);
    });
    let (first_id, second_id) = (first.id(), second.id());
    handles.put(second).unwrap();
    other.put(first).unwrap();

    let d = deadlock_of(first_id);
    assert_eq!(d.kind, DeadlockKind::Cycle);
    assert_eq!(ids(&d), sorted(vec![first_id, second_id]));
    for t in &d.threads {
        let other = if t.id == first_id {
            second_id
        } else {
            first_id
        };
        assert_eq!(t.waiting_on, greenhub::ext::WaitOn::Join { thread: other });
        assert!(t.holds.is_empty());
    }
    // Killing one ends the other's join: both end.
    assert!(kill(first_id));
    let t0 = Instant::now();
    while greenhub::inspect::snapshot()
        .threads
        .iter()
        .any(|t| t.id == first_id || t.id == second_id)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the cycle did not end"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    await_no_deadlock_of(first_id);
}

#[test]
fn a_thread_holding_a_mutex_and_joining_its_waiter_is_a_cycle() {
    let m = Arc::new(Mutex::new(()));
    let locked: Event = Event::new();
    let (m1, l1) = (m.clone(), locked.clone());
    let waiter = greenhub::spawn(move || {
        l1.wait().unwrap();
        let _g = m1.lock().unwrap();
    });
    let waiter_id = waiter.id();
    let m2 = m.clone();
    let holder = greenhub::spawn(move || {
        let _g = m2.lock().unwrap();
        locked.set(()).unwrap();
        let _ = waiter.wait();
    });
    let d = deadlock_of(holder.id());
    assert_eq!(ids(&d), sorted(vec![holder.id(), waiter_id]));
    let h = d.threads.iter().find(|t| t.id == holder.id()).unwrap();
    assert_eq!(h.holds.iter().map(|o| o.id).collect::<Vec<_>>(), [m.id()]);
    holder.kill();
    await_no_deadlock_of(waiter_id);
}

#[test]
fn every_item_of_a_pool_held_by_threads_that_each_want_another_is_a_pool_self_deadlock() {
    let pool = greenhub::pool::Pool::builder(|| Ok::<_, std::convert::Infallible>(()))
        .max_size(3)
        .name("items")
        .build()
        .unwrap();
    let all_hold = Arc::new(Meet::new(3));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (pool, all_hold) = (pool.clone(), all_hold.clone());
            greenhub::spawn(move || {
                let _first = pool.get().unwrap();
                all_hold.arrive();
                let _second = pool.get().unwrap();
            })
        })
        .collect();
    let d = deadlock_of(threads[0].id());
    match &d.kind {
        DeadlockKind::Pool { pool: p } => {
            assert_eq!(p.id, pool.id());
            assert_eq!(p.name.as_deref(), Some("items"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&d), sorted(threads.iter().map(|t| t.id()).collect()));
    assert!(
        d.describe().contains("pool self-deadlock"),
        "{}",
        d.describe()
    );
    // One killed gives its item back: another gets a second item, finishes, and so on.
    threads[0].kill();
    for t in &threads[1..] {
        assert!(t.wait().is_ok());
    }
    await_no_deadlock_of(threads[1].id());
}

#[test]
fn a_deadlock_broken_by_a_deadline_is_reported_with_it_and_then_ends() {
    let a = Arc::new(Mutex::new(()));
    let b = Arc::new(Mutex::new(()));
    let both = Arc::new(Meet::new(2));
    let (a1, b1, both1) = (a.clone(), b.clone(), both.clone());
    let patient = greenhub::spawn(move || {
        let _a = a1.lock().unwrap();
        both1.arrive();
        b1.lock().map(|_| ()).is_ok()
    });
    let (a2, b2) = (a.clone(), b.clone());
    let timed = greenhub::spawn(move || {
        let _b = b2.lock().unwrap();
        both.arrive();
        a2.lock_timeout(Duration::from_secs(600)).is_ok()
    });
    let d = deadlock_of(patient.id());
    let t = d.threads.iter().find(|t| t.id == timed.id()).unwrap();
    let left = t.deadline_in_us.expect("the timed wait shows its deadline");
    assert!(left > 0 && left <= 600_000_000, "{left}");
    assert!(d.describe().contains("deadline"), "{}", d.describe());
    timed.kill();
    assert!(patient.wait().unwrap());
    await_no_deadlock_of(patient.id());
}

#[test]
fn waits_that_can_end_by_themselves_are_not_deadlocks() {
    // A holder that sleeps, a holder that waits on a queue anyone may feed, a mutex held by
    // a plain OS thread, a semaphore (anyone may release it): none of these is reported,
    // however long it lasts.
    let m = Arc::new(Mutex::new(()));
    let q: Arc<Queue<()>> = Arc::new(Queue::unbounded());
    let m_os = Arc::new(Mutex::new(()));
    let sem = greenhub::Semaphore::new(0);
    let (m1, q1) = (m.clone(), q.clone());
    let holder = greenhub::spawn(move || {
        let _g = m1.lock().unwrap();
        q1.get().unwrap();
    });
    let m2 = m.clone();
    let waiter = greenhub::spawn(move || drop(m2.lock().unwrap()));
    let m3 = m_os.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let os = std::thread::spawn(move || {
        let _g = m3.lock().unwrap();
        held_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    held_rx.recv().unwrap();
    let m4 = m_os.clone();
    let os_waiter = greenhub::spawn(move || drop(m4.lock().unwrap()));
    let s1 = sem.clone();
    let sem_waiter = greenhub::spawn(move || drop(s1.acquire().unwrap()));
    let sleeper_lock = Arc::new(Mutex::new(()));
    let sl = sleeper_lock.clone();
    let sleeper = greenhub::spawn(move || {
        let _g = sl.lock().unwrap();
        greenhub::sleep(Duration::from_secs(2)).unwrap();
    });
    let sl2 = sleeper_lock.clone();
    let sleeper_waiter = greenhub::spawn(move || drop(sl2.lock().unwrap()));

    let mine = [
        holder.id(),
        waiter.id(),
        os_waiter.id(),
        sem_waiter.id(),
        sleeper.id(),
        sleeper_waiter.id(),
    ];
    // Long enough for many checks.
    std::thread::sleep(Duration::from_millis(1500));
    let snap = greenhub::inspect::snapshot();
    for d in &snap.deadlocks {
        assert!(
            !d.threads.iter().any(|t| mine.contains(&t.id)),
            "{}",
            d.describe()
        );
    }
    q.put(()).unwrap();
    go_tx.send(()).unwrap();
    os.join().unwrap();
    sem.release().unwrap();
    for t in [
        holder,
        waiter,
        os_waiter,
        sem_waiter,
        sleeper,
        sleeper_waiter,
    ] {
        t.wait().unwrap();
    }
}

#[test]
fn busy_locking_pooling_and_joining_is_never_called_a_deadlock() {
    let _watchdog = common::watchdog(Duration::from_secs(300));
    let locks: Arc<Vec<Mutex<u64>>> = Arc::new((0..3).map(|_| Mutex::new(0)).collect());
    let pool = greenhub::pool::Pool::builder(|| Ok::<_, std::convert::Infallible>(0u64))
        .max_size(4)
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let mut mine: Vec<u64> = Vec::new();
    let started = Instant::now();
    let mut rounds = 0;
    // Several detector checks' worth of contention, and at least 20 rounds.
    while rounds < 20 || started.elapsed() < Duration::from_millis(1500) {
        rounds += 1;
        let workers: Vec<_> = (0..60)
            .map(|i| {
                let (locks, pool, done) = (locks.clone(), pool.clone(), done.clone());
                greenhub::spawn(move || {
                    // Locks in one order: contention, never a cycle.
                    let first = i % 3;
                    let mut a = locks[first].lock().unwrap();
                    let mut item = pool.get().unwrap();
                    *item += 1;
                    if first < 2 {
                        let mut b = locks[first + 1].lock().unwrap();
                        *b += 1;
                    }
                    *a += 1;
                    greenhub::thread::yield_now();
                    drop(a);
                    // A child that takes the pool too, joined while holding an item.
                    let pool2 = pool.clone();
                    let child = greenhub::spawn(move || drop(pool2.try_get()));
                    child.wait().unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        mine.extend(workers.iter().map(GreenThread::id));
        for w in workers {
            w.wait().unwrap();
        }
        let snap = greenhub::inspect::snapshot();
        for d in &snap.deadlocks {
            assert!(
                !d.threads.iter().any(|t| mine.contains(&t.id)),
                "false alarm: {}",
                d.describe()
            );
        }
    }
    assert_eq!(
        done.load(Ordering::Relaxed),
        rounds * 60,
        "every worker finished once"
    );
    assert!(
        !common::logged("deadlock #")
            .iter()
            .any(|l| mine.iter().any(|id| l.contains(&format!("thread #{id} ")))),
        "a false alarm was logged"
    );
}

/// A hook registered with `inspect::on_deadlock` hears of each deadlock once it is listed,
/// with its threads; a hook that panics before it harms neither it nor later reports.
#[test]
fn deadlock_hooks_hear_of_each_deadlock_even_after_one_panics() {
    common::capture_logs(log::LevelFilter::Warn);
    greenhub::inspect::on_deadlock(|_| panic!("a hook that always panics"));
    let heard: Arc<std::sync::Mutex<Vec<Deadlock>>> = Arc::default();
    let ear = heard.clone();
    greenhub::inspect::on_deadlock(move |d| ear.lock().unwrap().push(d.clone()));
    for round in 0..2 {
        let a = Arc::new(Mutex::new(round));
        let b = Arc::new(Mutex::new(round));
        let (t1, t2) = lock_in_opposite_orders(&a, &b);
        let d = deadlock_of(t1.id());
        let t0 = Instant::now();
        loop {
            let got = heard
                .lock()
                .unwrap()
                .iter()
                .find(|h| h.seq == d.seq)
                .cloned();
            if let Some(h) = got {
                assert_eq!(ids(&h), sorted(vec![t1.id(), t2.id()]), "round {round}");
                assert_eq!(h.kind, DeadlockKind::Cycle);
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "round {round}: the hook never heard of deadlock #{}",
                d.seq
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !common::logged("a deadlock hook panicked: a hook that always panics").is_empty(),
            "the panicking hook is reported"
        );
        t2.kill();
        assert!(t1.wait().is_ok());
        await_no_deadlock_of(t1.id());
    }
}
