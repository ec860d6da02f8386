//! End to end: the demo runs as a user starts it, and the inspector attaches to it through its
//! attach socket, with no code change and no port: the JSON shows the demo's green threads and
//! pools, and the TUI's screen (rendered on ratatui's test backend, as `inspector attach`
//! renders it on the terminal) shows them too.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use greenhub_inspector::Client;
use greenhub_inspector::tui::{App, Key, View, render_text};

fn screen(app: &App) -> String {
    render_text(app, 200, 50)
}

#[test]
fn the_inspector_attaches_to_the_running_demo() {
    let dir = std::env::temp_dir().join(format!("greenhub-demo-attach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Whatever happens below, the demo does not outlive the test.
    struct Demo(std::process::Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            // Does nothing once the test has waited for it (std keeps its exit status).
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_demo"))
            .args(["--duration", "120", "--sessions", "200"])
            .env("GREENHUB_ATTACH_DIR", &dir)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the demo"),
    );
    let pid = demo.0.id();
    let mut out = BufReader::new(demo.0.stdout.take().unwrap());
    let mut head = String::new();
    while !head.lines().any(|l| l.starts_with("t=")) {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "demo ended: {head}");
        head.push_str(&line);
    }

    // The JSON, as `inspector json` prints it: the raw answer of the attach socket.
    let mut socket = UnixStream::connect(dir.join(format!("{pid}.sock"))).unwrap();
    socket.write_all(b"snapshot\n").unwrap();
    let mut line = String::new();
    BufReader::new(socket.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["pid"], pid);
    assert!(json["schema_version"].as_u64().is_some());
    let threads = json["threads"].as_array().unwrap();
    let session = threads
        .iter()
        .find(|t| t["name"] == "session-7")
        .unwrap_or_else(|| panic!("no session-7 among {} threads", threads.len()));
    assert_eq!(session["state"], "waiting");
    assert_eq!(session["waiting_on"]["kind"], "sleep");
    assert!(
        session["spawn_site"]
            .as_str()
            .unwrap()
            .contains("examples/src/bin/demo.rs")
    );
    let objects = json["objects"].as_array().unwrap();
    let pool = objects
        .iter()
        .find(|o| o["kind"] == "dbpool" && o["name"] == "demo-sqlite")
        .unwrap_or_else(|| panic!("no database pool in {objects:?}"));
    assert!(pool["counts"]["max_size"].as_u64().unwrap() > 0);
    assert!(objects.iter().any(|o| o["kind"] == "tpool call"));

    // The TUI on the same process.
    let mut client = Client::connect_in(&dir, pid).unwrap();
    let mut app = App::new(pid);
    app.update(client.snapshot().unwrap(), Instant::now());
    let text = screen(&app);
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    assert!(
        text.contains("db pools") && text.contains("in use"),
        "{text}"
    );
    assert!(text.contains("session-0"), "{text}");
    // Typing a filter finds the idle sessions, parked in sleep.
    for c in "/session-1".chars() {
        app.key(Key::Char(c));
    }
    app.key(Key::Enter);
    let text = screen(&app);
    assert!(
        text.contains("session-1 ") && text.contains("sleep"),
        "{text}"
    );
    // The pools view: the database pool and its tpool.
    app.key(Key::Esc);
    app.key(Key::Char('4'));
    assert_eq!(app.view, View::Pools);
    // Two snapshots, one second apart: switches per second in the header.
    std::thread::sleep(Duration::from_secs(1));
    app.update(client.snapshot().unwrap(), Instant::now());
    let text = screen(&app);
    assert!(text.contains("demo-sqlite"), "{text}");
    assert!(
        text.contains("dbpool") && text.contains("tpool call"),
        "{text}"
    );
    assert!(
        app.switches_per_sec.is_some_and(|s| s > 0.0),
        "the demo switches"
    );

    // SAFETY: sends SIGINT to the child this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) }, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(demo.0.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("none lost"), "{rest}");
    // It cleaned up its socket on the way out.
    assert!(!dir.join(format!("{pid}.sock")).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
