//! The deadlines when no timer descriptor is left: a runtime started with exactly the
//! descriptors its scheduler needs has its alarm thread serve sleeps, deadline scopes and
//! timers on a condition variable, and each still ends at its time. Alone in its binary: it
//! uses up the process's descriptors before the runtime starts.

use std::time::{Duration, Instant};

use greenhub::config::{Config, ConfigError};

mod common;

/// How many timer descriptors this process holds.
fn timer_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|target| target.to_string_lossy().contains("timerfd"))
        })
        .count()
}

#[test]
fn deadlines_end_on_time_without_a_timer_descriptor() {
    // One descriptor more at each try: the first start that succeeds had none left for the
    // alarms' timer (made last), and fell back.
    let mut hoard = common::use_up_descriptors();
    loop {
        match Config::new().workers(2).attach(false).init() {
            Ok(_) => break,
            Err(ConfigError::Start(_)) => {
                assert!(hoard.pop().is_some(), "the runtime never started");
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    drop(hoard);
    assert_eq!(
        timer_descriptors(),
        0,
        "the alarms fell back to their thread"
    );

    // Bounded waits throughout: a fallback that fires nothing fails here instead of hanging.
    const BOUND: Duration = Duration::from_secs(120);
    let nap = Duration::from_millis(20);
    let (tx, rx) = std::sync::mpsc::channel();
    greenhub::spawn(move || {
        let t = Instant::now();
        greenhub::sleep(nap).unwrap();
        let slept = t.elapsed();
        let scoped = greenhub::with_timeout(nap, || greenhub::sleep(Duration::from_secs(600)));
        tx.send((slept, scoped)).unwrap();
    });
    let (slept, scoped) = rx
        .recv_timeout(BOUND)
        .expect("the sleep and the scope ended");
    assert!(slept >= nap, "{slept:?}");
    assert_eq!(
        scoped,
        Err(greenhub::TimedOut),
        "the scope's deadline ended the sleep"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let _timer = greenhub::call_after(nap, move || tx.send(()).unwrap());
    rx.recv_timeout(BOUND).expect("the timer fired");
}
