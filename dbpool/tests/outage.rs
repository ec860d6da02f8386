//! PostgreSQL failures say what they are, fail fast and heal fast: a lost connection is
//! `ConnectionLost` however it was lost, a database that cannot be reached fails a checkout
//! at once with the server's reason (not at the 30 s timeout), the outage is said once, and
//! the pool is back within about a second of the server's return.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Managers, Pg};
use greenhub::spawn;
use greenhub_dbpool::{Error, PgPool, Pool};

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LOGS.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// Lines said about the pool named `name`.
fn said(name: &str) -> Vec<String> {
    let tag = format!("pool {name:?}");
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&tag))
        .cloned()
        .collect()
}

/// Terminates every other client backend of the server.
fn terminate_all(pg: &Pg) {
    let admin = pg.conninfo.clone();
    greenhub_tpool::execute(move || {
        let mut c =
            greenhub_dbpool::pg::Client::connect(&admin, greenhub_dbpool::pg::NoTls).unwrap();
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .unwrap();
    })
    .unwrap();
}

#[test]
fn every_lost_connection_is_connection_lost_and_is_not_handed_out_again() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .name("lost")
        .max_size(4)
        .validate_after(None)
        .build(pg.manager())
        .unwrap();
    for round in 0..5 {
        // Terminated in the middle of a query (SQLSTATE 57P01 reaches the caller), through
        // the pool's own statements and through a closure's `?`.
        let busy: Vec<_> = (0..4)
            .map(|i| {
                let pool = pool.clone();
                spawn(move || {
                    if i % 2 == 0 {
                        pool.query_one("SELECT pg_sleep(30)", vec![]).map(drop)
                    } else {
                        let mut conn = pool.get()?;
                        conn.try_run(|c| {
                            c.simple_query("SELECT pg_sleep(30)")?;
                            Ok::<_, greenhub_dbpool::pg::Error>(())
                        })
                    }
                })
            })
            .collect();
        // Wait until all four are in the server, then end them.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sleeping: i64 = {
                let admin = pg.conninfo.clone();
                greenhub_tpool::execute(move || {
                    let mut c =
                        greenhub_dbpool::pg::Client::connect(&admin, greenhub_dbpool::pg::NoTls)
                            .unwrap();
                    c.query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' \
                         AND state = 'active'",
                        &[],
                    )
                    .unwrap()
                    .get(0)
                })
                .unwrap()
            };
            if sleeping >= 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the queries never ran"
            );
            greenhub::sleep(Duration::from_millis(20)).unwrap();
        }
        terminate_all(&pg);
        for t in busy {
            match t.wait().unwrap() {
                Err(Error::ConnectionLost { reason }) => {
                    assert!(!reason.is_empty());
                }
                other => panic!("round {round}: expected ConnectionLost, got {other:?}"),
            }
        }
        // No dead connection comes back: the next queries all succeed, without validation.
        for _ in 0..8 {
            assert_eq!(
                pool.query_one("SELECT 1", vec![]).unwrap().get::<_, i32>(0),
                1,
                "round {round}"
            );
        }
    }
    assert!(pool.stats().closed.broken >= 20, "{:?}", pool.stats());
}

#[test]
fn a_database_that_cannot_be_reached_fails_checkouts_at_once_and_is_said_once() {
    capture();
    let pg = Pg::start();
    // The default 30 s connection_timeout: a checkout must not wait it out.
    let wrong = Pool::builder()
        .name("wrong-password")
        .build(pg.manager_for(&pg.with_password("wrong")))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = Pool::builder()
        .name("refused")
        .build(pg.manager_for(&format!(
            "host=127.0.0.1 port={port} user=postgres password=x"
        )))
        .unwrap();
    for (pool, says) in [
        (&wrong, "password authentication failed"),
        (&refused, "refused"),
    ] {
        for _ in 0..5 {
            let began = Instant::now();
            match pool.get() {
                Err(Error::Connect { reason }) => assert!(reason.contains(says), "{reason}"),
                other => panic!("expected a connect error, got {other:?}"),
            }
            // Far from the 30 s timeout (a connect retried in the background is at most a
            // second away).
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "{:?}",
                began.elapsed()
            );
        }
    }
    for name in ["wrong-password", "refused"] {
        let lines = said(name);
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("cannot connect"))
                .count(),
            1,
            "said once per outage, not per try: {lines:?}"
        );
    }
}

