//! The monitor: blocked-worker reports and sampled run time. Its own process, so that it can
//! set the threshold.

use std::sync::Once;
use std::time::{Duration, Instant};

use greenhub::inspect::snapshot;
use greenhub::{Config, sleep, thread::Builder};

mod common;

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        common::capture_logs(log::LevelFilter::Info);
        Config::new()
            .workers(2)
            .max_blocking_time(Some(Duration::from_millis(50)))
            .init()
            .unwrap();
    });
}

/// The blocking call the report must point at.
#[inline(never)]
fn holds_the_worker_in_a_blocking_call() {
    std::thread::sleep(Duration::from_millis(400));
}

/// The line of that call.
const BLOCKING_LINE: u32 = line!() - 4;

#[test]
fn a_thread_that_blocks_its_worker_is_reported_with_name_site_and_duration() {
    setup();
    let line = line!() + 3;
    let t = Builder::new()
        .name("hog")
        .spawn(holds_the_worker_in_a_blocking_call)
        .unwrap();
    let id = t.id();
    // While it blocks: an ongoing report.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ongoing = loop {
        let s = snapshot();
        if let Some(b) = s.blocked.iter().find(|b| b.thread == id) {
            break b.clone();
        }
        assert!(Instant::now() < deadline, "no report while blocked");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(ongoing.ongoing);
    assert_eq!(ongoing.name.as_deref(), Some("hog"));
    assert!(
        ongoing
            .spawn_site
            .as_deref()
            .unwrap()
            .contains(&format!("monitor.rs:{line}"))
    );
    assert!(ongoing.duration_us >= 50_000, "{}", ongoing.duration_us);
    assert_eq!(
        ongoing.cause,
        Some(greenhub::inspect::BlockedCause::Blocking),
        "asleep in the kernel, not computing"
    );
    // Where it blocks: the worker's stack, read by the worker itself, names the function and
    // the line of the blocking call (added to the report once symbolized).
    let stack = loop {
        let s = snapshot();
        if let Some(stack) = s
            .blocked
            .iter()
            .find(|b| b.thread == id)
            .and_then(|b| b.stack.clone())
        {
            break stack;
        }
        assert!(Instant::now() < deadline, "the report never got its stack");
        std::thread::sleep(Duration::from_millis(10));
    };
    let frame = stack
        .frames
        .iter()
        .find(|f| f.function.ends_with("holds_the_worker_in_a_blocking_call"))
        .unwrap_or_else(|| panic!("{stack:#?}"));
    assert!(
        frame.file.as_deref().unwrap().ends_with("monitor.rs"),
        "{frame:?}"
    );
    assert_eq!(frame.line, Some(BLOCKING_LINE), "{frame:?}");
    t.wait().unwrap();
    // After: closed, with about the full length.
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        let s = snapshot();
        let b = s.blocked.iter().find(|b| b.thread == id).unwrap().clone();
        // Closed, and its lines logged (they go out in order, after the stack's symbols).
        let logged = common::capture_logs(log::LevelFilter::Info)
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&format!("#{id} \"hog\"")) && l.contains("released worker"));
        if !b.ongoing && logged {
            break b;
        }
        assert!(Instant::now() < deadline, "the report never closed");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(closed.duration_us >= 300_000, "{}", closed.duration_us);
    let logs = common::capture_logs(log::LevelFilter::Info).lock().unwrap();
    let reported: Vec<_> = logs
        .iter()
        .filter(|l| l.contains(&format!("#{id} \"hog\"")))
        .collect();
    assert!(
        reported
            .iter()
            .any(|l| l.starts_with("WARN") && l.contains("busy") && l.contains("blocking call")),
        "{reported:?}"
    );
    assert!(
        reported.iter().any(|l| l.contains("released worker")),
        "{reported:?}"
    );
    assert!(
        reported.iter().any(|l| l.contains("it was running:")
            && l.contains("holds_the_worker_in_a_blocking_call at ")),
        "{reported:?}"
    );
    assert_eq!(
        reported.iter().filter(|l| l.contains("busy")).count(),
        1,
        "reported once, not at every tick: {reported:?}"
    );
}

