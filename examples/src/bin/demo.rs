//! The greenhub demo: a small job service made of thousands of green threads.
//!
//! A dispatcher starts jobs at a steady rate; each job fans out to subtasks that "call a
//! backend" (a sleep of random length) under a 40 ms deadline scope, so some time out; one job
//! in a hundred panics, and the service keeps going. Two thousand idle sessions sit waiting the
//! whole time. Every second a progress line shows what the runtime sees; at the end, the run
//! info dump shows the live green threads as a tree.
//!
//! Run it with `cargo run --release --bin demo` (add `-- --duration 30` to watch longer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenhub::{sleep, with_timeout, Builder, TimedOut};

#[derive(Default)]
struct Stats {
    jobs: AtomicU64,
    subtasks: AtomicU64,
    timed_out: AtomicU64,
    panicked: AtomicU64,
}

/// A tiny deterministic pseudo-random sequence (xorshift), seeded per green thread.
fn rand(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn parse_args() -> Result<(Duration, usize), String> {
    let mut duration = Duration::from_secs(10);
    let mut sessions = 2000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--duration" => duration = Duration::from_secs(value("--duration")?),
            "--sessions" => sessions = value("--sessions")? as usize,
            "-h" | "--help" => {
                return Err("usage: demo [--duration SECONDS] [--sessions N]".into());
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok((duration, sessions))
}

fn job(n: u64, stats: Arc<Stats>) {
    let mut seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    if rand(&mut seed).is_multiple_of(100) {
        panic!("job {n} hit a bug");
    }
    let subtasks: Vec<_> = (0..3)
        .map(|_| {
            let ms = rand(&mut seed) % 50 + 1;
            Builder::new()
                .name("backend call")
                .spawn(move || {
                    with_timeout(Duration::from_millis(40), || -> Result<(), TimedOut> {
                        sleep(Duration::from_millis(ms))
                    })
                })
                .expect("the demo stays far below the thread limit")
        })
        .collect();
    for t in subtasks {
        stats.subtasks.fetch_add(1, Ordering::Relaxed);
        if !matches!(t.wait(), Ok(Ok(Ok(())))) {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn main() {
    let (duration, sessions) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "greenhub demo (pid {}): a job service on green threads for {}s",
        std::process::id(),
        duration.as_secs()
    );
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let stop_at = started + duration;

    // Idle sessions: green threads that wait, as a server's idle connections do.
    let idle: Vec<_> = (0..sessions)
        .map(|i| {
            Builder::new()
                .name(format!("session-{i}"))
                .spawn(move || sleep(duration + Duration::from_secs(60)))
                .expect("the demo stays far below the thread limit")
        })
        .collect();

    let dispatcher = {
        let stats = stats.clone();
        Builder::new()
            .name("dispatcher")
            .spawn(move || {
                let mut n = 0u64;
                let mut running = Vec::new();
                while Instant::now() < stop_at {
                    for _ in 0..20 {
                        n += 1;
                        let s = stats.clone();
                        let t = Builder::new()
                            .name(format!("job-{n}"))
                            .spawn(move || job(n, s))
                            .expect("the demo stays far below the thread limit");
                        let s = stats.clone();
                        t.link(move |r| {
                            s.jobs.fetch_add(1, Ordering::Relaxed);
                            if r.is_err() {
                                s.panicked.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        running.push(t);
                    }
                    // Collect the finished ones (a panic collected by `wait` is not reported
                    // again as unobserved; the link has counted it).
                    let (done, rest): (Vec<_>, Vec<_>) =
                        running.into_iter().partition(|t| t.is_done());
                    running = rest;
                    for t in done {
                        let _ = t.wait();
                    }
                    sleep(Duration::from_millis(10)).ok();
                }
                // Let the last jobs finish; their panics were counted by the links.
                for t in running {
                    let _ = t.wait();
                }
                n
            })
            .expect("the demo stays far below the thread limit")
    };

    let mut last_switches = 0;
    let mut last = Instant::now();
    while !dispatcher.is_done() {
        let left = stop_at.saturating_duration_since(Instant::now());
        std::thread::sleep(left.clamp(Duration::from_millis(100), Duration::from_secs(1)));
        let snap = greenhub::inspect::snapshot();
        let t = &snap.totals;
        let per_sec = (t.switches - last_switches) as f64 / last.elapsed().as_secs_f64();
        last_switches = t.switches;
        last = Instant::now();
        println!(
            "t={:>4.1}s  jobs {:>6} (subtasks timed out {:>5}, panicked {:>3})  green threads {:>6} live: {:>4} running, {:>6} waiting  switches/s {:>9.0}",
            started.elapsed().as_secs_f64(),
            stats.jobs.load(Ordering::Relaxed),
            stats.timed_out.load(Ordering::Relaxed),
            stats.panicked.load(Ordering::Relaxed),
            t.live,
            t.running,
            t.waiting,
            per_sec,
        );
    }
    let started_jobs = dispatcher.wait().unwrap_or(0);

    let dump = greenhub::inspect::format_run_info();
    println!("\nrun info (first lines of greenhub::inspect::format_run_info()):");
    for line in dump.lines().take(14) {
        println!("{line}");
    }
    for t in &idle {
        t.kill();
    }
    for t in idle {
        let _ = t.wait();
    }
    let done = stats.jobs.load(Ordering::Relaxed);
    println!(
        "\ndone: {started_jobs} jobs started, {done} finished ({} panicked), {} subtasks ({} cut by their deadline)",
        stats.panicked.load(Ordering::Relaxed),
        stats.subtasks.load(Ordering::Relaxed),
        stats.timed_out.load(Ordering::Relaxed),
    );
    if done != started_jobs {
        eprintln!("error: {} jobs lost", started_jobs - done);
        std::process::exit(1);
    }
}
