//! Cooperative TCP on loopback: many connections at once, deadlines, kills, peers that
//! vanish, half-closed connections, the registry's view of descriptor waits, trampoline.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use greenhub::ext::{Interest, WaitOn};
use greenhub::inspect::snapshot;
use greenhub::net::{TcpListener, TcpStream};
use greenhub::{net::TrampolineError, spawn, thread::JoinError, with_timeout};

/// An echo server: one green thread per connection; returns its address.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < give_up, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn many_clients_get_every_message_back_exactly_once() {
    let addr = echo_server();
    for round in 0..3 {
        let clients: Vec<_> = (0..200u32)
            .map(|c| {
                spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut got = Vec::new();
                    for m in 0..50u32 {
                        let msg = (c * 1000 + m).to_be_bytes();
                        s.write_all(&msg).unwrap();
                        let mut back = [0u8; 4];
                        s.read_exact(&mut back).unwrap();
                        got.push(u32::from_be_bytes(back));
                    }
                    got
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for (c, t) in clients.into_iter().enumerate() {
            let got = t.wait().unwrap();
            let want: Vec<u32> = (0..50).map(|m| c as u32 * 1000 + m).collect();
            assert_eq!(got, want, "round {round}: client {c} got the wrong echoes");
            for v in got {
                assert!(seen.insert(v));
            }
        }
        assert_eq!(seen.len(), 200 * 50);
    }
}

/// Connections opened while others close get descriptor numbers just freed; every one of
/// them must still be woken when its data arrives. The ordering that guarantees it is tested
/// exactly in `fd.rs`; this is the load, with a read timeout so that a lost wake-up fails the
/// test instead of hanging it.
#[test]
fn descriptors_reused_at_once_still_wake_their_readers() {
    let addr = echo_server();
    let workers: Vec<_> = (0..200u32)
        .map(|w| {
            spawn(move || {
                for i in 0..30u32 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    // A lost wake-up shows as this timeout instead of a hung test.
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let msg = (w * 1000 + i).to_be_bytes();
                    s.write_all(&msg).unwrap();
                    let mut back = [0u8; 4];
                    if let Err(e) = s.read_exact(&mut back) {
                        panic!("worker {w}, connection {i}: no echo ({e})");
                    }
                    assert_eq!(back, msg);
                }
                30
            })
        })
        .collect();
    let done: u32 = workers.into_iter().map(|t| t.wait().unwrap()).sum();
    assert_eq!(done, 200 * 30);
}

/// A read that returned less than it asked for lets the next read wait for readiness
/// without asking the kernel first. Whatever arrives afterwards must still reach it: while
/// the reader is between reads (the event comes before it waits), while it waits, in pieces
/// larger than its buffer (a full read leaves data queued and must not count as drained),
/// the end of the stream arriving with the last data, and through many connections at once.
/// Piece `i` of a connection in the test below: 1 to 300 bytes, each its own pattern.
fn piece(i: u32) -> Vec<u8> {
    let len = (i * 37 % 300 + 1) as usize;
    (0..len).map(|k| (i as usize + k) as u8).collect()
}

