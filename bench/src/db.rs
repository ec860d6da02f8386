//! `SELECT 1` through a pool of 8 connections from 64 concurrent tasks, against the same
//! PostgreSQL server: greenhub's dbpool on green threads, r2d2 with the `postgres` driver on
//! 64 OS threads, deadpool-postgres on tokio. The harness starts the server (a throwaway
//! cluster) and passes its parameters in `GREENHUB_BENCH_PG`.

use std::str::FromStr;
use std::time::Instant;

use greenhub_dbpool::pg::NoTls;

use crate::runtimes::start_greenhub;

/// The environment variable that carries the server's connection parameters to a child.
pub const PG_ENV: &str = "GREENHUB_BENCH_PG";

const TASKS: u64 = 64;
const POOL: u32 = 8;

/// What to report of a run.
#[derive(Clone, Copy)]
pub enum Figure {
    /// Wall time per query, ns.
    PerQuery,
    /// A quantile of the per-query latency (checkout included), ns.
    Latency(f64),
}

fn conninfo() -> String {
    std::env::var(PG_ENV)
        .expect("GREENHUB_BENCH_PG: run through the harness, which starts the server")
}

/// greenhub's pool of `POOL` connections, all open.
fn greenhub_pool() -> greenhub_dbpool::PgPool {
    let config = greenhub_dbpool::pg::Config::from_str(&conninfo()).expect("conninfo");
    greenhub_dbpool::Pool::builder()
        .max_size(POOL)
        .min_idle(POOL)
        .build(greenhub_dbpool::PgManager::new(config, NoTls))
        .expect("pool")
}

/// greenhub-pg's pool of `POOL` connections, all open.
fn green_pool() -> greenhub_pg::Pool {
    greenhub_pg::Pool::builder(&conninfo())
        .expect("conninfo")
        .max_size(POOL as usize)
        .min_size(POOL as usize)
        .build()
        .expect("pool")
}

/// `tasks` green threads run `per` checked `SELECT 1`s each through greenhub-pg; their
/// latencies.
fn green_selects(pool: &greenhub_pg::Pool, tasks: u64, per: u64) -> Vec<u64> {
    let pool = pool.clone();
    timed_green_threads(tasks, per, move || {
        let row = pool.query_one("SELECT 1", &[]).expect("query");
        row.get::<i32>(0).expect("an int4")
    })
}

