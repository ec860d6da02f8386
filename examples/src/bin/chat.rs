//! The chat server from eventlet's introduction: every line a participant sends reaches all
//! the others.
//!
//! Run it with `cargo run --release --bin chat`, then in two or more other terminals
//! `nc 127.0.0.1 6001` and type: each line appears in every other terminal. People join and
//! leave (Ctrl-C in a terminal) at any time. `-- --addr HOST:PORT` listens elsewhere;
//! `-- --duration N` stops after N seconds; Ctrl-C or SIGTERM stops it cleanly at any time.

use std::time::{Duration, Instant};

use greenhub::net::TcpListener;

fn main() {
    let mut addr = "127.0.0.1:6001".to_string();
    let mut duration: Option<Duration> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(a)) => addr = a,
            ("--duration", Some(s)) => match s.parse() {
                Ok(secs) => duration = Some(Duration::from_secs(secs)),
                Err(_) => {
                    eprintln!("--duration needs a whole number of seconds");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: chat [--addr HOST:PORT] [--duration SECONDS]");
                std::process::exit(2);
            }
        }
    }
    let listener = match TcpListener::bind(addr.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let (server, room) = match greenhub_examples::chat::start(listener, 10_000) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("cannot start the chat server: {e}");
            std::process::exit(1);
        }
    };
    // Before saying it listens: a SIGTERM from then on is a clean stop.
    let stop = match greenhub_examples::stop::on_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("cannot handle Ctrl-C and SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    let local = server.local_addr();
    println!(
        "chat server listening on {local} (pid {}); join with: nc {} {}",
        std::process::id(),
        local.ip(),
        local.port()
    );
    // Every 10 s a line on the room, until the duration is over or a signal comes.
    let until = duration.map(|d| Instant::now() + d);
    let signal = loop {
        let next = Duration::from_secs(10);
        let wait = until.map_or(next, |u| {
            u.saturating_duration_since(Instant::now()).min(next)
        });
        if let Ok(signal) = stop.wait_timeout(wait) {
            break Some(signal);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break None;
        }
        println!("{} participants", room.len());
    };
    let stopped = server.stop(Duration::from_secs(1));
    let why = match (signal, duration) {
        (Some(s), _) => format!("on {}", greenhub::signal::name(s)),
        (None, Some(d)) => format!("after {}s", d.as_secs()),
        (None, None) => String::new(),
    };
    println!(
        "chat server stopped {why} ({} participants were still in)",
        stopped.killed + stopped.finished
    );
}
