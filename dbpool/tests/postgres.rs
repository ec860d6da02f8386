//! dbpool against a real PostgreSQL server (a throwaway cluster per test, see `common`).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Managers, Pg};
use greenhub::spawn;
use greenhub_dbpool::{Error, Param, PgPool, Pool};

fn pool(pg: &Pg, max: u32) -> PgPool {
    Pool::builder()
        .name("pg")
        .max_size(max)
        .connection_timeout(Duration::from_secs(5))
        .build(pg.manager())
        .unwrap()
}

fn p(v: i32) -> Vec<Param> {
    vec![Box::new(v) as Param]
}

fn backend_pid(pool: &PgPool) -> i32 {
    pool.query_one("SELECT pg_backend_pid()", vec![])
        .unwrap()
        .get(0)
}

/// `n` green threads each ask for their own number back; every query must succeed.
fn echo_from_green_threads(pool: &PgPool, n: i32) {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let pool = pool.clone();
            spawn(move || {
                pool.query_one("SELECT $1::int", p(i))
                    .map(|r| r.get::<_, i32>(0))
            })
        })
        .collect();
    let got: Vec<i32> = threads
        .into_iter()
        .map(|t| t.wait().unwrap().unwrap())
        .collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

#[test]
fn many_green_threads_share_a_small_pool_and_every_query_is_answered_once() {
    let pg = Pg::start();
    let pool = pool(&pg, 4);
    for round in 0..3 {
        let threads: Vec<_> = (0..100)
            .map(|i| {
                let pool = pool.clone();
                spawn(move || {
                    (0..5)
                        .map(|k| {
                            let v = round * 10_000 + i * 10 + k;
                            let row = pool.query_one("SELECT $1::int", p(v)).unwrap();
                            let got: i32 = row.get(0);
                            assert_eq!(got, v, "a reply reached the wrong green thread");
                            got
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for v in t.wait().unwrap() {
                assert!(seen.insert(v), "value {v} answered twice");
            }
        }
        assert_eq!(seen.len(), 500, "round {round} lost answers");
    }
    let stats = pool.stats();
    assert_eq!(stats.checkouts, 1500);
    assert!(
        stats.created <= 4,
        "opened {} connections for a pool of 4",
        stats.created
    );
    assert_eq!(stats.state.in_use, 0);
    assert_eq!(stats.state.waiting, 0);
}

#[test]
fn an_exhausted_pool_serves_waiters_in_order_and_times_out_the_rest() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_secs(2))
        .build(pg.manager())
        .unwrap();
    pool.batch_execute("CREATE TABLE served (seq serial, who int)")
        .unwrap();
    let held = pool.get().unwrap();
    // Eight waiters queue in a known order.
    let waiters: Vec<_> = (0..8)
        .map(|i| {
            let waiter = pool.clone();
            let t = spawn(move || waiter.execute("INSERT INTO served (who) VALUES ($1)", p(i)));
            while pool.state().waiting != i as u32 + 1 {
                greenhub::sleep(Duration::from_millis(2)).unwrap();
            }
            t
        })
        .collect();
    drop(held);
    for t in waiters {
        assert_eq!(t.wait().unwrap().unwrap(), 1);
    }
    let who: Vec<i32> = pool
        .query("SELECT who FROM served ORDER BY seq", vec![])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        who,
        (0..8).collect::<Vec<_>>(),
        "not served in arrival order"
    );
    // A holder that never lets go: the next caller times out with the pool state.
    let _hog = pool.get().unwrap();
    match pool.query_one("SELECT 1", vec![]) {
        Err(Error::PoolTimeout { state, .. }) => assert_eq!(state.in_use, 1),
        other => panic!("expected a pool timeout, got {other:?}"),
    }
}

#[test]
fn a_holder_killed_mid_transaction_is_rolled_back_and_nothing_commits() {
    let pg = Pg::start();
    let pool = pool(&pg, 1);
    pool.batch_execute("CREATE TABLE t (x int)").unwrap();
    let first_pid = backend_pid(&pool);

    // Killed while waiting between statements of an open transaction (not during one: a
    // statement cut short is cancelled on the server, and its connection closed).
    let p1 = pool.clone();
    let between = greenhub::Event::<()>::new();
    let in_transaction = between.clone();
    let holder = spawn(move || {
        let mut conn = p1.get().unwrap();
        conn.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .unwrap();
        in_transaction.set(()).unwrap();
        greenhub::sleep(Duration::from_secs(30)).ok();
    });
    between.wait().unwrap();
    holder.kill();
    assert!(holder.wait().is_err());
    // No statement ran: rolled back, and the same connection serves on.
    assert_eq!(
        backend_pid(&pool),
        first_pid,
        "the connection was not reused"
    );

    // Killed while its query runs: the query is cancelled, the transaction never commits,
    // and the connection (which a late cancel could still reach) is replaced.
    let p2 = pool.clone();
    let holder = spawn(move || {
        p2.transaction(|tx| {
            tx.execute("INSERT INTO t VALUES (2)", &[])?;
            tx.execute("SELECT pg_sleep(30) -- killed holder", &[])?;
            Ok(())
        })
    });
    // Killed once the sleep runs on the server (seen from a connection of its own).
    let mut admin =
        greenhub_dbpool::pg::Client::connect(&pg.conninfo, greenhub_dbpool::pg::NoTls).unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%killed holder%' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < give_up, "the sleep never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    holder.kill();
    assert!(holder.wait().is_err());

    let count: i64 = pool
        .query_one("SELECT count(*) FROM t", vec![])
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "work of killed holders was committed");
    let stats = pool.stats();
    assert_eq!(stats.created, 2, "{stats:?}");
    assert_eq!(stats.closed.cancelled, 1, "{stats:?}");
    assert_eq!(stats.state.in_use, 0);
}

#[test]
fn a_transaction_commits_on_ok_and_rolls_back_on_err() {
    let pg = Pg::start();
    let pool = pool(&pg, 2);
    pool.batch_execute("CREATE TABLE t (x int)").unwrap();
    pool.transaction(|tx| tx.execute("INSERT INTO t VALUES (1)", &[]).map(drop))
        .unwrap();
    let failed = pool.transaction(|tx| {
        tx.execute("INSERT INTO t VALUES (2)", &[])?;
        tx.execute("INSERT INTO no_such_table VALUES (3)", &[])?;
        Ok(())
    });
    match failed {
        Err(e @ Error::Database(_)) => assert!(e.to_string().contains("no_such_table"), "{e}"),
        other => panic!("expected a database error, got {other:?}"),
    }
    let xs: Vec<i32> = pool
        .query("SELECT x FROM t ORDER BY x", vec![])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(xs, vec![1]);
}

#[test]
fn terminated_backends_are_replaced_and_no_query_is_lost() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .max_size(4)
        .validate_after(Some(Duration::ZERO))
        .connection_timeout(Duration::from_secs(5))
        .build(pg.manager())
        .unwrap();
    // Warm all four connections.
    let warm: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            spawn(move || pool.query_one("SELECT pg_sleep(0.05)", vec![]).map(drop))
        })
        .collect();
    for t in warm {
        t.wait().unwrap().unwrap();
    }
    let before = pool.stats().created;
    assert!(before >= 2);
    for round in 0..3 {
        let admin = pg.conninfo.clone();
        let killed = greenhub_tpool::execute(move || {
            let mut c =
                greenhub_dbpool::pg::Client::connect(&admin, greenhub_dbpool::pg::NoTls).unwrap();
            c.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
                &[],
            )
            .unwrap()
            .len()
        })
        .unwrap();
        assert!(killed >= 1, "round {round}: nothing to terminate");
        // Every connection is tested before use: the dead ones are replaced, no query fails.
        echo_from_green_threads(&pool, 40);
    }
    let stats = pool.stats();
    assert!(
        stats.closed.invalid >= 1,
        "no dead connection was detected: {stats:?}"
    );
    assert!(stats.created > before);
    assert_eq!(stats.state.in_use, 0);
}

