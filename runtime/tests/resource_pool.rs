//! `pool::Pool`: a reusable item is held by one caller at a time, the pool never grows past
//! its size, places are never lost (kills, failed creates, discards), waits are bounded and
//! fair, checks and ages discard what they should, and the books show every checkout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use greenhub::ext::WaitOn;
use greenhub::pool::{Pool, PoolError};
use greenhub::{Event, spawn, with_timeout};

/// An item that knows whether someone holds it.
struct Item {
    id: u64,
    held: AtomicBool,
    uses: AtomicU64,
}

fn counting_pool(max: usize, created: &Arc<AtomicU64>) -> Pool<Arc<Item>> {
    let created = created.clone();
    Pool::builder(move || {
        let id = created.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Arc::new(Item {
            id,
            held: AtomicBool::new(false),
            uses: AtomicU64::new(0),
        }))
    })
    .max_size(max)
    .name("items")
    .build()
    .unwrap()
}

#[test]
fn one_holder_at_a_time_never_more_than_the_size_and_no_place_lost_to_kills() {
    let _watchdog = common::watchdog(Duration::from_secs(120));
    const MAX: usize = 8;
    const GREEN: u64 = 200;
    const ROUNDS: u64 = 50;
    let created = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(MAX, &created);
    let peak = Arc::new(AtomicUsize::new(0));
    let uses = Arc::new(AtomicU64::new(0));
    let work = {
        let (pool, peak, uses) = (pool.clone(), peak.clone(), uses.clone());
        move |rounds: u64| {
            for r in 0..rounds {
                let item = pool.get().unwrap();
                assert!(
                    !item.held.swap(true, Ordering::SeqCst),
                    "item {} handed to two holders",
                    item.id
                );
                peak.fetch_max(pool.size(), Ordering::SeqCst);
                item.uses.fetch_add(1, Ordering::SeqCst);
                uses.fetch_add(1, Ordering::SeqCst);
                if r % 3 == 0 {
                    greenhub::yield_now();
                }
                item.held.store(false, Ordering::SeqCst);
            }
        }
    };
    let workers: Vec<_> = (0..GREEN)
        .map(|_| {
            spawn({
                let w = work.clone();
                move || w(ROUNDS)
            })
        })
        .collect();
    let os: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn({
                let w = work.clone();
                move || w(ROUNDS)
            })
        })
        .collect();
    // Holders and waiters killed at random points: their items are discarded or handed on,
    // and their places come back.
    let doomed: Vec<_> = (0..40)
        .map(|_| {
            let pool = pool.clone();
            spawn(move || {
                loop {
                    let _item = pool.get().unwrap();
                    greenhub::sleep(Duration::from_micros(200)).unwrap();
                }
            })
        })
        .collect();
    for t in &doomed {
        greenhub::sleep(Duration::from_micros(500)).unwrap();
        t.kill();
    }
    for w in workers {
        w.wait().unwrap();
    }
    for t in os {
        t.join().unwrap();
    }
    for t in doomed {
        assert!(t.wait().is_err());
    }
    assert_eq!(uses.load(Ordering::SeqCst), (GREEN + 2) * ROUNDS);
    assert!(
        peak.load(Ordering::SeqCst) <= MAX,
        "the pool grew past its size"
    );
    assert_eq!(pool.waiting(), 0);
    assert!(pool.size() <= MAX);
    // Every place is usable: all MAX items can be out at once.
    let all: Vec<_> = (0..MAX).map(|_| pool.try_get().unwrap()).collect();
    assert!(matches!(pool.try_get(), Err(PoolError::Exhausted)));
    drop(all);
    let shown = common::object(pool.id());
    assert_eq!(shown.counts["in_use"], 0);
    // The workers' checkouts, the doomed threads' and the last MAX.
    assert!(shown.totals["checkouts"] >= uses.load(Ordering::SeqCst) + MAX as u64);
    assert_eq!(shown.totals["created"], created.load(Ordering::SeqCst));
}

