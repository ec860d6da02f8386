//! A green thread that overflows its stack stops the process with a message naming it, as
//! Rust's own threads do, instead of leaving its joiners (and whatever it held) waiting forever.
//! The overflow runs in a child process: this test binary started again with one test selected.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

const CHILD: &str = "GREENHUB_TEST_OVERFLOW_CHILD";

#[inline(never)]
fn deep(n: u64) -> u64 {
    let frame = std::hint::black_box([n as u8; 1024]);
    if n == 0 {
        return frame[3] as u64;
    }
    deep(n - 1) + std::hint::black_box(frame)[7] as u64
}

/// Run only as the child: overflows a 64 KiB stack, then waits for it.
#[test]
fn overflow_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let t = greenhub::thread::Builder::new()
        .name("recursive")
        .stack_size(64 * 1024)
        .spawn(|| deep(10_000))
        .unwrap();
    // Never returns: the process aborts first. If it did return, the parent sees success.
    let _ = t.wait_timeout(Duration::from_secs(20));
}

#[test]
fn an_overflowing_green_thread_aborts_the_process_and_says_which() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "overflow_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        // A crash leaves its attach socket behind; the child needs none.
        .env("GREENHUB_ATTACH", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "the child should abort; it ended with {:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("(recursive), spawned at runtime/tests/stack_overflow.rs")
            && stderr.contains("has overflowed its stack of 65536 bytes")
            && stderr.contains("GREENHUB_STACK_SIZE"),
        "the message names the thread, its stack and the fix: {stderr}"
    );
}
