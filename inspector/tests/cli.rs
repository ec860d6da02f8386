//! The `inspector` command line against a live target process: this test binary started
//! again in target mode, with a tree of named green threads waiting on things.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use greenhub::ext::WaitOn;
use greenhub::inspect::{Snapshot, ThreadState};

const TARGET: &str = "INSPECTOR_TEST_TARGET";

/// Run only as the target: a parent with three children waiting on an event, a sleeper; it
/// says READY and lives until its stdin closes.
#[test]
fn target_process() {
    if std::env::var_os(TARGET).is_none() {
        return;
    }
    let release = greenhub::Event::<(), ()>::new();
    let parent = {
        let release = release.clone();
        greenhub::thread::Builder::new()
            .name("root-job")
            .spawn(move || {
                let children: Vec<_> = (0..3)
                    .map(|i| {
                        let release = release.clone();
                        greenhub::thread::Builder::new()
                            .name(format!("child-{i}"))
                            .spawn(move || release.wait().is_ok())
                            .unwrap()
                    })
                    .collect();
                children.into_iter().all(|c| c.wait().unwrap())
            })
            .unwrap()
    };
    let _sleeper = greenhub::thread::Builder::new()
        .name("sleeper")
        .spawn(naps_for_ten_minutes)
        .unwrap();
    // Until every thread exists and waits, the dump would not show them all parked: a thread
    // is listed from its spawn, and on a busy machine it may start its wait much later.
    while {
        let threads = greenhub::inspect::snapshot().threads;
        threads.len() < 5 || threads.iter().any(|t| t.state != ThreadState::Waiting)
    } {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("READY");
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest).ok();
    release.set(()).unwrap();
    assert!(parent.wait().unwrap());
}

/// The sleeper's body: its stack names it.
#[inline(never)]
fn naps_for_ten_minutes() {
    greenhub::sleep(Duration::from_secs(600)).ok();
}