/// `tasks` green threads call `select` `per` times each, checking that it returns 1; the
/// latencies of the calls.
fn timed_green_threads(
    tasks: u64,
    per: u64,
    select: impl Fn() -> i32 + Clone + Send + 'static,
) -> Vec<u64> {
    let hs: Vec<_> = (0..tasks)
        .map(|_| {
            let select = select.clone();
            greenhub::spawn(move || {
                (0..per)
                    .map(|_| {
                        let t = Instant::now();
                        assert_eq!(select(), 1);
                        t.elapsed().as_nanos() as u64
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    hs.into_iter().flat_map(|h| h.wait().unwrap()).collect()
}

/// An r2d2 pool of `POOL` connections, all open.
type R2d2Pool = greenhub_dbpool::r2d2::Pool<greenhub_dbpool::PostgresConnectionManager<NoTls>>;

fn r2d2_pool() -> R2d2Pool {
    let config = greenhub_dbpool::pg::Config::from_str(&conninfo()).expect("conninfo");
    let manager = greenhub_dbpool::PostgresConnectionManager::new(config, NoTls);
    // Like dbpool's default, no test on every checkout (dbpool tests after 500 ms idle).
    greenhub_dbpool::r2d2::Pool::builder()
        .max_size(POOL)
        .min_idle(Some(POOL))
        .test_on_check_out(false)
        .build(manager)
        .expect("pool")
}

/// A tokio runtime of `workers` threads, and a deadpool of `POOL` connections for it.
fn deadpool(workers: usize) -> (tokio::runtime::Runtime, deadpool_postgres::Pool) {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config =
        deadpool_postgres::tokio_postgres::Config::from_str(&conninfo()).expect("conninfo");
    let manager = Manager::from_config(
        config,
        deadpool_postgres::tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(POOL as usize)
        .build()
        .expect("pool");
    (rt, pool)
}

/// `tasks` green threads run `per` checked `SELECT 1`s each; their latencies.
fn greenhub_selects(pool: &greenhub_dbpool::PgPool, tasks: u64, per: u64) -> Vec<u64> {
    let pool = pool.clone();
    timed_green_threads(tasks, per, move || {
        pool.query_one("SELECT 1", vec![])
            .expect("query")
            .get::<_, i32>(0)
    })
}

/// `tasks` OS threads run `per` checked `SELECT 1`s each, sent by `query`; their latencies.
fn r2d2_selects(
    pool: &R2d2Pool,
    tasks: u64,
    per: u64,
    query: fn(&mut greenhub_dbpool::pg::Client) -> greenhub_dbpool::pg::Row,
) -> Vec<u64> {
    let hs: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|_| {
                        let t = Instant::now();
                        let mut c = pool.get().expect("checkout");
                        assert_eq!(query(&mut c).get::<_, i32>(0), 1);
                        t.elapsed().as_nanos() as u64
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

/// `tasks` tokio tasks run `per` checked `SELECT 1`s each, with a cached statement or
/// not; their latencies.
async fn deadpool_selects(
    pool: &deadpool_postgres::Pool,
    tasks: u64,
    per: u64,
    cached: bool,
) -> Vec<u64> {
    let hs: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per as usize);
                for _ in 0..per {
                    let t = Instant::now();
                    let c = pool.get().await.expect("checkout");
                    let row = if cached {
                        let st = c.prepare_cached("SELECT 1").await.expect("prepare");
                        c.query_one(&st, &[]).await
                    } else {
                        c.query_one("SELECT 1", &[]).await
                    }
                    .expect("query");
                    assert_eq!(row.get::<_, i32>(0), 1);
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in hs {
        all.extend(h.await.unwrap());
    }
    all
}

/// Each task's latencies, and the wall time of the whole run (after a short warm-up).
fn run(runtime: &str, workers: usize, n: u64) -> (Vec<u64>, u64) {
    let per = n / TASKS;
    let timed = |lat: Vec<u64>, started: Instant| (lat, started.elapsed().as_nanos() as u64);
    match runtime {
        "greenhub dbpool" => {
            start_greenhub(workers, None);
            let pool = greenhub_pool();
            greenhub_selects(&pool, TASKS, 10);
            let started = Instant::now();
            timed(greenhub_selects(&pool, TASKS, per), started)
        }
        "greenhub-pg" => {
            start_greenhub(workers, None);
            let pool = green_pool();
            green_selects(&pool, TASKS, 10);
            let started = Instant::now();
            timed(green_selects(&pool, TASKS, per), started)
        }
        "r2d2 + postgres (64 OS threads)" => {
            let pool = r2d2_pool();
            let query =
                |c: &mut greenhub_dbpool::pg::Client| c.query_one("SELECT 1", &[]).expect("query");
            r2d2_selects(&pool, TASKS, 10, query);
            let started = Instant::now();
            timed(r2d2_selects(&pool, TASKS, per, query), started)
        }
        "r2d2 + postgres, query_typed_one (64 OS threads)" => {
            // One round trip, as dbpool's cached statement: the equal-work row.
            let pool = r2d2_pool();
            let query = |c: &mut greenhub_dbpool::pg::Client| {
                c.query_typed_one("SELECT 1", &[]).expect("query")
            };
            r2d2_selects(&pool, TASKS, 10, query);
            let started = Instant::now();
            timed(r2d2_selects(&pool, TASKS, per, query), started)
        }
        "deadpool-postgres (tokio)" | "deadpool-postgres, prepare_cached (tokio)" => {
            let cached = runtime.contains("prepare_cached");
            let (rt, pool) = deadpool(workers);
            rt.block_on(async move {
                deadpool_selects(&pool, TASKS, 10, cached).await;
                let started = Instant::now();
                timed(deadpool_selects(&pool, TASKS, per, cached).await, started)
            })
        }
        other => panic!("unknown runtime {other}"),
    }
}

/// `SELECT 1` from 64 tasks on a pool of 8, `n` queries in all.
pub fn select1(runtime: &str, workers: usize, n: u64, figure: Figure) -> f64 {
    let (mut lat, wall) = run(runtime, workers, n);
    assert_eq!(lat.len() as u64, n / TASKS * TASKS, "lost queries");
    match figure {
        Figure::PerQuery => wall as f64 / lat.len() as f64,
        Figure::Latency(q) => {
            lat.sort_unstable();
            lat[((lat.len() as f64 - 1.0) * q).round() as usize] as f64
        }
    }
}

/// The slow statement the abandoning callers send, and how long they wait for it.
const SLOW: &str = "SELECT pg_sleep(0.05)";
const ABANDON_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// Half of 64 tasks run `SELECT 1` (`n` in all, each checked); the other half, until those
/// are done, send a 50 ms statement and give up on it after 10 ms, each runtime in its own
/// way: greenhub's deadline scope (the pool cancels the statement on the server), r2d2's
/// OS threads with the server's `statement_timeout` set for the statement (`SET LOCAL` in
/// the same round trip: a blocked thread cannot leave), deadpool with `tokio::time::timeout`
/// (the future is dropped; the statement runs on and the connection goes back to the pool
/// busy). Every `SELECT 1` is one round trip on each side (a cached statement, or an unnamed
/// typed one for r2d2). Returns the latencies of the `SELECT 1`s, the wall time of the run
/// and how many slow statements were abandoned.
fn run_abandoning(runtime: &str, workers: usize, n: u64) -> (Vec<u64>, u64, u64) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let good_tasks = TASKS / 2;
    let per = n / good_tasks;
    let done = Arc::new(AtomicBool::new(false));
    let abandoned = Arc::new(AtomicU64::new(0));
    // Each side's clock starts once its pool is open.
    let (lat, started): (Vec<u64>, Instant) = match runtime {
        "greenhub dbpool" => {
            start_greenhub(workers, None);
            let pool = greenhub_pool();
            let started = Instant::now();
            let slow: Vec<_> = (0..TASKS - good_tasks)
                .map(|_| {
                    let (pool, done, abandoned) = (pool.clone(), done.clone(), abandoned.clone());
                    greenhub::spawn(move || {
                        while !done.load(Ordering::Acquire) {
                            match greenhub::with_timeout(ABANDON_AFTER, || pool.batch_execute(SLOW))
                            {
                                Err(greenhub_dbpool::Error::TimedOut) => {
                                    abandoned.fetch_add(1, Ordering::Relaxed);
                                }
                                other => other.expect("slow statement"),
                            }
                        }
                    })
                })
                .collect();
            let lat = greenhub_selects(&pool, good_tasks, per);
            done.store(true, Ordering::Release);
            for s in slow {
                s.wait().unwrap();
            }
            (lat, started)
        }
        "r2d2 + postgres (64 OS threads)" => {
            let pool = r2d2_pool();
            let started = Instant::now();
            let bounded = format!(
                "SET LOCAL statement_timeout = {}; {SLOW}",
                ABANDON_AFTER.as_millis()
            );
            let slow: Vec<_> = (0..TASKS - good_tasks)
                .map(|_| {
                    let (pool, done, abandoned) = (pool.clone(), done.clone(), abandoned.clone());
                    let bounded = bounded.clone();
                    std::thread::spawn(move || {
                        while !done.load(Ordering::Acquire) {
                            let mut c = pool.get().expect("checkout");
                            match c.batch_execute(&bounded) {
                                Err(e)
                                    if e.code()
                                        == Some(
                                            &greenhub_dbpool::pg::error::SqlState::QUERY_CANCELED,
                                        ) =>
                                {
                                    abandoned.fetch_add(1, Ordering::Relaxed);
                                }
                                other => other.expect("slow statement"),
                            }
                        }
                    })
                })
                .collect();
            // One round trip, as the other sides' cached statements.
            let lat = r2d2_selects(&pool, good_tasks, per, |c| {
                c.query_typed_one("SELECT 1", &[]).expect("query")
            });
            done.store(true, Ordering::Release);
            for s in slow {
                s.join().unwrap();
            }
            (lat, started)
        }
        "deadpool-postgres (tokio)" => {
            let (rt, pool) = deadpool(workers);
            let (done, abandoned) = (done.clone(), abandoned.clone());
            rt.block_on(async move {
                // deadpool opens its connections on demand: open them all first.
                let open: Vec<_> = open_all(&pool).await;
                drop(open);
                let started = Instant::now();
                let slow: Vec<_> = (0..TASKS - good_tasks)
                    .map(|_| {
                        let (pool, done, abandoned) =
                            (pool.clone(), done.clone(), abandoned.clone());
                        tokio::spawn(async move {
                            while !done.load(Ordering::Acquire) {
                                let c = pool.get().await.expect("checkout");
                                match tokio::time::timeout(ABANDON_AFTER, c.batch_execute(SLOW))
                                    .await
                                {
                                    Err(_) => {
                                        abandoned.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Ok(r) => r.expect("slow statement"),
                                }
                            }
                        })
                    })
                    .collect();
                let lat = deadpool_selects(&pool, good_tasks, per, true).await;
                done.store(true, Ordering::Release);
                for s in slow {
                    s.await.unwrap();
                }
                (lat, started)
            })
        }
        other => panic!("unknown runtime {other}"),
    };
    let wall = started.elapsed().as_nanos() as u64;
    (lat, wall, abandoned.load(Ordering::Relaxed))
}

/// Every connection of a deadpool, checked out at once (so opened), to be dropped back.
async fn open_all(pool: &deadpool_postgres::Pool) -> Vec<deadpool_postgres::Object> {
    let mut held = Vec::new();
    for _ in 0..POOL {
        held.push(pool.get().await.expect("checkout"));
    }
    held
}

/// `SELECT 1` throughput or latency while half the callers abandon slow statements.
pub fn abandoning(runtime: &str, workers: usize, n: u64, figure: Figure) -> f64 {
    let (mut lat, wall, abandoned) = run_abandoning(runtime, workers, n);
    assert_eq!(
        lat.len() as u64,
        n / (TASKS / 2) * (TASKS / 2),
        "lost queries"
    );
    assert!(abandoned > 0, "{runtime}: no slow statement was abandoned");
    match figure {
        Figure::PerQuery => wall as f64 / lat.len() as f64,
        Figure::Latency(q) => {
            lat.sort_unstable();
            lat[((lat.len() as f64 - 1.0) * q).round() as usize] as f64
        }
    }
}
