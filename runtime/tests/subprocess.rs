//! Child processes with green pipes and exits: many at once, large outputs both ways, a
//! deadline that kills, a child that ends before anyone waits, the snapshot's view, and no
//! zombie left by a dropped child.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use greenhub::subprocess::{Command, Stdio};
use greenhub::timeout::with_timeout;

/// Whether `pid` is still a process (a zombie counts).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn many_children_at_once_each_give_their_own_output() {
    let children: Vec<_> = (0..100)
        .map(|i| {
            greenhub::spawn(move || {
                let out = Command::new("sh")
                    .args(["-c", &format!("sleep 0.0$(({i} % 10)); echo child-{i}")])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                String::from_utf8(out.stdout).unwrap()
            })
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        assert_eq!(c.wait().unwrap(), format!("child-{i}\n"));
    }
}

#[test]
fn megabytes_both_ways_do_not_deadlock() {
    // `cat` writes as it reads: with pipe buffers of 64 KiB, writing all the input before
    // reading any output would deadlock. communicate does both at once.
    let input: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = input.clone();
    let t = greenhub::spawn(move || {
        let child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.communicate(&input).unwrap()
    });
    let out = t.wait().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected, "the bytes came back changed");
    // And large output on stderr at the same time as stdout.
    let t = greenhub::spawn(|| {
        Command::new("sh")
            .args([
                "-c",
                "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2; exit 3",
            ])
            .output()
            .unwrap()
    });
    let out = t.wait().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout.len(), 3_000_000);
    assert_eq!(out.stderr.len(), 2_000_000);
}

#[test]
fn a_deadline_kills_and_reaps_the_child() {
    let t = greenhub::spawn(|| {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let began = Instant::now();
        let r = with_timeout(Duration::from_millis(100), || cmd.output());
        (r.map(|o| o.status), began.elapsed())
    });
    let (r, took) = t.wait().unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(
        took < Duration::from_secs(25),
        "waited for the child: {took:?}"
    );
    // status() the same way, and the child is gone, not a zombie.
    let t = greenhub::spawn(|| {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        with_timeout(Duration::from_millis(50), || cmd.status())
    });
    assert_eq!(
        t.wait().unwrap().unwrap_err().kind(),
        std::io::ErrorKind::TimedOut
    );
    // A plain wait under a deadline returns, and the child goes on until killed.
    let t = greenhub::spawn(|| {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let waited = with_timeout(Duration::from_millis(50), || child.wait());
        assert_eq!(waited.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(exists(pid));
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
        pid
    });
    let pid = t.wait().unwrap();
    eventually("the killed child is reaped", || !exists(pid));
}

#[test]
fn a_child_that_ended_before_anyone_waits_is_reported_and_reaped() {
    let t = greenhub::spawn(|| {
        let mut child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = child.id();
        greenhub::sleep(Duration::from_millis(200)).unwrap();
        let status = child.wait().unwrap();
        // Waiting again answers the same.
        assert_eq!(child.wait().unwrap(), status);
        (status.code(), pid)
    });
    let (code, pid) = t.wait().unwrap();
    assert_eq!(code, Some(7));
    assert!(!exists(pid), "reaped: no zombie");
}

#[test]
fn a_waiting_thread_shows_the_process_it_waits_on() {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = greenhub::thread::Builder::new()
        .name("child-waiter")
        .spawn(move || {
            let status = child.wait();
            tx.send(()).unwrap();
            status.map(|s| s.success())
        })
        .unwrap();
    let want = format!("waiting on process \"pid {pid}: sleep\"");
    eventually("the wait shows in the snapshot", || {
        greenhub::inspect::snapshot()
            .threads
            .iter()
            .any(|t| t.id == waiter.id() && t.describe().contains(&want))
    });
    // SAFETY: kill on the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(!waiter.wait().unwrap().unwrap(), "killed: not a success");
}

#[test]
fn a_killed_waiter_ends_and_a_dropped_child_leaves_no_zombie() {
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = greenhub::spawn(move || {
        let mut child = Command::new("sleep").arg("0.3").spawn().unwrap();
        tx.send(child.id()).unwrap();
        child.wait().map(|s| s.success())
    });
    let pid = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    waiter.kill();
    assert!(waiter.wait().is_err(), "killed while waiting");
    // Its child, dropped while running, is reaped when it ends.
    eventually("the dropped child is reaped", || !exists(pid));
}

#[test]
fn pipes_are_green_and_work_from_plain_os_threads_too() {
    // From a plain OS thread: the same calls block that thread.
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through cat\n").unwrap();
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "through cat\n");
    assert!(child.wait().unwrap().success());
    // A program that cannot be found is an error, not a panic.
    let e = Command::new("/nonexistent/greenhub-test")
        .spawn()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
