//! The pool operations production needs: suspend and resume, eviction, a graceful close,
//! idle connections closed past `idle_timeout` and kept alive through a firewall that drops
//! idle flows, and the events a program can hook.

#[allow(dead_code)] // shared by the test files; this one uses part of it
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Managers, Pg};
use greenhub::spawn;
use greenhub_dbpool::events::{self, HandleEvent};
use greenhub_dbpool::{CloseReason, Error, PgPool, Pool, SqliteConnectionManager, SqlitePool};

fn manager(dir: &tempfile::TempDir) -> SqliteConnectionManager {
    SqliteConnectionManager::file(dir.path().join("db.sqlite"))
}

/// Waits until `done` holds, for at most a minute; panics with `what` otherwise.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < give_up, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `n` green threads that each check out a connection and hold it until `release` is set.
fn hold_connections(
    pool: &SqlitePool,
    n: usize,
    release: &greenhub::Event<()>,
) -> Vec<greenhub::GreenThread<()>> {
    (0..n)
        .map(|_| {
            let (pool, release) = (pool.clone(), release.clone());
            spawn(move || {
                let conn = pool.get().unwrap();
                release.wait().unwrap();
                drop(conn);
            })
        })
        .collect()
}

#[test]
fn suspended_callers_wait_past_the_pool_timeout_and_all_succeed_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let pool: SqlitePool = Pool::builder()
        .max_size(4)
        .connection_timeout(Duration::from_millis(100))
        .build(manager(&dir))
        .unwrap();
    for round in 0..5 {
        pool.suspend();
        assert!(pool.is_suspended());
        let callers: Vec<_> = (0..50)
            .map(|i| {
                let pool = pool.clone();
                spawn(move || {
                    if i % 2 == 0 {
                        pool.run(move |_| i)
                    } else {
                        pool.get().map(|_| i)
                    }
                })
            })
            .collect();
        // A caller with its own deadline still leaves at it.
        let scoped = {
            let pool = pool.clone();
            spawn(move || greenhub::with_timeout(Duration::from_millis(30), || pool.run(|_| ())))
        };
        assert!(matches!(scoped.wait().unwrap(), Err(Error::TimedOut)));
        eventually("all 50 wait at the door", || pool.state().waiting == 50);
        // Longer than the pool's own timeout: nobody fails for it.
        std::thread::sleep(Duration::from_millis(300));
        assert!(callers.iter().all(|c| !c.is_done()), "round {round}");
        pool.resume();
        let mut got: Vec<i32> = callers
            .into_iter()
            .map(|c| c.wait().unwrap().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "round {round}");
    }
    assert!(!pool.is_suspended());
    assert_eq!(pool.stats().timeouts, 5);
}

/// Counts what a pool tells its hook.
#[derive(Default)]
struct Tally {
    opened: AtomicU64,
    closed: Mutex<Vec<CloseReason>>,
    out: AtomicU64,
    back: AtomicU64,
    timed_out: AtomicU64,
    leaks: Mutex<Vec<events::LeakSuspected>>,
}

impl HandleEvent for Tally {
    fn opened(&self, _: &events::Opened) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }
    fn closed(&self, e: &events::Closed) {
        self.closed.lock().unwrap().push(e.reason);
    }
    fn checked_out(&self, _: &events::CheckedOut) {
        self.out.fetch_add(1, Ordering::SeqCst);
    }
    fn checked_in(&self, _: &events::CheckedIn) {
        self.back.fetch_add(1, Ordering::SeqCst);
    }
    fn checkout_timed_out(&self, _: &events::CheckoutTimedOut) {
        self.timed_out.fetch_add(1, Ordering::SeqCst);
    }
    fn leak_suspected(&self, e: &events::LeakSuspected) {
        self.leaks.lock().unwrap().push(e.clone());
    }
}

