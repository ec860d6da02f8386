//! A caller that gives up (deadline, kill) has its statement stopped on the server, and its
//! connection comes back to the pool only once the statement has stopped: against a real
//! PostgreSQL server (cancel requests) and SQLite (interrupts).

mod common;

use std::time::{Duration, Instant};

use common::{Managers, Pg};
use greenhub::spawn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use greenhub_dbpool::r2d2::ManageConnection;
use greenhub_dbpool::{Backend, Canceller, Error, PgPool, Pool, SqliteConnectionManager};

/// Sleeping statements of this pool's callers still running on the server.
fn sleeping(pg: &Pg, marker: &str) -> i64 {
    let admin = pg.conninfo.clone();
    let marker = marker.to_string();
    greenhub_tpool::execute(move || {
        let mut c =
            greenhub_dbpool::pg::Client::connect(&admin, greenhub_dbpool::pg::NoTls).unwrap();
        c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .unwrap()
        .get(0)
    })
    .unwrap()
}

/// Waits until `done` holds, for at most `limit`; whether it did.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + limit;
    while Instant::now() < give_up {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// The case: 100 callers time out on a long sleep through a pool of 10. None of their
/// statements is left running on the server (the sleeps last a minute; the check gives up
/// long before), and the pool is whole again: nothing in use, every connection serving.
#[test]
fn a_hundred_callers_that_time_out_leave_nothing_running_on_the_server() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .name("cancel")
        .max_size(10)
        .connection_timeout(Duration::from_secs(30))
        .build(pg.manager())
        .unwrap();
    for round in 0..3 {
        let callers: Vec<_> = (0..100)
            .map(|i| {
                let pool = pool.clone();
                spawn(move || {
                    greenhub::with_timeout(Duration::from_millis(300), || {
                        if i % 2 == 0 {
                            pool.batch_execute("SELECT pg_sleep(60) /* abandoned */")
                        } else {
                            pool.get()?
                                .batch_execute("SELECT pg_sleep(60) /* abandoned */")
                        }
                    })
                })
            })
            .collect();
        for c in callers {
            let outcome = c.wait().unwrap();
            assert!(
                matches!(outcome, Err(Error::TimedOut)),
                "round {round}: {outcome:?}"
            );
        }
        assert!(
            eventually(Duration::from_secs(20), || sleeping(&pg, "abandoned") == 0),
            "round {round}: {} abandoned statements still run on the server",
            sleeping(&pg, "abandoned")
        );
        assert!(
            eventually(Duration::from_secs(20), || pool.state().in_use == 0),
            "round {round}: {:?}",
            pool.state()
        );
        // Whole again: ten callers holding a connection at once, each its own.
        let holding = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let served: Vec<_> = (0..10)
            .map(|_| {
                let (pool, holding) = (pool.clone(), holding.clone());
                spawn(move || {
                    let mut conn = pool.get()?;
                    holding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while holding.load(std::sync::atomic::Ordering::SeqCst) < 10 {
                        greenhub::sleep(Duration::from_millis(5)).unwrap();
                    }
                    conn.query_one("SELECT pg_backend_pid()", vec![])
                })
            })
            .collect();
        let mut pids: Vec<i32> = served
            .into_iter()
            .map(|t| t.wait().unwrap().unwrap().get(0))
            .collect();
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), 10, "round {round}");
    }
    let stats = pool.stats();
    // The running statements were cancelled (the queued calls were withdrawn before they
    // ran): how many had started by the deadline depends on the machine, not on the pool.
    assert!(
        (1..=300).contains(&stats.cancels),
        "cancels: {}",
        stats.cancels
    );
    // A cancel request may land late: each connection that had one was replaced.
    assert_eq!(stats.closed.cancelled, stats.cancels, "{stats:?}");
}

/// A cancel request is acted on by the server asynchronously: it must never stop the next
/// statement on the connection. One connection at a time, a caller that times out on a
/// sleep, then at once a burst of statements: every one of them succeeds, round after round.
#[test]
fn a_cancel_never_lands_on_the_next_statement() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .name("next")
        .max_size(1)
        .build(pg.manager())
        .unwrap();
    for round in 0..30 {
        // Deadlines from 0 to 29 ms: some cancels race the start of the statement.
        let budget = Duration::from_millis(round);
        let outcome = greenhub::with_timeout(budget, || {
            pool.batch_execute("SELECT pg_sleep(60) /* next */")
        });
        assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
        for i in 0..5 {
            // Long enough for a late cancel to find it running.
            let row = pool
                .query_one(
                    "SELECT $1::int FROM pg_sleep(0.005)",
                    vec![Box::new(i) as greenhub_dbpool::Param],
                )
                .unwrap_or_else(|e| panic!("round {round}, statement {i}: {e}"));
            assert_eq!(row.get::<_, i32>(0), i);
        }
    }
    assert_eq!(sleeping(&pg, "next"), 0);
    let stats = pool.stats();
    assert_eq!(stats.closed.cancelled, stats.cancels, "{stats:?}");
}

