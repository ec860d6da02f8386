//! The greenhub demo: a small job service made of thousands of green threads.
//!
//! A dispatcher starts jobs at a steady rate; each job fans out to three subtasks under a
//! 40 ms deadline scope, so some time out: a call to a slow backend (a green sleep), a blocking
//! call (a real `std::thread::sleep`, run on tpool's OS threads so the hub never stalls), and a
//! database write through dbpool (an embedded SQLite file by default; PostgreSQL when
//! `DATABASE_URL` is set). One job in a hundred panics, and the service keeps going. Two
//! thousand idle sessions sit waiting the whole time. Every second a progress line shows what
//! the runtime sees; at the end, the run info dump shows the live green threads as a tree, and
//! the rows in the database are checked against the writes that were confirmed.
//!
//! Run it with `cargo run --release --bin demo` (add `-- --duration 30` to watch longer). It
//! prints how to watch it live (`inspector attach <pid>`, and its HTTP stats endpoint on
//! loopback), and stops cleanly on Ctrl-C or SIGTERM, checking its work as at the end of its
//! time; a second one ends it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::{GreenThread, sleep, thread::Builder, with_timeout};
use greenhub_dbpool::{Param, PgManager, PgPool, Pool, SqliteConnectionManager, SqlitePool};

#[derive(Default)]
struct Stats {
    jobs: AtomicU64,
    subtasks: AtomicU64,
    timed_out: AtomicU64,
    panicked: AtomicU64,
    /// Database writes the pool confirmed.
    written: AtomicU64,
    /// How long jobs took, start to end, in microseconds (since the last progress line).
    latency: parking_lot::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Stats {
    fn record_latency(&self, took: Duration) {
        let mut h = self.latency.lock();
        let h = h.get_or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
        });
        let _ = h.record((took.as_micros() as u64).clamp(1, 60_000_000));
    }

    /// The median and 99th percentile of the job latencies since the last call, in ms.
    fn take_latency(&self) -> Option<(f64, f64)> {
        let h = self.latency.lock().take()?;
        Some((
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        ))
    }
}

/// The service's database: SQLite in a file of its own, or PostgreSQL at `DATABASE_URL`.
#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    fn open(dir: &std::path::Path) -> Result<(Db, String), Box<dyn std::error::Error>> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let manager = PgManager::new(url.parse()?, greenhub_dbpool::pg::NoTls);
            let pool = Pool::builder().name("demo-pg").max_size(8).build(manager)?;
            pool.batch_execute(
                "CREATE TABLE IF NOT EXISTS greenhub_demo (job bigint, at timestamptz DEFAULT now());
                 TRUNCATE greenhub_demo",
            )?;
            return Ok((Db::Postgres(pool), "PostgreSQL at DATABASE_URL".into()));
        }
        let path = dir.join("demo.sqlite");
        let manager = SqliteConnectionManager::file(&path)
            .with_init(|c| c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;"));
        let pool = Pool::builder()
            .name("demo-sqlite")
            .max_size(4)
            .build(manager)?;
        pool.run(|c| {
            c.execute_batch(
                "CREATE TABLE greenhub_demo (job INTEGER, at TEXT DEFAULT CURRENT_TIMESTAMP)",
            )
        })??;
        Ok((Db::Sqlite(pool), format!("SQLite at {}", path.display())))
    }

    fn write(&self, job: u64) -> Result<(), greenhub_dbpool::Error> {
        match self {
            Db::Sqlite(pool) => pool
                .run(move |c| {
                    c.execute("INSERT INTO greenhub_demo (job) VALUES (?1)", [job as i64])
                })?
                .map(drop)
                .map_err(|e| greenhub_dbpool::Error::Database(e.into())),
            Db::Postgres(pool) => pool
                .execute(
                    "INSERT INTO greenhub_demo (job) VALUES ($1)",
                    vec![Box::new(job as i64) as Param],
                )
                .map(drop),
        }
    }

    fn rows(&self) -> Result<u64, greenhub_dbpool::Error> {
        let n: i64 = match self {
            Db::Sqlite(pool) => pool
                .run(|c| c.query_row("SELECT count(*) FROM greenhub_demo", [], |r| r.get(0)))?
                .map_err(|e| greenhub_dbpool::Error::Database(e.into()))?,
            Db::Postgres(pool) => pool
                .query_one("SELECT count(*) FROM greenhub_demo", vec![])?
                .get(0),
        };
        Ok(n as u64)
    }

    fn state(&self) -> greenhub_dbpool::PoolState {
        match self {
            Db::Sqlite(pool) => pool.state(),
            Db::Postgres(pool) => pool.state(),
        }
    }
}

