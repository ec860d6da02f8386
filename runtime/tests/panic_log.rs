//! A panic nobody waits for is reported exactly once through `log`.

use std::time::{Duration, Instant};

use greenhub::{sleep, spawn};

mod common;

fn setup() {
    common::capture_logs(log::LevelFilter::Warn);
}

/// Error lines that contain `marker`.
fn reports_of(marker: &str) -> usize {
    common::logged(marker)
        .iter()
        .filter(|l| l.starts_with("ERROR "))
        .count()
}

fn settle(marker: &str, expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while reports_of(marker) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Extra time to catch a duplicate.
    std::thread::sleep(Duration::from_millis(50));
    reports_of(marker)
}

#[test]
fn a_detached_panic_is_reported_once() {
    setup();
    for i in 0..20 {
        let marker = format!("detached-{i}");
        let m = marker.clone();
        drop(spawn(move || -> () { panic!("{m}") }));
        assert_eq!(settle(&marker, 1), 1, "{marker}");
    }
}

#[test]
fn a_panic_after_the_handle_is_dropped_is_reported_once() {
    setup();
    let t = spawn(|| -> () {
        sleep(Duration::from_millis(30)).unwrap();
        panic!("late-panic")
    });
    let id = t.id();
    drop(t);
    assert_eq!(settle("late-panic", 1), 1);
    let line = common::logged("late-panic").remove(0);
    assert!(line.contains(&format!("green thread #{id}")), "{line}");
    assert!(line.contains("panic_log.rs"), "names where: {line}");
}

#[test]
fn a_waited_panic_is_not_reported() {
    setup();
    let t = spawn(|| -> () { panic!("observed-panic") });
    assert!(t.wait().is_err());
    assert_eq!(settle("observed-panic", 1), 0);
}

#[test]
fn a_kill_is_not_a_panic() {
    setup();
    let t = greenhub::thread::Builder::new()
        .name("killed-quietly")
        .spawn(|| sleep(Duration::from_secs(60)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    t.kill();
    drop(t);
    assert_eq!(settle("killed-quietly", 1), 0);
}

#[test]
fn catch_panic_around_code_that_waits_on_any_worker() {
    setup();
    // The code moves between workers at its waits; what catch_panic counts moves with it.
    let threads: Vec<_> = (0..200)
        .map(|i| {
            spawn(move || {
                let caught = greenhub::catch_panic(|| {
                    for _ in 0..3 {
                        sleep(Duration::from_micros(100)).unwrap();
                        greenhub::yield_now();
                    }
                    if i % 2 == 0 {
                        panic!("caught-after-waits-{i}");
                    }
                    i
                });
                // Later panics of the thread are still its own, reported as usual.
                caught.map_err(|p| p.message)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        match t.wait().unwrap() {
            Ok(v) => assert_eq!(v, i),
            Err(m) => assert_eq!(m, format!("caught-after-waits-{i}")),
        }
    }
    assert_eq!(
        settle("caught-after-waits", 0),
        0,
        "a caught panic was reported"
    );
}