#[test]
fn reads_after_a_short_read_see_everything_that_arrives() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const CONNS: u32 = 40;
    const PIECES: u32 = 150;
    // The writer of each connection: a piece of 1 to 300 bytes each time its reader asks,
    // then one more piece at once or after a pause, so the reader's next read finds the data
    // already there, arriving while it waits, or arriving as it starts to wait.
    spawn(move || {
        for _ in 0..CONNS {
            let (mut conn, _) = listener.accept().unwrap();
            spawn(move || {
                let mut ask = [0u8; 4];
                loop {
                    if conn.read_exact(&mut ask).is_err() {
                        return;
                    }
                    let i = u32::from_be_bytes(ask);
                    if i == u32::MAX {
                        // The last words and the end of the stream arrive together.
                        conn.write_all(b"bye").unwrap();
                        return;
                    }
                    let piece = piece(i);
                    conn.write_all(&piece).unwrap();
                    match i % 3 {
                        0 => {}
                        1 => greenhub::yield_now(),
                        _ => greenhub::sleep(Duration::from_millis(1)).unwrap(),
                    }
                    conn.write_all(&piece).unwrap();
                }
            });
        }
    });
    let readers: Vec<_> = (0..CONNS)
        .map(|c| {
            spawn(move || {
                // No read timeout: a read that waits on past its data would end at its
                // deadline and then find the data, hiding the lost wake-up.
                let mut s = TcpStream::connect(addr).unwrap();
                let mut buf = [0u8; 64];
                let mut bytes = 0usize;
                for i in 0..PIECES {
                    s.write_all(&i.to_be_bytes()).unwrap();
                    let want = piece(i);
                    let len = want.len();
                    let mut got = Vec::with_capacity(2 * len);
                    while got.len() < 2 * len {
                        let room = buf.len().min(2 * len - got.len());
                        match s.read(&mut buf[..room]) {
                            Ok(0) => panic!("connection {c}, piece {i}: the writer hung up"),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => panic!("connection {c}, piece {i}: {e}"),
                        }
                        if i % 4 == 0 {
                            // Between reads: the second piece may arrive and be reported now.
                            greenhub::yield_now();
                        }
                    }
                    assert_eq!(&got[..len], &want[..], "connection {c}, piece {i}");
                    assert_eq!(&got[len..], &want[..], "connection {c}, piece {i}");
                    bytes += got.len();
                }
                s.write_all(&u32::MAX.to_be_bytes()).unwrap();
                let mut last = Vec::new();
                s.read_to_end(&mut last)
                    .unwrap_or_else(|e| panic!("connection {c}: no end of stream ({e})"));
                assert_eq!(last, b"bye", "connection {c}");
                bytes
            })
        })
        .collect();
    let want: usize = (0..PIECES).map(|i| 2 * piece(i).len()).sum();
    // A reader whose wake-up was lost waits far longer than this.
    let done = with_timeout(Duration::from_secs(120), || {
        readers.into_iter().map(|r| r.wait()).collect::<Vec<_>>()
    });
    for (c, r) in done.into_iter().enumerate() {
        match r {
            Ok(bytes) => assert_eq!(bytes, want, "connection {c}"),
            Err(e) => panic!("connection {c}: {e} (a wake-up lost, if it timed out)"),
        }
    }
}

/// After a short read, the next read's wait is a wait like any other: shown in the
/// registry, ended by its deadline (and the read after it still gets what comes later), and
/// ended by a kill.
#[test]
fn the_wait_after_a_short_read_is_recorded_bounded_and_killable() {
    use greenhub::Event;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let go_on = Arc::new(Event::<()>::new());
    let last_read = Arc::new(AtomicBool::new(false));
    let peer_go_on = go_on.clone();
    let _peer = spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"hello").unwrap();
        // The reader's second read times out; then one more message, and silence.
        if peer_go_on.wait().is_ok() {
            conn.write_all(b"again").unwrap();
        }
        greenhub::sleep(Duration::from_secs(30)).ok();
        drop(conn);
    });
    let last = last_read.clone();
    let reader = spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).unwrap(), 5, "the first read is short");
        let t0 = Instant::now();
        let kind =
            with_timeout(Duration::from_millis(40), || s.read(&mut buf)).map_err(|e| e.kind());
        assert_eq!(kind, Err(ErrorKind::TimedOut), "nothing was sent");
        assert!(t0.elapsed() >= Duration::from_millis(40), "ended early");
        go_on.set(()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"again");
        // Short again: this read waits until it is killed.
        last.store(true, Ordering::SeqCst);
        let r = s.read(&mut buf);
        panic!("the peer is silent, yet the read ended: {r:?}");
    });
    let id = reader.id();
    wait_until("the reader waits on its socket after a short read", || {
        last_read.load(Ordering::SeqCst)
            && snapshot().descriptors.iter().any(|d| d.owner == Some(id))
            && snapshot().threads.iter().any(|t| {
                t.id == id
                    && matches!(
                        t.waiting_on,
                        Some(WaitOn::Fd {
                            interest: Interest::Read,
                            ..
                        })
                    )
            })
    });
    reader.kill();
    assert!(matches!(reader.wait(), Err(JoinError::Killed { .. })));
    assert!(!snapshot().descriptors.iter().any(|d| d.owner == Some(id)));
}

