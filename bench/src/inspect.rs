//! What watching costs: a snapshot of many green threads, and a workload's speed while an
//! inspector reads the process every 100 ms through its attach socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::runtimes::{self, settle, start_greenhub};

/// `n` green threads parked on one event, on 16 KiB stacks (to fit 100,000 in memory).
fn park(n: u64) -> greenhub::Event<(), ()> {
    start_greenhub(2, Some(16 * 1024));
    let release = greenhub::Event::<(), ()>::new();
    for _ in 0..n {
        let r = release.clone();
        // Dropped handles: the threads stay parked until the process exits.
        drop(greenhub::spawn(move || parked_on_release(&r)));
    }
    settle(|| greenhub::inspect::snapshot().totals.waiting as u64 >= n);
    release
}

/// A snapshot, with the stack of every parked thread when `stacks`; with stacks, every one of
/// the `n` parked threads must carry one that names the function it waits in.
fn take(stacks: bool, n: u64) -> greenhub::inspect::Snapshot {
    if !stacks {
        return greenhub::inspect::snapshot();
    }
    let snap = greenhub::inspect::snapshot_with_stacks();
    assert_eq!(snap.stacks_unavailable, None, "stacks are read");
    let named = snap
        .threads
        .iter()
        .filter(|t| {
            t.stack.as_ref().is_some_and(|s| {
                s.frames
                    .iter()
                    .any(|f| f.function.ends_with("parked_on_release"))
            })
        })
        .count() as u64;
    assert!(
        named >= n,
        "{named} of {n} stacks name where they wait: {:#?}",
        snap.threads.iter().find_map(|t| t.stack.as_ref())
    );
    snap
}

/// The body of a parked thread: its stack names it (the wait is not its last act, so the
/// call is not a tail call, which leaves no frame).
#[inline(never)]
fn parked_on_release(release: &greenhub::Event<(), ()>) {
    let woken = release.wait().is_ok();
    std::hint::black_box(woken);
}

