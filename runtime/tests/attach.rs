//! The attach channel: a process answers `inspector` on its private socket, keeps answering
//! after bad requests, refuses other users, and removes its socket when it exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Once;

use greenhub::inspect::attach::{MAX_CLIENTS, MAX_REQUEST, Summary, socket_path};
use greenhub::inspect::{Snapshot, ThreadState};

/// Every test of this binary (and its children) uses one private directory of its own.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("GREENHUB_ATTACH_DIR").is_none() {
            // One directory for every run: each process removes its socket when it exits.
            let dir = std::env::temp_dir().join("greenhub-attach-tests");
            // SAFETY: every test of this binary calls `setup` before anything else and waits
            // here until it is done, so no other thread of the process reads the environment
            // meanwhile (the runtime reads it when the spawn below starts it).
            unsafe { std::env::set_var("GREENHUB_ATTACH_DIR", &dir) };
        }
        // Starts the runtime, and with it the channel.
        greenhub::spawn(|| ()).wait().unwrap();
    });
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open() -> Conn {
        let path = socket_path(std::process::id());
        let stream = UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
        Conn {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn ask(&mut self, request: &[u8]) -> String {
        self.writer.write_all(request).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }
}

#[test]
fn a_process_answers_with_its_summary_and_snapshot() {
    setup();
    let release = greenhub::Event::<(), ()>::new();
    let waiting = {
        let release = release.clone();
        greenhub::thread::Builder::new()
            .name("attach-probe")
            .spawn(move || release.wait().is_ok())
            .unwrap()
    };
    let mut conn = Conn::open();
    let summary: Summary = serde_json::from_str(&conn.ask(b"summary\n")).unwrap();
    assert_eq!(summary.pid, std::process::id());
    assert_eq!(summary.schema_version, greenhub::inspect::SCHEMA_VERSION);
    assert!(summary.threads >= 1, "{summary:?}");
    // The same connection serves request after request.
    let found = (0..100).any(|_| {
        let snap: Snapshot = serde_json::from_str(&conn.ask(b"snapshot\n")).unwrap();
        assert_eq!(snap.pid, std::process::id());
        let seen = snap
            .threads
            .iter()
            .any(|t| t.name.as_deref() == Some("attach-probe") && t.state == ThreadState::Waiting);
        if !seen {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        seen
    });
    assert!(found, "the waiting thread shows in the snapshot");
    release.set(()).unwrap();
    assert!(waiting.wait().unwrap());
}

#[test]
fn bad_requests_get_errors_and_the_channel_stays_up() {
    setup();
    let mut conn = Conn::open();
    let unknown: serde_json::Value = serde_json::from_str(&conn.ask(b"rm -rf /\n")).unwrap();
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("unknown request"),
        "{unknown}"
    );
    let binary: serde_json::Value = serde_json::from_str(&conn.ask(b"\xff\xfe\n")).unwrap();
    assert!(unknown["error"].is_string() && binary["error"].is_string());
    // Stack requests with ids that are not ids, or of threads that are not there: errors that
    // say why.
    for (request, says) in [
        (&b"stack\n"[..], "unknown request"),
        (b"stack abc\n", "takes a thread id"),
        (b"stack -1\n", "takes a thread id"),
        (b"stack 99999999999999999999999\n", "takes a thread id"),
        (b"stack \x1b[2J\n", "takes a thread id"),
        (b"stack 18446744073709551615\n", "no live green thread"),
        (b"snapshot stacks please\n", "unknown request"),
        (b"profile\n", "takes seconds"),
        (b"profile 0\n", "takes seconds"),
        (b"profile -1\n", "takes seconds"),
        (b"profile 61\n", "takes seconds"),
        (b"profile NaN\n", "takes seconds"),
        (b"profile inf\n", "takes seconds"),
        (b"profile 1 0\n", "takes seconds"),
        (b"profile 1 5000\n", "takes seconds"),
        (b"profile 1 99 extra\n", "takes seconds"),
        (b"profiles 1\n", "takes seconds"),
    ] {
        let answer: serde_json::Value = serde_json::from_str(&conn.ask(request)).unwrap();
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        assert!(error.contains(says), "{error}");
        assert!(!error.contains('\u{1b}'), "escaped: {error}");
    }
    // Still usable after all of them.
    let summary: Summary = serde_json::from_str(&conn.ask(b"summary\n")).unwrap();
    assert_eq!(summary.pid, std::process::id());

    // An endless line: one error, then the connection is closed.
    let mut flood = Conn::open();
    let long = vec![b'x'; MAX_REQUEST * 4];
    let answer: serde_json::Value = serde_json::from_str(&flood.ask(&long)).unwrap();
    assert!(answer["error"].as_str().unwrap().contains("longer than"));
    let mut rest = Vec::new();
    flood.reader.read_to_end(&mut rest).ok();
    assert!(rest.is_empty(), "closed after the error");

    // The process and its channel carry on.
    assert_eq!(greenhub::spawn(|| 7).wait().unwrap(), 7);
    let again: Summary = serde_json::from_str(&Conn::open().ask(b"summary\n")).unwrap();
    assert_eq!(again.pid, std::process::id());
}

#[test]
fn the_socket_and_its_directory_are_private() {
    setup();
    let _alone = AS_ANOTHER_USER.lock().unwrap_or_else(|e| e.into_inner());
    let path = socket_path(std::process::id());
    let socket_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((socket_mode, dir_mode), (0o600, 0o700));
}

/// Held by the tests that look at the channel's file permissions or try it as another user:
/// one of them opens the permissions for a moment, which the others must not see.
static AS_ANOTHER_USER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The address of the Unix socket at `path`, for `connect` in a forked child.
fn unix_address(path: &std::path::Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied in below, NUL-terminated.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    (addr, len)
}

/// Runs `body` in a forked child that has become `nobody` (uid and gid 65534) and returns its
/// exit code (2: it could not become `nobody`). `body` may only make system calls: that is
/// what a child forked from a threaded process may do before `_exit`.
fn as_nobody(body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes system calls only, then `_exit`; the parent waits for it.
    unsafe {
        match libc::fork() {
            0 => {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(2);
                }
                libc::_exit(body());
            }
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            child => {
                let mut status = 0;
                assert_eq!(libc::waitpid(child, &mut status, 0), child);
                assert!(libc::WIFEXITED(status));
                libc::WEXITSTATUS(status)
            }
        }
    }
}

