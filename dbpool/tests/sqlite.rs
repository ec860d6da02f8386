//! The pool's own behaviour, on the embedded SQLite backend: checkout order, timeouts,
//! deadlines, kills, rollback on return, leaks, lifetimes, the snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use greenhub::ext::WaitOn;
use greenhub::inspect::snapshot;
use greenhub::{Queue, sleep, spawn, with_timeout};
use greenhub_dbpool::{DbPoolStats, Error, Pool, SqliteConnectionManager, SqlitePool};

fn file_pool(dir: &tempfile::TempDir, max: u32) -> SqlitePool {
    let manager = SqliteConnectionManager::file(dir.path().join("db.sqlite"))
        .with_init(|c| c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000;"));
    Pool::builder()
        .max_size(max)
        .connection_timeout(Duration::from_secs(10))
        .build(manager)
        .unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if ok() {
            return;
        }
        sleep(Duration::from_millis(5)).unwrap();
    }
    panic!("gave up waiting until {what}");
}

#[test]
fn concurrent_writers_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(&dir, 4);
    pool.run(|c| c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        .unwrap()
        .unwrap();
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let pool = pool.clone();
            spawn(move || {
                for k in 0..20 {
                    let id = i * 100 + k;
                    pool.run(move |c| c.execute("INSERT INTO t VALUES (?1)", [id]))
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.wait().unwrap();
    }
    let (n, distinct): (i64, i64) = pool
        .run(|c| {
            c.query_row("SELECT count(*), count(DISTINCT id) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!((n, distinct), (2000, 2000));
    let s = pool.stats();
    assert_eq!(s.checkouts, 2002);
    assert!(s.created <= 4);
    assert_eq!(s.state.in_use, 0);
}

#[test]
fn a_checkout_times_out_after_connection_timeout_with_the_pool_state() {
    let pool: SqlitePool = Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_millis(300))
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let held = pool.get().unwrap();
    let late = {
        let pool = pool.clone();
        spawn(move || pool.get().map(drop))
    };
    match late.wait().unwrap() {
        Err(e @ Error::PoolTimeout { .. }) => {
            let text = e.to_string();
            let Error::PoolTimeout {
                state, waited_ms, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(state.max_size, 1);
            assert_eq!(state.in_use, 1);
            assert!(waited_ms >= 250, "{waited_ms}");
            assert!(text.contains("1 in use"), "{text}");
        }
        other => panic!("expected a pool timeout, got {other:?}"),
    }
    // A deadline scope shorter than the pool's timeout wins, with its own error.
    let scoped = {
        let pool = pool.clone();
        spawn(move || with_timeout(Duration::from_millis(20), || pool.get().map(drop)))
    };
    let r = scoped.wait().unwrap();
    assert!(matches!(r, Err(Error::TimedOut)), "{r:?}");
    assert_eq!(pool.stats().timeouts, 2);
    drop(held);
    assert_eq!(pool.state().in_use, 0);
}

#[test]
fn fifo_order_holds_when_nobody_times_out() {
    let pool: SqlitePool = Pool::builder()
        .max_size(1)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    for _round in 0..5 {
        let held = pool.get().unwrap();
        let order = Queue::unbounded();
        let waiters: Vec<_> = (0..10)
            .map(|i| {
                let p = pool.clone();
                let order = order.clone();
                let t = spawn(move || {
                    let conn = p.get().unwrap();
                    order.put(i).unwrap();
                    drop(conn);
                });
                wait_until("the waiter queues", || pool.state().waiting == i + 1);
                t
            })
            .collect();
        drop(held);
        for t in waiters {
            t.wait().unwrap();
        }
        let served: Vec<u32> = std::iter::from_fn(|| order.try_get().ok()).collect();
        assert_eq!(served, (0..10).collect::<Vec<_>>());
    }
}

#[test]
fn deadlines_and_kills_of_waiters_lose_no_connection() {
    let pool: SqlitePool = Pool::builder()
        .max_size(3)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    for round in 0..30 {
        let held: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
        let timed: Vec<_> = (0..5)
            .map(|_| {
                let pool = pool.clone();
                spawn(move || with_timeout(Duration::from_millis(20), || pool.get().map(drop)))
            })
            .collect();
        let killed: Vec<_> = (0..5)
            .map(|_| {
                let pool = pool.clone();
                spawn(move || pool.get().map(drop))
            })
            .collect();
        wait_until("all ten wait", || pool.state().waiting >= 5);
        for t in &killed {
            t.kill();
        }
        for t in timed {
            match t.wait().unwrap() {
                Err(Error::TimedOut) => {}
                other => panic!("round {round}: expected a deadline, got {other:?}"),
            }
        }
        for t in killed {
            assert!(t.wait().is_err());
        }
        drop(held);
        // All three connections come back: three holders at once.
        let again: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
        assert_eq!(pool.state().in_use, 3);
        drop(again);
        assert_eq!(pool.state().in_use, 0, "round {round}");
        assert_eq!(pool.state().waiting, 0);
    }
}

#[test]
fn withdrawn_jobs_never_run_and_lose_no_connection() {
    let pool: SqlitePool = Pool::builder()
        .max_size(3)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for round in 0..30 {
        let held: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
        let job = |pool: &SqlitePool| {
            let pool = pool.clone();
            let ran = ran.clone();
            move || {
                pool.run(move |_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            }
        };
        let timed: Vec<_> = (0..5)
            .map(|_| {
                let run = job(&pool);
                spawn(move || with_timeout(Duration::from_millis(20), run))
            })
            .collect();
        let killed: Vec<_> = (0..5).map(|_| spawn(job(&pool))).collect();
        wait_until("the jobs queue", || pool.state().waiting >= 5);
        for t in &killed {
            t.kill();
        }
        for t in timed {
            match t.wait().unwrap() {
                Err(Error::TimedOut) => {}
                other => panic!("round {round}: expected a deadline, got {other:?}"),
            }
        }
        for t in killed {
            assert!(t.wait().is_err());
        }
        drop(held);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a withdrawn job ran");
        // Jobs still run afterwards, three at once, and every connection comes back.
        let after: Vec<_> = (0..6).map(|_| spawn(job(&pool))).collect();
        for t in after {
            t.wait().unwrap().unwrap();
        }
        assert_eq!(ran.swap(0, Ordering::SeqCst), 6);
        assert_eq!(pool.state().in_use, 0, "round {round}");
        assert_eq!(pool.state().waiting, 0);
    }
}

#[test]
fn queued_jobs_and_waiting_green_threads_are_served_in_arrival_order() {
    let pool: SqlitePool = Pool::builder()
        .max_size(1)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    for _round in 0..5 {
        let held = pool.get().unwrap();
        let order = Queue::unbounded();
        let waiters: Vec<_> = (0..10u32)
            .map(|i| {
                let p = pool.clone();
                let order = order.clone();
                let t = spawn(move || {
                    if i % 2 == 0 {
                        // A job: queued, run by whoever frees the connection.
                        let o = order.clone();
                        p.run(move |_| o.put(i).unwrap()).unwrap();
                    } else {
                        let conn = p.get().unwrap();
                        order.put(i).unwrap();
                        drop(conn);
                    }
                });
                wait_until("it queues", || pool.state().waiting == i + 1);
                t
            })
            .collect();
        drop(held);
        for t in waiters {
            t.wait().unwrap();
        }
        let served: Vec<u32> = std::iter::from_fn(|| order.try_get().ok()).collect();
        assert_eq!(served, (0..10).collect::<Vec<_>>());
    }
}

#[test]
fn a_connection_returned_inside_a_transaction_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(&dir, 1);
    pool.run(|c| c.execute_batch("CREATE TABLE t (x)"))
        .unwrap()
        .unwrap();
    // Dropped with a transaction open.
    let mut conn = pool.get().unwrap();
    conn.run(|c| c.execute_batch("BEGIN; INSERT INTO t VALUES (1);"))
        .unwrap()
        .unwrap();
    drop(conn);
    // A panic mid-transaction.
    let err = pool
        .run(|c| {
            c.execute_batch("BEGIN; INSERT INTO t VALUES (2);").unwrap();
            panic!("boom");
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::Panicked { message } if message.contains("boom")),
        "{err:?}"
    );
    // A green thread killed holding one.
    let p = pool.clone();
    let holder = spawn(move || {
        let mut conn = p.get().unwrap();
        conn.run(|c| c.execute_batch("BEGIN; INSERT INTO t VALUES (3);"))
            .unwrap()
            .unwrap();
        sleep(Duration::from_secs(30)).ok();
    });
    wait_until("the holder holds", || pool.state().in_use == 1);
    holder.kill();
    assert!(holder.wait().is_err());
    let (n, autocommit): (i64, bool) = pool
        .run(|c| {
            (
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .unwrap(),
                c.is_autocommit(),
            )
        })
        .unwrap();
    assert_eq!(n, 0);
    assert!(autocommit);
    assert_eq!(
        pool.stats().created,
        1,
        "the connection should have been reused"
    );
}

#[test]
fn a_call_abandoned_by_its_deadline_returns_the_connection_when_it_ends() {
    let pool: SqlitePool = Pool::builder()
        .max_size(1)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let p = pool.clone();
    let t = spawn(move || {
        let mut conn = p.get().unwrap();
        let r = with_timeout(Duration::from_millis(20), || {
            conn.run(|_| std::thread::sleep(Duration::from_millis(200)))
        });
        let again = conn.run(|_| ());
        (r, again)
    });
    let (r, again) = t.wait().unwrap();
    assert!(matches!(r, Err(Error::TimedOut)), "{r:?}");
    assert!(matches!(again, Err(Error::Returned)), "{again:?}");
    // The next checkout waits for the call to end, then gets the connection.
    let n = pool
        .run(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(pool.state().in_use, 0);
}

#[test]
fn leaks_are_reported_with_holder_and_site_and_again_on_return() {
    let pool: SqlitePool = Pool::builder()
        .max_size(2)
        .leak_threshold(Some(Duration::from_millis(50)))
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let p = pool.clone();
    let holder = greenhub::thread::Builder::new()
        .name("leaky")
        .spawn(move || {
            let conn = p.get().unwrap();
            sleep(Duration::from_millis(300)).unwrap();
            drop(conn);
        })
        .unwrap();
    wait_until("the leak is reported", || pool.stats().leaks == 1);
    let s: DbPoolStats = pool.stats();
    assert_eq!(s.current.len(), 1);
    let c = &s.current[0];
    assert!(c.leaked);
    assert_eq!(c.holder, Some(holder.id()));
    assert_eq!(c.holder_name.as_deref(), Some("leaky"));
    assert!(c.site.contains("sqlite.rs"), "{}", c.site);
    holder.wait().unwrap();
    assert!(pool.stats().current.is_empty());
    // A short hold is not a leak.
    pool.run(|_| ()).unwrap();
    assert_eq!(pool.stats().leaks, 1);
}

#[test]
fn connections_expire_at_jittered_lifetimes_and_are_replaced() {
    let pool: SqlitePool = Pool::builder()
        .max_size(2)
        .max_lifetime(Some(Duration::from_millis(60)))
        .build(SqliteConnectionManager::memory())
        .unwrap();
    for _ in 0..40 {
        pool.run(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .unwrap()
            .unwrap();
        sleep(Duration::from_millis(10)).unwrap();
    }
    let s = pool.stats();
    assert!(s.closed.lifetime >= 2, "{s:?}");
    assert!(s.created >= 3, "{s:?}");
}

#[test]
fn a_waiting_green_thread_shows_as_waiting_on_the_pool_in_the_snapshot() {
    let pool: SqlitePool = Pool::builder()
        .name("orders")
        .max_size(1)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    let held = pool.get().unwrap();
    let p = pool.clone();
    let waiter = spawn(move || p.get().map(drop));
    wait_until("it waits", || pool.state().waiting == 1);
    let snap = snapshot();
    let t = snap.threads.iter().find(|t| t.id == waiter.id()).unwrap();
    assert_eq!(
        t.waiting_on,
        Some(WaitOn::Object {
            object: *greenhub_dbpool::POOL_KIND,
            id: pool.id()
        })
    );
    let obj = snap.objects.iter().find(|o| o.id == pool.id()).unwrap();
    assert_eq!(obj.kind, *greenhub_dbpool::POOL_KIND);
    assert_eq!(obj.name.as_deref(), Some("orders"));
    let detail: DbPoolStats = serde_json::from_value(obj.detail.clone().unwrap()).unwrap();
    assert_eq!(detail.state.in_use, 1);
    assert_eq!(detail.state.waiting, 1);
    assert_eq!(detail.current.len(), 1);
    drop(held);
    waiter.wait().unwrap().unwrap();
}

#[test]
fn bad_settings_are_refused_with_a_clear_error() {
    let bad = Pool::builder()
        .max_size(0)
        .build(SqliteConnectionManager::memory());
    assert!(matches!(bad, Err(Error::Config(m)) if m.contains("max_size")));
    let bad = Pool::builder()
        .max_size(2)
        .min_idle(3)
        .build(SqliteConnectionManager::memory());
    assert!(matches!(bad, Err(Error::Config(m)) if m.contains("min_idle")));
    let bad = Pool::builder()
        .connection_timeout(Duration::ZERO)
        .build(SqliteConnectionManager::memory());
    assert!(matches!(bad, Err(Error::Config(m)) if m.contains("connection_timeout")));
    let bad = Pool::builder()
        .max_lifetime(Some(Duration::MAX))
        .build(SqliteConnectionManager::memory());
    assert!(matches!(bad, Err(Error::Config(m)) if m.contains("max_lifetime")));
    let bad = Pool::builder()
        .name("a\0b")
        .build(SqliteConnectionManager::memory());
    assert!(matches!(bad, Err(Error::Config(m)) if m.contains("NUL")));
    // min_idle connections are open once built.
    let pool = Pool::builder()
        .max_size(3)
        .min_idle(2)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    assert!(pool.state().size >= 2);
    let counted = Arc::new(AtomicUsize::new(0));
    let c = counted.clone();
    pool.run(move |_| c.fetch_add(1, Ordering::SeqCst)).unwrap();
    assert_eq!(counted.load(Ordering::SeqCst), 1);
}