#[test]
fn a_read_waits_in_the_registry_and_ends_at_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        greenhub::sleep(Duration::from_secs(5)).ok();
        drop(conn);
    });
    let reader = spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let fd = s.as_raw_fd();
        let began = Instant::now();
        let r = with_timeout(Duration::from_millis(300), || {
            let mut buf = [0u8; 8];
            s.read(&mut buf)
        });
        (fd, r, began.elapsed())
    });
    // While it waits: the thread waits on the descriptor, which the registry lists.
    let id = reader.id();
    wait_until("the reader waits on its socket", || {
        snapshot().threads.iter().any(|t| {
            t.id == id
                && matches!(
                    t.waiting_on,
                    Some(WaitOn::Fd {
                        interest: Interest::Read,
                        ..
                    })
                )
        })
    });
    let snap = snapshot();
    let d = snap
        .descriptors
        .iter()
        .find(|d| d.owner == Some(id))
        .expect("the descriptor wait is listed");
    assert_eq!(d.interest, Interest::Read);
    let (fd, r, took) = reader.wait().unwrap();
    assert_eq!(d.fd, fd);
    // The read itself ends with `TimedOut`.
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::TimedOut),
        other => panic!("expected a timed-out read, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // The wait is gone from the registry.
    assert!(!snapshot().descriptors.iter().any(|d| d.owner == Some(id)));
}

#[test]
fn a_socket_read_timeout_bounds_each_read() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        greenhub::sleep(Duration::from_secs(5)).ok();
        drop(conn);
    });
    let r = spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(s.set_read_timeout(Some(Duration::ZERO)).is_err());
        let mut buf = [0u8; 1];
        s.read(&mut buf).map_err(|e| e.kind())
    })
    .wait()
    .unwrap();
    assert_eq!(r, Err(ErrorKind::TimedOut));
}

/// A socket keeps one deadline alarm for all its reads: each read must still end at its own
/// deadline, whether it is shorter than an earlier read's (whose alarm is still pending) or
/// longer (an earlier, shorter alarm comes up during it and must neither end it early nor be
/// lost), after any number of reads answered in time.
#[test]
fn each_read_on_one_socket_ends_at_its_own_deadline() {
    let addr = echo_server();
    let r = spawn(move || {
        for round in 0..4u64 {
            let mut s = TcpStream::connect(addr).unwrap();
            let answered = |s: &mut TcpStream, i: u32, timeout: Duration| {
                s.set_read_timeout(Some(timeout)).unwrap();
                s.write_all(&i.to_be_bytes()).unwrap();
                let mut back = [0u8; 4];
                let mut got = 0;
                while got < back.len() {
                    let t0 = Instant::now();
                    match s.read(&mut back[got..]) {
                        Ok(0) => panic!("round {round}: the echo server hung up"),
                        Ok(n) => got += n,
                        // A busy machine may answer after a short deadline: a read may time
                        // out then, but never before its deadline.
                        Err(e) if e.kind() == ErrorKind::TimedOut => {
                            assert!(t0.elapsed() >= timeout, "round {round}: ended early");
                        }
                        Err(e) => panic!("round {round}: {e}"),
                    }
                }
                assert_eq!(u32::from_be_bytes(back), i, "round {round}");
            };
            let silent = |s: &mut TcpStream, timeout: Duration| {
                s.set_read_timeout(Some(timeout)).unwrap();
                let t0 = Instant::now();
                let mut byte = [0u8; 1];
                let kind = s.read(&mut byte).map(|_| ()).map_err(|e| e.kind());
                let took = t0.elapsed();
                assert_eq!(kind, Err(ErrorKind::TimedOut), "round {round}, {timeout:?}");
                assert!(took >= timeout, "round {round}: ended early, {took:?}");
            };
            let short = Duration::from_millis(20);
            let long = Duration::from_secs(600);
            // Many reads answered long before their deadlines, long and short in turn.
            for i in 0..500u32 {
                answered(&mut s, i, if i % 2 == 0 { long } else { short });
            }
            // Longer than the short alarm still pending from the last read.
            silent(&mut s, Duration::from_millis(30 + 20 * round));
            answered(&mut s, 1, short);
            silent(&mut s, Duration::from_millis(150 + 50 * round));
            // Shorter than the long alarm still pending from the last read.
            answered(&mut s, 2, long);
            silent(&mut s, Duration::from_millis(30));
        }
    });
    // A read whose alarm was lost (or left for the 600 s one) would wait far longer than this.
    let done = with_timeout(Duration::from_secs(120), || r.wait());
    assert!(done.is_ok(), "{done:?}");
}

