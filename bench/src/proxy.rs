//! A proxy between two processes: the harness's client process sends 64 bytes on each of its
//! connections to the proxy, the proxy's task for that connection sends them to an echo
//! backend (another process, the same for every runtime: one tokio thread), reads the answer
//! and sends it back. A task that waits on two sockets in turn is where descriptors tied to
//! workers made green threads hop between workers at every step; the figure is the client's
//! wall time per round trip, and the CPU column the proxy's CPU per round trip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::echo::run_client;
use crate::runtimes::{Section, report_cpu, start_greenhub};

const MSG: usize = 64;

/// `n` round trips in all over `conns` connections through a proxy on `runtime`; ns per round
/// trip.
pub fn proxy(runtime: &str, workers: usize, conns: u64, n: u64) -> f64 {
    let backend = Backend::start();
    let addr = serve(runtime, workers, backend.addr);
    let per = (n / conns).max(1);
    let cpu = Section::start();
    let ns = run_client(addr, conns, per);
    report_cpu(cpu.spent(), None, conns * per);
    ns
}

/// The echo backend process; ended when dropped.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start() -> Backend {
        let exe = std::env::current_exe().expect("the harness's path");
        let mut child = Command::new(exe)
            .args(["--child", "echo_backend"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the echo backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("the backend's address");
        let addr = line.trim().parse().expect("the backend prints its address");
        Backend { child, addr }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The backend process: an echo server on one tokio thread; prints its address, serves until
/// its stdin closes (the harness ends) or ten minutes pass.
pub fn backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let serve = async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                conn.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; MSG];
                    while conn.read_exact(&mut buf).await.is_ok() {
                        if conn.write_all(&buf).await.is_err() {
                            break;
                        }
                    }
                });
            }
        };
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 1];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        });
        tokio::select! {
            _ = serve => {}
            _ = stdin_closed => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
        }
    });
    std::process::exit(0);
}

/// Moves one 64-byte request to the backend and its answer back, until the client closes.
fn relay<C: Read + Write, B: Read + Write>(mut client: C, mut backend: B) {
    let mut buf = [0u8; MSG];
    while client.read_exact(&mut buf).is_ok() {
        if backend.write_all(&buf).is_err()
            || backend.read_exact(&mut buf).is_err()
            || client.write_all(&buf).is_err()
        {
            break;
        }
    }
}

/// The proxy (a task per client connection, each with its own backend connection), started in
/// this process; its address.
fn serve(runtime: &str, workers: usize, backend: SocketAddr) -> SocketAddr {
    match runtime {
        "greenhub" => {
            start_greenhub(workers, None);
            let listener = greenhub::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            greenhub::spawn(move || {
                for conn in listener.incoming() {
                    let conn = conn.unwrap();
                    greenhub::spawn(move || {
                        conn.set_nodelay(true).unwrap();
                        let upstream = greenhub::net::TcpStream::connect(backend).unwrap();
                        upstream.set_nodelay(true).unwrap();
                        relay(conn, upstream);
                    });
                }
            });
            addr
        }
        "may" => {
            crate::runtimes::start_may(workers);
            let listener = may::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            // SAFETY: the coroutines use no thread-locals.
            unsafe {
                may::coroutine::spawn(move || {
                    for conn in listener.incoming() {
                        let conn = conn.unwrap();
                        may::coroutine::spawn(move || {
                            conn.set_nodelay(true).unwrap();
                            let upstream = may::net::TcpStream::connect(backend).unwrap();
                            upstream.set_nodelay(true).unwrap();
                            relay(conn, upstream);
                        });
                    }
                })
            };
            addr
        }
        "tokio" => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (rt, listener) = crate::runtimes::tokio_listener(workers);
            let addr = listener.local_addr().unwrap();
            rt.spawn(async move {
                loop {
                    let (mut conn, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        conn.set_nodelay(true).unwrap();
                        let mut upstream = tokio::net::TcpStream::connect(backend).await.unwrap();
                        upstream.set_nodelay(true).unwrap();
                        let mut buf = [0u8; MSG];
                        while conn.read_exact(&mut buf).await.is_ok() {
                            if upstream.write_all(&buf).await.is_err()
                                || upstream.read_exact(&mut buf).await.is_err()
                                || conn.write_all(&buf).await.is_err()
                            {
                                break;
                            }
                        }
                    });
                }
            });
            addr
        }
        other => panic!("unknown runtime {other}"),
    }
}
