//! What watching costs: a snapshot of many green threads, and a workload's speed while an
//! inspector reads the process every 100 ms through its attach socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtimes::{self, settle, start_greenhub};

/// `n` green threads parked on one event, on 16 KiB stacks (to fit 100,000 in memory).
fn park(n: u64) -> greenhub::Event<(), ()> {
    start_greenhub(2, Some(16 * 1024));
    let release = greenhub::Event::<(), ()>::new();
    for _ in 0..n {
        let r = release.clone();
        // Dropped handles: the threads stay parked until the process exits.
        drop(greenhub::spawn(move || {
            let _ = r.wait();
        }));
    }
    settle(|| greenhub::inspect::snapshot().totals.waiting as u64 >= n);
    release
}

/// Nanoseconds per snapshot of `n` parked threads (the median of 15), with or without turning
/// it into JSON as the attach channel does.
pub fn snapshot_cost(case: &str, n: u64) -> f64 {
    let _release = park(n);
    let json = case.contains("JSON");
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let t0 = Instant::now();
            let snap = greenhub::inspect::snapshot();
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

/// Nanoseconds per ping-pong round trip (2 workers) with 10,000 more green threads parked,
/// with no inspector, or with one asking for a full snapshot every 100 ms over the attach
/// socket, as `inspector attach` at its fastest refresh does.
pub fn attached(case: &str, rounds: u64) -> f64 {
    let _release = park(10_000);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = case.contains("attached").then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let path = greenhub::attach::socket_path(std::process::id());
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