#[test]
fn a_killed_reader_unwinds_and_leaves_no_descriptor_wait() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        greenhub::sleep(Duration::from_secs(5)).ok();
        drop(conn);
    });
    let reader = spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut buf = [0u8; 8];
        let _ = s.read(&mut buf);
    });
    let id = reader.id();
    wait_until("the reader waits", || {
        snapshot().descriptors.iter().any(|d| d.owner == Some(id))
    });
    reader.kill();
    assert!(matches!(reader.wait(), Err(JoinError::Killed { .. })));
    assert!(!snapshot().descriptors.iter().any(|d| d.owner == Some(id)));
}

#[test]
fn a_peer_that_vanishes_mid_message_ends_the_read() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 10];
        conn.read_exact(&mut buf).map_err(|e| e.kind())
    });
    spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"half").unwrap();
        // Gone before the other six bytes.
    })
    .wait()
    .unwrap();
    assert_eq!(server.wait().unwrap(), Err(ErrorKind::UnexpectedEof));
}

#[test]
fn a_half_closed_connection_still_carries_the_reply() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = String::new();
        conn.read_to_string(&mut request).unwrap(); // to the client's half-close
        conn.write_all(request.to_uppercase().as_bytes()).unwrap();
    });
    let reply = spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"shout this").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    })
    .wait()
    .unwrap();
    server.wait().unwrap();
    assert_eq!(reply, "SHOUT THIS");
}

#[test]
fn connecting_resolves_names_off_the_hub_and_reports_refusals() {
    let addr = echo_server();
    let port = addr.port();
    let by_name = spawn(move || {
        let mut s = TcpStream::connect(format!("localhost:{port}")).unwrap();
        s.write_all(b"hi").unwrap();
        let mut back = [0u8; 2];
        s.read_exact(&mut back).unwrap();
        back
    });
    assert_eq!(&by_name.wait().unwrap(), b"hi");
    // Nothing listens on a port just freed.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = spawn(move || TcpStream::connect(free).map(drop).map_err(|e| e.kind()));
    assert_eq!(refused.wait().unwrap(), Err(ErrorKind::ConnectionRefused));
    let bad = spawn(|| {
        TcpStream::connect("no-such-host.invalid:80")
            .map(drop)
            .is_err()
    });
    assert!(bad.wait().unwrap());
}

#[test]
fn sockets_also_work_from_plain_os_threads() {
    let addr = echo_server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"from an OS thread").unwrap();
    let mut back = [0u8; 17];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"from an OS thread");
    s.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    let mut more = [0u8; 1];
    assert_eq!(s.read(&mut more).unwrap_err().kind(), ErrorKind::TimedOut);
}

