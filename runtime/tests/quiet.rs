//! An idle process is idle: once nothing runs, the monitor parks and the workers sleep in
//! `epoll_wait`, so the process wakes a few times a second at most; and it still does its job
//! when work comes back: a worker held past `max_blocking_time` is reported, and a thread
//! woken on a held worker is taken over by the idle one. One test: it counts the wake-ups of
//! the whole process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use greenhub::inspect::snapshot;
use greenhub::{Config, Event, thread::Builder};

/// Context switches (voluntary and not) of each thread of this process but the caller, by
/// thread id.
fn switches() -> Vec<(i32, String, u64)> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if tid == me {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // ended meanwhile
        };
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        all.push((
            tid,
            name,
            field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
        ));
    }
    all
}

/// The switches of every thread between two readings (threads present in both).
fn woken(before: &[(i32, String, u64)], after: &[(i32, String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(tid, name, n)| {
            let (_, _, was) = before.iter().find(|(t, _, _)| t == tid)?;
            Some((name.clone(), n - was))
        })
        .collect()
}

/// Waits until the monitor thread has stopped switching for a whole second: it parked.
fn until_the_monitor_parks() {
    let monitor = |all: &[(i32, String, u64)]| {
        all.iter()
            // The kernel keeps 15 bytes of a thread's name.
            .find(|(_, name, _)| "greenhub-monitor".starts_with(name.as_str()) && !name.is_empty())
            .map(|(_, _, n)| *n)
            .expect("a monitor thread")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = monitor(&switches());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = monitor(&switches());
        if now == last {
            return;
        }
        last = now;
        assert!(
            Instant::now() < deadline,
            "the monitor never parked in an idle process"
        );
    }
}

#[test]
fn an_idle_process_sleeps_and_still_watches_steals_and_reports_when_work_comes() {
    Config::new()
        .workers(2)
        .attach(false)
        .max_blocking_time(Some(Duration::from_millis(50)))
        .init()
        .unwrap();
    // Both workers have run green threads (sleeps, yields, a tick of the monitor).
    let warm: Vec<_> = (0..20)
        .map(|i| {
            greenhub::spawn(move || {
                greenhub::sleep(Duration::from_millis(i)).unwrap();
                greenhub::yield_now();
            })
        })
        .collect();
    for t in warm {
        t.wait().unwrap();
    }

    // Idle: a few wake-ups a second at most, in all threads together (it was about 300: the
    // monitor's and each worker's 10 ms ticks).
    until_the_monitor_parks();
    let before = switches();
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let woken = woken(&before, &switches());
    let total: u64 = woken.iter().map(|(_, n)| n).sum();
    assert!(
        total <= 3 * 10,
        "an idle process woke {total} times in {window:?}: {woken:?}"
    );

    // Work comes back: a thread woken on a worker that is then held (a loop that never
    // yields) runs on the other worker meanwhile, which is asleep in `epoll_wait` when the
    // work arrives (for up to a minute: only the monitor's nudges make it look sooner).
    for round in 0..5 {
        until_the_monitor_parks();
        let event = Event::<()>::new();
        let ran = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (event, ran) = (event.clone(), ran.clone());
            greenhub::spawn(move || {
                event.wait().unwrap();
                ran.store(true, Ordering::SeqCst);
            })
        };
        while snapshot().totals.waiting == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let holder = {
            let ran = ran.clone();
            Builder::new()
                .name("holder")
                .spawn(move || {
                    // The waiter goes to this worker's own queue.
                    event.set(()).unwrap();
                    let give_up = Instant::now() + Duration::from_secs(30);
                    while !ran.load(Ordering::SeqCst) && Instant::now() < give_up {
                        std::hint::spin_loop();
                    }
                    ran.load(Ordering::SeqCst)
                })
                .unwrap()
        };
        assert!(
            holder.wait().unwrap(),
            "round {round}: the thread woken behind a held worker never ran elsewhere"
        );
        waiter.wait().unwrap();
    }

    // A worker blocked after a quiet spell is reported, as always.
    until_the_monitor_parks();
    let hog = Builder::new()
        .name("hog")
        .spawn(|| std::thread::sleep(Duration::from_millis(400)))
        .unwrap();
    let id = hog.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !snapshot().blocked.iter().any(|b| b.thread == id) {
        assert!(
            Instant::now() < deadline,
            "a worker blocked after the monitor parked was never reported"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    hog.wait().unwrap();
}
