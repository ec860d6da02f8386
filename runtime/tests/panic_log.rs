//! A panic nobody waits for is reported exactly once through `log`.

use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use greenhub::{sleep, spawn};

static LOGS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LOGS.lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
}

fn reports_of(marker: &str) -> usize {
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|(level, text)| *level == log::Level::Error && text.contains(marker))
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
    let logs = LOGS.lock().unwrap();
    let line = logs.iter().find(|(_, t)| t.contains("late-panic")).unwrap();
    assert!(
        line.1.contains(&format!("green thread #{id}")),
        "{}",
        line.1
    );
    assert!(line.1.contains("panic_log.rs"), "names where: {}", line.1);
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
