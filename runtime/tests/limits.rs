//! The stack budget. Where stacks share mappings (Linux 6.13+), more green threads live than
//! two mappings each would allow; elsewhere, past vm.max_map_count a spawn fails with an error
//! instead of hanging.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{is_child, run_child, text};
use greenhub::{sleep, spawn, thread::Builder, thread::SpawnError};

fn max_map_count() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn count_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn more_threads_live_than_two_mappings_each_would_allow_when_stacks_share_mappings() {
    let name = "more_threads_live_than_two_mappings_each_would_allow_when_stacks_share_mappings";
    if is_child(name) {
        let wanted = (max_map_count() / 2 + 10_000) as usize;
        let (alive, before, during, info) = spawn(move || {
            let before = count_maps();
            let mut alive = Vec::with_capacity(wanted);
            for i in 0..wanted {
                match Builder::new().spawn(move || {
                    let _ = sleep(Duration::from_secs(600));
                    i
                }) {
                    Ok(t) => alive.push(t),
                    Err(e) => panic!("spawn {i} of {wanted} failed: {e}"),
                }
            }
            // Every thread has run up to its sleep once its stack holds a frame.
            let _ = greenhub::sleep(Duration::from_millis(50));
            let during = count_maps();
            let info = greenhub::inspect::snapshot().runtime;
            for t in &alive {
                t.kill();
            }
            let count = alive.len();
            let killed = alive.into_iter().filter(|t| t.wait().is_err()).count();
            assert_eq!(killed, count, "every thread was alive until killed");
            (count, before, during, info)
        })
        .wait()
        .unwrap();
        assert!(info.stacks_share_mappings);
        assert_eq!(info.map_limit, None);
        println!("alive={alive} wanted={wanted} maps_before={before} maps_during={during}");
        return;
    }
    if !generator::stacks_share_mappings() {
        eprintln!("this kernel has no guard regions: stacks cost two mappings each");
        return;
    }
    let out = run_child(name, &[], Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {}", text(&out)))
    };
    assert_eq!(field("alive="), field("wanted="), "{}", text(&out));
    // Tens of thousands of stacks cost a few hundred mappings (one per chunk of stacks, and
    // adjacent chunks merge), not two each.
    println!("{}", stdout.trim());
    let grown = field("maps_during=").saturating_sub(field("maps_before="));
    assert!(
        grown < field("wanted=") / 20,
        "the mappings grew by {grown}: {}",
        text(&out)
    );
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
    if generator::stacks_share_mappings() {
        eprintln!("stacks share mappings on this kernel: the cap does not bound green threads");
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
    if max_map_count() > 1_000_000 || generator::stacks_share_mappings() {
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

/// Waits until `check` holds, for at most a minute (the monitor acts on its own ticks).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `n` green threads that wait at a gate, opens it and joins them: `n` stacks in use
/// at once, then released.
fn burst(n: usize) {
    let gate = greenhub::Event::<()>::new();
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let gate = gate.clone();
            spawn(move || gate.wait().is_ok())
        })
        .collect();
    gate.set(()).unwrap();
    for t in threads {
        assert!(t.wait().unwrap());
    }
}

#[test]
fn released_stacks_keep_their_pages_through_a_burst_and_give_them_back_by_age() {
    let name = "released_stacks_keep_their_pages_through_a_burst_and_give_them_back_by_age";
    if is_child(name) {
        greenhub::Config::new()
            .stack_size(64 * 1024)
            .init()
            .unwrap();
        let default_limit = generator::DIRTY_STACK_BYTES;
        // 4,000 stacks of 64 KiB: `may` keeps 1,000 of them in its pool, the rest are released
        // (187 MiB, about three times the default limit).
        let n = 4_000;
        // A thread that keeps switching keeps the monitor awake.
        let stop = Arc::new(AtomicBool::new(false));
        let keeper = {
            let stop = stop.clone();
            spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    greenhub::yield_now();
                }
            })
        };
        let t0 = Instant::now();
        burst(n);
        let kept = generator::dirty_stack_bytes();
        // The monitor gives back only stacks that stayed unused for a whole period of at
        // least STACK_DECAY_TICKS ticks of 10 ms: judged only if less has passed.
        if t0.elapsed() < Duration::from_millis(900) {
            assert!(
                kept > default_limit,
                "released stacks beyond the default limit are kept through the burst: {kept}"
            );
        }
        println!("kept={kept}");
        // While the process runs, stacks nobody reuses are given back by age: all of them.
        eventually("every released stack is given back", || {
            generator::dirty_stack_bytes() == 0
        });
        // A second burst, then quiet: the monitor parks and gives back all but the default.
        stop.store(true, Ordering::Relaxed);
        keeper.wait().unwrap();
        burst(n);
        eventually("the released stacks shrink to the default limit", || {
            generator::dirty_stack_bytes() <= default_limit
        });
        // And the stacks are reused: the next burst runs as the first did.
        burst(n);
        println!("done");
        return;
    }
    if !generator::stacks_share_mappings() {
        eprintln!("stacks do not share mappings on this kernel: nothing is kept");
        return;
    }
    let out = run_child(name, &[], Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("done"), "{}", text(&out));
}
