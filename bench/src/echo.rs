//! Echo round trips on loopback: `conns` clients each send 64 bytes and read them back, over
//! and over, against an echo server; greenhub's sockets, bare `may`'s and tokio's, on 2
//! workers. The figure is wall time per round trip, all connections together. [`echo`] runs
//! the clients in the server's process; [`remote`] runs them in another (one tokio thread,
//! the load generator, as a real server sees its clients) and reports the server's CPU per
//! round trip.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use crate::runtimes::{Section, report_cpu, start_greenhub};

const MSG: usize = 64;

/// `n` round trips in all over `conns` connections; ns per round trip.
pub fn echo(runtime: &str, workers: usize, conns: u64, n: u64) -> f64 {
    let per = (n / conns).max(1);
    let total = per * conns;
    let elapsed = match runtime {
        "greenhub" => {
            let (addr, _) = serve(runtime, workers);
            let streams: Vec<_> = (0..conns)
                .map(|_| greenhub::net::TcpStream::connect(addr).unwrap())
                .collect();
            let t0 = Instant::now();
            let clients: Vec<_> = streams
                .into_iter()
                .map(|mut s| {
                    greenhub::spawn(move || {
                        let mut buf = [7u8; MSG];
                        for _ in 0..per {
                            s.write_all(&buf).unwrap();
                            s.read_exact(&mut buf).unwrap();
                        }
                    })
                })
                .collect();
            for c in clients {
                c.wait().unwrap();
            }
            t0.elapsed()
        }
        "may" => {
            let (addr, _) = serve(runtime, workers);
            let streams: Vec<_> = (0..conns)
                .map(|_| may::net::TcpStream::connect(addr).unwrap())
                .collect();
            let t0 = Instant::now();
            let clients: Vec<_> = streams
                .into_iter()
                .map(|mut s| {
                    // SAFETY: as above.
                    unsafe {
                        may::coroutine::spawn(move || {
                            let mut buf = [7u8; MSG];
                            for _ in 0..per {
                                s.write_all(&buf).unwrap();
                                s.read_exact(&mut buf).unwrap();
                            }
                        })
                    }
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
            t0.elapsed()
        }
        "tokio" => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (addr, rt) = serve(runtime, workers);
            rt.expect("tokio's server runs on a runtime")
                .block_on(async move {
                    let mut streams = Vec::new();
                    for _ in 0..conns {
                        streams.push(tokio::net::TcpStream::connect(addr).await.unwrap());
                    }
                    let t0 = Instant::now();
                    let clients: Vec<_> = streams
                        .into_iter()
                        .map(|mut s| {
                            tokio::spawn(async move {
                                let mut buf = [7u8; MSG];
                                for _ in 0..per {
                                    s.write_all(&buf).await.unwrap();
                                    s.read_exact(&mut buf).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for c in clients {
                        c.await.unwrap();
                    }
                    t0.elapsed()
                })
        }
        other => panic!("unknown runtime {other}"),
    };
    elapsed.as_nanos() as f64 / total as f64
}

/// The echo servers (a task per connection), started in this process: the address, and for
/// tokio the runtime it runs on (kept for the rest of the process).
fn serve(runtime: &str, workers: usize) -> (SocketAddr, Option<&'static tokio::runtime::Runtime>) {
    match runtime {
        "greenhub" => {
            start_greenhub(workers, None);
            let listener = greenhub::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            greenhub::spawn(move || {
                for conn in listener.incoming() {
                    let mut conn = conn.unwrap();
                    greenhub::spawn(move || {
                        let mut buf = [0u8; MSG];
                        while conn.read_exact(&mut buf).is_ok() {
                            if conn.write_all(&buf).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            (addr, None)
        }
        "may" => {
            crate::runtimes::start_may(workers);
            let listener = may::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            // SAFETY: the coroutines use no thread-locals.
            unsafe {
                may::coroutine::spawn(move || {
                    for conn in listener.incoming() {
                        let mut conn = conn.unwrap();
                        may::coroutine::spawn(move || {
                            let mut buf = [0u8; MSG];
                            while conn.read_exact(&mut buf).is_ok() {
                                if conn.write_all(&buf).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                })
            };
            (addr, None)
        }
        "tokio" => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (rt, listener) = crate::runtimes::tokio_listener(workers);
            let addr = listener.local_addr().unwrap();
            rt.spawn(async move {
                loop {
                    let (mut conn, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut buf = [0u8; MSG];
                        while conn.read_exact(&mut buf).await.is_ok() {
                            if conn.write_all(&buf).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            (addr, Some(rt))
        }
        other => panic!("unknown runtime {other}"),
    }
}

/// `n` round trips in all over `conns` connections from a client process: ns per round trip
/// (the client's wall time), and the server's CPU per round trip reported.
pub fn remote(runtime: &str, workers: usize, conns: u64, n: u64) -> f64 {
    let (addr, _) = serve(runtime, workers);
    let per = (n / conns).max(1);
    let cpu = Section::start();
    let ns = run_client(addr, conns, per);
    report_cpu(cpu.spent(), None, conns * per);
    ns
}

/// Runs the client process against `addr`; its wall time per round trip.
pub fn run_client(addr: SocketAddr, conns: u64, per: u64) -> f64 {
    let exe = std::env::current_exe().expect("the harness's path");
    let out = Command::new(exe)
        .args([
            "--child",
            "echo_client",
            &addr.to_string(),
            &conns.to_string(),
            &per.to_string(),
        ])
        .output()
        .expect("start the echo client");
    assert!(
        out.status.success(),
        "the echo client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the client's wall time");
    ns / (conns * per) as f64
}

/// The client process: `conns` connections to `addr` on one tokio thread, each sending 64
/// bytes (its own pattern, changed every time) and checking what comes back, `per` times;
/// prints the wall time in ns once every connection is open.
pub fn client(addr: &str, conns: u64, per: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: SocketAddr = addr.parse().expect("an address");
    let ns = rt.block_on(async move {
        let mut streams = Vec::new();
        for _ in 0..conns {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            streams.push(s);
        }
        let t0 = Instant::now();
        let clients: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(c, mut s)| {
                tokio::spawn(async move {
                    let mut back = [0u8; MSG];
                    for i in 0..per {
                        let sent = [(c as u64 + i) as u8; MSG];
                        s.write_all(&sent).await.unwrap();
                        s.read_exact(&mut back).await.unwrap();
                        assert_eq!(back, sent, "the echo changed the bytes");
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        t0.elapsed().as_nanos()
    });
    println!("{ns}");
}