#[test]
fn another_user_cannot_read_the_process() {
    setup();
    let _alone = AS_ANOTHER_USER.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can become another user to try");
        return;
    }
    let (addr, len) = unix_address(&socket_path(std::process::id()));
    // The child becomes `nobody` and tries to connect.
    let code = as_nobody(|| {
        // SAFETY: plain system calls on a socket of the child's own.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0 {
                return 0;
            }
            if *libc::__errno_location() == libc::EACCES {
                10
            } else {
                11
            }
        }
    });
    assert_eq!(
        code, 10,
        "nobody (uid 65534) must be refused by the directory's permissions (0: got in, 11: \
         another error)"
    );
}

/// Run only as a child: starts the runtime, says where its socket is, and exits normally.
#[test]
fn child_exits() {
    if std::env::var_os("GREENHUB_TEST_EXIT_CHILD").is_none() {
        return;
    }
    greenhub::spawn(|| ()).wait().unwrap();
    let path = socket_path(std::process::id());
    println!("SOCKET {} {}", path.display(), path.exists());
}

#[test]
fn the_socket_goes_when_the_process_exits() {
    setup();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_exits", "--nocapture", "--test-threads=1"])
        .env("GREENHUB_TEST_EXIT_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SOCKET ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no socket line in {stdout}"));
    let (path, existed) = line.rsplit_once(' ').unwrap();
    assert_eq!(existed, "true", "the child listened at {path}");
    assert!(
        !std::path::Path::new(path).exists(),
        "{path} is removed at exit"
    );
}