struct Target {
    child: Child,
    dir: PathBuf,
    // Kept open so that the target can go on writing its test output.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Target {
    fn start(dir: &Path) -> Target {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "target_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(TARGET, "1")
            .env("GREENHUB_ATTACH_DIR", dir)
            .env("GREENHUB_FLIGHT_RECORDER", "on")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("READY") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the target ended");
        }
        Target {
            child,
            dir: dir.to_owned(),
            _stdout: out,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn inspector(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_inspector"))
            .args(args)
            .env("GREENHUB_ATTACH_DIR", &self.dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A directory of attach sockets for one test, removed when the test ends.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("inspector-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }
}

impl std::ops::Deref for Dir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn list_dump_and_json_show_the_live_target() {
    let dir = Dir::new("cli");
    let target = Target::start(&dir);
    let pid = target.pid();

    let (ok, list, err) = target.inspector(&["list"]);
    assert!(ok, "{err}");
    let row = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .unwrap_or_else(|| panic!("pid {pid} not listed:\n{list}"));
    // pid, name, threads (the five of the target), uptime.
    let threads: u64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(threads >= 5, "{row}");

    let (ok, dump, err) = target.inspector(&["dump", &pid.to_string()]);
    assert!(ok, "{err}");
    // The children are indented under their parent.
    let indent = |name: &str| {
        let line = dump
            .lines()
            .find(|l| l.contains(&format!("\"{name}\"")))
            .unwrap_or_else(|| panic!("{name} missing from the dump:\n{dump}"));
        line.len() - line.trim_start().len()
    };
    assert!(indent("child-1") > indent("root-job"), "{dump}");
    assert!(dump.contains("sleeper"), "{dump}");

    let (ok, json, err) = target.inspector(&["json", &pid.to_string()]);
    assert!(ok, "{err}");
    let snap: Snapshot = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(snap.pid, pid);
    let by_name = |n: &str| {
        snap.threads
            .iter()
            .find(|t| t.name.as_deref() == Some(n))
            .unwrap()
    };
    let root = by_name("root-job");
    for i in 0..3 {
        let child = by_name(&format!("child-{i}"));
        assert_eq!(child.parent, Some(root.id));
        assert_eq!(child.state, ThreadState::Waiting);
        assert!(
            matches!(child.waiting_on, Some(WaitOn::Object { .. })),
            "{:?}",
            child.waiting_on
        );
    }
    let sleeper = by_name("sleeper");
    assert!(
        matches!(sleeper.waiting_on, Some(WaitOn::Sleep)),
        "{:?}",
        sleeper.waiting_on
    );
    assert!(sleeper.deadline_in_us.is_some_and(|d| d > 0));
    assert_eq!(sleeper.stack, None, "stacks only when asked for");
}

#[test]
fn profile_prints_folded_stacks_top_functions_and_json() {
    let dir = Dir::new("profile");
    let target = Target::start(&dir);
    let pid = target.pid().to_string();

    // Where the parked threads wait, as folded stacks rooted at their spawn site.
    let (ok, folded, err) = target.inspector(&["profile", &pid, "--seconds", "0.3", "--off-cpu"]);
    assert!(ok, "{err}");
    let nap = folded
        .lines()
        .find(|l| l.contains("naps_for_ten_minutes"))
        .unwrap_or_else(|| panic!("no sleeper:\n{folded}"));
    assert!(nap.starts_with("spawned at "), "{nap}");
    let weight: u64 = nap.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(weight > 0, "{nap}");

    let (ok, top, err) = target.inspector(&["profile", &pid, "--seconds", "0.2", "--top", "5"]);
    assert!(ok, "{err}");
    assert!(top.contains("on CPU") && top.contains("off CPU"), "{top}");

    let (ok, json, err) = target.inspector(&["profile", &pid, "--seconds", "0.2", "--json"]);
    assert!(ok, "{err}");
    let p: greenhub::inspect::Profile = serde_json::from_str(json.trim()).unwrap();
    assert!(p.workers >= 1 && p.hz > 0, "{p:?}");

    // Arguments out of range are refused before anything is asked.
    for bad in [
        ["--seconds", "0"],
        ["--seconds", "61"],
        ["--hz", "0"],
        ["--hz", "5000"],
    ] {
        let mut args = vec!["profile", pid.as_str()];
        args.extend(bad);
        let (ok, _, err) = target.inspector(&args);
        assert!(!ok && err.contains("--"), "{bad:?}: {err}");
    }
}

#[test]
fn dump_and_json_show_the_stacks_of_parked_threads_when_asked() {
    let dir = Dir::new("stacks");
    let target = Target::start(&dir);
    let pid = target.pid().to_string();

    let (ok, dump, err) = target.inspector(&["dump", "--stacks", &pid]);
    assert!(ok, "{err}");
    // Under the sleeper's line: the greenhub call it made, then its own function with file
    // and line.
    let lines: Vec<&str> = dump.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\"sleeper\""))
        .unwrap_or_else(|| panic!("no sleeper:\n{dump}"));
    let below = lines[at + 1..].join("\n");
    assert!(
        lines[at + 1].trim_start().starts_with("greenhub::"),
        "{dump}"
    );
    assert!(below.contains("naps_for_ten_minutes at "), "{dump}");
    assert!(below.contains("cli.rs:"), "{dump}");

    let (ok, json, err) = target.inspector(&["json", "--stacks", &pid]);
    assert!(ok, "{err}");
    let snap: Snapshot = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(snap.stacks_unavailable, None);
    let stack_of = |n: &str| {
        snap.threads
            .iter()
            .find(|t| t.name.as_deref() == Some(n))
            .and_then(|t| t.stack.clone())
            .unwrap_or_else(|| panic!("no stack for {n}"))
    };
    let nap = stack_of("sleeper");
    assert!(
        nap.frames
            .iter()
            .any(|f| f.function.ends_with("naps_for_ten_minutes")),
        "{nap:#?}"
    );
    // The children wait on the event: the innermost frame kept is `Event::wait`.
    let child = stack_of("child-0");
    assert!(child.frames[0].function.contains("Event"), "{child:#?}");
}

#[test]
fn a_crashed_process_is_reported_gone_and_its_socket_cleaned_up() {
    let dir = Dir::new("crash");
    let alive = Target::start(&dir);
    // A process killed outright leaves its socket: nothing ran at exit.
    let mut crashed = Target::start(&dir);
    let crashed_pid = crashed.pid();
    crashed.child.kill().unwrap();
    crashed.child.wait().unwrap();
    let stale = dir.join(format!("{crashed_pid}.sock"));
    assert!(stale.exists());

    let (ok, _, err) = alive.inspector(&["dump", &crashed_pid.to_string()]);
    assert!(!ok);
    assert!(err.contains("is gone"), "{err}");

    let (ok, list, err) = alive.inspector(&["list"]);
    assert!(ok, "{err}");
    let pids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids, [alive.pid().to_string()], "{list}");
    assert!(!stale.exists(), "list removes what crashed processes left");

    let (ok, _, err) = alive.inspector(&["json", "4194001"]);
    assert!(!ok);
    assert!(err.contains("no greenhub process 4194001"), "{err}");
}

#[test]
fn the_attach_view_shows_the_live_target_and_notices_when_it_ends() {
    use greenhub_inspector::Client;
    use greenhub_inspector::tui::{App, Key, render_text};

    let dir = Dir::new("attach");
    let mut target = Target::start(&dir);
    let pid = target.pid();
    // What `inspector attach` does, on a test backend instead of the terminal.
    let mut client = Client::connect_in(&dir, pid).unwrap();
    let mut app = App::new(pid);
    app.update(client.snapshot().unwrap(), std::time::Instant::now());
    app.key(Key::Char('t'));
    let screen = |app: &App| -> Vec<String> {
        render_text(app, 160, 30)
            .lines()
            .map(String::from)
            .collect()
    };
    let lines = screen(&app);
    let column_of = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.find(name))
            .unwrap_or_else(|| panic!("{name} not on screen:\n{}", lines.join("\n")))
    };
    assert!(lines[0].contains(&format!("pid {pid}")), "{}", lines[0]);
    // In the tree, the children's names sit further right than their parent's.
    assert!(column_of("child-0") > column_of("root-job"));
    assert!(column_of("sleeper") < column_of("child-0"));

    target.child.kill().unwrap();
    target.child.wait().unwrap();
    let err = client.snapshot().unwrap_err();
    app.failed(err.to_string());
    let lines = screen(&app);
    assert!(
        lines[2].contains(&format!("process {pid}")),
        "the error replaces the last header line: {}",
        lines[2]
    );
    // The last snapshot stays on screen.
    assert!(lines.iter().any(|l| l.contains("root-job")));
}

