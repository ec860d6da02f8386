//! Helpers shared by the test binaries.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Set in a child process to the name of the test it must run as a child.
pub const CHILD: &str = "GREENHUB_TEST_CHILD";

/// Whether this process is the child for `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(name)
}

/// Runs this test binary again, running only the test `name` in child mode with `envs`,
/// and returns its output. Kills it after `limit` (a hang is a failure, not a stuck suite).
pub fn run_child(name: &str, envs: &[(&str, &str)], limit: Duration) -> Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "child {name} hung for {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child's stdout and stderr as one string, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The snapshot's entry for object `id`.
pub fn object(id: u64) -> greenhub::inspect::ObjectInfo {
    greenhub::inspect::snapshot()
        .objects
        .into_iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| panic!("object #{id} is not in the snapshot"))
}

/// Waits (polling, up to 10 s) until object `id` has `n` live waiters.
pub fn await_waiters(id: u64, n: usize) {
    let t0 = Instant::now();
    loop {
        let w = object(id).waiters;
        if w == n {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "object #{id}: {w} waiters, want {n}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What green thread `id` waits on, per the snapshot.
pub fn waiting_on(id: u64) -> Option<greenhub::ext::WaitOn> {
    greenhub::inspect::snapshot()
        .threads
        .into_iter()
        .find(|t| t.id == id)
        .and_then(|t| t.waiting_on)
}

/// Dumps the run info and aborts the process if the returned guard is still alive after
/// `limit`: a stress test that hangs shows what every green thread waits on instead of
/// hanging the suite silently.
pub fn watchdog(limit: Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            // Straight to the stream: the test harness's capture would swallow `eprintln!`.
            use std::io::Write;
            let info = greenhub::inspect::format_run_info();
            let _ = writeln!(
                std::io::stderr(),
                "watchdog: still running after {limit:?}\n{info}"
            );
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// Disarms the watchdog when dropped.
pub struct Watchdog(std::sync::mpsc::Sender<()>);