/// A tiny deterministic pseudo-random sequence (xorshift), seeded per green thread.
fn rand(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn parse_args() -> Result<(Duration, usize), String> {
    let mut duration = Duration::from_secs(10);
    let mut sessions = 2000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--duration" => duration = Duration::from_secs(value("--duration")?),
            "--sessions" => sessions = value("--sessions")? as usize,
            "-h" | "--help" => {
                return Err("usage: demo [--duration SECONDS] [--sessions N]".into());
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok((duration, sessions))
}

fn job(n: u64, stats: Arc<Stats>, db: Db) {
    let began = Instant::now();
    let mut seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    if rand(&mut seed).is_multiple_of(100) {
        panic!("job {n} hit a bug");
    }
    let deadline = Duration::from_millis(40);
    let backend_ms = rand(&mut seed) % 50 + 1;
    let blocking_ms = rand(&mut seed) % 5 + 1;
    let confirmed = stats.clone();
    let subtasks = [
        Builder::new().name("backend call").spawn(move || {
            with_timeout(deadline, || sleep(Duration::from_millis(backend_ms))).is_ok()
        }),
        Builder::new().name("blocking call").spawn(move || {
            // A call that blocks its OS thread (a C library, a file): on tpool, not the hub.
            with_timeout(deadline, || {
                greenhub_tpool::execute(move || {
                    std::thread::sleep(Duration::from_millis(blocking_ms))
                })
            })
            .is_ok()
        }),
        Builder::new().name("database write").spawn(move || {
            let written = with_timeout(deadline, || db.write(n)).is_ok();
            if written {
                confirmed.written.fetch_add(1, Ordering::Relaxed);
            }
            written
        }),
    ];
    for t in subtasks {
        let t = spawned(t);
        stats.subtasks.fetch_add(1, Ordering::Relaxed);
        if !matches!(t.wait(), Ok(true)) {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats.record_latency(began.elapsed());
}

fn main() {
    let (duration, sessions) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let stop = start_runtime();
    let pid = std::process::id();
    println!(
        "greenhub demo (pid {pid}): a job service on green threads for {}s (Ctrl-C or SIGTERM stops it)",
        duration.as_secs()
    );
    println!("watch it live: cargo run --release --bin inspector -- attach {pid}");
    if let Some(addr) = greenhub::inspect::stats_addr() {
        println!("stats: http://{addr}/stats  http://{addr}/metrics");
    }
    let dir = match tempfile::Builder::new().prefix("greenhub-demo-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("error: cannot make a temporary directory for the database: {e}");
            std::process::exit(1);
        }
    };
    let (db, where_) = match Db::open(dir.path()) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: cannot open the database: {e}");
            std::process::exit(1);
        }
    };
    println!("database: {where_} (a pool of connections used from green threads)");
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let stop_at = started + duration;

    // Idle sessions: green threads that wait, as a server's idle connections do.
    let idle: Vec<_> = (0..sessions)
        .map(|i| {
            spawned(
                Builder::new()
                    .name(format!("session-{i}"))
                    .spawn(move || sleep(duration + Duration::from_secs(60))),
            )
        })
        .collect();

    let dispatcher = dispatch(stats.clone(), db.clone(), stop_at, stop.clone());

    watch(&dispatcher, &stats, &db, started, stop_at);
    let started_jobs = dispatcher.wait().unwrap_or(0);
    if let Some(Ok(signal)) = stop.peek() {
        println!(
            "\ninterrupted ({}): the jobs under way finished; checking the work",
            greenhub::signal::name(signal)
        );
    }

    let dump = greenhub::inspect::format_run_info();
    println!("\nrun info (first lines of greenhub::inspect::format_run_info()):");
    for line in dump.lines().take(14) {
        println!("{line}");
    }
    for t in &idle {
        t.kill();
    }
    for t in idle {
        let _ = t.wait();
    }
    check(started_jobs, &stats, &db);
}

/// Configures and starts greenhub (the stats endpoint on a free loopback port unless
/// `GREENHUB_STATS_ADDR` chose one), checks tpool's setting, and returns the event the first
/// Ctrl-C or SIGTERM sets.
fn start_runtime() -> greenhub::Event<i32> {
    // The stats endpoint on a free loopback port, unless GREENHUB_STATS_ADDR chose one.
    let config = match greenhub::Config::from_env() {
        Ok(c) if c.settings().stats_addr.is_some() => c,
        Ok(c) => c.stats_addr(Some((std::net::Ipv4Addr::LOCALHOST, 0).into())),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = config.init() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    // Checked now, like greenhub's own variables, rather than failing every blocking call.
    if let Err(e) = greenhub_tpool::default_pool() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    match greenhub_examples::stop::on_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("error: cannot handle Ctrl-C and SIGTERM: {e}");
            std::process::exit(1);
        }
    }
}

