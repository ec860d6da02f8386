//! `GREENHUB_TPOOL_THREADS` sizes the default pool; a bad value is an error, not a default.
//! Each case runs in a child process, since the default pool reads the variable once.

use std::process::Command;

const CHILD: &str = "GREENHUB_TPOOL_TEST_CHILD";

fn run_child(test: &str, value: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env(greenhub_tpool::THREADS_ENV, value)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    text
}

#[test]
fn the_variable_sizes_the_default_pool() {
    if std::env::var(CHILD).is_ok() {
        let pool = greenhub_tpool::default_pool().unwrap();
        println!("size={}", pool.size());
        return;
    }
    assert!(run_child("the_variable_sizes_the_default_pool", "3").contains("size=3"));
}

#[test]
fn a_bad_value_is_an_error_on_every_call() {
    if std::env::var(CHILD).is_ok() {
        let err = greenhub::spawn(|| greenhub_tpool::execute(|| 1))
            .wait()
            .unwrap()
            .unwrap_err();
        println!("error={err}");
        assert!(greenhub_tpool::default_pool().is_err());
        return;
    }
    let out = run_child("a_bad_value_is_an_error_on_every_call", "lots");
    assert!(
        out.contains("error=GREENHUB_TPOOL_THREADS=\"lots\" is not a thread count"),
        "{out}"
    );
}
