//! Signals as green waits: delivered to every subscription, coalesced, bounded by deadlines,
//! ended by kills, visible in the snapshot; handlers in green threads; and, in a child process
//! sent real signals, a clean stop on SIGTERM and the default action once nobody subscribes.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::signal::{Signals, handle};
use greenhub::timeout::with_timeout;

/// Sends `signal` to this process.
fn raise(signal: i32) {
    // SAFETY: kill on our own pid with a signal a subscription of the test handles.
    assert_eq!(unsafe { libc::kill(libc::getpid(), signal) }, 0);
}

/// Waits until `cond` holds (a minute at most: the machine may be busy).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// Every subscription of the process gets every signal it asked for, and the tests of this
// binary run at once: each test uses signals of its own. The ones whose default action ends
// the process stay subscribed for the whole binary, so that none ever meets no subscriber.
fn keep_subscribed() {
    static KEEP: std::sync::OnceLock<Signals> = std::sync::OnceLock::new();
    KEEP.get_or_init(|| Signals::new([libc::SIGUSR1, libc::SIGUSR2, libc::SIGVTALRM]).unwrap());
}

#[test]
fn every_subscription_gets_each_signal_green_threads_and_os_threads_alike() {
    keep_subscribed();
    for round in 0..20 {
        let green = Signals::new([libc::SIGUSR1]).unwrap();
        let plain = Signals::new([libc::SIGUSR1]).unwrap();
        let waiter = greenhub::spawn(move || green.wait());
        let os = std::thread::spawn(move || plain.wait());
        // Subscribed before the signal: both see it, however the wait and the signal race.
        raise(libc::SIGUSR1);
        assert_eq!(waiter.wait().unwrap(), Ok(libc::SIGUSR1), "round {round}");
        assert_eq!(os.join().unwrap(), Ok(libc::SIGUSR1), "round {round}");
    }
}

#[test]
fn two_signals_pending_at_once_reach_two_waiters_of_one_subscription() {
    keep_subscribed();
    for round in 0..50 {
        // Both ignored by default: harmless if one arrives with nobody subscribed.
        let both = Arc::new(Signals::new([libc::SIGWINCH, libc::SIGURG]).unwrap());
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let both = both.clone();
                greenhub::spawn(move || both.wait())
            })
            .collect();
        raise(libc::SIGURG);
        raise(libc::SIGWINCH);
        let mut got: Vec<i32> = waiters
            .into_iter()
            .map(|w| w.wait().unwrap().unwrap())
            .collect();
        got.sort();
        let mut want = vec![libc::SIGWINCH, libc::SIGURG];
        want.sort();
        assert_eq!(got, want, "round {round}");
    }
}

#[test]
fn a_burst_coalesces_to_one_held_signal() {
    keep_subscribed();
    let sigs = Signals::new([libc::SIGUSR2]).unwrap();
    for _ in 0..100 {
        raise(libc::SIGUSR2);
    }
    assert_eq!(sigs.wait(), Ok(libc::SIGUSR2));
    // At most one more (raised after the first was taken, before the rest coalesced), never
    // a hundred.
    std::thread::sleep(Duration::from_millis(50));
    let mut more = 0;
    while sigs.try_wait().is_some() {
        more += 1;
    }
    assert!(more <= 1, "{more} more held");
    assert_eq!(sigs.signals(), vec![libc::SIGUSR2]);
}

#[test]
fn a_wait_ends_at_its_deadline_on_a_kill_and_shows_in_the_snapshot() {
    keep_subscribed();
    let sigs = Arc::new(Signals::new([libc::SIGCONT]).unwrap());
    let s = sigs.clone();
    let timed = greenhub::spawn(move || with_timeout(Duration::from_millis(20), || s.wait()));
    assert!(
        timed.wait().unwrap().is_err(),
        "no signal: the deadline ends it"
    );

    let s = sigs.clone();
    let waiter = greenhub::thread::Builder::new()
        .name("signal-waiter")
        .spawn(move || s.wait())
        .unwrap();
    eventually("the waiter listed as waiting on the signals", || {
        let snap = greenhub::inspect::snapshot();
        snap.threads.iter().any(|t| {
            t.id == waiter.id()
                && t.state == greenhub::inspect::ThreadState::Waiting
                && t.waiting_on_name.as_deref() == Some("SIGCONT")
        })
    });
    let snap = greenhub::inspect::snapshot();
    let t = snap.threads.iter().find(|t| t.id == waiter.id()).unwrap();
    assert!(
        t.describe().contains("waiting on signals \"SIGCONT\""),
        "{}",
        t.describe()
    );
    waiter.kill();
    assert!(waiter.wait().is_err(), "killed while waiting");
}