#[test]
fn prepared_statements_are_reused_and_survive_a_schema_change() {
    let pg = Pg::start();
    let pool = pool(&pg, 1);
    pool.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .unwrap();
    let sql = "SELECT * FROM t";
    for _ in 0..3 {
        assert_eq!(pool.query_one(sql, vec![]).unwrap().len(), 1);
    }
    // One connection, one prepared statement for the three queries.
    let prepared: i64 = pool
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
            vec![Box::new(sql.to_string()) as Param],
        )
        .unwrap()
        .get(0);
    assert_eq!(prepared, 1);
    pool.batch_execute("ALTER TABLE t ADD COLUMN b int")
        .unwrap();
    assert_eq!(pool.query_one(sql, vec![]).unwrap().len(), 2);
}

#[test]
fn without_testing_a_lost_connection_is_an_error_and_is_discarded() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .max_size(1)
        .validate_after(None)
        .build(pg.manager())
        .unwrap();
    let pid = backend_pid(&pool);
    let admin = pg.conninfo.clone();
    greenhub_tpool::execute(move || {
        let mut c =
            greenhub_dbpool::pg::Client::connect(&admin, greenhub_dbpool::pg::NoTls).unwrap();
        c.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
    })
    .unwrap();
    greenhub::sleep(Duration::from_millis(100)).unwrap();
    match pool.query_one("SELECT 1", vec![]) {
        Err(Error::ConnectionLost { .. }) => {}
        other => panic!("expected the connection to be lost, got {other:?}"),
    }
    // The next checkout gets a new connection.
    assert_ne!(backend_pid(&pool), pid);
    assert!(pool.stats().closed.broken >= 1);
}

