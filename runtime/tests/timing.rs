//! Where green threads' time goes: with timing on, each thread's time running, waiting and
//! runnable (woken, but its worker busy), and histograms of the same by spawn site. One worker,
//! so that a busy thread holds it for sure. Its own process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use greenhub::inspect::{ThreadInfo, snapshot, time_threads};
use greenhub::{Config, Event, sleep, spawn};

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        Config::new().workers(1).init().unwrap();
    });
}

/// Timing is process-wide: the tests here take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn thread(id: u64) -> ThreadInfo {
    snapshot()
        .threads
        .into_iter()
        .find(|t| t.id == id)
        .expect("the thread is live")
}

/// Keeps the one worker busy for `d` of wall time without switching.
#[inline(never)]
fn holds_the_worker(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[test]
fn a_thread_woken_while_its_worker_is_busy_is_runnable_until_it_runs() {
    setup();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let timing = time_threads();
    let go = Event::<()>::new();
    let done = Event::<()>::new();
    let woken = spawn({
        let (go, done) = (go.clone(), done.clone());
        move || {
            go.wait().unwrap();
            // Parked until the test has read the snapshot.
            done.wait().unwrap();
        }
    });
    // Parked on `go` before the hog takes the worker.
    while thread(woken.id()).state != greenhub::inspect::ThreadState::Waiting {
        std::thread::sleep(Duration::from_millis(1));
    }
    let holding = Arc::new(AtomicBool::new(false));
    let hog = spawn({
        let holding = holding.clone();
        move || {
            holding.store(true, Ordering::SeqCst);
            holds_the_worker(Duration::from_millis(150));
        }
    });
    while !holding.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    // The wake comes from this OS thread while the one worker is held for 150 ms: the woken
    // thread is runnable from now until the hog lets go.
    go.set(()).unwrap();
    hog.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let times = loop {
        let t = thread(woken.id());
        if let Some(times) = t.times.filter(|t| t.waits >= 1) {
            break times;
        }
        assert!(Instant::now() < deadline, "no times for the woken thread");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(
        times.runnable_ns >= 100_000_000,
        "runnable for the hog's 150 ms: {times:?}"
    );
    assert!(times.runs >= 1 && times.running_ns > 0, "{times:?}");

    // By spawn site: the woken thread's site shows runnable stretches of that length.
    let snap = snapshot();
    assert!(snap.timing);
    let site = snap
        .threads
        .iter()
        .find(|t| t.id == woken.id())
        .unwrap()
        .spawn_site
        .clone();
    let spent = &snap
        .sites
        .iter()
        .find(|s| s.spawn_site == site)
        .unwrap_or_else(|| panic!("no site {site} in {:#?}", snap.sites))
        .spent;
    let runnable = spent.iter().find(|s| s.kind == "runnable").unwrap();
    assert!(runnable.max_ns >= 90_000_000, "{runnable:?}");
    let event = spent.iter().find(|s| s.kind == "event").unwrap();
    assert!(event.count >= 1, "{spent:?}");
    done.set(()).unwrap();
    woken.wait().unwrap();
    drop(timing);
}

#[test]
fn waits_are_timed_by_kind_and_timing_off_shows_nothing() {
    setup();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Off: no times.
    let quiet = spawn(|| sleep(Duration::from_millis(30)).unwrap());
    quiet.wait().unwrap();
    let snap = snapshot();
    assert!(!snap.timing);
    assert!(snap.threads.iter().all(|t| t.times.is_none()));
    assert!(snap.sites.is_empty());

    let timing = time_threads();
    let napper = spawn(|| {
        for _ in 0..3 {
            sleep(Duration::from_millis(40)).unwrap();
        }
        // Parked here while the test reads it.
        sleep(Duration::from_secs(60)).ok();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let times = loop {
        if let Some(times) = thread(napper.id()).times.filter(|t| t.waits >= 3) {
            break times;
        }
        assert!(Instant::now() < deadline, "the naps were not timed");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        times.waiting_ns >= 110_000_000,
        "three naps of 40 ms: {times:?}"
    );
    assert!(times.runs >= 3, "{times:?}");
    let snap = snapshot();
    let site = &thread(napper.id()).spawn_site;
    let spent = &snap
        .sites
        .iter()
        .find(|s| &s.spawn_site == site)
        .unwrap()
        .spent;
    let naps = spent.iter().find(|s| s.kind == "sleep").unwrap();
    assert!(naps.count >= 3, "{naps:?}");
    assert!(
        (30_000_000..=2_000_000_000).contains(&naps.p50_ns),
        "{naps:?}"
    );
    napper.kill();
    let _ = napper.wait();
    drop(timing);
    assert!(!snapshot().timing, "off once the last claim is gone");
}
