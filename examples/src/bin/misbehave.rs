//! A deliberately misbehaving program, to show what greenhub catches: a green thread that
//! blocks its worker (a `std::thread::sleep` where `greenhub::sleep` belonged), a database
//! connection that is never given back, and a deadline that fires. It prints what the
//! runtime reported; run with `-- --hold 60` to look at it meanwhile with
//! `cargo run --release --bin inspector -- attach <pid>` (the blocked-workers view, the pool's
//! details).
//!
//! Run it with `cargo run --release --bin misbehave`.

use std::time::Duration;

use greenhub::inspect::snapshot;
use greenhub::{thread::Builder, with_timeout};
use greenhub_dbpool::{Pool, SqliteConnectionManager};

fn main() {
    let mut hold = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--hold", Some(s)) => hold = s,
            _ => {
                eprintln!("usage: misbehave [--hold SECONDS]");
                std::process::exit(2);
            }
        }
    }
    let pid = std::process::id();
    println!(
        "misbehave (pid {pid}); watch it: cargo run --release --bin inspector -- attach {pid}"
    );

    // 1. A green thread that blocks its worker for 300 ms.
    let blocker = Builder::new()
        .name("blocker")
        .spawn(|| std::thread::sleep(Duration::from_millis(300)))
        .unwrap_or_else(|e| fail(&e));
    blocker.wait().expect("the blocker ends");
    let report = snapshot()
        .blocked
        .into_iter()
        .find(|b| b.name.as_deref() == Some("blocker"));
    match report {
        Some(b) => println!(
            "caught: green thread #{} \"blocker\" kept worker {} busy for {} ms (spawned at {})",
            b.thread,
            b.worker,
            b.duration_us / 1000,
            b.spawn_site.unwrap_or_default()
        ),
        None => println!("missed: no blocked-worker report for \"blocker\""),
    }

    // 2. A connection held past the pool's leak threshold.
    let pool = match Pool::builder()
        .name("misbehave-db")
        .max_size(2)
        .leak_threshold(Some(Duration::from_millis(200)))
        .build(SqliteConnectionManager::memory())
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot open the database: {e}");
            std::process::exit(1);
        }
    };
    let holder = {
        let pool = pool.clone();
        Builder::new()
            .name("forgetful")
            .spawn(move || {
                let conn = pool.get();
                // Held, as if forgotten in a long-lived struct.
                let _ = greenhub::sleep(Duration::from_millis(600));
                drop(conn);
            })
            .unwrap_or_else(|e| fail(&e))
    };
    holder.wait().expect("the holder ends");
    // The holder only waited (a green sleep): it must not be reported as blocking. (A false
    // report here once came from a thread-local cached across a wait in release builds; CI
    // runs this program in release.)
    if snapshot()
        .blocked
        .iter()
        .any(|b| b.name.as_deref() == Some("forgetful"))
    {
        eprintln!("error: \"forgetful\" only waited but was reported as blocking its worker");
        std::process::exit(1);
    }
    let leaks = pool.stats().leaks;
    println!(
        "caught: {leaks} connection(s) of pool \"misbehave-db\" held past the 200 ms leak threshold"
    );

    // 3. A deadline that fires.
    let late = greenhub::spawn(|| {
        with_timeout(Duration::from_millis(50), || {
            greenhub::sleep(Duration::from_secs(5))
        })
    })
    .wait()
    .expect("the deadline thread ends");
    match late {
        Err(greenhub::TimedOut) => println!("caught: a 5 s wait cut short by its 50 ms deadline"),
        Ok(()) => println!("missed: the deadline did not fire"),
    }

    if hold > 0 {
        println!("holding for {hold}s: attach now");
        let _ = greenhub::spawn(move || greenhub::sleep(Duration::from_secs(hold))).wait();
    }
}

/// Ends the program with an error's message (a thread limit set too low, say).
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1);
}
