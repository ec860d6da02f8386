//! The profile of the green threads: CPU samples name the function that burns the CPU, the
//! parked stacks name where threads wait, and sampling is safe while threads come and go.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::inspect::{Half, ProfileError, profile};
use greenhub::{Event, Queue, spawn, yield_now};

/// Burns CPU until `stop`, yielding now and then (a cooperative loop, not a blocked worker).
/// Its loop calls nothing (shifts and xors, which even a debug build does inline), so the
/// samples of its time land in it.
#[inline(never)]
fn burns_cpu(stop: &AtomicBool) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while !stop.load(Ordering::Relaxed) {
        let mut i = 0u32;
        while i < 50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            i += 1;
        }
        yield_now();
    }
    x
}

#[inline(never)]
fn waits_for_the_end(end: &Event<()>) {
    let woken = end.wait().is_ok();
    std::hint::black_box(woken);
}

/// One profile runs at a time in a process: the tests here take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_function_that_burns_the_cpu_is_on_top_and_the_waiters_are_off_cpu() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let stop = Arc::new(AtomicBool::new(false));
    let end = Event::new();
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            spawn(move || burns_cpu(&stop))
        })
        .collect();
    let waiter = spawn({
        let end = end.clone();
        move || waits_for_the_end(&end)
    });
    // Started and parked before the profile begins.
    std::thread::sleep(Duration::from_millis(50));

    let p = profile(Duration::from_millis(1500), 499).expect("a profile");
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.wait().unwrap();
    }
    end.set(()).unwrap();
    waiter.wait().unwrap();

    assert!(p.samples >= 20, "{} samples", p.samples);
    assert!(p.workers >= 1);
    let top = p.top(Half::OnCpu, 3);
    assert!(
        top[0].function.ends_with("burns_cpu"),
        "{top:#?}\n{}",
        p.summary(10)
    );
    let burning: u64 = p
        .on_cpu
        .iter()
        .filter(|e| e.frames.iter().any(|f| f.function.ends_with("burns_cpu")))
        .map(|e| e.weight)
        .sum();
    let attributed = p.samples - p.unattributed - p.dropped;
    assert!(
        burning * 2 > attributed,
        "burns_cpu in {burning} of {attributed} samples"
    );
    assert!(
        p.folded(Half::OnCpu).contains("::burns_cpu "),
        "{}",
        p.folded(Half::OnCpu)
    );

    let parked = p
        .off_cpu
        .iter()
        .find(|e| e.thread == waiter.id())
        .expect("the parked thread is in the off-CPU half");
    assert!(
        parked
            .frames
            .iter()
            .any(|f| f.function.ends_with("waits_for_the_end")),
        "{parked:#?}"
    );
    assert!(parked.weight >= 1_000_000, "waited {} us", parked.weight);
}

#[test]
fn one_profile_runs_at_a_time_and_sampling_survives_threads_coming_and_going() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Churn: threads that bounce items, spawn, end and are killed while the workers are
    // sampled (and a second profile is refused meanwhile).
    let running = Arc::new(AtomicBool::new(true));
    let moved = Arc::new(AtomicU64::new(0));
    let q = Queue::unbounded();
    let churners: Vec<_> = (0..4)
        .map(|_| {
            let (running, moved, q) = (running.clone(), moved.clone(), q.clone());
            spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let short = spawn(|| (0..1000u64).sum::<u64>());
                    let long = spawn(|| greenhub::sleep(Duration::from_secs(60)).ok());
                    q.put(1u64).unwrap();
                    moved.fetch_add(q.get().unwrap(), Ordering::Relaxed);
                    long.kill();
                    short.wait().unwrap();
                    let _ = long.wait();
                }
            })
        })
        .collect();
    // A prober asks for short profiles until one is refused because the long one runs.
    let long_done = Arc::new(AtomicBool::new(false));
    let prober = {
        let long_done = long_done.clone();
        std::thread::spawn(move || {
            while !long_done.load(Ordering::Relaxed) {
                if profile(Duration::from_millis(10), 100) == Err(ProfileError::Busy) {
                    return true;
                }
            }
            false
        })
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    let p = loop {
        match profile(Duration::from_millis(800), 1000) {
            // The prober's short one was running: ask again.
            Err(ProfileError::Busy) if Instant::now() < give_up => continue,
            other => break other.expect("the long profile"),
        }
    };
    long_done.store(true, Ordering::Relaxed);
    let refused = prober.join().unwrap();
    running.store(false, Ordering::Relaxed);
    for c in churners {
        c.wait().unwrap();
    }
    assert!(refused, "a second profile was refused while the first ran");
    assert!(p.samples > 0, "{p:?}");
    assert!(moved.load(Ordering::Relaxed) > 0);
    // And another profile may run once the first has ended.
    assert!(profile(Duration::from_millis(50), 100).is_ok());
}