#[test]
fn trampoline_waits_for_any_descriptor_with_a_timeout() {
    use std::os::unix::net::UnixStream;
    let (a, mut b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let quiet = spawn(move || {
        greenhub::net::trampoline(fd, Interest::Read, Some(Duration::from_millis(50)))
    });
    assert!(matches!(
        quiet.wait().unwrap(),
        Err(TrampolineError::TimedOut)
    ));
    // The descriptor keeps its blocking mode.
    // SAFETY: reads the flags of a descriptor this test owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert_eq!(flags & libc::O_NONBLOCK, 0);
    let ready = spawn(move || greenhub::net::trampoline(fd, Interest::Read, None));
    std::thread::sleep(Duration::from_millis(20));
    b.write_all(b"x").unwrap();
    assert!(ready.wait().unwrap().is_ok());
    // Writable at once; a closed descriptor is an error, not a hang.
    assert!(
        spawn(move || greenhub::net::trampoline(fd, Interest::Write, None))
            .wait()
            .unwrap()
            .is_ok()
    );
    drop(a);
    assert!(matches!(
        spawn(move || greenhub::net::trampoline(fd, Interest::Read, None))
            .wait()
            .unwrap(),
        Err(TrampolineError::Io(_))
    ));
}

#[test]
fn udp_datagrams_and_receive_deadlines() {
    use greenhub::net::UdpSocket;
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    // A datagram echo server.
    spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            server.send_to(&buf[..n], from).unwrap();
        }
    });
    let replies = spawn(move || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        for i in 0..100u32 {
            c.send(&i.to_be_bytes()).unwrap();
            let mut buf = [0u8; 4];
            assert_eq!(c.recv(&mut buf).unwrap(), 4);
            got.push(u32::from_be_bytes(buf));
        }
        got
    });
    assert_eq!(replies.wait().unwrap(), (0..100).collect::<Vec<_>>());
    let silent = spawn(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 4];
        with_timeout(Duration::from_millis(30), || {
            s.recv_from(&mut buf).map(drop)
        })
    });
    let silence = silent.wait().unwrap().unwrap_err();
    assert_eq!(silence.kind(), ErrorKind::TimedOut, "{silence:?}");
}

#[test]
fn unix_sockets_carry_a_conversation_both_ways() {
    use greenhub::net::{UnixListener, UnixStream};
    let dir = std::env::temp_dir().join(format!("greenhub-unix-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = spawn(move || {
        let conn = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line).unwrap();
        (&conn).write_all(line.to_uppercase().as_bytes()).unwrap();
    });
    let p = path.clone();
    let reply = spawn(move || {
        let s = UnixStream::connect(&p).unwrap();
        (&s).write_all(b"unix\n").unwrap();
        let mut reply = String::new();
        (&s).read_to_string(&mut reply).unwrap();
        reply
    });
    server.wait().unwrap();
    assert_eq!(reply.wait().unwrap(), "UNIX\n");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn listeners_share_a_port_only_when_each_asks_for_it() {
    use greenhub::net::Listen;
    let a = Listen::new().reuse_port(true).bind("127.0.0.1:0").unwrap();
    let addr = a.local_addr().unwrap();
    let b = Listen::new().reuse_port(true).bind(addr).unwrap();
    let err = Listen::new().bind(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    // Connections reach both listeners; each accepts what the kernel gave it.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let by: Vec<_> = [a, b]
        .into_iter()
        .map(|l| {
            let accepted = accepted.clone();
            spawn(move || {
                let mut mine = 0;
                while let Ok((conn, _)) = with_timeout(Duration::from_millis(500), || l.accept()) {
                    drop(conn);
                    mine += 1;
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                mine
            })
        })
        .collect();
    let clients: Vec<_> = (0..64)
        .map(|_| spawn(move || TcpStream::connect(addr).map(drop)))
        .collect();
    for c in clients {
        c.wait().unwrap().unwrap();
    }
    let counts: Vec<usize> = by.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        64,
        "every connection accepted once"
    );
    assert!(
        counts.iter().all(|&n| n > 0),
        "the kernel spread them: {counts:?}"
    );
}

#[test]
fn reuse_addr_lets_a_restarted_server_bind_beside_its_old_connections() {
    use greenhub::net::Listen;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The old server stops listening, but a connection it accepted lives on.
    let old = spawn(move || {
        let client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (client, accepted)
    });
    let (mut client, accepted) = old.wait().unwrap();
    let refused = Listen::new().reuse_addr(false).bind(addr).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::AddrInUse);
    let again = Listen::new().backlog(16).bind(addr).unwrap();
    assert_eq!(again.local_addr().unwrap(), addr);
    // Both work: the old connection, and the new listener.
    let talk = spawn(move || {
        client.write_all(b"old").unwrap();
        let mut got = [0u8; 3];
        (&accepted).read_exact(&mut got).unwrap();
        let fresh = TcpStream::connect(addr).unwrap();
        let (_conn, peer) = again.accept().unwrap();
        (got, peer == fresh.local_addr().unwrap())
    });
    assert_eq!(talk.wait().unwrap(), (*b"old", true));
}

