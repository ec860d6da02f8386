//! The inspector facing what it cannot trust: texts from a target made to drive a terminal,
//! an attach directory others can enter, and fake servers that answer forever or one byte at
//! a time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use greenhub_inspector::tui::{App, render_text};
use greenhub_inspector::{Client, InspectError};

/// A name that would retitle the terminal, ring its bell and clear its screen.
const EVIL: &str = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}";

/// This process's private attach directory, set before the runtime starts.
fn own_dir() -> PathBuf {
    static ONCE: Once = Once::new();
    let dir = std::env::temp_dir().join(format!("inspector-hostile-{}", std::process::id()));
    ONCE.call_once(|| {
        // SAFETY: every test of this binary calls `own_dir` before anything else and waits
        // here until it is done, so no other thread reads the environment meanwhile.
        unsafe { std::env::set_var("GREENHUB_ATTACH_DIR", &dir) };
        greenhub::spawn(|| ()).wait().unwrap();
    });
    dir
}

/// A private directory (0700) for fake servers.
fn private_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("inspector-fake-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Serves every connection in `dir` under `pid` with `answer`, on a thread of its own.
fn fake_server(dir: &Path, pid: u32, answer: fn(std::os::unix::net::UnixStream)) {
    let listener = UnixListener::bind(dir.join(format!("{pid}.sock"))).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || answer(conn));
        }
    });
}

fn read_request(conn: &std::os::unix::net::UnixStream) {
    let mut line = String::new();
    let _ = BufReader::new(conn).read_line(&mut line);
}

fn has_control(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn texts_from_a_target_never_reach_the_terminal_raw() {
    let dir = own_dir();
    let evil = greenhub::thread::Builder::new()
        .name(EVIL)
        .spawn(|| greenhub::sleep(Duration::from_secs(60)))
        .unwrap();
    let queue: greenhub::Queue<u32> = greenhub::Queue::unbounded().named(EVIL);
    let q = queue.clone();
    let waiter = greenhub::spawn(move || q.get());
    let pid = std::process::id().to_string();
    // `inspector dump`: the tree as text.
    let dump = Command::new(env!("CARGO_BIN_EXE_inspector"))
        .args(["dump", &pid])
        .env("GREENHUB_ATTACH_DIR", &dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(text.contains("evil\\u{1b}]0;pwned"), "{text}");
    assert!(!has_control(&text), "{text:?}");
    assert!(!text.contains('\u{202e}'), "{text:?}");
    // The TUI: every view's screen.
    let mut client = Client::connect_in(&dir, std::process::id()).unwrap();
    let mut app = App::new(std::process::id());
    app.update(client.snapshot().unwrap(), Instant::now());
    for key in ["", "t", "d", "p", "b"] {
        for c in key.chars() {
            app.key(greenhub_inspector::tui::Key::Char(c));
        }
        let screen = render_text(&app, 200, 60);
        assert!(!has_control(&screen), "{key}: {screen:?}");
    }
    evil.kill();
    queue.put(1).unwrap();
    waiter.wait().unwrap().unwrap();
}

#[test]
fn a_directory_others_can_enter_is_not_trusted() {
    let dir = private_dir("open");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    fake_server(&dir, 4_000_001, |conn| {
        read_request(&conn);
        let _ = (&conn).write_all(b"{\"schema_version\":2,\"pid\":4000001,\"process\":\"fake\",\"threads\":1,\"uptime_us\":1}\n");
    });
    match Client::connect_in(&dir, 4_000_001) {
        Err(InspectError::Untrusted { reason, .. }) => assert!(reason.contains("0700"), "{reason}"),
        other => panic!("expected the directory to be refused, got {other:?}"),
    }
    let list = Command::new(env!("CARGO_BIN_EXE_inspector"))
        .arg("list")
        .env("GREENHUB_ATTACH_DIR", &dir)
        .output()
        .unwrap();
    assert!(!list.status.success());
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("others can enter it"),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(!String::from_utf8_lossy(&list.stdout).contains("fake"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_endless_answer_is_cut_off() {
    let dir = private_dir("endless");
    fake_server(&dir, 4_000_002, |conn| {
        read_request(&conn);
        let chunk = vec![b'x'; 1 << 20];
        while (&conn).write_all(&chunk).is_ok() {}
    });
    let mut client = Client::connect_in(&dir, 4_000_002).unwrap();
    match client.summary() {
        Err(InspectError::Protocol { reason, .. }) => {
            assert!(reason.contains("longer than"), "{reason}")
        }
        other => panic!("expected the answer to be cut off, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_answer_that_trickles_in_ends_at_the_deadline() {
    let dir = private_dir("slow");
    fake_server(&dir, 4_000_003, |conn| {
        read_request(&conn);
        // A byte a second, for ever: each read succeeds, the answer never ends.
        loop {
            if (&conn).write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let mut client = Client::connect_in(&dir, 4_000_003).unwrap();
    match client.summary() {
        Err(InspectError::TimedOut { .. }) => {}
        other => panic!("expected the summary to time out, got {other:?}"),
    }
    // `list` reports it and goes on, instead of hanging on it.
    let list = Command::new(env!("CARGO_BIN_EXE_inspector"))
        .arg("list")
        .env("GREENHUB_ATTACH_DIR", &dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        out.contains("4000003") && out.contains("did not answer"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