/// A spawned green thread, or the end of the demo with the reason (a thread limit set too
/// low, say) in words.
fn spawned<T>(thread: Result<GreenThread<T>, greenhub::thread::SpawnError>) -> GreenThread<T> {
    thread.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    })
}

/// The dispatcher: starts jobs in batches until `stop_at` (or Ctrl-C), collects them, and
/// returns how many it started.
fn dispatch(
    stats: Arc<Stats>,
    db: Db,
    stop_at: Instant,
    stop: greenhub::Event<i32>,
) -> GreenThread<u64> {
    spawned(Builder::new().name("dispatcher").spawn(move || {
        let mut n = 0u64;
        let mut running = Vec::new();
        while Instant::now() < stop_at && !stop.is_set() {
            for _ in 0..20 {
                n += 1;
                let (s, db) = (stats.clone(), db.clone());
                let t = spawned(
                    Builder::new()
                        .name(format!("job-{n}"))
                        .spawn(move || job(n, s, db)),
                );
                let s = stats.clone();
                t.link(move |r| {
                    s.jobs.fetch_add(1, Ordering::Relaxed);
                    if r.is_err() {
                        s.panicked.fetch_add(1, Ordering::Relaxed);
                    }
                });
                running.push(t);
            }
            // Collect the finished ones (a panic collected by `wait` is not reported
            // again as unobserved; the link has counted it).
            let (done, rest): (Vec<_>, Vec<_>) = running.into_iter().partition(|t| t.is_done());
            running = rest;
            for t in done {
                let _ = t.wait();
            }
            sleep(Duration::from_millis(10)).ok();
        }
        // Let the last jobs finish; their panics were counted by the links.
        for t in running {
            let _ = t.wait();
        }
        n
    }))
}

/// Prints a progress line about every second until the dispatcher is done.
fn watch(
    dispatcher: &GreenThread<u64>,
    stats: &Stats,
    db: &Db,
    started: Instant,
    stop_at: Instant,
) {
    let mut last_switches = 0;
    let mut last = Instant::now();
    while !dispatcher.is_done() {
        let left = stop_at.saturating_duration_since(Instant::now());
        std::thread::sleep(left.clamp(Duration::from_millis(100), Duration::from_secs(1)));
        let snap = greenhub::inspect::snapshot();
        let t = &snap.totals;
        let per_sec =
            t.switches.saturating_sub(last_switches) as f64 / last.elapsed().as_secs_f64();
        last_switches = t.switches;
        last = Instant::now();
        let pool = db.state();
        let (p50, p99) = stats.take_latency().unwrap_or((0.0, 0.0));
        println!(
            "t={:>4.1}s  jobs {:>6} (latency p50 {:>5.1} ms, p99 {:>5.1} ms; subtasks timed out {:>5}, panicked {:>3})  db writes {:>6} (pool {}/{} in use, {} waiting)  green threads {:>6} live: {:>4} running, {:>6} waiting  switches/s {:>9.0}",
            started.elapsed().as_secs_f64(),
            stats.jobs.load(Ordering::Relaxed),
            p50,
            p99,
            stats.timed_out.load(Ordering::Relaxed),
            stats.panicked.load(Ordering::Relaxed),
            stats.written.load(Ordering::Relaxed),
            pool.in_use,
            pool.max_size,
            pool.waiting,
            t.live,
            t.running,
            t.waiting,
            per_sec,
        );
    }
}

/// Checks the work at the end: no job lost, every confirmed write in the database. Exits
/// non-zero otherwise.
fn check(started_jobs: u64, stats: &Stats, db: &Db) {
    let done = stats.jobs.load(Ordering::Relaxed);
    println!(
        "\ndone: {started_jobs} jobs started, {done} finished ({} panicked), {} subtasks ({} cut by their deadline)",
        stats.panicked.load(Ordering::Relaxed),
        stats.subtasks.load(Ordering::Relaxed),
        stats.timed_out.load(Ordering::Relaxed),
    );
    if done != started_jobs {
        eprintln!("error: {} jobs lost", started_jobs - done);
        std::process::exit(1);
    }
    // A write cut by its deadline may still have committed; a confirmed one must be there.
    let confirmed = stats.written.load(Ordering::Relaxed);
    let rows = greenhub::spawn({
        let db = db.clone();
        move || db.rows()
    })
    .wait();
    match rows {
        Ok(Ok(rows)) if rows >= confirmed => {
            println!("database: {rows} rows, {confirmed} writes confirmed: none lost")
        }
        other => {
            eprintln!("error: {confirmed} writes confirmed but the database has {other:?} rows");
            std::process::exit(1);
        }
    }
}
