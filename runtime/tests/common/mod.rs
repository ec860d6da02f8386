//! Helpers shared by the test binaries.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Set in a child process to the name of the test it must run as a child.
pub const CHILD: &str = "GREENHUB_TEST_CHILD";

/// Whether this process is the child for `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(name)
}

/// Runs this test binary again, running only the test `name` in child mode with `envs`,
/// and returns its output. Kills it after `limit` (a hang is a failure, not a stuck suite).
pub fn run_child(name: &str, envs: &[(&str, &str)], limit: Duration) -> Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "child {name} hung for {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child's stdout and stderr as one string, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The snapshot's entry for object `id`.
pub fn object(id: u64) -> greenhub::inspect::ObjectInfo {
    greenhub::inspect::snapshot()
        .objects
        .into_iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| panic!("object #{id} is not in the snapshot"))
}

/// Waits (polling, up to 10 s) until object `id` has `n` live waiters.
pub fn await_waiters(id: u64, n: usize) {
    let t0 = Instant::now();
    loop {
        let w = object(id).waiters;
        if w == n {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "object #{id}: {w} waiters, want {n}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What green thread `id` waits on, per the snapshot.
pub fn waiting_on(id: u64) -> Option<greenhub::ext::WaitOn> {
    greenhub::inspect::snapshot()
        .threads
        .into_iter()
        .find(|t| t.id == id)
        .and_then(|t| t.waiting_on)
}

/// Dumps the run info and aborts the process if the returned guard is still alive after
/// `limit`: a stress test that hangs shows what every green thread waits on instead of
/// hanging the suite silently.
pub fn watchdog(limit: Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            // Straight to the stream: the test harness's capture would swallow `eprintln!`.
            use std::io::Write;
            let info = greenhub::inspect::format_run_info();
            let _ = writeln!(
                std::io::stderr(),
                "watchdog: still running after {limit:?}\n{info}"
            );
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// Disarms the watchdog when dropped.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

/// The log lines of this test binary, as "LEVEL message", once [`capture_logs`] installed the
/// logger.
static LOGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LOGS.lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

/// Installs (once) a logger that keeps every line at `level` and above; returns the lines.
pub fn capture_logs(level: log::LevelFilter) -> &'static std::sync::Mutex<Vec<String>> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(level);
    });
    &LOGS
}

/// The lines logged so far that contain `text`.
pub fn logged(text: &str) -> Vec<String> {
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(text))
        .cloned()
        .collect()
}

/// CPU time of the calling OS thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills a valid timespec; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Lowers this process's open-files limit to at most 512 and opens descriptors until none is
/// left but one: the caller's next descriptor is the last. Dropping the result frees them.
pub fn use_up_descriptors() -> Vec<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: getrlimit/setrlimit fill and read the struct given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(512);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let probe: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let mut hoard = Vec::new();
    loop {
        // SAFETY: dup of a descriptor this function owns; the result is owned below.
        let fd = unsafe { libc::dup(probe.as_raw_fd()) };
        if fd < 0 {
            break;
        }
        // SAFETY: `fd` was just returned by dup and nothing else owns it.
        hoard.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // Exactly one free.
    hoard.pop();
    hoard.push(probe);
    hoard
}

/// The id of this process's thread named `name` (the kernel keeps 15 bytes of a name).
pub fn thread_named(name: &str) -> i32 {
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.is_empty() && name.starts_with(comm) {
            return entry.file_name().to_string_lossy().parse().unwrap();
        }
    }
    panic!("no thread named {name}");
}

/// Voluntary context switches (the thread blocked) of thread `tid` of this process.
pub fn blocked(tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .unwrap_or_else(|e| panic!("thread {tid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a count of voluntary switches")
}
