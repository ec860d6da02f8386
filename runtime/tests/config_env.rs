//! Configuration from the environment, checked in child processes (the runtime is global).

mod common;

use std::time::Duration;

use common::{is_child, run_child, text};

#[test]
fn env_vars_configure_the_runtime() {
    if is_child("env_vars_configure_the_runtime") {
        let t = greenhub::spawn(|| 1);
        t.wait().unwrap();
        let rt = greenhub::inspect::snapshot().runtime;
        println!(
            "workers={} stack={} blocking={:?} max={:?} recorder={}",
            rt.workers,
            rt.stack_size,
            rt.max_blocking_time_us,
            rt.max_green_threads,
            rt.flight_recorder
        );
        return;
    }
    let out = run_child(
        "env_vars_configure_the_runtime",
        &[
            ("GREENHUB_WORKERS", "3"),
            ("GREENHUB_STACK_SIZE", "96k"),
            ("GREENHUB_MAX_BLOCKING_MS", "off"),
            ("GREENHUB_MAX_THREADS", "5000"),
            ("GREENHUB_FLIGHT_RECORDER", "on"),
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("workers=3 stack=98304 blocking=None max=Some(5000) recorder=true"),
        "{}",
        text(&out)
    );
}

#[test]
fn code_wins_over_the_environment() {
    if is_child("code_wins_over_the_environment") {
        greenhub::Config::from_env()
            .unwrap()
            .workers(1)
            .init()
            .unwrap();
        let rt = greenhub::inspect::snapshot().runtime;
        println!("workers={} stack={}", rt.workers, rt.stack_size);
        // A second init is refused, not ignored.
        let again = greenhub::Config::new().init().unwrap_err();
        println!("again: {again}");
        return;
    }
    let out = run_child(
        "code_wins_over_the_environment",
        &[("GREENHUB_WORKERS", "3"), ("GREENHUB_STACK_SIZE", "131072")],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("workers=1 stack=131072"), "{}", text(&out));
    assert!(
        stdout.contains("again: the greenhub runtime has already started"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_env_vars_are_reported_once_at_start_and_keep_their_defaults() {
    const NAME: &str = "bad_env_vars_are_reported_once_at_start_and_keep_their_defaults";
    if is_child(NAME) {
        // A plain spawn starts the runtime: it must work, not panic.
        let t = greenhub::spawn(|| 6 * 7);
        println!("value={}", t.wait().unwrap());
        let rt = greenhub::inspect::snapshot().runtime;
        println!("workers={} stack={}", rt.workers, rt.stack_size);
        // Config::from_env gives the same problem as a value.
        println!("from_env: {}", greenhub::Config::from_env().unwrap_err());
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = run_child(
        NAME,
        &[
            ("GREENHUB_WORKERS", "lots"),
            ("GREENHUB_STACK_SIZE", "1k"),
            ("GREENHUB_MAX_THREADS", "96k"),
            // A value that would clear the screen is shown escaped, never sent to the terminal.
            ("GREENHUB_FINISHED_HISTORY", "\u{1b}[2J"),
            ("GREENHUB_FLIGHT_RECORDER", "sometimes"),
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("value=42"), "{}", text(&out));
    assert!(
        stdout.contains(&format!("workers={cores} stack=65536")),
        "{}",
        text(&out)
    );
    // One line per variable: the variable, its value, what is allowed.
    let lines = |needle: &str| stderr.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        lines("GREENHUB_WORKERS=\"lots\" is invalid: expected a whole number from 1 to 1024"),
        1,
        "{}",
        text(&out)
    );
    assert_eq!(
        lines("GREENHUB_STACK_SIZE=\"1k\" is invalid: stack size must be between 16384"),
        1,
        "{}",
        text(&out)
    );
    assert_eq!(
        lines("GREENHUB_MAX_THREADS=\"96k\" is invalid: expected a whole number"),
        1,
        "{}",
        text(&out)
    );
    assert_eq!(
        lines("GREENHUB_FINISHED_HISTORY=\"\\u{1b}[2J\" is invalid"),
        1,
        "{}",
        text(&out)
    );
    assert_eq!(
        lines("GREENHUB_FLIGHT_RECORDER=\"sometimes\" is invalid"),
        1,
        "{}",
        text(&out)
    );
    assert!(!stderr.contains('\u{1b}'), "{}", text(&out));
    assert!(
        stdout.contains("from_env: environment variable GREENHUB_WORKERS=\"lots\" is invalid"),
        "{}",
        text(&out)
    );
}

#[test]
fn out_of_range_settings_are_refused() {
    if is_child("out_of_range_settings_are_refused") {
        let err = greenhub::Config::new().workers(5000).init().unwrap_err();
        println!("error: {err}");
        // The refused init did not start anything: a valid one still can.
        greenhub::Config::new().workers(2).init().unwrap();
        println!("workers={}", greenhub::inspect::snapshot().runtime.workers);
        return;
    }
    let out = run_child(
        "out_of_range_settings_are_refused",
        &[],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("workers must be between 1 and 1024, got 5000"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("workers=2"), "{}", text(&out));
}

/// Built without the `stats` feature (`.ci/run` runs this file so), an address for the stats
/// endpoint is reported and ignored; the program runs.
#[cfg(not(feature = "stats"))]
#[test]
fn a_stats_address_without_the_stats_feature_is_reported_and_ignored() {
    const NAME: &str = "a_stats_address_without_the_stats_feature_is_reported_and_ignored";
    if is_child(NAME) {
        println!("value={}", greenhub::spawn(|| 7).wait().unwrap());
        println!("addr={:?}", greenhub::inspect::stats_addr());
        return;
    }
    let out = run_child(
        NAME,
        &[("GREENHUB_STATS_ADDR", "127.0.0.1:0")],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("value=7") && stdout.contains("addr=None"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("built without greenhub's `stats` feature"),
        "{}",
        text(&out)
    );
}