#[test]
fn waits_are_bounded_shown_and_served_in_arrival_order() {
    let created = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(1, &created);
    let held = pool.get().unwrap();
    assert!(matches!(
        pool.get_timeout(Duration::from_millis(5)),
        Err(PoolError::TimedOut)
    ));
    assert!(matches!(
        with_timeout(Duration::from_millis(5), || pool.get()),
        Err(PoolError::TimedOut)
    ));
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let waiters: Vec<_> = (0..5)
        .map(|i| {
            let (p, order) = (pool.clone(), order.clone());
            let t = spawn(move || {
                let item = p.get().unwrap();
                order.lock().push(i);
                drop(item);
            });
            common::await_waiters(pool.id(), i + 1);
            t
        })
        .collect();
    assert_eq!(
        common::waiting_on(waiters[0].id()),
        Some(WaitOn::Object {
            object: greenhub::ext::ObjectKind::named("pool"),
            id: pool.id()
        })
    );
    let shown = common::object(pool.id());
    assert_eq!(
        (
            shown.waiters,
            shown.counts["in_use"],
            shown.totals["timeouts"]
        ),
        (5, 1, 2)
    );
    let checkouts = &shown.detail.as_ref().unwrap()["checkouts"];
    assert!(
        checkouts[0]["site"]
            .as_str()
            .unwrap()
            .contains("resource_pool.rs"),
        "{checkouts}"
    );
    drop(held);
    for w in waiters {
        w.wait().unwrap();
    }
    assert_eq!(*order.lock(), [0, 1, 2, 3, 4]);
    assert_eq!(created.load(Ordering::SeqCst), 1, "one item, reused");
}

#[test]
fn checks_ages_and_failed_creates_discard_and_free_the_place() {
    let created = Arc::new(AtomicU64::new(0));
    let fail = Arc::new(AtomicBool::new(false));
    let healthy = Arc::new(AtomicBool::new(true));
    let pool = {
        let (created, fail, healthy) = (created.clone(), fail.clone(), healthy.clone());
        let healthy2 = healthy.clone();
        Pool::builder(move || {
            if fail.load(Ordering::SeqCst) {
                return Err("connection refused".to_string());
            }
            Ok(created.fetch_add(1, Ordering::SeqCst))
        })
        .max_size(2)
        .validate(move |_| healthy.load(Ordering::SeqCst))
        .recycle(move |id| *id != 99 && healthy2.load(Ordering::SeqCst))
        .build()
        .unwrap()
    };
    // A failed create returns its error and frees the place.
    fail.store(true, Ordering::SeqCst);
    let err = pool.get().unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(pool.size(), 0);
    fail.store(false, Ordering::SeqCst);
    let first = *pool.get().unwrap();
    assert_eq!(first, 0);
    // Reused while valid; replaced when validation fails.
    assert_eq!(*pool.get().unwrap(), 0);
    healthy.store(false, Ordering::SeqCst);
    let second = pool.get().unwrap();
    assert_eq!(
        *second, 1,
        "the invalid idle item was discarded and a new one made"
    );
    drop(second); // recycle says no: discarded
    assert_eq!((pool.size(), pool.idle()), (0, 0));
    healthy.store(true, Ordering::SeqCst);
    // An item changed into something `recycle` rejects does not come back.
    let mut item = pool.get().unwrap();
    *item = 99;
    drop(item);
    assert_eq!(pool.idle(), 0);
    // discard and detach free the place.
    let a = pool.get().unwrap();
    let b = pool.get().unwrap();
    assert!(matches!(pool.try_get(), Err(PoolError::Exhausted)));
    a.discard();
    let kept = b.detach();
    assert_eq!(pool.size(), 0);
    assert!(kept > 1);
    let shown = common::object(pool.id());
    assert_eq!(shown.totals["create_errors"], 1);
    // The invalid idle item, the two the recycle check rejected, and the one discarded.
    assert_eq!(shown.totals["discarded"], 4);

    // Ages: past max_lifetime or idle_timeout, an idle item is replaced at checkout.
    let n = Arc::new(AtomicU64::new(0));
    let aged = {
        let n = n.clone();
        Pool::builder(move || Ok::<_, std::io::Error>(n.fetch_add(1, Ordering::SeqCst)))
            .idle_timeout(Duration::from_millis(20))
            .build()
            .unwrap()
    };
    assert_eq!(*aged.get().unwrap(), 0);
    greenhub::sleep(Duration::from_millis(25)).unwrap();
    assert_eq!(*aged.get().unwrap(), 1);
    let old = {
        let n = n.clone();
        Pool::builder(move || Ok::<_, std::io::Error>(n.fetch_add(1, Ordering::SeqCst)))
            .max_lifetime(Duration::from_millis(20))
            .build()
            .unwrap()
    };
    let first = *old.get().unwrap();
    greenhub::sleep(Duration::from_millis(25)).unwrap();
    assert_ne!(*old.get().unwrap(), first);
}

