//! The examples run as a user would run them: the demo (the README's first command) briefly,
//! checking its own work through green threads, tpool and the database pool; the echo server,
//! talked to from plain sockets.

use std::process::Command;

#[test]
fn the_demo_runs_and_loses_no_job_and_no_confirmed_write() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--duration", "2", "--sessions", "300"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("database: SQLite at"), "{stdout}");
    // At least one progress line with jobs done and database writes made.
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(!progress.is_empty(), "{stdout}");
    let last = progress.last().unwrap();
    let field = |name: &str| -> u64 {
        last.split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name:?} in {last:?}"))
    };
    assert!(field("jobs ") > 0, "{last}");
    assert!(last.contains("latency p50"), "{last}");
    assert!(field("db writes ") > 0, "{last}");
    // The run info tree shows the idle sessions by name.
    assert!(
        stdout.contains("\"session-0\" waiting on sleep"),
        "{stdout}"
    );
    assert!(stdout.contains("writes confirmed: none lost"), "{stdout}");
    assert!(
        stdout.contains("jobs started") && !stdout.contains("jobs lost"),
        "{stdout}"
    );
}

#[test]
fn the_demo_says_how_to_watch_it_and_stops_cleanly_on_ctrl_c() {
    demo_stops_cleanly_on(libc::SIGINT, "SIGINT");
}

#[test]
fn the_demo_stops_cleanly_on_sigterm_and_leaves_nothing_behind() {
    demo_stops_cleanly_on(libc::SIGTERM, "SIGTERM");
}

/// Runs the demo, checks how it says to watch it, sends `signal`, and checks that it winds
/// down, checks its work and removes its attach socket and its database directory.
fn demo_stops_cleanly_on(signal: i32, name: &str) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--duration", "120", "--sessions", "300"])
        .env_remove("DATABASE_URL")
        .env_remove("GREENHUB_STATS_ADDR")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the demo");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    let mut stats_url = None;
    let mut database = None;
    // Up to the first progress line: the pid, the attach command and the stats address.
    while !head.lines().any(|l| l.starts_with("t=")) {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the demo ended early: {head}"
        );
        if let Some(rest) = line.strip_prefix("stats: http://") {
            stats_url = rest.split('/').next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("database: SQLite at ") {
            database = rest.split(' ').next().map(std::path::PathBuf::from);
        }
        head.push_str(&line);
    }
    let pid = child.id();
    assert!(
        head.contains(&format!("inspector -- attach {pid}")),
        "{head}"
    );
    // The stats endpoint answers on loopback.
    let addr = stats_url.unwrap_or_else(|| panic!("no stats line in {head}"));
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    assert!(metrics.contains("greenhub_dbpool_in_use"), "{metrics}");

    let database = database.unwrap_or_else(|| panic!("no database line in {head}"));
    let socket = greenhub::inspect::attach::socket_path(pid);
    assert!(database.exists() && socket.exists(), "{head}");

    // The signal: it stops starting jobs, lets the running ones end and checks its work.
    let started = std::time::Instant::now();
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "stopped long before its 120 s"
    );
    assert!(rest.contains(&format!("interrupted ({name})")), "{rest}");
    assert!(!socket.exists(), "the attach socket was left behind");
    assert!(
        !database.parent().unwrap().exists(),
        "the database directory was left behind"
    );
    assert!(rest.contains("writes confirmed: none lost"), "{rest}");
    assert!(!rest.contains("jobs lost"), "{rest}");
}

#[test]
fn the_echo_example_echoes_and_stops_on_time() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_echo"))
        .args(["--addr", "127.0.0.1:0", "--duration", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the echo example");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    for i in 0..20 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let msg = format!("line {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped after 2s"), "{rest}");
}

#[test]
fn the_echo_server_without_a_duration_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo"))
        .args(["--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the echo example");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("listening"), "{first}");
    let pid = child.id() as libc::pid_t;
    // SAFETY: sends SIGTERM to the child this test started.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?} {rest}");
    assert!(rest.contains("stopped on SIGTERM"), "{rest}");
}

#[test]
fn a_thread_limit_too_low_ends_the_classics_with_its_message() {
    for (bin, args) in [
        (
            env!("CARGO_BIN_EXE_pipeline"),
            &["--items", "100", "--workers", "20"][..],
        ),
        (
            env!("CARGO_BIN_EXE_crawler"),
            &["--pages", "50", "--pool", "20"][..],
        ),
    ] {
        let out = Command::new(bin)
            .args(args)
            .env("GREENHUB_MAX_THREADS", "1")
            .output()
            .expect("run the example");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} ran anyway");
        assert!(stderr.contains("limit of 1"), "{bin}: {stderr}");
        assert!(!stderr.contains("ThreadLimit {"), "{bin}: {stderr}");
    }
}

#[test]
fn bad_settings_stop_the_demo_at_start_with_their_message() {
    for (var, value, says) in [
        (
            "GREENHUB_TPOOL_THREADS",
            "abc",
            "GREENHUB_TPOOL_THREADS=\"abc\" is not a thread count",
        ),
        ("GREENHUB_MAX_THREADS", "10", "limit of 10"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_demo"))
            .args(["--duration", "5", "--sessions", "100"])
            .env_remove("DATABASE_URL")
            .env(var, value)
            .output()
            .expect("run the demo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} ran anyway");
        assert!(stderr.contains(says), "{var}={value}: {stderr}");
        assert!(
            !stderr.contains("ThreadLimit {") && !stderr.contains("InvalidEnv {"),
            "a Debug form reached the user: {stderr}"
        );
    }
}