/// Runs `inspector attach` on a real terminal: a pseudo-terminal from util-linux's `script`
/// (on every Debian system), 160 by 40.
struct Terminal {
    child: Child,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Terminal {
    fn attach(dir: &Path, pid: u32) -> Terminal {
        let command = format!(
            "stty cols 160 rows 40; exec {} attach {pid}",
            env!("CARGO_BIN_EXE_inspector")
        );
        let mut child = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env("GREENHUB_ATTACH_DIR", dir)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Not the test's own stderr: a leftover would hold the test runner's pipe open.
            .stderr(Stdio::null())
            .spawn()
            .expect("this test needs `script` (util-linux) for a pseudo-terminal");
        let mut out = child.stdout.take().unwrap();
        let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, screen }
    }

    /// Everything written to the terminal so far, escape sequences included.
    fn output(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal has shown `text` (the output after `from` bytes).
    fn wait_for(&self, text: &str, from: usize) {
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        while !self.output().get(from..).unwrap_or("").contains(text) {
            assert!(
                std::time::Instant::now() < give_up,
                "{text:?} never shown; the terminal got:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn keys(&mut self, keys: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(keys.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // After a failed check the view is still up: closing the pseudo-terminal hangs it up.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_inspector_binary_shows_the_target_on_a_terminal_and_quits_on_q() {
    let dir = Dir::new("terminal");
    let target = Target::start(&dir);
    let mut term = Terminal::attach(&dir, target.pid());
    // The threads view of the live process, from the first snapshot.
    // The pid alone: the terminal gets cursor moves, not spaces, where a cell stays blank.
    term.wait_for("pid", 0);
    term.wait_for(&target.pid().to_string(), 0);
    term.wait_for("root-job", 0);
    term.wait_for("child-2", 0);
    // Keys reach it: the timers view lists the sleeper's timer, owned by a thread.
    let seen = term.output().len();
    term.keys("2");
    term.wait_for("soonest first", seen);
    term.wait_for("sleep", seen);
    // The details of a thread show its stack: the threads view, filtered to the sleeper.
    let seen = term.output().len();
    term.keys("1/sleeper\r\r");
    term.wait_for("naps_for_ten_minutes", seen);
    term.keys("\r");
    // T asks the process to time its threads; the header says so from the next snapshot.
    let seen = term.output().len();
    term.keys("T");
    term.wait_for("[timing]", seen);
    // 6: the profile view takes a second of samples with each refresh; this target only
    // waits, so its rows are the waits (the children's on the event first).
    let seen = term.output().len();
    term.keys("6");
    term.wait_for("Event<T,E>::wait", seen);
    // K on the sleeper asks first; y kills it, and the header says what the process did.
    let seen = term.output().len();
    term.keys("1/sleeper\rK");
    term.wait_for("cancels", seen);
    let seen = term.output().len();
    term.keys("y");
    term.wait_for("killed", seen);
    term.keys("q");
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = term.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "q did not quit:\n{}",
            term.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}:\n{}", term.output());
    // It gave the terminal back: the alternate screen left, the cursor shown again.
    let out = term.output();
    assert!(out.contains("\u{1b}[?1049l"), "alternate screen not left");
    assert!(out.contains("\u{1b}[?25h"), "cursor not shown again");
}

#[test]
fn kill_set_and_resize_act_on_the_target_and_say_what_they_did() {
    let dir = Dir::new("act");
    let target = Target::start(&dir);
    let pid = target.pid().to_string();
    let (ok, json, err) = target.inspector(&["json", &pid]);
    assert!(ok, "{err}");
    let snap: Snapshot = serde_json::from_str(json.trim()).unwrap();
    let sleeper = snap
        .threads
        .iter()
        .find(|t| t.name.as_deref() == Some("sleeper"))
        .unwrap()
        .id;

    // Before the kill: the flight recorder's last minute, for Perfetto, names the sleeper.
    let file = dir.join("trace.json");
    let (ok, _, err) =
        target.inspector(&["trace", &pid, "--last", "60", "-o", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("events over"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        json["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["args"]["name"].as_str() == Some(&format!("sleeper #{sleeper}"))),
        "{json}"
    );
    let (ok, _, err) = target.inspector(&["trace", &pid, "--last", "0"]);
    assert!(!ok && err.contains("--last"), "{err}");

    let (ok, out, err) = target.inspector(&["kill", &pid, &sleeper.to_string()]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("killed 1 green thread: #{sleeper}"));
    // The kill is delivered: the sleeper unwinds at its wait and ends, on a busy machine a
    // little later than the answer.
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, json, _) = target.inspector(&["json", &pid]);
        let snap: Snapshot = serde_json::from_str(json.trim()).unwrap();
        if snap.threads.iter().all(|t| t.id != sleeper) {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "the killed sleeper still lives after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Gone now: the process says so, and the inspector fails with its words.
    let (ok, _, err) = target.inspector(&["kill", &pid, &sleeper.to_string()]);
    assert!(!ok);
    assert!(err.contains("no live green thread"), "{err}");

    let (ok, out, err) = target.inspector(&["set", &pid, "max_blocking_time", "40"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "max_blocking_time is 40 ms");
    let (_, json, _) = target.inspector(&["json", &pid]);
    let snap: Snapshot = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(snap.runtime.max_blocking_time_us, Some(40_000));

    // A value with a line break cannot smuggle a second request.
    let (ok, _, err) = target.inspector(&["set", &pid, "log_level", "info\nkill 1"]);
    assert!(!ok);
    assert!(err.contains("log_level takes"), "{err}");

    let (ok, _, err) = target.inspector(&["resize", &pid, "999999999", "4"]);
    assert!(!ok);
    assert!(err.contains("no live object"), "{err}");
}