#[test]
fn a_holder_that_panics_or_is_killed_gives_its_place_back_without_its_item() {
    let created = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(1, &created);
    let p = pool.clone();
    let t = spawn(move || {
        let _item = p.get().unwrap();
        panic!("half-way through a request");
    });
    assert!(t.wait().is_err());
    assert_eq!(
        (pool.size(), pool.idle()),
        (0, 0),
        "discarded, not returned"
    );
    let gate: Event = Event::new();
    let (p, g) = (pool.clone(), gate.clone());
    let t = spawn(move || {
        let _item = p.get().unwrap();
        g.wait().unwrap();
    });
    common::await_waiters(gate.id(), 1);
    t.kill();
    assert!(t.wait().is_err());
    let item = pool.get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(item.id, 2, "a new item in the killed holder's place");
}

#[test]
fn resizing_hands_new_room_to_waiters_and_shrinks_as_items_come_back() {
    let created = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(1, &created);
    let held = pool.get().unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            spawn(move || pool.get().map(|i| i.id).unwrap())
        })
        .collect();
    common::await_waiters(pool.id(), 3);
    pool.resize(4);
    for w in waiters {
        w.wait().unwrap();
    }
    assert_eq!(pool.max_size(), 4);
    let out: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
    assert_eq!(pool.size(), 4);
    pool.resize(2);
    drop(out);
    drop(held);
    assert_eq!(
        pool.size(),
        2,
        "items beyond the new size were discarded as they came back"
    );
}

#[test]
fn a_checkout_held_past_the_leak_threshold_is_reported_with_its_holder_and_site() {
    common::capture_logs(log::LevelFilter::Warn);
    let pool = Pool::builder(|| Ok::<_, std::io::Error>(()))
        .name("leaky")
        .leak_threshold(Duration::from_millis(10))
        .build()
        .unwrap();
    let p = pool.clone();
    let t = greenhub::thread::Builder::new()
        .name("hoarder")
        .spawn(move || {
            let item = p.get().unwrap();
            let t0 = std::time::Instant::now();
            while common::logged("item held for more than").is_empty() {
                assert!(t0.elapsed() < Duration::from_secs(30), "no leak report");
                greenhub::sleep(Duration::from_millis(5)).unwrap();
            }
            drop(item);
        })
        .unwrap();
    t.wait().unwrap();
    let report = common::logged("item held for more than").join("\n");
    assert!(report.contains("\"leaky\""), "{report}");
    assert!(report.contains("\"hoarder\""), "{report}");
    assert!(report.contains("resource_pool.rs"), "{report}");
    assert_eq!(common::logged("came back after").len(), 1);
    assert_eq!(common::object(pool.id()).totals["leaks"], 1);
}