#[test]
fn close_fails_waiters_at_once_waits_for_holders_and_closes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Arc::new(Tally::default());
    let pool: SqlitePool = Pool::builder()
        .max_size(3)
        .min_idle(3)
        .events(tally.clone())
        .build(manager(&dir))
        .unwrap();
    assert_eq!(pool.state().size, 3);
    // Two held: one comes back within the grace, one long after.
    let held_briefly = pool.get().unwrap();
    let held_long = pool.get().unwrap();
    let third = pool.get().unwrap();
    let waiters: Vec<_> = (0..20)
        .map(|i| {
            let pool = pool.clone();
            spawn(move || {
                if i % 2 == 0 {
                    pool.run(|_| ())
                } else {
                    pool.get().map(drop)
                }
            })
        })
        .collect();
    eventually("20 waiting", || pool.state().waiting == 20);
    drop(third); // idle again: its waiter takes it
    let returner = spawn(move || {
        greenhub::sleep(Duration::from_millis(50)).unwrap();
        drop(held_briefly);
    });
    let report = pool.close(Duration::from_millis(500));
    returner.wait().unwrap();
    for w in waiters {
        let r = w.wait().unwrap();
        assert!(matches!(r, Ok(()) | Err(Error::Closed)), "{r:?}");
    }
    assert_eq!(report.still_out, 1, "{report:?}");
    assert!(matches!(pool.get(), Err(Error::Closed)));
    assert!(matches!(pool.run(|_| ()), Err(Error::Closed)));
    drop(held_long);
    eventually("every connection closed", || {
        pool.stats().closed.pool_closed == 3
    });
    let reasons = tally.closed.lock().unwrap().clone();
    assert_eq!(reasons, vec![CloseReason::PoolClosed; 3]);
    assert_eq!(tally.opened.load(Ordering::SeqCst), 3);
    assert_eq!(
        tally.out.load(Ordering::SeqCst),
        tally.back.load(Ordering::SeqCst)
    );
    // Nothing reopens connections for `min_idle` after the close.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pool.stats().created, 3);
    // Closing again changes nothing; "as long as it takes" is a valid grace.
    assert_eq!(pool.close(Duration::ZERO).still_out, 0);
    assert_eq!(pool.close(Duration::MAX).still_out, 0);
}

#[test]
fn evicted_connections_close_idle_at_once_and_checked_out_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Arc::new(Tally::default());
    let pool: SqlitePool = Pool::builder()
        .max_size(4)
        .min_idle(3)
        .events(tally.clone())
        .build(manager(&dir))
        .unwrap();
    let held = pool.get().unwrap();
    pool.evict();
    eventually("the idle ones evicted", || pool.stats().closed.evicted == 2);
    drop(held);
    eventually("the held one evicted on return", || {
        pool.stats().closed.evicted == 3
    });
    // Replaced as needed, and the new ones serve.
    for _ in 0..10 {
        assert_eq!(pool.run(|_| 1).unwrap(), 1);
    }
    let stats = pool.stats();
    assert!(stats.created >= 4, "{stats:?}");
    assert_eq!(stats.closed.evicted, 3);
    assert_eq!(
        tally
            .closed
            .lock()
            .unwrap()
            .iter()
            .filter(|r| **r == CloseReason::Evicted)
            .count(),
        3
    );
}

#[test]
fn idle_connections_beyond_min_idle_close_after_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pool: SqlitePool = Pool::builder()
        .max_size(6)
        .min_idle(2)
        .idle_timeout(Some(Duration::from_millis(200)))
        .build(manager(&dir))
        .unwrap();
    let held: Vec<_> = (0..6).map(|_| pool.get().unwrap()).collect();
    assert_eq!(pool.state().size, 6);
    drop(held);
    eventually("closed down to min_idle", || pool.state().size == 2);
    let stats = pool.stats();
    assert_eq!(stats.closed.idle, 4, "{stats:?}");
    // And it stays there.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pool.state().size, 2);
}

#[test]
fn events_tell_checkouts_returns_timeouts_and_leaks() {
    let tally = Arc::new(Tally::default());
    let pool: SqlitePool = Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_millis(50))
        .leak_threshold(Some(Duration::from_millis(20)))
        .events(tally.clone())
        .build(SqliteConnectionManager::memory())
        .unwrap();
    for _ in 0..100 {
        pool.run(|_| ()).unwrap();
    }
    let a = pool.get().unwrap();
    let b = pool.get().unwrap();
    assert!(matches!(pool.get(), Err(Error::PoolTimeout { .. })));
    assert_eq!(tally.timed_out.load(Ordering::SeqCst), 1);
    eventually("two leaks told", || tally.leaks.lock().unwrap().len() == 2);
    let leak = tally.leaks.lock().unwrap()[0].clone();
    assert!(leak.site.contains("lifecycle.rs"), "{leak:?}");
    assert!(leak.held >= Duration::from_millis(20));
    drop((a, b));
    assert_eq!(tally.out.load(Ordering::SeqCst), 102);
    assert_eq!(tally.back.load(Ordering::SeqCst), 102);
    assert_eq!(tally.opened.load(Ordering::SeqCst), pool.stats().created);
}

