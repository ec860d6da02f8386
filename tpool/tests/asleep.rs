//! A process whose tpool threads wait for work can still be found asleep: a parked pool thread
//! acts only for a caller (`greenhub::ext::idle_while`), so the deadlock check's last case sees
//! through it. Runs without the test harness, whose threads would keep the process awake.

use std::sync::OnceLock;
use std::time::Duration;

use greenhub::inspect::DeadlockKind;
use greenhub::{Event, Queue};

static REPORTS: OnceLock<Queue<String>> = OnceLock::new();

struct Reports;

impl log::Log for Reports {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        if text.contains("deadlock #") {
            let _ = REPORTS.get().expect("made before the logger").put(text);
        }
    }

    fn flush(&self) {}
}

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
    REPORTS.get_or_init(Queue::unbounded);
    log::set_logger(&Reports).expect("the only logger");
    log::set_max_level(log::LevelFilter::Error);

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
    let text = REPORTS.get().unwrap().get().unwrap();
    let snap = greenhub::inspect::snapshot();
    let d = snap
        .deadlocks
        .iter()
        .find(|d| text.starts_with(&format!("greenhub: deadlock #{} ", d.seq)))
        .unwrap_or_else(|| panic!("the report is not in the snapshot: {text}"));
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
