//! The chat server from eventlet's introduction: every line a participant sends reaches all
//! the others.
//!
//! Run it with `cargo run --release --bin chat`, then in two or more other terminals
//! `nc 127.0.0.1 6001` and type: each line appears in every other terminal. People join and
//! leave (Ctrl-C in a terminal) at any time. `-- --addr HOST:PORT` listens elsewhere;
//! `-- --duration N` stops after N seconds.

use std::time::Duration;

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
    let local = server.local_addr();
    println!(
        "chat server listening on {local} (pid {}); join with: nc {} {}",
        std::process::id(),
        local.ip(),
        local.port()
    );
    match duration {
        Some(d) => {
            std::thread::sleep(d);
            let stopped = server.stop(Duration::from_secs(1));
            println!(
                "chat server stopped after {}s ({} participants were still in)",
                d.as_secs(),
                stopped.killed + stopped.finished
            );
        }
        None => loop {
            std::thread::sleep(Duration::from_secs(10));
            println!("{} participants", room.len());
        },
    }
}