/// A killed holder's statement is cancelled too, as is a closure's; each connection is
/// closed after its cancel (which could still land), and the pool opens others.
#[test]
fn a_killed_caller_is_cancelled_and_a_closure_s_connection_is_replaced() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .name("kill")
        .max_size(2)
        .build(pg.manager())
        .unwrap();
    let holder = {
        let pool = pool.clone();
        spawn(move || {
            let mut conn = pool.get().unwrap();
            conn.batch_execute("SELECT pg_sleep(60) /* killed */")
        })
    };
    assert!(eventually(Duration::from_secs(20), || sleeping(
        &pg, "killed"
    ) == 1));
    holder.kill();
    assert!(holder.wait().is_err());
    assert!(
        eventually(Duration::from_secs(20), || sleeping(&pg, "killed") == 0),
        "the killed caller's statement still runs"
    );
    assert!(eventually(Duration::from_secs(20), || pool.state().in_use == 0));

    let outcome = greenhub::with_timeout(Duration::from_millis(200), || {
        pool.run(|c| c.batch_execute("SELECT pg_sleep(60) /* closure */"))
    });
    assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
    assert!(eventually(Duration::from_secs(20), || sleeping(
        &pg, "closure"
    ) == 0));
    // Both connections had a cancel sent: both were replaced.
    assert!(eventually(Duration::from_secs(20), || pool
        .stats()
        .closed
        .cancelled
        == 2));
    let n: i32 = pool.query_one("SELECT 7", vec![]).unwrap().get(0);
    assert_eq!(n, 7);
    assert!(pool.stats().cancels >= 2);
}

/// SQLite: an endless statement whose caller gives up is interrupted; the in-memory
/// database's only connection (its data lives in it) is kept and serves the next caller.
#[test]
fn sqlite_interrupts_the_statement_of_a_caller_that_left() {
    let pool = Pool::builder()
        .name("sqlite-cancel")
        .max_size(1)
        .build(SqliteConnectionManager::memory())
        .unwrap();
    pool.try_run(|c| c.execute_batch("CREATE TABLE kept(x); INSERT INTO kept VALUES (42);"))
        .unwrap();
    const ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                           SELECT count(*) FROM c";
    for round in 0..20 {
        let outcome = greenhub::with_timeout(Duration::from_millis(50), || {
            pool.try_run(|c| c.query_row(ENDLESS, [], |r| r.get::<_, i64>(0)))
        });
        assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
        let mut conn = greenhub::with_timeout(Duration::from_secs(20), || pool.get())
            .unwrap_or_else(|e| panic!("round {round}: the connection did not come back: {e}"));
        let kept: i64 = conn
            .try_run(|c| c.query_row("SELECT x FROM kept", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(kept, 42);
    }
    let stats = pool.stats();
    assert_eq!(stats.cancels, 20);
    assert_eq!(stats.created, 1, "{stats:?}");
}

/// A driver whose first cancel reaches the database before the statement does and is lost,
/// as a real cancel can be: the statement stops only because the pool sends it again.
struct LosesFirstCancel {
    late: bool,
    sent: Arc<AtomicU32>,
}

/// A fake connection: its statement runs until told to stop.
struct Statement {
    stop: Arc<AtomicBool>,
}

impl ManageConnection for LosesFirstCancel {
    type Connection = Statement;
    type Error = std::io::Error;
    fn connect(&self) -> Result<Statement, std::io::Error> {
        Ok(Statement {
            stop: Arc::new(AtomicBool::new(false)),
        })
    }
    fn is_valid(&self, _: &mut Statement) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn has_broken(&self, _: &mut Statement) -> bool {
        false
    }
}

impl Backend for LosesFirstCancel {
    fn in_transaction(_: &mut Statement) -> Option<bool> {
        Some(false)
    }
    fn rollback(_: &mut Statement) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn canceller(&self, conn: &mut Statement) -> Option<Canceller> {
        let (stop, sent) = (conn.stop.clone(), self.sent.clone());
        let cancel = move || {
            if sent.fetch_add(1, Ordering::SeqCst) > 0 {
                stop.store(true, Ordering::SeqCst);
            }
            Ok(())
        };
        Some(if self.late {
            Canceller::may_land_late(cancel)
        } else {
            Canceller::immediate(cancel)
        })
    }
}

#[test]
fn a_lost_cancel_is_sent_again_while_the_statement_runs() {
    for late in [false, true] {
        let sent = Arc::new(AtomicU32::new(0));
        let pool = Pool::builder()
            .name("resend")
            .max_size(1)
            .build(LosesFirstCancel {
                late,
                sent: sent.clone(),
            })
            .unwrap();
        let outcome = greenhub::with_timeout(Duration::from_millis(50), || {
            pool.run(|statement| {
                while !statement.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                statement.stop.store(false, Ordering::SeqCst);
            })
        });
        assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
        assert!(
            eventually(Duration::from_secs(20), || pool.state().in_use == 0),
            "late {late}: the statement was never stopped ({} sent)",
            sent.load(Ordering::SeqCst)
        );
        assert!(sent.load(Ordering::SeqCst) >= 2);
        let stats = pool.stats();
        assert_eq!(stats.cancels, 1);
        // Sent twice, so one could still land: a late canceller's connection is closed; an
        // immediate one's serves on.
        assert_eq!(stats.closed.cancelled, u64::from(late), "late {late}");
        assert_eq!(pool.run(|_| 5).unwrap(), 5);
    }
}

/// Under load the server acts on cancel requests late (tens of milliseconds, when its
/// postmaster is busy): 32 callers keep abandoning sleeps on 8 connections, and none ever
/// hears a cancel that was meant for another: each is told `TimedOut`, nothing else.
#[test]
fn under_load_no_caller_is_hit_by_a_cancel_meant_for_another() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .name("crowd")
        .max_size(8)
        .build(pg.manager())
        .unwrap();
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let pool = pool.clone();
            spawn(move || {
                (0..30)
                    .map(|_| {
                        greenhub::with_timeout(Duration::from_millis(10), || {
                            pool.batch_execute("SELECT pg_sleep(0.05)")
                        })
                    })
                    .filter(|r| !matches!(r, Err(Error::TimedOut)))
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let wrong: Vec<String> = callers
        .into_iter()
        .flat_map(|c| c.wait().unwrap())
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    let stats = pool.stats();
    assert!(stats.cancels > 0, "{stats:?}");
    assert_eq!(stats.closed.cancelled, stats.cancels, "{stats:?}");
}