/// A proxy: a green thread per client that waits on two sockets in turn (the client's and its
/// own connection to a backend), the shape whose green threads once hopped between workers at
/// every step. Under load, with half the sessions killed mid-conversation and connections
/// opened and dropped meanwhile, the surviving sessions get every echo back in order, a killed
/// session's client sees its connection end, and no killed session leaves a descriptor wait.
#[test]
fn a_proxy_under_kills_and_churn_mixes_up_and_loses_nothing() {
    const CLIENTS: u32 = 200;
    const MESSAGES: u32 = 40;
    const KILLED_AFTER: u32 = 10;
    let backend = echo_server();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap();
    spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            spawn(move || {
                // The client says who it is; the session answers with its own id.
                let mut who = [0u8; 4];
                if conn.read_exact(&mut who).is_err() {
                    return;
                }
                let id = greenhub::current().unwrap().id();
                let mut upstream = TcpStream::connect(backend).unwrap();
                if conn.write_all(&id.to_be_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4];
                while conn.read_exact(&mut buf).is_ok() {
                    upstream.write_all(&buf).unwrap();
                    upstream.read_exact(&mut buf).unwrap();
                    if conn.write_all(&buf).is_err() {
                        return;
                    }
                }
            });
        }
    });
    // Connections opened and dropped, some before saying who they are, some after.
    let churn: Vec<_> = (0..50u32)
        .map(|k| {
            spawn(move || {
                for i in 0..10u32 {
                    let mut s = TcpStream::connect(proxy).unwrap();
                    if (k + i) % 2 == 0 {
                        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
                    }
                }
            })
        })
        .collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            spawn(move || {
                let mut s = TcpStream::connect(proxy).unwrap();
                // A lost wake-up shows as this timeout instead of a hung test.
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(&c.to_be_bytes()).unwrap();
                let mut session = [0u8; 8];
                s.read_exact(&mut session).unwrap();
                let session = u64::from_be_bytes(session);
                let victim = c % 2 == 1;
                let mut got = Vec::new();
                for m in 0..MESSAGES {
                    if victim && m == KILLED_AFTER {
                        assert!(
                            greenhub::thread::kill(session),
                            "session {session} is alive"
                        );
                        let mut rest = [0u8; 4];
                        let end = s.read(&mut rest);
                        assert!(
                            matches!(end, Ok(0)) || end.is_err(),
                            "client {c}: the killed session's connection goes on: {end:?}"
                        );
                        return (got, Some(session));
                    }
                    let msg = (c * 1000 + m).to_be_bytes();
                    s.write_all(&msg).unwrap();
                    let mut back = [0u8; 4];
                    s.read_exact(&mut back).unwrap();
                    got.push(u32::from_be_bytes(back));
                }
                (got, None)
            })
        })
        .collect();
    let mut killed = Vec::new();
    for (c, t) in clients.into_iter().enumerate() {
        let c = c as u32;
        let (got, session) = t.wait().unwrap();
        let sent = if c % 2 == 1 { KILLED_AFTER } else { MESSAGES };
        let want: Vec<u32> = (0..sent).map(|m| c * 1000 + m).collect();
        assert_eq!(got, want, "client {c} got the wrong echoes");
        killed.extend(session);
    }
    assert_eq!(killed.len(), (CLIENTS / 2) as usize);
    for t in churn {
        t.wait().unwrap();
    }
    wait_until("the killed sessions' descriptor waits are gone", || {
        let snap = snapshot();
        !snap
            .descriptors
            .iter()
            .any(|d| d.owner.is_some_and(|o| killed.contains(&o)))
    });
}
