//! The stack budget: past vm.max_map_count a spawn fails with an error instead of hanging.

mod common;

use std::time::Duration;

use common::{is_child, run_child, text};
use greenhub::{sleep, spawn, thread::Builder, thread::SpawnError};

fn max_map_count() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn spawning_past_the_map_cap_fails_with_an_error_that_names_it() {
    let name = "spawning_past_the_map_cap_fails_with_an_error_that_names_it";
    if is_child(name) {
        // Spawned from a green thread, where bare may would hang its waiter.
        let outcome = spawn(|| {
            let mut alive = Vec::new();
            let attempts = max_map_count() / 2 + 10_000;
            let mut refused = None;
            for _ in 0..attempts {
                match Builder::new().spawn(|| sleep(Duration::from_secs(600))) {
                    Ok(t) => alive.push(t),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            let count = alive.len();
            for t in &alive {
                t.kill();
            }
            for t in alive {
                assert!(t.wait().is_err());
            }
            // With the threads gone, spawning works again.
            let again = spawn(|| 5).wait().unwrap();
            (count, refused, again)
        })
        .wait()
        .unwrap();
        let (count, refused, again) = outcome;
        let err = refused.expect("the cap was never reached");
        assert!(matches!(err, SpawnError::MapLimit { .. }), "{err}");
        println!("spawned={count} again={again}");
        println!("error: {err}");
        return;
    }
    if max_map_count() > 300_000 {
        eprintln!("vm.max_map_count is raised on this machine; the cap cannot be reached quickly");
        return;
    }
    let out = run_child(name, &[], Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("again=5"), "{}", text(&out));
    assert!(
        stdout.contains(&format!("vm.max_map_count={}", max_map_count())),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("sysctl -w vm.max_map_count="),
        "{}",
        text(&out)
    );
    let spawned: u64 = stdout
        .lines()
        .find_map(|l| l.split("spawned=").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // It used most of what the cap allows before refusing.
    assert!(
        spawned > max_map_count() / 3,
        "refused too early: {spawned}"
    );
}

#[test]
fn an_unreachable_thread_limit_is_warned_about_at_start() {
    let name = "an_unreachable_thread_limit_is_warned_about_at_start";
    if is_child(name) {
        spawn(|| ()).wait().unwrap();
        return;
    }
    if max_map_count() > 1_000_000 {
        return;
    }
    let out = run_child(
        name,
        &[("GREENHUB_MAX_THREADS", "1000000")],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_green_threads=1000000 cannot fit"),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("sysctl -w vm.max_map_count="),
        "{}",
        text(&out)
    );
}

#[test]
fn the_configured_thread_limit_is_enforced() {
    let name = "the_configured_thread_limit_is_enforced";
    if is_child(name) {
        let mut alive = Vec::new();
        let err = loop {
            match Builder::new().spawn(|| sleep(Duration::from_secs(600))) {
                Ok(t) => alive.push(t),
                Err(e) => break e,
            }
            assert!(alive.len() <= 100, "the limit was not enforced");
        };
        println!("alive={} error: {err}", alive.len());
        return;
    }
    let out = run_child(
        name,
        &[("GREENHUB_MAX_THREADS", "50")],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("alive=50 error: cannot spawn a green thread: the limit of 50"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_stack_that_cannot_be_mapped_is_an_error_too() {
    let name = "a_stack_that_cannot_be_mapped_is_an_error_too";
    if is_child(name) {
        spawn(|| ()).wait().unwrap();
        // Let the runtime's helper threads finish starting (they map their own stacks).
        std::thread::sleep(Duration::from_millis(200));
        // Leave 128 MiB of address space: 4 MiB stacks run out long before the heap does.
        let vm_kib: u64 = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        let limit = (vm_kib + 128 * 1024) * 1024;
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit with a valid rlimit struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
        let mut alive = Vec::new();
        let err = loop {
            match Builder::new()
                .stack_size(4 << 20)
                .spawn(|| sleep(Duration::from_secs(600)))
            {
                Ok(t) => alive.push(t),
                Err(e) => break e,
            }
            assert!(alive.len() < 1000, "the address-space limit was never hit");
        };
        assert!(matches!(err, SpawnError::StackAllocation { .. }), "{err}");
        for t in &alive {
            t.kill();
        }
        println!("alive={} error: {err}", alive.len());
        return;
    }
    let out = run_child(name, &[], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("allocating its 4194304-byte stack failed"),
        "{}",
        text(&out)
    );
}
