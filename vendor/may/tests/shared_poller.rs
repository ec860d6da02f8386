//! The shared poller (greenhub's change, see vendor/CHANGES.md): nothing is lost or mixed up
//! under many connections, I/O timers still fire and never fire on a later wait, and I/O goes
//! on while a coroutine keeps a worker.

#[macro_use]
extern crate may;

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use may::net::{TcpListener, TcpStream};

fn setup() {
    // Before the scheduler starts (the first test to run starts it); later calls change
    // nothing.
    may::config().set_workers(2);
}

/// Echoes 4-byte words on every connection accepted, until `conns` connections came.
fn echo_server(listener: TcpListener, conns: usize) -> may::coroutine::JoinHandle<()> {
    go!(move || {
        for stream in listener.incoming().take(conns) {
            let mut s = stream.unwrap();
            go!(move || {
                let mut buf = [0u8; 4];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    })
}

#[test]
fn many_connections_echo_every_word_in_order() {
    setup();
    const CONNS: u32 = 200;
    const ROUNDS: u32 = 200;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = echo_server(listener, CONNS as usize);
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            go!(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                for i in 0..ROUNDS {
                    let word = (c << 16) | i;
                    s.write_all(&word.to_le_bytes()).unwrap();
                    let mut back = [0u8; 4];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(u32::from_le_bytes(back), word, "connection {c}");
                }
                ROUNDS
            })
        })
        .collect();
    let total: u32 = clients.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, CONNS * ROUNDS);
    server.join().unwrap();
}

#[test]
fn the_timer_of_an_answered_read_never_fires_on_a_later_read() {
    setup();
    const ROUNDS: usize = 300;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers each byte at once, except a 1, which it answers after 150 ms.
    let server = go!(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if b[0] == 1 {
                may::coroutine::sleep(Duration::from_millis(150));
            }
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let client = go!(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // Reads answered long before their timers: each timer must go with its read,
        // whichever worker finds the answer.
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut b = [0u8; 1];
        for _ in 0..ROUNDS {
            s.write_all(&[0]).unwrap();
            s.read_exact(&mut b).unwrap();
        }
        // A read without a timer outlives those timers' deadlines.
        s.set_read_timeout(None).unwrap();
        s.write_all(&[1]).unwrap();
        let late = s.read_exact(&mut b).map_err(|e| e.kind());
        // And a timer still fires.
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        s.write_all(&[1]).unwrap();
        let timed_out = s.read_exact(&mut b).map_err(|e| e.kind());
        (late, timed_out)
    });
    let (late, timed_out) = client.join().unwrap();
    assert_eq!(late, Ok(()));
    assert!(
        matches!(timed_out, Err(ErrorKind::TimedOut | ErrorKind::WouldBlock)),
        "{timed_out:?}"
    );
    server.join().unwrap();
}

#[test]
fn io_goes_on_while_a_coroutine_keeps_a_worker() {
    setup();
    const ROUNDS: u32 = 50;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = echo_server(listener, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (hog_stop, hog_done, hog_started) = (stop.clone(), done.clone(), started.clone());
    // Keeps its worker without waiting (bounded, should the test fail).
    let hog = go!(move || {
        hog_started.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while !hog_stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
            std::hint::spin_loop();
        }
        hog_done.store(true, Ordering::Relaxed);
    });
    while !started.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The client is a plain thread: only the server needs a worker.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for i in 0..ROUNDS {
        s.write_all(&i.to_le_bytes()).unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(u32::from_le_bytes(back), i);
    }
    // The round trips were made while the hog kept its worker.
    assert!(!done.load(Ordering::Relaxed), "the hog stopped before the round trips ended");
    stop.store(true, Ordering::Relaxed);
    drop(s);
    hog.join().unwrap();
    server.join().unwrap();
}
