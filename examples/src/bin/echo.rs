//! The echo server from eventlet's introduction: each connection gets a green thread that
//! sends back every byte it receives.
//!
//! Run it with `cargo run --release --bin echo` and try it from another terminal with
//! `nc 127.0.0.1 6000` (type lines; they come back). `-- --addr 127.0.0.1:7000` listens
//! elsewhere; `-- --duration 10` stops it after ten seconds.

use std::io::{Read, Write};
use std::time::Duration;

use greenhub::net::{TcpListener, TcpStream};

fn serve(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return, // the peer closed, or vanished
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn main() {
    let mut addr = "127.0.0.1:6000".to_string();
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
                eprintln!("usage: echo [--addr HOST:PORT] [--duration SECONDS]");
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
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    println!(
        "echo server listening on {local} (pid {}); try: nc {}",
        std::process::id(),
        local.replace(':', " ")
    );
    let acceptor = greenhub::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    greenhub::spawn(move || serve(conn));
                }
                Err(e) => eprintln!("accept failed: {e}"),
            }
        }
    });
    match duration {
        Some(d) => {
            std::thread::sleep(d);
            acceptor.kill();
            let _ = acceptor.wait();
            println!("echo server stopped after {}s", d.as_secs());
        }
        None => {
            let _ = acceptor.wait();
        }
    }
}