#[test]
fn after_an_outage_the_pool_is_back_within_about_a_second_of_the_server() {
    capture();
    let pg = Pg::start();
    if !pg.controlled() {
        eprintln!("DATABASE_URL is set: this test needs its own server, skipped");
        return;
    }
    let pool: PgPool = Pool::builder()
        .name("outage")
        .max_size(2)
        .validate_after(Some(Duration::ZERO))
        .build(pg.manager())
        .unwrap();
    assert_eq!(
        pool.query_one("SELECT 1", vec![]).unwrap().get::<_, i32>(0),
        1
    );
    pg.stop();
    // Seven seconds of outage with callers trying: each fails fast; r2d2's doubling back-off
    // would by now wait seconds between connects, greenhub's waits at most one.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let began = Instant::now();
        let r = pool.query_one("SELECT 1", vec![]);
        assert!(r.is_err());
        assert!(began.elapsed() < Duration::from_secs(10));
        greenhub::sleep(Duration::from_millis(200)).unwrap();
    }
    pg.start_again();
    let back = Instant::now();
    loop {
        if pool.query_one("SELECT 1", vec![]).is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "the pool never recovered"
        );
        greenhub::sleep(Duration::from_millis(20)).unwrap();
    }
    let took = back.elapsed();
    // About a second; the margin is for a busy machine. r2d2's back-off alone took 5 s here.
    assert!(took < Duration::from_secs(4), "recovered after {took:?}");
    let lines = said("outage");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("cannot connect"))
            .count(),
        1,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reaches the database again")),
        "{lines:?}"
    );
}

#[test]
fn a_value_the_driver_cannot_send_is_not_a_lost_connection() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .name("nul")
        .max_size(1)
        .build(pg.manager())
        .unwrap();
    let pid: i32 = pool
        .query_one("SELECT pg_backend_pid()", vec![])
        .unwrap()
        .get(0);
    // A NUL byte cannot be sent to PostgreSQL: the driver refuses it before the server sees it.
    match pool.query_one("SELECT $1::text", vec![Box::new("a\0b".to_string())]) {
        Err(Error::Database(e)) => assert!(!e.to_string().is_empty()),
        other => panic!("expected a database error, got {other:?}"),
    }
    match pool.batch_execute("SELECT 1;\0") {
        Err(Error::Database(_)) => {}
        other => panic!("expected a database error, got {other:?}"),
    }
    // The same connection serves on.
    let again: i32 = pool
        .query_one("SELECT pg_backend_pid()", vec![])
        .unwrap()
        .get(0);
    assert_eq!(again, pid);
    assert_eq!(pool.stats().closed.broken, 0);
}

#[test]
fn building_for_min_idle_waits_the_whole_timeout_and_fails_at_once_when_refused() {
    let pg = Pg::start();
    let pool: PgPool = Pool::builder()
        .name("warm")
        .max_size(4)
        .min_idle(4)
        .connection_timeout(Duration::from_secs(30))
        .build(pg.manager())
        .unwrap();
    assert_eq!(pool.state().idle, 4);
    let began = Instant::now();
    let refused = Pool::builder()
        .name("warm-refused")
        .min_idle(2)
        .build(pg.manager_for(&pg.with_password("wrong")));
    match refused {
        Err(Error::Connect { reason }) => {
            assert!(
                reason.contains("password authentication failed"),
                "{reason}"
            )
        }
        other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
    }
    assert!(began.elapsed() < Duration::from_secs(10));
}