/// Nanoseconds per snapshot of `n` parked threads (the median of 15), with or without turning
/// it into JSON as the attach channel does, with or without every parked thread's stack
/// (symbols resolved once before the 15, as an inspector's first read does).
pub fn snapshot_cost(case: &str, n: u64) -> f64 {
    let _release = park(n);
    let json = case.contains("JSON");
    let stacks = case.contains("stacks");
    if stacks {
        take(true, n);
    }
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let t0 = Instant::now();
            let snap = take(stacks, n);
            if json {
                let text = serde_json::to_string(&snap).expect("a snapshot encodes");
                std::hint::black_box(text.len());
            }
            std::hint::black_box(snap.threads.len());
            t0.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Nanoseconds of the worst lateness of a 1 ms green sleep, with `n` threads parked: over 2 s
/// with no snapshot, or over 20 snapshots 50 ms apart. A snapshot that kept a worker from
/// switching would show as a late wake-up of the sleepers on it.
pub fn snapshot_pause(case: &str, n: u64) -> f64 {
    let _release = park(n);
    let measuring = Arc::new(AtomicBool::new(true));
    let worst = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tickers: Vec<_> = (0..4)
        .map(|_| {
            let (measuring, worst) = (measuring.clone(), worst.clone());
            greenhub::spawn(move || {
                while measuring.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    greenhub::sleep(Duration::from_millis(1)).expect("no deadline");
                    let late = t0.elapsed().saturating_sub(Duration::from_millis(1));
                    worst.fetch_max(late.as_nanos() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Warm-up, then measure from zero.
    std::thread::sleep(Duration::from_millis(300));
    worst.store(0, Ordering::Relaxed);
    if case.contains("snapshots") {
        let stacks = case.contains("stacks");
        for _ in 0..20 {
            std::hint::black_box(take(stacks, n).threads.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        std::thread::sleep(Duration::from_secs(2));
    }
    measuring.store(false, Ordering::Relaxed);
    for t in tickers {
        t.wait().expect("a ticker ends");
    }
    worst.load(Ordering::Relaxed) as f64
}

/// Nanoseconds per ping-pong round trip (2 workers) with 10,000 more green threads parked,
/// with no inspector, or with one asking for a full snapshot every 100 ms over the attach
/// socket, as `inspector attach` at its fastest refresh does.
pub fn attached(case: &str, rounds: u64) -> f64 {
    let _release = park(10_000);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = case.contains("attached").then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let path = greenhub::inspect::attach::socket_path(std::process::id());
            let stream = UnixStream::connect(path).expect("the attach socket answers");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            let mut line = String::new();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                writer.write_all(b"snapshot\n").expect("ask");
                line.clear();
                reader.read_line(&mut line).expect("answer");
                assert!(line.len() > 1000, "a snapshot came back");
                reads += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            reads
        })
    });
    let figure = runtimes::ping_pong("greenhub", 2, rounds);
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let reads = w.join().expect("the watcher ran");
        assert!(reads >= 2, "the inspector read the process during the run");
    }
    figure
}

/// Nanoseconds for one step of `inspector attach` on a process of `n` parked green threads:
/// reading a snapshot through the attach socket (the TUI's reader thread), taking it into the
/// view, the sort key, the first filter character after a new snapshot, or drawing a frame.
/// The median of 9.
pub fn tui(case: &str, n: u64) -> f64 {
    use greenhub_inspector::tui::{App, Key, render_text};

    let _release = park(n);
    let mut client =
        greenhub_inspector::Client::connect(std::process::id()).expect("the attach socket answers");
    let snap = client.snapshot().expect("a snapshot");
    assert!(
        snap.threads.len() as u64 >= n,
        "every thread in the snapshot"
    );
    let mut app = App::new(std::process::id());
    app.update(snap.clone(), Instant::now());
    let mut times: Vec<f64> = (0..9)
        .map(|_| {
            let t0;
            if case.starts_with("read") {
                t0 = Instant::now();
                std::hint::black_box(client.snapshot().expect("a snapshot"));
            } else if case.starts_with("take") {
                let s = snap.clone();
                t0 = Instant::now();
                app.update(s, Instant::now());
            } else if case.contains("sort") {
                t0 = Instant::now();
                app.key(Key::Char('s'));
            } else if case.contains("filter") {
                app.key(Key::Esc);
                app.update(snap.clone(), Instant::now());
                app.key(Key::Char('/'));
                t0 = Instant::now();
                app.key(Key::Char('w'));
                app.key(Key::Enter);
            } else {
                t0 = Instant::now();
                std::hint::black_box(render_text(&app, 200, 60));
            }
            t0.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// The target of [`watched_memory`]: `n` parked green threads; says `ready` and waits for its
/// stdin to close.
pub fn watched_target(n: u64) {
    let _release = park(n);
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

/// Bytes the resident memory of a process with `n` parked green threads grows while an
/// inspector reads full snapshots of it back to back through the attach socket: over the
/// first 100 reads ("first"), or from the 100th read to the 500th (what watching keeps
/// costing once the buffers have their size).
pub fn watched_memory(case: &str, n: u64) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let mut target = std::process::Command::new(exe)
        .args(["--child", "watched_target", &n.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the target");
    let mut out = BufReader::new(target.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the target starts");
    assert_eq!(line.trim(), "ready");
    let pid = target.id();
    let rss = || {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("statm");
        let pages: f64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("resident pages");
        pages * 4096.0
    };
    let stream = UnixStream::connect(greenhub::inspect::attach::socket_path(pid)).expect("attach");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut read = |count: usize| {
        for _ in 0..count {
            writer.write_all(b"snapshot\n").expect("ask");
            line.clear();
            reader.read_line(&mut line).expect("answer");
            assert!(line.len() as u64 > n * 50, "a full snapshot came back");
        }
    };
    let before = rss();
    read(100);
    let at_100 = rss();
    read(400);
    let at_500 = rss();
    drop(target.stdin.take());
    let _ = target.wait();
    if case.contains("first") {
        at_100 - before
    } else {
        at_500 - at_100
    }
}