/// A TCP proxy standing for a firewall that forgets flows idle longer than `idle`: it closes
/// both sides. Returns its port; it serves until the test ends.
fn firewall(to: u16, idle: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let last = Arc::new(Mutex::new(Instant::now()));
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server.try_clone().unwrap(), client.try_clone().unwrap()),
            ] {
                let last = last.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        *last.lock().unwrap() = Instant::now();
                        if into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                });
            }
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(idle / 10);
                    if last.lock().unwrap().elapsed() >= idle {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Through a firewall that drops flows idle for 2 s: with a keepalive of 100 ms the idle
/// connections live on (the same backends serve after 5 s); without one they are dropped,
/// and the test before a checkout finds them dead and opens others.
#[test]
fn keepalive_keeps_idle_connections_through_a_firewall_that_drops_idle_flows() {
    let pg = Pg::start();
    if !pg.controlled() {
        return;
    }
    let port: u16 = pg
        .conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .parse()
        .unwrap();
    let through = firewall(port, Duration::from_secs(2));
    let conninfo = pg
        .conninfo
        .replace(&format!("port={port}"), &format!("port={through}"));
    let pids = |pool: &PgPool| {
        let held: Vec<_> = (0..2).map(|_| pool.get().unwrap()).collect();
        let mut pids: Vec<i32> = held
            .into_iter()
            .map(|mut c| {
                c.query_one("SELECT pg_backend_pid()", vec![])
                    .unwrap()
                    .get(0)
            })
            .collect();
        pids.sort();
        pids
    };
    for keepalive in [Some(Duration::from_millis(100)), None] {
        let pool: PgPool = Pool::builder()
            .max_size(2)
            .min_idle(2)
            .keepalive(keepalive)
            .build(pg.manager_for(&conninfo))
            .unwrap();
        let before = pids(&pool);
        std::thread::sleep(Duration::from_secs(5));
        let after = pids(&pool);
        let stats = pool.stats();
        if keepalive.is_some() {
            assert_eq!(before, after, "{stats:?}");
            assert_eq!(stats.created, 2, "{stats:?}");
            assert_eq!(stats.closed.invalid, 0, "{stats:?}");
        } else {
            assert_ne!(before, after, "{stats:?}");
            assert!(stats.closed.invalid >= 1, "{stats:?}");
        }
    }
}

/// The advisor sees the demand beyond the pool's size (four held, sixteen waiting: twenty
/// would have served), and the pattern HikariCP's sizing rule exists for: green threads that
/// hold a connection and ask for another, whose deadlock-safe minimum is Tn × (Cm − 1) + 1.
#[test]
fn the_advisor_sees_peak_demand_and_the_deadlock_safe_minimum() {
    let pool: SqlitePool = Pool::builder()
        .max_size(4)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let held: Vec<_> = (0..4).map(|_| pool.get().unwrap()).collect();
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            spawn(move || pool.run(|_| ()))
        })
        .collect();
    eventually("16 waiting", || pool.state().waiting == 16);
    drop(held);
    for w in waiters {
        w.wait().unwrap().unwrap();
    }
    let advice = pool.stats().advice;
    assert_eq!(advice.peak_demand, 20, "{advice:?}");
    assert_eq!(advice.suggested_max_size, 20, "{advice:?}");
    assert_eq!(advice.most_held_by_one_thread, 1, "{advice:?}");
    assert_eq!(advice.deadlock_safe_min, 1, "{advice:?}");
    assert!(
        advice.summary.contains("20 connections would have served"),
        "{advice:?}"
    );
    assert!(
        advice.checkouts_per_s > 0.0 && advice.mean_in_use > 0.0,
        "{advice:?}"
    );

    // Three green threads, each holding one connection while a call takes a second.
    let pool: SqlitePool = Pool::builder()
        .max_size(10)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    for outcome in hold_one_then_ask_another(&pool, 3, None) {
        outcome.unwrap();
    }
    let advice = pool.stats().advice;
    assert_eq!(advice.most_held_by_one_thread, 2, "{advice:?}");
    assert_eq!(advice.peak_holders, 3, "{advice:?}");
    assert_eq!(advice.deadlock_safe_min, 4, "{advice:?}");
    // A pool of three would deadlock: the summary says so. Starved until the first thread
    // gives up (its own deadline; the others wait on) and its connection lets the others
    // through one at a time.
    let small: SqlitePool = Pool::builder()
        .max_size(3)
        .connection_timeout(Duration::from_secs(60))
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let starved = hold_one_then_ask_another(&small, 3, Some(Duration::from_millis(200)));
    assert!(matches!(starved[0], Err(Error::TimedOut)), "{starved:?}");
    assert!(starved[1..].iter().all(Result::is_ok), "{starved:?}");
    let advice = small.stats().advice;
    assert!(
        advice.summary.contains("below the deadlock-safe minimum 4"),
        "{advice:?}"
    );
}

