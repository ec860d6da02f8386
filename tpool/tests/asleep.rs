//! A process whose tpool threads wait for work can still be found asleep: a parked pool thread
//! acts only for a caller (`greenhub::ext::idle_while`), so the deadlock check's last case sees
//! through it. Runs without the test harness, whose threads would keep the process awake.

use std::time::Duration;

use greenhub::inspect::DeadlockKind;
use greenhub::{Event, Queue};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("asleep: test");
        return;
    }
    std::thread::spawn(|| {
        greenhub::ext::idle_while(|| std::thread::sleep(Duration::from_secs(300)));
        eprintln!(
            "no report within 300 s:\n{}",
            greenhub::inspect::format_run_info()
        );
        std::process::exit(1);
    });
    let reports: Queue<greenhub::inspect::Deadlock> = Queue::unbounded();
    let feed = reports.clone();
    greenhub::inspect::on_deadlock(move |d| {
        let _ = feed.put(d.clone());
    });

    // The pool's threads have served calls, from several green threads at once, and now wait
    // for more.
    let callers: Vec<_> = (0..8u64)
        .map(|i| greenhub::spawn(move || greenhub_tpool::execute(move || i * 2).unwrap()))
        .collect();
    let sum: u64 = callers.into_iter().map(|c| c.wait().unwrap()).sum();
    assert_eq!(sum, 56);

    // A waiter on an event nobody else holds: reported although the pool's threads live.
    let lost = Event::<u32>::new();
    let w = greenhub::spawn(move || lost.wait().map_err(|_| ()));
    let d = reports.get().unwrap();
    assert_eq!(d.kind, DeadlockKind::Asleep, "{}", d.describe());
    assert_eq!(
        d.threads.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![w.id()],
        "{}",
        d.describe()
    );
    w.kill();
    assert!(w.wait().is_err());
    // The pool still serves.
    let again = greenhub::spawn(|| greenhub_tpool::execute(|| 5).unwrap());
    assert_eq!(again.wait().unwrap(), 5);
    println!("test idle_pool_threads_do_not_keep_the_process_awake ... ok");
    println!("test result: ok. 1 passed");
}
