//! Async futures from green threads: ready ones, ones that need tokio's timers and reactor,
//! wake-ups from other threads, deadlines and kills that drop the future, the snapshot's
//! view, and workers that stay free while futures are pending.
#![cfg(feature = "tokio")]

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::timeout::with_timeout;
use greenhub::{Config, TimedOut, block_on};

mod common;

/// One worker and a 50 ms blocked-worker threshold: a future that blocked its worker would be
/// reported.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        common::capture_logs(log::LevelFilter::Warn);
        Config::new()
            .workers(1)
            .max_blocking_time(Some(Duration::from_millis(50)))
            .init()
            .unwrap();
    });
}

/// Sets a flag when dropped: shows that a future was dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn ready_futures_and_many_pending_ones_all_complete_without_blocking_the_worker() {
    setup();
    let t = greenhub::spawn(|| block_on(async { 6 * 7 }));
    assert_eq!(t.wait().unwrap(), Ok(42));
    // 200 green threads each await a tokio timer on the one worker, while a ticker runs: the
    // ticker keeps running, so the worker was never held by a pending future.
    let ticks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (ticks, stop) = (ticks.clone(), stop.clone());
        greenhub::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                greenhub::sleep(Duration::from_millis(1)).unwrap();
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let sleepers: Vec<_> = (0..200u64)
        .map(|i| {
            greenhub::spawn(move || {
                block_on(async move {
                    tokio::time::sleep(Duration::from_millis(100 + i % 50)).await;
                    i
                })
            })
        })
        .collect();
    for (i, s) in sleepers.into_iter().enumerate() {
        assert_eq!(s.wait().unwrap(), Ok(i as u64));
    }
    assert!(ticks.load(Ordering::SeqCst) > 0, "the worker was held");
    stop.store(true, Ordering::SeqCst);
    ticker.wait().unwrap();
    let logs = common::capture_logs(log::LevelFilter::Warn).lock().unwrap();
    assert!(
        !logs.iter().any(|l| l.contains("busy for")),
        "a worker was reported blocked: {logs:?}"
    );
}

#[test]
fn a_future_woken_from_another_os_thread_and_from_a_tokio_task_completes() {
    setup();
    for round in 0..100 {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let waiter = greenhub::spawn(move || block_on(rx));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(round * 10));
            tx.send(round as u32).unwrap();
        });
        assert_eq!(waiter.wait().unwrap().unwrap(), Ok(round as u32));
        sender.join().unwrap();
    }
    // A task spawned on greenhub's tokio runtime from inside the future.
    let t = greenhub::spawn(|| {
        block_on(async {
            let task = tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                "from a tokio task"
            });
            task.await.unwrap()
        })
    });
    assert_eq!(t.wait().unwrap(), Ok("from a tokio task"));
}

#[test]
fn tokio_sockets_work_from_green_threads() {
    setup();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = greenhub::spawn(|| {
        block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await?;
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await?;
                s.write_all(&buf).await?;
                Ok::<_, std::io::Error>(())
            });
            let mut c = tokio::net::TcpStream::connect(addr).await?;
            c.write_all(b"hello").await?;
            let mut back = [0u8; 5];
            c.read_exact(&mut back).await?;
            server.await.unwrap()?;
            Ok::<_, std::io::Error>(back)
        })
    });
    assert_eq!(&t.wait().unwrap().unwrap().unwrap(), b"hello");
}

#[test]
fn a_deadline_or_a_kill_drops_the_future() {
    setup();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Dropped(dropped.clone());
    let t = greenhub::spawn(move || {
        with_timeout(Duration::from_millis(50), || {
            block_on(async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(30)).await;
            })
        })
    });
    assert_eq!(t.wait().unwrap(), Err(TimedOut));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the future outlived its deadline"
    );

    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Dropped(dropped.clone());
    let t = greenhub::thread::Builder::new()
        .name("awaiting-forever")
        .spawn(move || {
            block_on(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
            })
        })
        .unwrap();
    let line = line!() - 6;
    let want = format!("waiting on future \"block_on at runtime/tests/future.rs:{line}");
    eventually("the wait shows in the snapshot", || {
        greenhub::inspect::snapshot()
            .threads
            .iter()
            .any(|th| th.id == t.id() && th.describe().contains(&want))
    });
    t.kill();
    assert!(t.wait().is_err());
    assert!(
        dropped.load(Ordering::SeqCst),
        "a killed thread's future was not dropped"
    );
}

#[test]
fn plain_os_threads_can_block_on_too() {
    setup();
    let got = block_on(async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        7
    });
    assert_eq!(got, Ok(7));
}