/// `threads` green threads each check a connection out, wait until all hold one, then ask
/// the pool for another call: the pattern HikariCP's sizing rule is about. Their outcomes.
/// With `first_gives_up`, the first thread asks under that deadline.
fn hold_one_then_ask_another(
    pool: &SqlitePool,
    threads: u64,
    first_gives_up: Option<Duration>,
) -> Vec<Result<(), Error>> {
    let ready = Arc::new(AtomicU64::new(0));
    let all: Vec<_> = (0..threads)
        .map(|i| {
            let (pool, ready) = (pool.clone(), ready.clone());
            spawn(move || -> Result<(), Error> {
                let _outer = pool.get()?;
                ready.fetch_add(1, Ordering::SeqCst);
                while ready.load(Ordering::SeqCst) < threads {
                    greenhub::sleep(Duration::from_millis(2)).unwrap();
                }
                match first_gives_up {
                    Some(after) if i == 0 => greenhub::with_timeout(after, || pool.run(|_| ())),
                    _ => pool.run(|_| ()),
                }
            })
        })
        .collect();
    all.into_iter().map(|t| t.wait().unwrap()).collect()
}

#[test]
fn the_runtime_reports_a_pool_self_deadlock_with_its_holders_and_their_deadlines() {
    // Two green threads hold both connections and each asks for another: HikariCP's sizing
    // bug. greenhub's monitor names it long before the 60 s connection timeout ends it.
    let pool: SqlitePool = Pool::builder()
        .name("orders")
        .max_size(2)
        .connection_timeout(Duration::from_secs(60))
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let ready = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (pool, ready) = (pool.clone(), ready.clone());
            spawn(move || -> Result<(), Error> {
                let _outer = pool.get()?;
                ready.fetch_add(1, Ordering::SeqCst);
                while ready.load(Ordering::SeqCst) < 2 {
                    greenhub::sleep(Duration::from_millis(2)).unwrap();
                }
                pool.run(|_| ())
            })
        })
        .collect();
    let mut ids: Vec<u64> = threads.iter().map(|t| t.id()).collect();
    ids.sort_unstable();
    let mut found = None;
    eventually("the pool self-deadlock is reported", || {
        found = greenhub::inspect::snapshot()
            .deadlocks
            .into_iter()
            .find(|d| d.threads.iter().any(|t| t.id == ids[0]));
        found.is_some()
    });
    let d = found.unwrap();
    match &d.kind {
        greenhub::inspect::DeadlockKind::Pool { pool: p } => {
            assert_eq!(p.id, pool.id());
            assert_eq!(p.name.as_deref(), Some("orders"));
        }
        other => panic!("{other:?}"),
    }
    let mut in_it: Vec<u64> = d.threads.iter().map(|t| t.id).collect();
    in_it.sort_unstable();
    assert_eq!(in_it, ids);
    for t in &d.threads {
        assert_eq!(t.holds.len(), 1, "{t:?}");
        assert_eq!(t.holds[0].id, pool.id());
        let left = t
            .deadline_in_us
            .expect("a checkout waits under the pool's timeout");
        assert!(left > 0 && left <= 60_000_000, "{left}");
    }
    // The pool lists the holders too.
    let snap = greenhub::inspect::snapshot();
    let listed = snap.objects.iter().find(|o| o.id == pool.id()).unwrap();
    assert_eq!(listed.holders, ids);
    // One killed: its connections go back, the other gets its second and finishes.
    threads[0].kill();
    let mut threads = threads.into_iter();
    let _ = threads.next().unwrap().wait();
    threads.next().unwrap().wait().unwrap().unwrap();
}