#[test]
fn a_restarted_server_gives_errors_in_bounded_time_then_the_pool_recovers() {
    let pg = Pg::start();
    if !pg.controlled() {
        eprintln!("DATABASE_URL is set: this test needs its own server, skipped");
        return;
    }
    let pool: PgPool = Pool::builder()
        .max_size(4)
        .connection_timeout(Duration::from_secs(1))
        .validate_after(Some(Duration::ZERO))
        .build(pg.manager())
        .unwrap();
    assert_eq!(
        pool.query_one("SELECT 1", vec![]).unwrap().get::<_, i32>(0),
        1
    );
    pg.stop();
    let began = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            spawn(move || pool.query_one("SELECT 1", vec![]).map(drop))
        })
        .collect();
    for t in threads {
        let err = t.wait().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Connect { .. } | Error::PoolTimeout { .. } | Error::ConnectionLost { .. }
            ),
            "{err:?}"
        );
    }
    // Eight waiters on four permits, each given at most the 1 s timeout: bounded, not hung.
    assert!(began.elapsed() < Duration::from_secs(20));
    assert_eq!(pool.state().in_use, 0);
    pg.start_again();
    echo_from_green_threads(&pool, 20);
    assert_eq!(pool.state().in_use, 0);
}

#[test]
fn bad_credentials_and_an_unreachable_server_fail_clearly_within_the_timeout() {
    let pg = Pg::start();
    let wrong = pg.with_password("wrong");
    let began = Instant::now();
    let pool: PgPool = Pool::builder()
        .connection_timeout(Duration::from_millis(500))
        .build(pg.manager_for(&wrong))
        .unwrap();
    match pool.get() {
        Err(Error::Connect { reason }) => {
            assert!(
                reason.contains("password authentication failed"),
                "{reason}"
            )
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(began.elapsed() < Duration::from_secs(10));

    // Nothing listens on a freshly freed port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("host=127.0.0.1 port={port} user=postgres password=x");
    let pool: PgPool = Pool::builder()
        .connection_timeout(Duration::from_millis(500))
        .build(pg.manager_for(&nowhere))
        .unwrap();
    let t = spawn(move || pool.get().map(drop));
    match t.wait().unwrap() {
        Err(Error::Connect { reason }) => assert!(!reason.is_empty()),
        other => panic!("expected a connect error, got {other:?}"),
    }
    // min_idle makes building fail the same way.
    let built = Pool::builder()
        .min_idle(1)
        .connection_timeout(Duration::from_millis(500))
        .build(pg.manager_for(&wrong));
    assert!(matches!(built, Err(Error::Connect { .. })), "{built:?}");
}

/// Rounds of a transaction whose commit races its caller's deadline, on both ways to run one
/// (on the pool, and on a checked-out connection). The deadlines spread over twice the time a
/// transaction takes here (measured first, so the spread follows the machine), so that some
/// commits land before the deadline, some after and some at it. Whatever the outcome, the
/// caller is told the truth: a transaction reported committed is in the table, one reported
/// failed is not.
#[test]
fn a_commit_racing_the_deadline_is_never_reported_wrongly() {
    let pg = Pg::start();
    let pool = pool(&pg, 4);
    pool.batch_execute("CREATE TABLE t (x int)").unwrap();
    let insert = |x: i32| {
        move |tx: &mut greenhub_dbpool::pg::Transaction<'_>| -> Result<(), _> {
            tx.execute("INSERT INTO t VALUES ($1)", &[&x]).map(drop)
        }
    };
    // What a transaction takes, warm: the median of a few (their rows are removed after).
    let mut took: Vec<Duration> = (0..21)
        .map(|_| {
            let t0 = Instant::now();
            pool.transaction(insert(-1)).unwrap();
            t0.elapsed()
        })
        .collect();
    took.sort();
    let typical = took[took.len() / 2];
    pool.execute("DELETE FROM t", vec![]).unwrap();

    const WORKERS: i32 = 4;
    const ROUNDS: i32 = 100;
    let threads: Vec<_> = (0..WORKERS)
        .map(|w| {
            let pool = pool.clone();
            spawn(move || {
                let mut outcomes = Vec::new();
                for r in 0..ROUNDS {
                    let x = w * ROUNDS + r;
                    // 0 to 2x the typical time, in 50 steps.
                    let budget = typical * 2 * (x as u32 % 50) / 50;
                    let outcome = if x % 2 == 0 {
                        greenhub::with_timeout(budget, || pool.transaction(insert(x)))
                    } else {
                        greenhub::with_timeout(budget, || pool.get()?.transaction(insert(x)))
                    };
                    outcomes.push((x, outcome));
                }
                outcomes
            })
        })
        .collect();
    let mut committed = HashSet::new();
    let (mut ok, mut failed) = (0, 0);
    for t in threads {
        for (x, outcome) in t.wait().unwrap() {
            match outcome {
                Ok(()) => {
                    committed.insert(x);
                    ok += 1;
                }
                Err(Error::TimedOut | Error::PoolTimeout { .. } | Error::Returned) => failed += 1,
                Err(e) => panic!("transaction {x}: {e}"),
            }
        }
    }
    assert_eq!(ok + failed, WORKERS * ROUNDS);
    // Calls abandoned by their callers end on the pool threads (rolled back): wait for them.
    let give_up = Instant::now() + Duration::from_secs(30);
    while pool.state().in_use > 0 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
    let rows: HashSet<i32> = pool
        .query("SELECT x FROM t", vec![])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<_> = committed.difference(&rows).collect();
    let untold: Vec<_> = rows.difference(&committed).collect();
    assert!(lost.is_empty(), "reported committed but missing: {lost:?}");
    assert!(
        untold.is_empty(),
        "reported failed but committed: {untold:?} ({ok} committed, {failed} failed, \
         a transaction takes {typical:?})"
    );
}

/// Behind pgbouncer in transaction mode, consecutive statements of one client run on
/// different server connections: named prepared statements break there (shown first, so the
/// test is known to exercise the problem), unnamed ones work, under load, for every helper.
#[test]
fn unnamed_statements_work_behind_pgbouncer_in_transaction_mode() {
    let pg = Pg::start();
    if !pg.controlled() {
        return;
    }
    let bouncer = greenhub_pgtest::Pgbouncer::start(&pg, "transaction", 2);
    let build = |statements| -> PgPool {
        Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(10))
            .statements(statements)
            .build(pg.manager_for(&bouncer.conninfo))
            .unwrap()
    };
    pool(&pg, 1)
        .batch_execute("CREATE TABLE bounced (x int PRIMARY KEY)")
        .unwrap();

    // Another client pins the server connection a statement was prepared on (the pooler
    // hands out the most recently used one first), so the next use runs on the other.
    let pinned = |pool: &PgPool| -> Result<i32, Error> {
        pool.query_one("SELECT $1::int", p(1))?;
        let conninfo = bouncer.conninfo.clone();
        let blocker = greenhub_tpool::execute(move || {
            let mut c = greenhub_dbpool::pg::Client::connect(&conninfo, greenhub_dbpool::pg::NoTls)
                .unwrap();
            c.batch_execute("BEGIN; SELECT 1").unwrap();
            c
        })
        .unwrap();
        let second = pool.query_one("SELECT $1::int", p(2)).map(|r| r.get(0));
        greenhub_tpool::execute(move || drop(blocker)).unwrap();
        second
    };
    let named = build(greenhub_dbpool::Statements::Prepared);
    let broke = pinned(&named).unwrap_err();
    assert!(broke.to_string().contains("does not exist"), "{broke}");

    let unnamed = build(greenhub_dbpool::Statements::Unnamed);
    for _ in 0..5 {
        assert_eq!(pinned(&unnamed).unwrap(), 2);
    }
    let unnamed = Pool::builder()
        .max_size(8)
        .statements(greenhub_dbpool::Statements::Unnamed)
        .build(pg.manager_for(&bouncer.conninfo))
        .unwrap();
    let threads: Vec<_> = (0..40)
        .map(|w| {
            let pool = unnamed.clone();
            spawn(move || -> Result<(), Error> {
                for r in 0..25 {
                    let x = w * 25 + r;
                    match x % 4 {
                        0 => {
                            assert_eq!(pool.execute("INSERT INTO bounced VALUES ($1)", p(x))?, 1);
                        }
                        1 => {
                            let n: i32 = pool.query_one("SELECT $1::int * 2", p(x))?.get(0);
                            assert_eq!(n, 2 * x);
                        }
                        2 => {
                            let mut conn = pool.get()?;
                            let rows = conn.query(
                                "SELECT g FROM generate_series(1, $1) g",
                                vec![Box::new(x % 7) as Param],
                            )?;
                            assert_eq!(rows.len() as i32, x % 7);
                        }
                        _ => {
                            pool.transaction(move |tx| {
                                tx.execute("INSERT INTO bounced VALUES ($1)", &[&x])?;
                                tx.execute("UPDATE bounced SET x = -x WHERE x = $1", &[&x])
                            })?;
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.wait().unwrap().unwrap();
    }
    // Every insert exactly once: 250 plain, 250 negated in transactions.
    let direct = pool(&pg, 1);
    let row = direct
        .query_one(
            "SELECT count(*) FILTER (WHERE x >= 0), count(*) FILTER (WHERE x < 0) FROM bounced",
            vec![],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (250, 250));
    // Inside a caller's own transaction, on a checked-out connection.
    let mut conn = unnamed.get().unwrap();
    conn.batch_execute("BEGIN").unwrap();
    conn.execute("INSERT INTO bounced VALUES ($1)", p(100_000))
        .unwrap();
    let seen: i64 = conn
        .query_one("SELECT count(*) FROM bounced WHERE x = $1", p(100_000))
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    conn.batch_execute("ROLLBACK").unwrap();
    drop(conn);
    let kept: i64 = direct
        .query_one("SELECT count(*) FROM bounced WHERE x = 100000", vec![])
        .unwrap()
        .get(0);
    assert_eq!(kept, 0);
}

/// The server's own `statement_timeout` follows the caller's deadline: a statement stops at
/// the deadline even where no cancel request is sent, the caller hears `TimedOut`, and a
/// caller without a deadline runs with the session's default again.
#[test]
fn the_server_statement_timeout_follows_the_callers_deadline() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .max_size(1)
        .deadline_statement_timeout(true)
        .build(pg.manager())
        .unwrap();
    let timeout = |pool: &PgPool| -> String {
        pool.query_one("SELECT current_setting('statement_timeout')", vec![])
            .unwrap()
            .get(0)
    };
    assert_eq!(timeout(&pool), "0");
    for round in 0..10 {
        let outcome = greenhub::with_timeout(Duration::from_millis(100), || {
            pool.batch_execute("SELECT pg_sleep(60)")
        });
        assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
        // Set within the deadline (rounded up), and stopped by the server.
        let inside: String = greenhub::with_timeout(Duration::from_secs(30), || {
            pool.query_one("SELECT current_setting('statement_timeout')", vec![])
        })
        .unwrap()
        .get(0);
        assert!(inside.ends_with("s"), "round {round}: {inside}");
        // Code the pool does not see into runs with the session's default, even right after
        // a helper under a deadline set a timeout.
        let raw: String = greenhub::with_timeout(Duration::from_secs(30), || {
            pool.query_one("SELECT 1", vec![])?;
            pool.try_run(|c| {
                c.query_one("SELECT current_setting('statement_timeout')", &[])
                    .map(|r| r.get::<_, String>(0))
            })
        })
        .unwrap();
        assert_eq!(raw, "0", "round {round}");
        assert_eq!(timeout(&pool), "0", "round {round}");
    }
    let stats = pool.stats();
    // The server stopped them: no connection had to be closed for a cancel in flight.
    assert_eq!(stats.closed.cancelled, 0, "{stats:?}");
    assert_eq!(stats.created, 1, "{stats:?}");
    // Settings that contradict each other are refused.
    let both = Pool::builder()
        .deadline_statement_timeout(true)
        .statements(greenhub_dbpool::Statements::Unnamed)
        .build(pg.manager());
    assert!(matches!(both, Err(Error::Config(_))), "{both:?}");
}
