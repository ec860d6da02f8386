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
    let path = socket_path(std::process::id());
    let socket_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((socket_mode, dir_mode), (0o600, 0o700));
}

#[test]
fn another_user_cannot_read_the_process() {
    setup();
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can become another user to try");
        return;
    }
    let path = socket_path(std::process::id());
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied in below, NUL-terminated.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // The child becomes `nobody` and tries to connect. It only makes system calls until
    // `_exit`, which is what a child forked from a threaded process may do.
    // SAFETY: see above; the parent waits for the child it forked.
    let code = unsafe {
        match libc::fork() {
            0 => {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0 {
                    libc::_exit(0);
                }
                let refused_by_permissions = *libc::__errno_location() == libc::EACCES;
                libc::_exit(if refused_by_permissions { 10 } else { 11 });
            }
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            child => {
                let mut status = 0;
                assert_eq!(libc::waitpid(child, &mut status, 0), child);
                assert!(libc::WIFEXITED(status));
                libc::WEXITSTATUS(status)
            }
        }
    };
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
