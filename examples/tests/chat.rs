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

/// Descriptors open in this process.
fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// `clients` clients at once, each `times` times: connect, send one line, leave. Returns the
/// lines sent.
fn churn(addr: std::net::SocketAddr, clients: usize, times: usize) -> Vec<String> {
    let churners: Vec<_> = (0..clients)
        .map(|c| {
            spawn(move || {
                (0..times)
                    .map(|k| {
                        let mut conn = TcpStream::connect(addr).unwrap();
                        let line = format!("churn-{c}-{k}");
                        conn.write_all(format!("{line}\n").as_bytes()).unwrap();
                        // Leaves at once, but as a client that closes cleanly: a socket closed
                        // with unread data (the others' lines) resets the connection, and a
                        // reset discards what the server has not read yet, this line included.
                        conn.shutdown(std::net::Shutdown::Write).unwrap();
                        let _ = std::io::copy(&mut conn, &mut std::io::sink());
                        line
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    churners
        .into_iter()
        .flat_map(|t| t.wait().unwrap())
        .collect()
}

#[test]
fn every_line_reaches_every_other_participant_once_and_in_order() {
    let (server, room) = chat::start(TcpListener::bind("127.0.0.1:0").unwrap(), 5000).unwrap();
    let addr = server.local_addr();
    // Rounds of people joining, talking and leaving, with a quiet participant staying in
    // (reading all the while, as a client must: one that stops reading is dropped after
    // `chat::WRITE_TIMEOUT`), then a phase of churn: clients that connect, say one line and
    // leave at once.
    let quiet = TcpStream::connect(addr).unwrap();
    wait_until("the quiet one joined", || room.len() == 1);
    let rounds = [(20, 50), (60, 20), (100, 10), (500, 10)];
    let (churners, times) = (20, 100);
    let total: usize = rounds.iter().map(|(n, m)| n * m).sum::<usize>() + churners * times;
    // How many lines the quiet one has read: each phase waits for it to catch up, so that
    // however slow the machine, it never falls `chat::OUTBOX` lines behind and is dropped.
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = heard.clone();
    let listener = spawn(move || {
        let mut reader = BufReader::new(&quiet);
        let mut line = String::new();
        let mut lines = Vec::with_capacity(total);
        while lines.len() < total {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    lines.push(line.trim_end().to_string());
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        drop(reader);
        // Still connected: the rounds count it in the room until they are all done.
        (lines, quiet)
    });
    let caught_up = |sent: usize| {
        wait_until("the quiet one caught up", || {
            heard.load(std::sync::atomic::Ordering::SeqCst) >= sent
        })
    };
    let (mut first, mut sent) = (1, 0);
    for (n, m) in rounds {
        round(addr, &room, first, n, m);
        first += n;
        sent += n * m;
        caught_up(sent);
    }

    // Churn: memory and descriptors come back, nobody stays stuck in the room.
    let (fds, memory) = (descriptors(), resident());
    let sent = churn(addr, churners, times);
    wait_until("every churning client left", || room.len() == 1);
    wait_until("their descriptors closed", || descriptors() <= fds + 10);
    let grown = resident().saturating_sub(memory);
    assert!(
        grown < 64 << 20,
        "{churners} x {times} short visits grew the process by {} MiB",
        grown >> 20
    );

    let (lines, quiet) = listener.wait().unwrap();
    assert_eq!(lines.len(), total);
    // Every churn line reached the quiet one exactly once.
    let mut heard: Vec<&String> = lines.iter().filter(|l| l.starts_with("churn-")).collect();
    heard.sort();
    let mut said: Vec<&String> = sent.iter().collect();
    said.sort();
    assert_eq!(heard, said);
    drop(quiet);
    wait_until("the room is empty", || room.is_empty());
    let stopped = server.stop(Duration::from_secs(1));
    assert_eq!(stopped.killed, 0);
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_holds_nobody_back() {
    let (server, room) = chat::start(TcpListener::bind("127.0.0.1:0").unwrap(), 100).unwrap();
    let addr = server.local_addr();
    // Never reads a byte.
    let deaf = TcpStream::connect(addr).unwrap();
    let (talker, listener) = (
        TcpStream::connect(addr).unwrap(),
        TcpStream::connect(addr).unwrap(),
    );
    wait_until("all three joined", || room.len() == 3);
    // Lines long enough that the deaf one's socket buffers (megabytes on loopback) fill and
    // its outbox after them.
    let lines = 3 * chat::OUTBOX;
    let pad = "x".repeat(1000);
    let text = move |k: usize| format!("line {k} {pad}\n");
    let expect = text.clone();
    // The talker keeps at most 100 lines ahead of the listener: the listener is never too slow,
    // however busy the machine, while the deaf one falls behind without end.
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = read.clone();
    let reader = spawn(move || {
        let mut reader = BufReader::new(&listener);
        let mut line = String::new();
        for k in 0..lines {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, expect(k));
            progress.store(k + 1, std::sync::atomic::Ordering::SeqCst);
        }
        listener
    });
    let mut w = &talker;
    for k in 0..lines {
        while k >= read.load(std::sync::atomic::Ordering::SeqCst) + 100 {
            greenhub::sleep(Duration::from_millis(1)).unwrap();
        }
        w.write_all(text(k).as_bytes()).unwrap();
    }
    // The listener got every line in order while the deaf one was dropped.
    let _listener = reader.wait().unwrap();
    wait_until("the deaf one was dropped", || room.len() == 2);
    drop(deaf);
    let stopped = server.stop(Duration::from_secs(1));
    assert!(stopped.killed <= 2);
}

#[test]
fn an_endless_line_arrives_cut_and_costs_a_bounded_buffer() {
    let (server, room) = chat::start(TcpListener::bind("127.0.0.1:0").unwrap(), 100).unwrap();
    let addr = server.local_addr();
    let (talker, listener) = (
        TcpStream::connect(addr).unwrap(),
        TcpStream::connect(addr).unwrap(),
    );
    wait_until("both joined", || room.len() == 2);
    let reader = spawn(move || {
        let mut reader = BufReader::new(&listener);
        let mut line = String::new();
        let mut pieces = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(line.len() <= chat::MAX_LINE, "{}", line.len());
            if line.starts_with("end") {
                return pieces;
            }
            pieces += 1;
        }
    });
    let mut w = &talker;
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        w.write_all(&chunk).unwrap();
    }
    w.write_all(b"\nend\n").unwrap();
    let pieces = reader.wait().unwrap();
    assert!(pieces >= 16 * 64 * 1024 / chat::MAX_LINE, "{pieces}");
    drop(talker);
    let stopped = server.stop(Duration::from_secs(1));
    assert!(stopped.killed <= 1);
}