#[test]
fn a_handler_runs_in_a_new_green_thread_per_signal_until_cancelled() {
    keep_subscribed();
    let runs = Arc::new(AtomicUsize::new(0));
    let green = Arc::new(AtomicUsize::new(0));
    let (r, g) = (runs.clone(), green.clone());
    let handler = handle(libc::SIGVTALRM, move |signal| {
        assert_eq!(signal, libc::SIGVTALRM);
        if greenhub::current().is_some() {
            g.fetch_add(1, Ordering::SeqCst);
        }
        r.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    for n in 1..=10 {
        raise(libc::SIGVTALRM);
        eventually("the handler ran", || runs.load(Ordering::SeqCst) >= n);
    }
    handler.cancel();
    assert_eq!(green.load(Ordering::SeqCst), runs.load(Ordering::SeqCst));
    let after = runs.load(Ordering::SeqCst);
    raise(libc::SIGVTALRM);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        after,
        "a cancelled handler ran"
    );
}

/// The child side of the process tests: what it does depends on `GREENHUB_SIGNAL_CHILD`.
#[test]
fn signal_child() {
    let Ok(mode) = std::env::var("GREENHUB_SIGNAL_CHILD") else {
        return;
    };
    match mode.as_str() {
        "serve" => {
            let stop = Signals::new([libc::SIGTERM]).unwrap();
            let hups = Arc::new(AtomicUsize::new(0));
            let h = hups.clone();
            let _reload = handle(libc::SIGHUP, move |_| {
                let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                println!("hup {n}");
            })
            .unwrap();
            println!("ready");
            let server = greenhub::spawn(move || stop.wait());
            assert_eq!(server.wait().unwrap(), Ok(libc::SIGTERM));
            println!("term after {} hups", hups.load(Ordering::SeqCst));
        }
        "drop" => {
            drop(Signals::new([libc::SIGTERM]).unwrap());
            println!("ready");
            std::thread::sleep(Duration::from_secs(600));
            println!("still alive");
        }
        "ignored" => {
            // Rust programs ignore SIGPIPE; a subscription that comes and goes leaves it so.
            drop(Signals::new([libc::SIGPIPE]).unwrap());
            println!("ready");
            // SAFETY: raises a signal this process ignores.
            unsafe { libc::raise(libc::SIGPIPE) };
            std::thread::sleep(Duration::from_millis(100));
            println!("survived");
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// A child process of this test binary and its output lines, each awaited for a minute at
/// most: a child that hangs fails the test instead of hanging it.
struct Child {
    process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Child {
    /// Starts this test binary in `mode`, waiting for its "ready" line.
    fn start(mode: &str) -> Child {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "signal_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("GREENHUB_SIGNAL_CHILD", mode)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(process.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut child = Child { process, lines };
        // libtest may print "test signal_child ... " on the line before the child's first.
        child.expect("ready");
        child
    }

    /// Reads lines until one ends with `want`.
    fn expect(&mut self, want: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.ends_with(want) => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = self.process.kill();
                    let _ = self.process.wait();
                    panic!("the child never said {want:?}: {e}");
                }
            }
        }
    }

    fn send(&self, signal: i32) {
        // SAFETY: kill on a child this test started and has not reaped (so its pid is ours).
        assert_eq!(unsafe { libc::kill(self.process.id() as i32, signal) }, 0);
    }

    /// Its exit status, within a minute (else it is killed and the test fails).
    fn status(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.process.kill();
                let _ = self.process.wait();
                panic!("the child did not end");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn a_child_handles_sighup_and_stops_cleanly_on_sigterm() {
    let mut c = Child::start("serve");
    for n in 1..=20 {
        c.send(libc::SIGHUP);
        c.expect(&format!("hup {n}"));
    }
    c.send(libc::SIGTERM);
    c.expect("term after 20 hups");
    let status = c.status();
    assert!(status.success(), "{status:?}");
}

#[test]
fn without_a_subscriber_sigterm_ends_the_process_as_before() {
    let c = Child::start("drop");
    c.send(libc::SIGTERM);
    let status = c.status();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[test]
fn a_signal_ignored_before_stays_ignored_once_nobody_subscribes() {
    let mut c = Child::start("ignored");
    c.expect("survived");
    let status = c.status();
    assert!(status.success(), "{status:?}");
}
