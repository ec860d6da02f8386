//! Echo round trips on loopback: `conns` clients each send 64 bytes and read them back, over
//! and over, against an echo server in the same process; greenhub's sockets, bare `may`'s and
//! tokio's, on 2 workers. The figure is wall time per round trip, all connections together.

use std::io::{Read, Write};
use std::time::Instant;

use crate::runtimes::start_greenhub;

const MSG: usize = 64;

/// `n` round trips in all over `conns` connections; ns per round trip.
pub fn echo(runtime: &str, workers: usize, conns: u64, n: u64) -> f64 {
    let per = (n / conns).max(1);
    let total = per * conns;
    let elapsed = match runtime {
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
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(async move {
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
