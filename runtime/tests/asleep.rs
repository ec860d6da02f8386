//! The deadlock check's last case: a process where nothing can act any more. Waits on queues
//! and events list no holder, so they are judged only when every green thread waits, no timer
//! is pending and every other OS thread is greenhub's or asleep in a greenhub wait.
//!
//! It runs without the test harness (`harness = false`): its main thread is the process's
//! only thread besides greenhub's and `may`'s, and it waits in greenhub waits. The harness's
//! own threads would keep the process from ever being asleep, which is also why no other test
//! of the repository can meet this case.
//!
//! The reports reach the main thread through `inspect::on_deadlock`, which puts each into a
//! queue the main thread waits on (untimed: a timed wait ends by itself, which keeps the
//! process awake). A watchdog thread ends the run if a report never comes; it counts as idle
//! while it sleeps.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use greenhub::inspect::{Deadlock, DeadlockKind};
use greenhub::{Event, Mutex, Queue};

/// Long enough for the monitor's checks on a busy machine; the cases that expect a report end
/// as soon as it comes.
const PATIENCE: Duration = Duration::from_secs(300);

static REPORTS: OnceLock<Queue<Deadlock>> = OnceLock::new();

/// The next deadlock reported, waited for by the main thread in a greenhub wait; it is in
/// the snapshot by then.
fn next_report() -> Deadlock {
    let d = REPORTS
        .get()
        .expect("made first")
        .get()
        .expect("the queue stays open");
    assert!(
        greenhub::inspect::snapshot()
            .deadlocks
            .iter()
            .any(|listed| listed.seq == d.seq),
        "the report is not in the snapshot: {}",
        d.describe()
    );
    d
}

fn ids(d: &Deadlock) -> Vec<u64> {
    let mut ids: Vec<u64> = d.threads.iter().map(|t| t.id).collect();
    ids.sort_unstable();
    ids
}

/// The other deadlocks reported meanwhile: none is expected.
fn assert_no_report(case: &str) {
    if let Ok(d) = REPORTS.get().expect("made first").try_get() {
        panic!(
            "{case}: a deadlock was reported where a thread could still act:\n{}",
            d.describe()
        );
    }
    let snap = greenhub::inspect::snapshot();
    assert!(
        snap.deadlocks.is_empty(),
        "{case}: deadlocks listed: {:?}",
        snap.deadlocks
    );
}

