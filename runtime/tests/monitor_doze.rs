//! A process that runs only now and then keeps the monitor dozing: a green thread sleeping in
//! a loop wakes the monitor a fraction as often as a tick would, and a worker blocked while it
//! dozes is still counted from the moment its green thread began to run, and judged right (a
//! blocking call, a loop that computes). One test: it counts the monitor's wake-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use greenhub::Config;
use greenhub::inspect::{BlockedCause, BlockedInfo, snapshot};

mod common;
use common::{blocked, thread_named};

/// The monitor's tick while it watches closely.
const TICK: Duration = Duration::from_millis(10);

/// The system call thread `tid` is blocked in, if any.
fn syscall(tid: i32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Waits until the monitor dozes: asleep on its parker (a futex) with the clock unpublished,
/// not in the `nanosleep` of a tick.
fn until_it_dozes(monitor: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while syscall(monitor) != Some(libc::SYS_futex) {
        assert!(Instant::now() < deadline, "the monitor never dozed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for the closed report on green thread `id`, which held its worker for `held`, and
/// checks it counts the whole of that and names `cause`.
fn reported_whole(id: u64, held: Duration, cause: BlockedCause) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let report: BlockedInfo = loop {
        if let Some(b) = snapshot()
            .blocked
            .into_iter()
            .find(|b| b.thread == id && !b.ongoing)
        {
            break b;
        }
        assert!(Instant::now() < deadline, "no closed report on #{id}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        report.duration_us + 1_000 >= held.as_micros() as u64,
        "held its worker {held:?}, reported {} µs",
        report.duration_us
    );
    assert_eq!(report.cause, Some(cause), "{report:?}");
}

#[test]
fn a_sleeping_loop_lets_the_monitor_doze_and_a_worker_blocked_meanwhile_is_counted_from_its_start()
{
    Config::new()
        .workers(2)
        .max_blocking_time(Some(Duration::from_millis(100)))
        .attach(false)
        .init()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sleeper = {
        let stop = stop.clone();
        greenhub::spawn(move || {
            let mut sleeps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                greenhub::sleep(Duration::from_millis(3)).unwrap();
                sleeps += 1;
            }
            sleeps
        })
    };
    let monitor = thread_named("greenhub-monitor");

    // The sleeper runs about 300 times a second, a few microseconds each: the monitor's looks
    // find the workers idle and it dozes. Before, it blocked once a tick.
    std::thread::sleep(Duration::from_millis(200));
    let (before, from) = (blocked(monitor), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (after, watched) = (blocked(monitor), from.elapsed());
    let per_tick = (after - before) as f64 / (watched.as_secs_f64() / TICK.as_secs_f64());
    assert!(
        per_tick <= 0.5,
        "the monitor woke {} times in {watched:?} ({per_tick:.2} a tick)",
        after - before
    );

    // A blocking call that begins while the monitor dozes: its report counts from the run's
    // start (the worker noted it), not from the monitor's first look, up to a doze later.
    until_it_dozes(monitor);
    let hog = greenhub::spawn(|| {
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        start.elapsed()
    });
    let id = hog.id();
    reported_whole(id, hog.wait().unwrap(), BlockedCause::Blocking);

    // A loop that computes, begun while the monitor dozes: judged on what the monitor watched
    // of it (on a CPU), not taken for a worker the OS kept off its CPU.
    until_it_dozes(monitor);
    let spinner = greenhub::spawn(|| {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        start.elapsed()
    });
    let id = spinner.id();
    reported_whole(id, spinner.wait().unwrap(), BlockedCause::Computing);

    stop.store(true, Ordering::Relaxed);
    assert!(sleeper.wait().unwrap() > 100, "the sleeper slept on");
}
