//! The chat load test: many clients on loopback join, talk and leave; every message reaches
//! every other participant exactly once, in order per sender.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use greenhub::net::{TcpListener, TcpStream};
use greenhub::spawn;
use greenhub_examples::chat;

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while !ok() {
        if Instant::now() >= give_up {
            let dump = greenhub::inspect::format_run_info();
            let interesting: Vec<&str> = dump.lines().take(40).collect();
            panic!("gave up waiting until {what}\n{}", interesting.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One round: `n` clients join, each sends `m` lines, each reads every other's lines.
fn round(addr: std::net::SocketAddr, room: &chat::Room, first: usize, n: usize, m: usize) {
    let already = room.len();
    let conns: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("everyone joined", || room.len() == already + n);
    let clients: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let me = first + i;
            spawn(move || {
                let writer = conn.try_clone().unwrap();
                let sender = spawn(move || {
                    let mut w = &writer;
                    for k in 0..m {
                        w.write_all(format!("{me} {k}\n").as_bytes()).unwrap();
                    }
                    writer
                });
                // Lines from the other clients of this round (older participants stay quiet).
                let expected = (n - 1) * m;
                let mut next: HashMap<usize, usize> = HashMap::new();
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                for _ in 0..expected {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let mut parts = line.split_whitespace();
                    let from: usize = parts.next().unwrap().parse().unwrap();
                    let k: usize = parts.next().unwrap().parse().unwrap();
                    assert_ne!(from, me, "a participant got its own line back");
                    let want = next.entry(from).or_insert(0);
                    assert_eq!(
                        k, *want,
                        "client {me}: lines from {from} out of order or lost"
                    );
                    *want += 1;
                }
                let _writer = sender.wait().unwrap();
                assert_eq!(next.len(), n - 1);
                assert!(next.values().all(|&c| c == m));
                conn
            })
        })
        .collect();
    let conns: Vec<TcpStream> = clients.into_iter().map(|c| c.wait().unwrap()).collect();
    // Everyone of this round leaves.
    drop(conns);
    wait_until("everyone left", || room.len() == already);
}

#[test]
fn every_line_reaches_every_other_participant_once_and_in_order() {
    let (server, room) = chat::start(TcpListener::bind("127.0.0.1:0").unwrap(), 1000).unwrap();
    let addr = server.local_addr();
    // Rounds of people joining, talking and leaving, with a quiet participant staying in
    // (reading all the while, as a client must: one that stops reading is dropped after
    // `chat::WRITE_TIMEOUT`).
    let quiet = TcpStream::connect(addr).unwrap();
    wait_until("the quiet one joined", || room.len() == 1);
    let total = 20 * 50 + 60 * 20 + 100 * 10;
    let listener = spawn(move || {
        let mut reader = BufReader::new(&quiet);
        let mut line = String::new();
        let mut count = 0;
        while count < total {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => count += 1,
            }
        }
        drop(reader);
        // Still connected: the rounds count it in the room until they are all done.
        (count, quiet)
    });
    let mut first = 1;
    for (n, m) in [(20, 50), (60, 20), (100, 10)] {
        round(addr, &room, first, n, m);
        first += n;
    }
    let (count, quiet) = listener.wait().unwrap();
    assert_eq!(count, total);
    drop(quiet);
    wait_until("the room is empty", || room.is_empty());
    let stopped = server.stop(Duration::from_secs(1));
    assert_eq!(stopped.killed, 0);
}