/// A thread holds a mutex and waits on a queue; the only thread that would put into the queue
/// waits for the mutex. No holder of the queue is known, but nothing else can act: reported,
/// with both threads and what each holds and waits on. A put from outside ends it.
fn a_mutex_and_a_queue_waiting_on_each_other() {
    let lock = std::sync::Arc::new(Mutex::new(0u32));
    let jobs: Queue<u32> = Queue::unbounded();
    let holding = Event::<()>::new();
    let (l, j, h) = (lock.clone(), jobs.clone(), holding.clone());
    let a = greenhub::spawn(move || {
        let mut guard = l.lock().unwrap();
        h.set(()).unwrap();
        *guard += j.get().unwrap();
    });
    holding.wait().unwrap();
    let (l, j) = (lock.clone(), jobs.clone());
    let b = greenhub::spawn(move || {
        let guard = l.lock().unwrap();
        j.put(*guard + 1).unwrap();
    });
    let d = next_report();
    assert_eq!(d.kind, DeadlockKind::Asleep, "{}", d.describe());
    let mut both = vec![a.id(), b.id()];
    both.sort_unstable();
    assert_eq!(ids(&d), both, "{}", d.describe());
    let of = |id: u64| d.threads.iter().find(|t| t.id == id).unwrap();
    assert_eq!(of(a.id()).holds.len(), 1, "{}", d.describe());
    assert!(
        matches!(of(a.id()).waiting_on, greenhub::ext::WaitOn::Object { id, .. } if id == jobs.id()),
        "{}",
        d.describe()
    );
    assert!(of(b.id()).holds.is_empty(), "{}", d.describe());
    // An outside put ends it: both finish, and the deadlock is no longer listed.
    jobs.put(41).unwrap();
    a.wait().unwrap();
    b.wait().unwrap();
    assert_eq!(jobs.get().unwrap(), 42);
    let t0 = Instant::now();
    while !greenhub::inspect::snapshot().deadlocks.is_empty() {
        assert!(
            t0.elapsed() < PATIENCE,
            "the ended deadlock is still listed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A thread waits on an event every other handle of which is gone: nobody can set it. Reported
/// alone; a kill ends it.
fn a_waiter_whose_event_nobody_can_set() {
    let lost = Event::<u32>::new();
    let w = greenhub::spawn(move || lost.wait().map_err(|_| ()));
    let d = next_report();
    assert_eq!(d.kind, DeadlockKind::Asleep, "{}", d.describe());
    assert_eq!(ids(&d), vec![w.id()], "{}", d.describe());
    w.kill();
    assert!(w.wait().is_err(), "the killed waiter ends as killed");
}

/// A plain OS thread of the program, busy elsewhere, feeds the queue later: it could act at
/// any moment, so nothing is reported.
fn a_queue_fed_by_a_program_thread_is_not_stuck() {
    let jobs: Queue<u32> = Queue::unbounded();
    let j = jobs.clone();
    let g = greenhub::spawn(move || j.get().unwrap());
    let feeder = jobs.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        feeder.put(7).unwrap();
    });
    assert_eq!(g.wait().unwrap(), 7);
    t.join().unwrap();
    assert_no_report("a program thread feeds the queue");
}

/// A timer feeds the queue later: nothing is reported while it is pending.
fn a_queue_fed_by_a_timer_is_not_stuck() {
    let jobs: Queue<u32> = Queue::unbounded();
    let j = jobs.clone();
    let g = greenhub::spawn(move || j.get().unwrap());
    let feeder = jobs.clone();
    greenhub::call_after(Duration::from_secs(1), move || {
        feeder.put(9).unwrap();
    });
    assert_eq!(g.wait().unwrap(), 9);
    assert_no_report("a timer feeds the queue");
}

/// A thread waiting on a descriptor (a socket a client may write to) keeps the process
/// awake: the thread waiting on an event beside it is not judged. The client's thread counts
/// as idle while it sleeps (the way a pool's thread waiting for work does), so that the socket
/// is the only thing that keeps the process awake.
fn a_process_waiting_on_a_socket_is_not_asleep() {
    let listener = greenhub::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = greenhub::spawn(move || listener.accept().map(|_| ()).map_err(|_| ()));
    let started = Event::<()>::new();
    let s = started.clone();
    let w = greenhub::spawn(move || s.wait().map_err(|_| ()));
    let t = std::thread::spawn(move || {
        greenhub::ext::idle_while(|| std::thread::sleep(Duration::from_secs(2)));
        std::net::TcpStream::connect(addr).unwrap()
    });
    server.wait().unwrap().unwrap();
    drop(t.join().unwrap());
    assert_no_report("a thread waits on a socket");
    started.set(()).unwrap();
    w.wait().unwrap().unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // As libtest lists its tests.
        println!("asleep: test");
        return;
    }
    std::thread::spawn(|| {
        greenhub::ext::idle_while(|| std::thread::sleep(PATIENCE));
        eprintln!(
            "the cases did not finish within {PATIENCE:?} (an expected report never came?):\n{}",
            greenhub::inspect::format_run_info()
        );
        std::process::exit(1);
    });
    let reports = REPORTS.get_or_init(Queue::unbounded).clone();
    greenhub::inspect::on_deadlock(move |d| {
        let _ = reports.put(d.clone());
    });
    let cases: [(&str, fn()); 5] = [
        (
            "a_mutex_and_a_queue_waiting_on_each_other",
            a_mutex_and_a_queue_waiting_on_each_other,
        ),
        (
            "a_waiter_whose_event_nobody_can_set",
            a_waiter_whose_event_nobody_can_set,
        ),
        (
            "a_queue_fed_by_a_program_thread_is_not_stuck",
            a_queue_fed_by_a_program_thread_is_not_stuck,
        ),
        (
            "a_queue_fed_by_a_timer_is_not_stuck",
            a_queue_fed_by_a_timer_is_not_stuck,
        ),
        (
            "a_process_waiting_on_a_socket_is_not_asleep",
            a_process_waiting_on_a_socket_is_not_asleep,
        ),
    ];
    // The cases share the process's one state (its threads): they run in turn, whatever
    // filter the test runner passes.
    for (name, case) in cases {
        case();
        println!("test {name} ... ok");
    }
    println!("test result: ok. {} passed", cases.len());
}