/// In a process of its own (its connections would take the slots of this binary's other
/// tests): more silent connections than there are slots, then real readers.
#[test]
fn silent_connections_give_their_slots_to_a_real_reader() {
    const CHILD: &str = "ATTACH_TEST_SILENT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        setup();
        let path = socket_path(std::process::id());
        // They connect and never ask anything.
        let silent: Vec<UnixStream> = (0..MAX_CLIENTS + 2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for _ in 0..3 {
            let answer = Conn::open().ask(b"summary\n");
            let summary: Summary = serde_json::from_str(&answer)
                .unwrap_or_else(|e| panic!("a real reader was refused: {answer} ({e})"));
            assert_eq!(summary.pid, std::process::id());
        }
        drop(silent);
        println!("SERVED");
        return;
    }
    let dir = std::env::temp_dir().join(format!("greenhub-attach-silent-{}", std::process::id()));
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "silent_connections_give_their_slots_to_a_real_reader",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("GREENHUB_ATTACH_DIR", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SERVED"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

mod common;

fn acted(answer: &str) -> greenhub::inspect::attach::Acted {
    serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

fn refused(answer: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(answer).unwrap();
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not refused: {answer}"))
        .to_owned()
}

#[test]
fn an_inspector_kills_threads_and_subtrees_and_the_process_logs_who_asked() {
    setup();
    common::capture_logs(log::LevelFilter::Warn);
    let victim = greenhub::spawn(|| greenhub::sleep(std::time::Duration::from_secs(600)));
    let mut conn = Conn::open();
    let answer = acted(&conn.ask(format!("kill {}\n", victim.id()).as_bytes()));
    assert_eq!(answer.killed, [victim.id()]);
    assert!(victim.wait().is_err(), "killed");
    let said = common::logged(&format!("asks: kill green thread #{}", victim.id()));
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&format!("inspector (pid {}, uid ", std::process::id())),
        "{}",
        said[0]
    );

    // A parent and the children it waits for, and a grandchild: all four.
    let (tx, rx) = std::sync::mpsc::channel();
    let parent = greenhub::spawn(move || {
        let kids: Vec<_> = (0..2)
            .map(|i| {
                let tx = tx.clone();
                greenhub::spawn(move || {
                    tx.send(greenhub::current().unwrap().id()).unwrap();
                    if i == 0 {
                        let grandchild = greenhub::spawn(|| {
                            greenhub::sleep(std::time::Duration::from_secs(600))
                        });
                        tx.send(grandchild.id()).unwrap();
                        let _ = grandchild.wait();
                    } else {
                        let _ = greenhub::sleep(std::time::Duration::from_secs(600));
                    }
                })
            })
            .collect();
        for k in kids {
            let _ = k.wait();
        }
    });
    let mut expected: Vec<u64> = vec![parent.id()];
    expected.extend((0..3).map(|_| rx.recv().unwrap()));
    expected.sort_unstable();
    let mut answer = acted(&conn.ask(format!("kill tree {}\n", parent.id()).as_bytes()));
    answer.killed.sort_unstable();
    assert_eq!(answer.killed, expected);
    assert!(parent.wait().is_err());

    let error = refused(&conn.ask(format!("kill {}\n", parent.id()).as_bytes()));
    assert!(error.contains("no live green thread"), "{error}");
}

#[test]
fn an_inspector_changes_settings_and_resizes_pools() {
    setup();
    let mut conn = Conn::open();
    let before = greenhub::inspect::snapshot().runtime.max_blocking_time_us;
    let answer = acted(&conn.ask(b"set max_blocking_time 250\n"));
    assert_eq!(answer.done, "max_blocking_time is 250 ms");
    assert_eq!(
        greenhub::inspect::snapshot().runtime.max_blocking_time_us,
        Some(250_000)
    );
    acted(&conn.ask(b"set max_blocking_time off\n"));
    assert_eq!(
        greenhub::inspect::snapshot().runtime.max_blocking_time_us,
        None
    );
    let restore = match before {
        Some(us) => format!("set max_blocking_time {}\n", us / 1000),
        None => "set max_blocking_time off\n".to_string(),
    };
    acted(&conn.ask(restore.as_bytes()));
    assert_eq!(
        greenhub::inspect::snapshot().runtime.max_blocking_time_us,
        before
    );

    let answer = acted(&conn.ask(b"set flight_recorder on\n"));
    assert_eq!(answer.done, "the flight recorder is on");
    assert!(greenhub::inspect::snapshot().runtime.flight_recorder);
    let napper = greenhub::spawn(|| greenhub::sleep(std::time::Duration::from_millis(1)));
    napper.wait().unwrap().unwrap();
    let trace: greenhub::inspect::Trace =
        serde_json::from_str(&conn.ask(b"trace 60\n")).expect("a trace");
    assert!(trace.events.iter().any(|e| e.thread == napper.id()));
    assert_eq!(trace.pid, std::process::id());

    let level = log::max_level();
    acted(&conn.ask(b"set log_level trace\n"));
    assert_eq!(log::max_level(), log::LevelFilter::Trace);
    acted(&conn.ask(format!("set log_level {level}\n").as_bytes()));
    assert_eq!(log::max_level(), level);

    let pool = greenhub::pool::Pool::builder(|| Ok::<_, std::convert::Infallible>(()))
        .max_size(2)
        .build()
        .unwrap();
    let answer = acted(&conn.ask(format!("resize {} 5\n", pool.id()).as_bytes()));
    assert!(answer.done.contains("resized to 5"), "{}", answer.done);
    assert_eq!(pool.max_size(), 5);
    let green = greenhub::GreenPool::new(3);
    acted(&conn.ask(format!("resize {} 7\n", green.id()).as_bytes()));
    assert_eq!(green.size(), 7);
    let event = greenhub::Event::<(), ()>::new();
    let error = refused(&conn.ask(format!("resize {} 3\n", event.id()).as_bytes()));
    assert!(error.contains("cannot be resized"), "{error}");
    let error = refused(&conn.ask(format!("resize {} 0\n", pool.id()).as_bytes()));
    assert!(error.contains("at least one"), "{error}");
    assert_eq!(pool.max_size(), 5, "a refused resize changes nothing");
}

#[test]
fn malformed_acts_are_refused_with_the_usage_and_change_nothing() {
    setup();
    let mut conn = Conn::open();
    let level = log::max_level();
    let limit = greenhub::inspect::snapshot().runtime.max_blocking_time_us;
    for (request, says) in [
        (&b"kill\n"[..], "usage"),
        (b"kill abc\n", "whole number"),
        (b"kill -1\n", "whole number"),
        (b"kill 99999999999999999999999\n", "whole number"),
        (b"kill 1 2\n", "usage"),
        (b"kill tree\n", "usage"),
        (b"kill tree \x1b[2J\n", "whole number"),
        (b"kill 18446744073709551615\n", "no live green thread"),
        (b"set\n", "usage"),
        (b"set colour blue\n", "usage"),
        (b"set max_blocking_time\n", "usage"),
        (b"set max_blocking_time 0\n", "1 to 3600000"),
        (b"set max_blocking_time 3600001\n", "1 to 3600000"),
        (b"set max_blocking_time -5\n", "whole number"),
        (b"set max_blocking_time 1.5\n", "whole number"),
        (b"set log_level loud\n", "log_level takes"),
        (b"set log_level \x1b]0;x\x07\n", "log_level takes"),
        (b"set flight_recorder maybe\n", "usage"),
        (b"trace\n", "takes seconds"),
        (b"trace 0\n", "takes seconds"),
        (b"trace -1\n", "takes seconds"),
        (b"trace 3601\n", "takes seconds"),
        (b"trace NaN\n", "takes seconds"),
        (b"trace 5 6\n", "takes seconds"),
        (b"traces 5\n", "takes seconds"),
        (b"resize\n", "usage"),
        (b"resize 1\n", "usage"),
        (b"resize x 2\n", "whole number"),
        (b"resize 1 -2\n", "whole number"),
        (b"resize 18446744073709551615 2\n", "no live object"),
    ] {
        let error = refused(&conn.ask(request));
        assert!(error.contains(says), "{request:?}: {error}");
        assert!(
            !error.contains('\u{1b}') && !error.contains('\u{7}'),
            "escaped: {error}"
        );
    }
    assert_eq!(log::max_level(), level);
    assert_eq!(
        greenhub::inspect::snapshot().runtime.max_blocking_time_us,
        limit
    );
}

#[test]
fn another_user_cannot_act_even_where_the_socket_lets_it_connect() {
    setup();
    let _alone = AS_ANOTHER_USER.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can become another user to try");
        return;
    }
    // Lower the file permissions for a moment (the directory and the socket), so that only
    // the process's own check of the peer's credentials stands in the way.
    let path = socket_path(std::process::id());
    let dir = path.parent().unwrap().to_owned();
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let victim = greenhub::spawn(|| greenhub::sleep(std::time::Duration::from_secs(600)));
    let request = format!("kill {}\n", victim.id());

    let (addr, len) = unix_address(&path);
    let needle = b"permission denied";
    // The child becomes `nobody`, connects, asks for the kill and reads the answer.
    let code = as_nobody(|| {
        // SAFETY: plain system calls on a socket of the child's own and buffers it owns.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                return 3;
            }
            libc::write(fd, request.as_ptr().cast(), request.len());
            let mut buf = [0u8; 512];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            let n = if n > 0 { n as usize } else { 0 };
            if buf[..n].windows(needle.len()).any(|w| w == needle) {
                10
            } else {
                11
            }
        }
    });
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    assert_eq!(
        code, 10,
        "nobody is refused by the process (3: could not connect, 11: not refused)"
    );
    assert!(
        greenhub::inspect::snapshot()
            .threads
            .iter()
            .any(|t| t.id == victim.id()),
        "the thread lives"
    );
    victim.kill();
}
