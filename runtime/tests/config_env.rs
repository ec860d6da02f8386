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
            "workers={} stack={} blocking={:?} max={:?}",
            rt.workers, rt.stack_size, rt.max_blocking_time_us, rt.max_green_threads
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
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("workers=3 stack=98304 blocking=None max=Some(5000)"),
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
fn a_bad_env_var_is_a_clear_error_from_spawn() {
    if is_child("a_bad_env_var_is_a_clear_error_from_spawn") {
        let err = greenhub::Builder::new().spawn(|| 1).unwrap_err();
        println!("error: {err}");
        return;
    }
    let out = run_child(
        "a_bad_env_var_is_a_clear_error_from_spawn",
        &[("GREENHUB_WORKERS", "lots")],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("GREENHUB_WORKERS=\"lots\" is invalid: expected a whole number"),
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
