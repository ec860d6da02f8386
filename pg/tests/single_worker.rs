//! One worker (eventlet's single hub): a green thread waiting for PostgreSQL leaves the
//! worker to its neighbours, with no OS thread doing the waiting for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use greenhub::{Config, sleep, spawn};
use greenhub_pg::Pool;
use greenhub_pgtest::Pg;

#[test]
fn a_neighbour_runs_on_the_single_worker_while_queries_wait() {
    Config::new().workers(1).init().unwrap();
    let pg = Pg::start();
    let pool = Pool::builder(&pg.conninfo)
        .unwrap()
        .max_size(2)
        .build()
        .unwrap();
    let in_flight = Arc::new(AtomicBool::new(false));
    let ticks_in_flight = Arc::new(AtomicU64::new(0));
    let (flag, ticks) = (in_flight.clone(), ticks_in_flight.clone());
    let ticker = spawn(move || {
        while sleep(Duration::from_millis(1)).is_ok() {
            if flag.load(Ordering::SeqCst) {
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let querier = spawn(move || {
        for _ in 0..3 {
            in_flight.store(true, Ordering::SeqCst);
            pool.execute("SELECT pg_sleep(0.1)", &[]).unwrap();
            in_flight.store(false, Ordering::SeqCst);
        }
    });
    querier.wait().unwrap();
    // Only the worker could run the ticker: if the query held it, no tick would land while
    // one was in flight.
    let during = ticks_in_flight.load(Ordering::SeqCst);
    assert!(during > 0, "the neighbour never ran while a query waited");
    ticker.kill();
    let _ = ticker.wait();
}