#[test]
fn a_connection_a_test_forgets_is_a_leak_the_check_names() {
    let pool: SqlitePool = Pool::builder()
        .name("forgotten")
        .max_size(2)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let pool2 = pool.clone();
    let careless = spawn(move || std::mem::forget(pool2.get().unwrap()));
    let holder = careless.id();
    careless.wait().unwrap();
    let leaks = greenhub::testing::check_leaks(Duration::from_millis(50)).unwrap_err();
    assert!(leaks.threads.is_empty(), "{leaks}");
    assert_eq!(leaks.held.len(), 1, "{leaks}");
    assert_eq!(leaks.held[0].id, pool.id());
    assert_eq!(leaks.held[0].holder, holder);
    assert!(!leaks.held[0].holder_alive);
    assert!(
        leaks.to_string().contains("\"forgotten\" held by #"),
        "{leaks}"
    );
}

#[test]
fn a_long_call_holding_the_only_connection_is_not_a_deadlock() {
    // The caller waits on the pool for its own call's result while its call holds the only
    // connection, and others wait for that connection: nobody waits for what only a waiter
    // can give, so nothing is reported (the call ends by itself).
    let pool: SqlitePool = Pool::builder()
        .name("long-call")
        .max_size(1)
        .connection_timeout(Duration::from_secs(60))
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let started = Arc::new(AtomicU64::new(0));
    let long = {
        let (pool, started) = (pool.clone(), started.clone());
        spawn(move || {
            pool.run(move |_| {
                started.store(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(800));
            })
        })
    };
    while started.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            spawn(move || pool.run(|_| ()))
        })
        .collect();
    let mut mine: Vec<u64> = queued.iter().map(|t| t.id()).collect();
    mine.push(long.id());
    // Looked at all along the long call (the monitor checks every 100 ms).
    while !long.is_done() {
        let snap = greenhub::inspect::snapshot();
        assert!(
            snap.deadlocks
                .iter()
                .all(|d| d.threads.iter().all(|t| !mine.contains(&t.id))),
            "{:?}",
            snap.deadlocks
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    long.wait().unwrap().unwrap();
    for q in queued {
        q.wait().unwrap().unwrap();
    }
}

#[test]
fn a_pool_built_to_grow_serves_as_many_at_once_as_it_is_resized_to_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    // A limit below the starting size is refused.
    match Pool::builder().max_size(2).grow_to(1).build(manager(&dir)) {
        Err(Error::Config(m)) => assert!(m.contains("grow_to 1 is less than max_size 2"), "{m}"),
        other => panic!("grow_to below max_size: {:?}", other.map(|_| ())),
    }
    let pool: SqlitePool = Pool::builder()
        .max_size(2)
        .grow_to(6)
        .build(manager(&dir))
        .unwrap();
    match pool.resize(7) {
        Err(Error::Config(m)) => assert!(m.contains("the limit it was built with (6)"), "{m}"),
        other => panic!("resize(7): {other:?}"),
    }
    for round in 0..3 {
        pool.resize(6).unwrap();
        assert_eq!(pool.state().max_size, 6);
        // Six holders at once, each with its own connection; a seventh waits.
        let release: greenhub::Event<()> = greenhub::Event::new();
        let holders = hold_connections(&pool, 6, &release);
        eventually("six in use", || pool.state().in_use == 6);
        let late = {
            let pool = pool.clone();
            spawn(move || pool.run(move |_| round))
        };
        eventually("the seventh waits", || pool.state().waiting == 1);
        assert!(!late.is_done());
        release.set(()).unwrap();
        for h in holders {
            h.wait().unwrap();
        }
        assert_eq!(late.wait().unwrap().unwrap(), round);
        // Back to two: the connections beyond it close.
        pool.resize(2).unwrap();
        eventually("two or fewer open", || pool.state().size <= 2);
    }
}

