//! A program under a supervisor: listening sockets handed over in the `LISTEN_FDS`
//! convention (taken, checked, refused with a clear error when they are not what they
//! claim), and the `sd_notify` messages it sends (ready, status, a heartbeat that carries the
//! blocked-worker state and registered fields, and stops when every worker is stuck).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::is_child;

/// Runs this test binary as child `name` with `fd` (if any) at descriptor 3, `LISTEN_PID`
/// set to the child's own pid by a shell that then execs it, and `envs`.
fn spawn_handed(name: &str, fd: Option<RawFd>, envs: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("GREENHUB_TEST_CHILD", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env("LISTEN_FDS", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if let Some(fd) = fd {
        // SAFETY: dup2 and fcntl are async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().unwrap()
}

/// Waits for `child` (killing it after 60 s) and returns its outcome and output.
fn finish(mut child: Child) -> (bool, String) {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_handed_listener_is_served_and_named() {
    if is_child("a_handed_listener_is_served_and_named") {
        let handed = greenhub::net::take_inherited().unwrap();
        assert_eq!(handed.len(), 1);
        assert_eq!(handed[0].name(), "web");
        assert_eq!(handed[0].raw_fd(), 3);
        assert!(
            greenhub::net::take_inherited().unwrap().is_empty(),
            "taken once"
        );
        let listener = handed
            .into_iter()
            .next()
            .unwrap()
            .into_tcp_listener()
            .unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(format!("served by {}", std::process::id()).as_bytes())
            .unwrap();
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let child = spawn_handed(
        "a_handed_listener_is_served_and_named",
        Some(listener.as_raw_fd()),
        &[("LISTEN_FDNAMES", "web")],
    );
    // The connection waits in the shared backlog until the child accepts it.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut said = String::new();
    conn.read_to_string(&mut said).unwrap();
    assert_eq!(said, format!("served by {}", child.id()));
    let (ok, out) = finish(child);
    assert!(ok, "{out}");
}

#[test]
fn handed_descriptors_that_lie_get_clear_errors() {
    if is_child("handed_descriptors_that_lie_get_clear_errors") {
        let want = std::env::var("WANT").unwrap();
        match greenhub::net::take_inherited() {
            Ok(handed) => {
                let one = handed.into_iter().next().expect("one descriptor");
                let e = one.into_tcp_listener().unwrap_err();
                println!("refused: {e}");
            }
            Err(e) => println!("refused: {e}"),
        }
        // The fallback binds when nothing usable was handed... unless what was handed is
        // refused: then the error says why.
        if want == "fallback" {
            let l = greenhub::net::listen_or_inherit("127.0.0.1:0");
            println!("fallback: {:?}", l.map(|l| l.local_addr().unwrap().ip()));
        }
        return;
    }
    let name = "handed_descriptors_that_lie_get_clear_errors";
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ok, out) = finish(spawn_handed(
        name,
        Some(udp.as_raw_fd()),
        &[("WANT", "udp")],
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("refused: descriptor 3 (\"unknown\") is not a listening TCP socket"),
        "{out}"
    );
    let unlistened = std::net::TcpStream::connect(
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
    )
    .unwrap();
    let (ok, out) = finish(spawn_handed(
        name,
        Some(unlistened.as_raw_fd()),
        &[("WANT", "stream")],
    ));
    assert!(ok, "{out}");
    assert!(out.contains("a socket that does not listen"), "{out}");
    let file = std::fs::File::open("/dev/null").unwrap();
    let (ok, out) = finish(spawn_handed(
        name,
        Some(file.as_raw_fd()),
        &[("WANT", "file")],
    ));
    assert!(ok, "{out}");
    assert!(out.contains("not a socket"), "{out}");
    // Announced but not open: descriptor 3 is closed in the child (nothing is put there,
    // and the test harness's own descriptors are close-on-exec).
    let (ok, out) = finish(spawn_handed(name, None, &[("WANT", "closed")]));
    assert!(ok, "{out}");
    assert!(
        out.contains("refused: descriptor 3") && out.contains("is not open")
            || out.contains("not a socket"),
        "{out}"
    );
    let (ok, out) = finish(spawn_handed(
        name,
        None,
        &[("WANT", "names"), ("LISTEN_FDNAMES", "a:b:c")],
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("LISTEN_FDNAMES=\"a:b:c\" is not valid"),
        "{out}"
    );
    let (ok, out) = finish(spawn_handed(
        name,
        None,
        &[("WANT", "fallback"), ("LISTEN_FDNAMES", "x:y")],
    ));
    assert!(ok, "{out}");
    assert!(out.contains("fallback: Err(Malformed"), "{out}");
}

#[test]
fn a_process_not_named_by_listen_pid_takes_nothing() {
    // This test process is not the one LISTEN_PID names (it names no process at all here).
    assert!(greenhub::net::take_inherited().unwrap().is_empty());
    let l = greenhub::net::listen_or_inherit("127.0.0.1:0").unwrap();
    assert!(l.local_addr().unwrap().ip().is_loopback());
}

/// Receives one datagram within `limit`.
fn receive(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn served() -> u64 {
    7
}

#[test]
fn ready_and_the_heartbeat_reach_the_supervisor_and_say_when_a_worker_is_stuck() {
    if is_child("ready_and_the_heartbeat_reach_the_supervisor_and_say_when_a_worker_is_stuck") {
        greenhub::notify::heartbeat_field("SERVED", served).unwrap();
        assert!(greenhub::notify::status("warming\nup").unwrap());
        assert!(greenhub::notify::ready().unwrap());
        assert!(matches!(
            greenhub::notify::send("not a line"),
            Err(greenhub::notify::NotifyError::Malformed(_))
        ));
        // Block a worker again and again (the supervisor kills this child when it has seen
        // the report in a heartbeat).
        loop {
            greenhub::spawn(|| std::thread::sleep(Duration::from_millis(400)))
                .wait()
                .unwrap();
        }
    }
    let dir = tempfile_dir();
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let name = "ready_and_the_heartbeat_reach_the_supervisor_and_say_when_a_worker_is_stuck";
    let mut child = spawn_plain(
        name,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "100000"),
            ("GREENHUB_MAX_BLOCKING_MS", "50"),
            ("GREENHUB_WORKERS", "2"),
        ],
    );
    let status = receive(&sock, Duration::from_secs(60)).expect("a status");
    assert_eq!(status, "STATUS=warming up");
    let ready = receive(&sock, Duration::from_secs(60)).expect("ready");
    assert_eq!(field(&ready, "READY"), Some("1"));
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(child.id().to_string().as_str())
    );
    // The first beat goes with READY=1: the supervisor watches from the moment it is ready.
    assert_eq!(field(&ready, "WATCHDOG"), Some("1"), "{ready}");
    let mut beats = 0;
    let t0 = Instant::now();
    loop {
        let beat = receive(&sock, Duration::from_secs(60)).expect("a heartbeat");
        assert_eq!(field(&beat, "WATCHDOG"), Some("1"), "{beat}");
        assert_eq!(field(&beat, "X_GREENHUB_SERVED"), Some("7"), "{beat}");
        beats += 1;
        let blocked: u64 = field(&beat, "X_GREENHUB_BLOCKED_MS")
            .unwrap()
            .parse()
            .unwrap();
        if blocked > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no heartbeat said a worker is stuck in {beats} beats"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_heartbeat_stops_when_every_worker_is_stuck() {
    if is_child("a_heartbeat_stops_when_every_worker_is_stuck") {
        assert!(greenhub::notify::ready().unwrap());
        greenhub::sleep(Duration::from_millis(300)).unwrap();
        // Both workers blocked for good: no green thread runs, the heartbeat included.
        for _ in 0..2 {
            greenhub::spawn(|| std::thread::sleep(Duration::from_secs(3600)));
        }
        std::thread::sleep(Duration::from_secs(3600));
    }
    let dir = tempfile_dir();
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut child = spawn_plain(
        "a_heartbeat_stops_when_every_worker_is_stuck",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "40000"),
            ("GREENHUB_WORKERS", "2"),
        ],
    );
    let ready = receive(&sock, Duration::from_secs(60)).expect("ready");
    assert_eq!(field(&ready, "READY"), Some("1"));
    // Beats come, then stop: a silence of ten periods and more is seen.
    let mut beats = 0;
    while let Some(beat) = receive(&sock, Duration::from_secs(2)) {
        assert_eq!(field(&beat, "WATCHDOG"), Some("1"));
        beats += 1;
        assert!(beats < 100_000, "the heartbeat never stopped");
    }
    assert!(beats > 0);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_notify_socket_is_an_error_not_a_crash() {
    if is_child("a_bad_notify_socket_is_an_error_not_a_crash") {
        println!(
            "ready: {:?}",
            greenhub::notify::ready().map_err(|e| e.to_string())
        );
        return;
    }
    let (ok, out) = finish(spawn_plain(
        "a_bad_notify_socket_is_an_error_not_a_crash",
        &[("NOTIFY_SOCKET", "relative/path")],
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("NOTIFY_SOCKET=\\\"relative/path\\\" is not a socket address"),
        "{out}"
    );
    // Nobody listens at the path: the send fails and says so.
    let (ok, out) = finish(spawn_plain(
        "a_bad_notify_socket_is_an_error_not_a_crash",
        &[("NOTIFY_SOCKET", "/nonexistent/greenhub/notify")],
    ));
    assert!(ok, "{out}");
    assert!(out.contains("cannot notify the supervisor"), "{out}");
}

fn spawn_plain(name: &str, envs: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("GREENHUB_TEST_CHILD", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn tempfile_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "greenhub-supervised-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
