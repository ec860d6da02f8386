//! The echo server from eventlet's introduction: each connection gets a green thread that
//! sends back every byte it receives.
//!
//! Run it with `cargo run --release --bin echo` and try it from another terminal with
//! `nc 127.0.0.1 6000` (type lines; they come back). `-- --addr 127.0.0.1:7000` listens
//! elsewhere; `-- --duration 10` stops it after ten seconds. Ctrl-C or SIGTERM stops it
//! cleanly at any time.

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
    // Before saying it listens: a SIGTERM from then on is a clean stop.
    let stop = match greenhub_examples::stop::on_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("cannot handle Ctrl-C and SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    println!(
        "echo server listening on {local} (pid {}); try: nc {}",
        std::process::id(),
        local.replace(':', " ")
    );
    // `incoming` waits out a lack of descriptors itself (and says so once a minute), so an
    // error here is rare and not repeated in a tight loop.
    let acceptor = greenhub::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    if let Err(e) = greenhub::thread::Builder::new()
                        .name("echo connection")
                        .spawn(move || serve(conn))
                    {
                        eprintln!("connection refused: {e}");
                    }
                }
                Err(e) => eprintln!("accept failed: {e}"),
            }
        }
    });
    let signal = match duration {
        Some(d) => stop.wait_timeout(d).ok(),
        None => stop.wait().ok(),
    };
    acceptor.kill();
    let _ = acceptor.wait();
    match (signal, duration) {
        (Some(s), _) => println!("echo server stopped on {}", greenhub::signal::name(s)),
        (None, Some(d)) => println!("echo server stopped after {}s", d.as_secs()),
        (None, None) => println!("echo server stopped"),
    }
}