#[test]
fn waiting_threads_are_never_reported() {
    setup();
    let threads: Vec<_> = (0..300)
        .map(|i| {
            Builder::new()
                .name(format!("napper-{i}"))
                .spawn(|| {
                    for _ in 0..5 {
                        sleep(Duration::from_millis(60)).unwrap();
                    }
                })
                .unwrap()
        })
        .collect();
    let ids: Vec<u64> = threads.iter().map(|t| t.id()).collect();
    for t in threads {
        t.wait().unwrap();
    }
    let s = snapshot();
    assert!(
        s.blocked.iter().all(|b| !ids.contains(&b.thread)),
        "{:?}",
        s.blocked
    );
}

/// A loop that never waits.
#[inline(never)]
fn crunches() -> u64 {
    // CPU time, not wall time: on a busy machine the loop still computes this long.
    let start = common::thread_cpu();
    let mut x = 0u64;
    while common::thread_cpu() - start < Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    x
}

#[test]
fn a_loop_that_never_waits_is_reported_as_computing_not_as_a_blocking_call() {
    setup();
    let t = spawn_named("cruncher", crunches);
    let id = t.id();
    t.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let s = snapshot();
        // Closed, with its stack symbolized (that comes a little after the report opens).
        if let Some(b) = s
            .blocked
            .iter()
            .find(|b| b.thread == id && !b.ongoing && b.stack.is_some())
        {
            break b.clone();
        }
        assert!(Instant::now() < deadline, "the loop was never reported");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        report.cause,
        Some(greenhub::inspect::BlockedCause::Computing)
    );
    assert!(report.on_cpu_us.unwrap() >= 50_000, "{report:?}");
    let stack = report.stack.unwrap();
    assert!(
        stack
            .frames
            .iter()
            .any(|f| f.function.ends_with("crunches")),
        "{stack:#?}"
    );
    let said = || {
        common::capture_logs(log::LevelFilter::Info)
            .lock()
            .unwrap()
            .iter()
            .any(|l| {
                l.contains(&format!("#{id} \"cruncher\""))
                    && l.contains("it computed")
                    && l.contains("yield_now")
                    && l.contains("crunches at ")
            })
    };
    while !said() {
        assert!(Instant::now() < deadline, "the report was never logged");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn run_time_is_sampled_for_busy_threads_only() {
    setup();
    let busy = spawn_named("spinner", || {
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_add(1);
            // Yield now and then: busy, but cooperative (not a blocked worker).
            if x.is_multiple_of(100_000) {
                greenhub::yield_now();
            }
        }
        x
    });
    let idle = spawn_named("idler", || {
        sleep(Duration::from_millis(300)).unwrap();
        0
    });
    let (busy_id, idle_id) = (busy.id(), idle.id());
    busy.wait().unwrap();
    idle.wait().unwrap();
    let s = snapshot();
    let run = |id| s.finished.iter().find(|f| f.id == id).unwrap().run_time_us;
    assert!(
        run(busy_id) >= 100_000,
        "busy thread ran {}us",
        run(busy_id)
    );
    assert!(run(idle_id) <= 50_000, "idle thread ran {}us", run(idle_id));
}

fn spawn_named(name: &str, f: impl FnOnce() -> u64 + Send + 'static) -> greenhub::GreenThread<u64> {
    Builder::new().name(name).spawn(f).unwrap()
}

/// A blocking call the kernel does not restart after a signal (a read with a timeout) is
/// reported, but its worker is not signalled for its stack: the read times out as it would
/// have, instead of failing with `EINTR`.
#[test]
fn a_report_does_not_interrupt_a_blocking_call_that_a_signal_would_break() {
    setup();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = Builder::new()
        .name("timed-reader")
        .spawn(move || {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(600)))
                .unwrap();
            let mut buf = [0u8; 1];
            s.read(&mut buf).map_err(|e| e.kind())
        })
        .unwrap();
    let (_server_side, _) = listener.accept().unwrap();
    let id = t.id();
    let outcome = t.wait().unwrap();
    assert!(
        matches!(
            outcome,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "the read ended by its timeout, not by a signal: {outcome:?}"
    );
    // It was reported all the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !snapshot().blocked.iter().any(|b| b.thread == id) {
        assert!(
            Instant::now() < deadline,
            "the blocking read was not reported"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
