//! One worker (eventlet's single hub): a green thread waiting for a slow query leaves the
//! worker to its neighbours.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Managers, Pg};
use greenhub::{Config, sleep, spawn};
use greenhub_dbpool::{PgPool, Pool};

#[test]
fn a_neighbour_keeps_ticking_on_the_single_worker_while_queries_run() {
    Config::new().workers(1).init().unwrap();
    let pg = Pg::start();
    let pool: PgPool = Pool::builder().max_size(2).build(pg.manager()).unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    let ticker = spawn(move || {
        while sleep(Duration::from_millis(1)).is_ok() {
            t.fetch_add(1, Ordering::SeqCst);
        }
    });
    let t = ticks.clone();
    let p = pool.clone();
    let querier = spawn(move || {
        let before = t.load(Ordering::SeqCst);
        for _ in 0..3 {
            p.execute("SELECT pg_sleep(0.1)", vec![]).unwrap();
        }
        t.load(Ordering::SeqCst) - before
    });
    let during = querier.wait().unwrap();
    // 300 ms of queries; the ticker sleeps 1 ms per tick. Calling the driver on the worker
    // would give it no turn at all.
    assert!(during >= 20, "the neighbour ticked only {during} times");
    ticker.kill();
    let _ = ticker.wait();
}
