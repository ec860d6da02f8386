//! A producer/consumer pipeline on green queues: a producer, `--workers` workers that each
//! take 1 ms per item (a green sleep standing for I/O), a consumer, joined by queues of
//! `--capacity` items. The queues are bounded, so the producer waits for the workers instead
//! of filling memory; every item arrives once.
//!
//! Run it with `cargo run --release --bin pipeline` (`-- --items 100000 --workers 500`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

fn main() {
    let mut items = 20_000u64;
    let mut workers = 100usize;
    let mut capacity = 64usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--items", Some(n)) => items = n,
            ("--workers", Some(n)) if n > 0 => workers = n as usize,
            ("--capacity", Some(n)) if n > 0 => capacity = n as usize,
            _ => {
                eprintln!("usage: pipeline [--items N] [--workers N] [--capacity N]");
                std::process::exit(2);
            }
        }
    }
    println!(
        "{items} items through {workers} workers, queues of {capacity} (pid {})",
        std::process::id()
    );
    let t0 = Instant::now();
    let ran = greenhub::thread::Builder::new()
        .name("pipeline")
        .spawn(move || {
            greenhub_examples::pipeline::run(items, workers, capacity, Duration::from_millis(1))
        })
        .map_err(|e| e.to_string())
        .and_then(|t| t.wait().map_err(|e| e.to_string()))
        .and_then(|r| r.map_err(|e| e.to_string()));
    let outcome = match ran {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let took = t0.elapsed();
    let distinct: HashSet<u64> = outcome.received.iter().copied().collect();
    println!(
        "received {} items ({} distinct) in {:.2}s ({:.0} items/s); the first queue never held \
         more than {} (its bound: {capacity})",
        outcome.received.len(),
        distinct.len(),
        took.as_secs_f64(),
        outcome.received.len() as f64 / took.as_secs_f64(),
        outcome.most_queued
    );
    if outcome.received.len() as u64 != items || distinct.len() as u64 != items {
        eprintln!("error: items were lost or duplicated");
        std::process::exit(1);
    }
}
