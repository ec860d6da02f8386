//! A green thread that sleeps in a loop costs the process one wake-up per sleep: the worker
//! that finds the alarms' timer ready in its poll fires the sleep's alarm and runs the sleeper
//! itself (the alarm thread is not woken at all), and the monitor, awake because something
//! switches, nudges no idle worker while no queue holds work to steal. Each sleep still lasts
//! at least its duration. Alone in its binary: it counts the wake-ups of the process's threads.

use std::time::{Duration, Instant};

use greenhub::Config;

mod common;
use common::{blocked, thread_named};

#[test]
fn a_sleeping_loop_wakes_one_worker_once_a_sleep_and_not_the_alarm_thread() {
    Config::new().workers(2).attach(false).init().unwrap();
    const SLEEPS: u32 = 100;
    const NAP: Duration = Duration::from_millis(10);
    // Warm: the alarm thread exists and the workers have run.
    greenhub::spawn(|| {
        for _ in 0..5 {
            greenhub::sleep(NAP).unwrap();
        }
    })
    .wait()
    .unwrap();
    let alarm = thread_named("greenhub-alarm");
    let workers = may::scheduler_thread_ids();
    assert!(workers.len() >= 2, "{workers:?}");
    let count = || {
        (
            blocked(alarm),
            workers.iter().map(|&t| blocked(t)).sum::<u64>(),
        )
    };

    let (alarm_before, workers_before) = count();
    let short = greenhub::spawn(|| {
        (0..SLEEPS)
            .filter(|_| {
                let t = Instant::now();
                greenhub::sleep(NAP).unwrap();
                t.elapsed() < NAP
            })
            .count()
    })
    .wait()
    .unwrap();
    let (alarm_after, workers_after) = count();
    assert_eq!(short, 0, "every sleep lasts at least its duration");

    // The workers: one block per sleep, with slack for a lock met busy now and then. Before:
    // the idle worker was nudged at every tick (10 ms), three blocks a sleep for the two.
    // The alarm thread: none (it runs only jobs that must leave the workers); before, it
    // blocked twice a sleep, or once with its timer re-armed rather than woken.
    let per_sleep = |n: u64| n as f64 / f64::from(SLEEPS);
    let alarm_blocks = per_sleep(alarm_after - alarm_before);
    let worker_blocks = per_sleep(workers_after - workers_before);
    assert!(
        alarm_blocks <= 0.5,
        "the alarm thread blocked {alarm_blocks} times a sleep"
    );
    assert!(
        worker_blocks <= 1.5,
        "the workers blocked {worker_blocks} times a sleep"
    );
}