#[test]
fn a_resized_pool_serves_at_most_its_new_size_and_closes_what_is_beyond_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool: SqlitePool = Pool::builder()
        .max_size(4)
        .min_idle(4)
        .build(manager(&dir))
        .unwrap();
    eventually("four connections open", || pool.state().size == 4);

    // Out of range: refused, and nothing changes.
    for bad in [0, 5, u32::MAX] {
        match pool.resize(bad) {
            Err(Error::Config(m)) => {
                assert!(m.contains("the limit it was built with (4)"), "{m}")
            }
            other => panic!("resize({bad}): {other:?}"),
        }
    }
    assert_eq!(pool.state().max_size, 4);

    // Idle connections beyond the new size close at once.
    pool.resize(2).unwrap();
    assert_eq!(pool.state().max_size, 2);
    eventually("two connections open", || pool.state().size == 2);
    assert_eq!(pool.stats().closed.resized, 2);

    // Many rounds of many callers: never more than two at a time, nothing lost.
    let running = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    for _ in 0..5 {
        let callers: Vec<_> = (0..40u64)
            .map(|i| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                spawn(move || {
                    pool.run(move |_| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                })
            })
            .collect();
        let mut got: Vec<u64> = callers
            .into_iter()
            .map(|c| c.wait().unwrap().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..40).collect::<Vec<_>>());
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} calls ran at once");

    // Smaller than the connections in use: nothing starts until they are back, and they
    // close as they come back.
    pool.resize(4).unwrap();
    let release: greenhub::Event<()> = greenhub::Event::new();
    let holders = hold_connections(&pool, 4, &release);
    eventually("four in use", || pool.state().in_use == 4);
    let closed_before = pool.stats().closed.resized;
    pool.resize(1).unwrap();
    assert_eq!(pool.state().max_size, 1);
    assert_eq!(pool.state().in_use, 4, "checked-out connections stay out");
    let late = {
        let pool = pool.clone();
        spawn(move || pool.run(|_| 7))
    };
    greenhub::sleep(Duration::from_millis(50)).unwrap();
    assert!(
        !late.is_done(),
        "a checkout waits while the pool is over its size"
    );
    release.set(()).unwrap();
    for h in holders {
        h.wait().unwrap();
    }
    assert_eq!(late.wait().unwrap().unwrap(), 7);
    eventually("one connection open", || pool.state().size <= 1);
    assert!(pool.stats().closed.resized >= closed_before + 3);
    assert_eq!(pool.state().in_use, 0);

    // Growing serves waiting callers at once, while the one connection stays out.
    let release: greenhub::Event<()> = greenhub::Event::new();
    let holder = {
        let (pool, release) = (pool.clone(), release.clone());
        spawn(move || {
            let conn = pool.get().unwrap();
            release.wait().unwrap();
            drop(conn);
        })
    };
    eventually("one in use", || pool.state().in_use == 1);
    let waiting: Vec<_> = (0..3u64)
        .map(|i| {
            let pool = pool.clone();
            spawn(move || pool.run(move |_| i))
        })
        .collect();
    eventually("three waiting", || pool.state().waiting == 3);
    pool.resize(4).unwrap();
    let mut got: Vec<u64> = waiting
        .into_iter()
        .map(|w| w.wait().unwrap().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2]);
    assert!(
        !holder.is_done(),
        "served without the held connection coming back"
    );
    release.set(()).unwrap();
    holder.wait().unwrap();
}

#[test]
fn an_inspector_resizes_a_database_pool_within_its_limit() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;

    let dir = tempfile::tempdir().unwrap();
    let pool: SqlitePool = Pool::builder().max_size(4).build(manager(&dir)).unwrap();
    // The runtime (and its attach channel) starts with the first green thread.
    spawn(|| ()).wait().unwrap();
    let path = greenhub::inspect::attach::socket_path(std::process::id());
    // Another test's thread may have started the runtime a moment ago: its channel follows.
    eventually("the attach socket", || path.exists());
    let stream = UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut ask = |request: String| {
        writer.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let answer = ask(format!("resize {} 2\n", pool.id()));
    assert!(
        answer["done"]
            .as_str()
            .is_some_and(|d| d.contains("resized to 2")),
        "{answer}"
    );
    assert_eq!(pool.state().max_size, 2);
    let answer = ask(format!("resize {} 9\n", pool.id()));
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("the limit it was built with (4)")),
        "{answer}"
    );
    assert_eq!(pool.state().max_size, 2, "a refused resize changes nothing");
    assert_eq!(pool.run(|_| 5).unwrap(), 5);
}
