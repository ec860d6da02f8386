//! greenhub-serve end to end: the master runs this test binary as its worker program (in
//! child mode: a greenhub-http server on the handed socket), under load from client threads
//! that count every request: reloads, crashes, recycling, the watchdog and stops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD: &str = "GREENHUB_TEST_CHILD";
const WORKER: &str = "worker_program";

/// The worker program: serves `/` (its pid), `/leak` (keeps 8 MiB), `/block` (holds its
/// worker thread for 5 s), `/freeze` (holds every worker thread); ready after
/// `READY_DELAY_MS`; exits with 3 at once if the file `MODE_FILE` says `fail`, never says
/// ready if it says `silent`; drains on SIGTERM.
#[test]
fn worker_program() {
    if std::env::var(CHILD).as_deref() != Ok(WORKER) {
        return;
    }
    let mode = std::env::var("MODE_FILE")
        .ok()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    if mode.trim() == "fail" {
        std::process::exit(3);
    }
    let term = greenhub::signal::Signals::new([libc::SIGTERM, libc::SIGINT]).unwrap();
    let listener = greenhub::net::listen_or_inherit("127.0.0.1:0").unwrap();
    let kept: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let server = greenhub_http::Builder::new()
        .access_log(false)
        .serve(listener, move |req: greenhub_http::Request<'_>| {
            match req.uri().path() {
                "/leak" => {
                    kept.lock().unwrap().push(vec![1u8; 8 << 20]);
                }
                "/block" => std::thread::sleep(Duration::from_secs(5)),
                "/freeze" => {
                    for _ in 0..8 {
                        greenhub::spawn(|| std::thread::sleep(Duration::from_secs(60)));
                    }
                    std::thread::sleep(Duration::from_secs(60));
                }
                _ => {}
            }
            greenhub_http::response::text(std::process::id().to_string())
        })
        .unwrap();
    if let Some(ms) = std::env::var("READY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        greenhub::sleep(Duration::from_millis(ms)).unwrap();
    }
    if mode.trim() != "silent" {
        greenhub::notify::ready().unwrap();
    }
    let _ = term.wait();
    let _ = greenhub::notify::stopping();
    server.stop(Duration::from_secs(10));
    std::process::exit(0);
}

/// A running master and its log.
struct Serve {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(workers: usize, flags: &[&str], envs: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("serve.toml");
        let mode = dir.path().join("mode");
        std::fs::write(&mode, "web").unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut env = format!(
            "[env]\n{CHILD} = \"{WORKER}\"\nMODE_FILE = \"{}\"\nGREENHUB_WORKERS = \"2\"\n",
            mode.display()
        );
        for (k, v) in envs {
            env.push_str(&format!("{k} = \"{v}\"\n"));
        }
        let toml = format!(
            "command = [\"{}\", \"{WORKER}\", \"--exact\", \"--nocapture\", \"--test-threads=1\"]\nworkers = {workers}\nlisten = [\"http=127.0.0.1:{port}\"]\nheartbeat = \"100ms\"\nstop_timeout = \"15s\"\npid_file = \"{}\"\n{env}",
            exe.display(),
            dir.path().join("pid").display()
        );
        std::fs::write(&config, toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_greenhub-serve"))
            .arg("--config")
            .arg(&config)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let s = Serve {
            child,
            log,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            dir,
        };
        s.await_log(workers, " ready in ");
        s
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` log lines contain `needle`.
    fn await_log(&self, n: usize, needle: &str) {
        let t0 = Instant::now();
        while self.count(needle) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "waited for {n} lines with {needle:?}; the log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signals the master this test started.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    /// Stops the master gracefully and waits for it.
    fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "master: {status}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "master did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !self.dir.path().join("pid").exists(),
            "the pid file is removed"
        );
        self.lines()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGINT: the master stops its workers fast, then exits.
            self.signal(libc::SIGINT);
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET on a kept-alive connection: the answering pid, and whether the server closes.
fn get(conn: &mut BufReader<TcpStream>, path: &str) -> Result<(u32, bool), String> {
    conn.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut close = false;
    let mut len = 0usize;
    let mut line = String::new();
    conn.read_line(&mut line)
        .map_err(|e| format!("status: {e}"))?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {line:?}"));
    }
    loop {
        line.clear();
        conn.read_line(&mut line)
            .map_err(|e| format!("head: {e}"))?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if l == "connection: close" {
            close = true;
        }
        if let Some(v) = l.strip_prefix("content-length: ") {
            len = v.parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    let pid = String::from_utf8_lossy(&body)
        .parse()
        .map_err(|_| "body".to_string())?;
    Ok((pid, close))
}

fn connect(addr: SocketAddr) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    Ok(BufReader::new(s))
}

/// A failed request: what failed, and the pid that last answered on its connection.
type Failure = (String, Option<u32>);

/// Client threads that send requests back to back until stopped, reconnecting when an
/// answer says `Connection: close`; every failure is recorded with the pid that last
/// answered on that connection.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<Failure>>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok) = (stop.clone(), ok.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    let mut last: Option<u32> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match connect(addr) {
                                Ok(c) => {
                                    last = None;
                                    conn.insert(c)
                                }
                                Err(e) => {
                                    failures.push((e, None));
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            },
                        };
                        match get(c, "/") {
                            Ok((pid, close)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                last = Some(pid);
                                if close {
                                    conn = None;
                                }
                            }
                            Err(e) => {
                                failures.push((e, last));
                                conn = None;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have been answered.
    fn await_more(&self, n: u64) {
        let from = self.served();
        let t0 = Instant::now();
        while self.served() < from + n {
            assert!(t0.elapsed() < Duration::from_secs(60), "the load stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> Vec<Failure> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// Replays the log: workers ready and not draining, at each drain, never below `n`.
fn assert_capacity_kept(lines: &[String], n: usize) {
    let mut ready = std::collections::HashSet::new();
    let pid_of = |s: &str| -> Option<u32> {
        let rest = s.split("(pid ").nth(1)?;
        rest.split([',', ')']).next()?.parse().ok()
    };
    for l in lines {
        if l.contains(" ready in ") {
            ready.insert(pid_of(l).unwrap());
        }
        if let Some(drained) = l.split("; draining ").nth(1) {
            ready.remove(&pid_of(drained).unwrap());
            assert!(ready.len() >= n, "capacity fell to {} at {l}", ready.len());
        }
        if l.contains(" ended") || l.contains(" exited") {
            ready.remove(&pid_of(l).unwrap());
        }
    }
}

#[test]
fn twenty_reloads_under_load_lose_no_request_and_keep_capacity() {
    let serve = Serve::start(2, &[], &[]);
    let load = Load::start(serve.addr, 8);
    load.await_more(200);
    for g in 2..=21 {
        serve.signal(libc::SIGHUP);
        serve.await_log(1, &format!("reload to generation {g} done"));
        load.await_more(50);
    }
    let failures = load.finish();
    let lines = serve.stop();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_capacity_kept(&lines, 2);
    // Every worker of generations 1 to 20 was replaced and drained.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("ended after its drain"))
            .count(),
        2 * 21,
        "{}",
        lines.join("\n")
    );
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn an_upgrade_of_the_master_hands_the_sockets_over_and_loses_no_request() {
    let mut serve = Serve::start(2, &[], &[]);
    let old = serve.child.id();
    let load = Load::start(serve.addr, 8);
    load.await_more(200);
    serve.signal(libc::SIGUSR2);
    serve.await_log(1, "took the sockets over");
    // The old master drains its workers and exits by itself.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = serve.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the old master stays"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    let new: u32 = std::fs::read_to_string(serve.dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new, old);
    load.await_more(200);
    // A second upgrade, from the new master, works the same way.
    // SAFETY: signals the master this test's master started.
    unsafe { libc::kill(new as i32, libc::SIGUSR2) };
    serve.await_log(2, "took the sockets over");
    let t0 = Instant::now();
    while !gone(new) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the second master stays"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    load.await_more(200);
    let failures = load.finish();
    let newest: u32 = std::fs::read_to_string(serve.dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: stops the master the upgrades started.
    unsafe { libc::kill(newest as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while !gone(newest) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the last master stays"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        serve.count("ended after its drain"),
        6,
        "{}",
        serve.lines().join("\n")
    );
}

#[test]
fn a_reload_whose_new_worker_fails_keeps_the_old_workers() {
    let serve = Serve::start(2, &[], &[]);
    let load = Load::start(serve.addr, 4);
    load.await_more(100);
    serve.set_mode("fail");
    serve.signal(libc::SIGHUP);
    serve.await_log(1, "reload to generation 2 stopped");
    load.await_more(100);
    // A stopped reload stays stopped: no new worker is tried until the next SIGHUP (the
    // back-off after a failure is well under two seconds).
    let starts = serve.count(" started");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        serve.count(" started"),
        starts,
        "{}",
        serve.lines().join("\n")
    );
    serve.set_mode("silent");
    serve.signal(libc::SIGHUP);
    serve.await_log(1, "not ready after");
    serve.await_log(1, "reload to generation 3 stopped");
    load.await_more(100);
    assert_eq!(
        serve.count("ended after its drain"),
        0,
        "no old worker drained"
    );
    serve.set_mode("web");
    serve.signal(libc::SIGHUP);
    serve.await_log(1, "reload to generation 4 done");
    load.await_more(100);
    let failures = load.finish();
    let lines = serve.stop();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_capacity_kept(&lines, 2);
}

#[test]
fn a_killed_worker_is_replaced_and_the_others_serve_on() {
    let serve = Serve::start(2, &[], &[]);
    let load = Load::start(serve.addr, 8);
    load.await_more(200);
    let victim: u32 = {
        let mut c = connect(serve.addr).unwrap();
        get(&mut c, "/").unwrap().0
    };
    // SAFETY: kills a worker of the master this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    serve.await_log(1, "exited on its own (killed by SIGKILL)");
    serve.await_log(3, " ready in ");
    load.await_more(200);
    let failures = load.finish();
    serve.stop();
    // Only connections the killed worker held failed.
    for (why, last) in &failures {
        assert_eq!(*last, Some(victim), "a request failed elsewhere: {why}");
    }
}

#[test]
fn workers_are_recycled_by_requests_age_and_memory() {
    // Requests.
    let serve = Serve::start(
        1,
        &["--max-requests", "300", "--max-requests-jitter", "50"],
        &[],
    );
    let load = Load::start(serve.addr, 2);
    serve.await_log(1, "will be recycled: served");
    serve.await_log(2, " ready in ");
    serve.await_log(1, "ended after its drain");
    let failures = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let lines = serve.stop();
    assert_capacity_kept(&lines, 1);

    // Memory: a worker that keeps 8 MiB per request.
    let serve = Serve::start(
        1,
        &["--max-memory", "150MiB", "--memory-grace", "300ms"],
        &[],
    );
    let mut c = connect(serve.addr).unwrap();
    let leaker = get(&mut c, "/").unwrap().0;
    for _ in 0..24 {
        let (pid, _) = get(&mut c, "/leak").unwrap();
        assert_eq!(pid, leaker);
    }
    serve.await_log(1, "will be recycled: resident memory");
    serve.await_log(1, "ended after its drain");
    drop(c);
    let mut c = connect(serve.addr).unwrap();
    assert_ne!(get(&mut c, "/").unwrap().0, leaker);
    drop(c);
    let lines = serve.stop();
    assert_capacity_kept(&lines, 1);

    // Age.
    let serve = Serve::start(2, &["--max-age", "1s", "--max-age-jitter", "500ms"], &[]);
    let load = Load::start(serve.addr, 2);
    serve.await_log(2, "will be recycled: reached its age limit");
    serve.await_log(2, "ended after its drain");
    let failures = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    serve.stop();
}

#[test]
fn the_watchdog_logs_a_stuck_worker_and_replaces_it() {
    // A green thread holding its worker thread past the limit.
    let serve = Serve::start(
        1,
        &["--blocked-limit", "300ms"],
        &[("GREENHUB_MAX_BLOCKING_MS", "50")],
    );
    let mut c = connect(serve.addr).unwrap();
    let stuck = get(&mut c, "/").unwrap().0;
    let blocker = std::thread::spawn(move || get(&mut c, "/block"));
    serve.await_log(1, "watchdog: a green thread has held one of its workers");
    serve.await_log(1, "what its green threads are doing");
    serve.await_log(1, "ended: watchdog");
    serve.await_log(2, " ready in ");
    let _ = blocker.join();
    let mut c = connect(serve.addr).unwrap();
    assert_ne!(get(&mut c, "/").unwrap().0, stuck);
    drop(c);
    let lines = serve.stop();
    let info: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.contains("what its green threads are doing"))
        .collect();
    assert!(
        info.iter().any(|l| l.contains("http accept")),
        "the run info names the server's threads: {}",
        lines.join("\n")
    );

    // Every worker thread stuck: the heartbeat goes silent.
    let serve = Serve::start(
        1,
        &["--blocked-limit", "off", "--heartbeat-timeout", "1s"],
        &[],
    );
    let mut c = connect(serve.addr).unwrap();
    let frozen = std::thread::spawn(move || get(&mut c, "/freeze"));
    serve.await_log(1, "watchdog: heartbeat silent");
    serve.await_log(1, "what its green threads are doing");
    serve.await_log(2, " ready in ");
    let _ = frozen.join();
    serve.stop();
}

#[test]
fn a_crash_loop_is_reported_and_does_not_spin() {
    let serve = Serve::start(1, &["--restart-backoff", "2s"], &[]);
    serve.set_mode("fail");
    let mut c = connect(serve.addr).unwrap();
    let pid = get(&mut c, "/").unwrap().0;
    // SAFETY: kills the worker of the master this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    serve.await_log(1, "crash loop: 5 workers failed");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let starts = serve.count(" started");
    assert!(
        starts < 20,
        "{starts} starts in {:?}: the master spins",
        t0.elapsed()
    );
    // Fixed, it serves again.
    serve.set_mode("web");
    serve.await_log(2, " ready in ");
    serve.stop();
}

#[test]
fn more_or_fewer_workers_on_ttin_and_ttou() {
    let serve = Serve::start(1, &[], &[]);
    // Signals of one kind coalesce: each is sent once the one before has been seen.
    serve.signal(libc::SIGTTIN);
    serve.await_log(1, "SIGTTIN: 2 workers");
    serve.signal(libc::SIGTTIN);
    serve.await_log(1, "SIGTTIN: 3 workers");
    serve.await_log(3, " ready in ");
    let load = Load::start(serve.addr, 4);
    load.await_more(100);
    serve.signal(libc::SIGTTOU);
    serve.await_log(1, "fewer workers wanted");
    serve.await_log(1, "ended after its drain");
    load.await_more(100);
    let failures = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    serve.stop();
}

#[test]
fn a_graceful_stop_answers_the_requests_in_flight() {
    let serve = Serve::start(2, &[], &[]);
    let load = Load::start(serve.addr, 8);
    load.await_more(200);
    let lines = serve.stop();
    let served = load.served();
    let failures = load.finish();
    // A kept-alive connection is never cut: its last answer says `Connection: close`.
    // Only new connections fail once every worker has stopped accepting.
    assert!(
        failures.iter().all(|(_, last)| last.is_none()),
        "{failures:?}"
    );
    assert!(served >= 200);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("ended after its drain"))
            .count(),
        2
    );
}

/// Asks the attach socket of `pid` one request.
fn ask(pid: u32, request: &str) -> String {
    let path = greenhub_snapshot::attach::socket_path(pid);
    let s = std::os::unix::net::UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (&s).write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    line
}

#[test]
fn inspectors_see_the_master_its_workers_and_their_generations() {
    let serve = Serve::start(2, &[], &[]);
    serve.signal(libc::SIGHUP);
    serve.await_log(1, "reload to generation 2 done");
    let master = serve.child.id();
    // The master publishes each tick: wait until it shows the new generation only.
    let t0 = Instant::now();
    let summary = loop {
        let s: greenhub_snapshot::attach::Summary =
            serde_json::from_str(&ask(master, "summary")).unwrap();
        let workers = s.workers.clone().expect("a master lists its workers");
        if workers.len() == 2
            && workers
                .iter()
                .all(|w| w.generation == 2 && w.state == "ready")
        {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{workers:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(summary.process, "greenhub-serve");
    assert_eq!(summary.pid, master);
    for w in summary.workers.unwrap() {
        let ws: greenhub_snapshot::attach::Summary =
            serde_json::from_str(&ask(w.pid, "summary")).unwrap();
        let place = ws.supervised.expect("a worker knows its place");
        assert_eq!(
            (place.master, place.worker, place.generation),
            (master, w.id, 2)
        );
        assert!(ws.threads > 0);
    }
    // Only its user can reach the master's socket: mode 0600 in a 0700 directory (another
    // user's connect is refused by the kernel, as for every greenhub process).
    {
        use std::os::unix::fs::PermissionsExt;
        let path = greenhub_snapshot::attach::socket_path(master);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
    }
    // A snapshot of the master is refused with the way to a worker's.
    assert!(ask(master, "snapshot").contains("runs no green threads"));
    assert!(ask(master, "nonsense\x1b").contains("unknown request"));
    let lines = serve.stop();
    assert!(
        !greenhub_snapshot::attach::socket_path(master).exists(),
        "{}",
        lines.join("\n")
    );
}

/// `promtool check metrics` on an exposition: its complaints, empty when it is valid.
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) runs the exposition check");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        String::new()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn the_masters_metrics_merge_its_workers_and_survive_reloads() {
    let serve = Serve::start(2, &["--stats", "127.0.0.1:0"], &[]);
    let addr = serve
        .lines()
        .iter()
        .find_map(|l| {
            l.split("metrics on http://")
                .nth(1)
                .map(|a| a.trim_end_matches("/metrics").to_string())
        })
        .expect("the log says where the metrics are");
    let load = Load::start(serve.addr, 2);
    load.await_more(500);
    // The workers' own series arrive once their heartbeats have named their endpoints.
    let t0 = Instant::now();
    let first = loop {
        let text = scrape(&addr);
        let merged = text.lines().filter(|l| {
            l.starts_with("greenhub_")
                && !l.starts_with("greenhub_serve_")
                && l.contains("worker=\"")
        });
        let workers: std::collections::HashSet<&str> = merged
            .filter_map(|l| l.split("worker=\"").nth(1)?.split('"').next())
            .collect();
        if workers.len() == 2 && value(&text, "greenhub_serve_requests_total") > 0.0 {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(promtool(&first), "", "{first}");
    assert_eq!(
        value(&first, "greenhub_serve_workers{state=\"ready\"}"),
        2.0
    );
    let before = value(&first, "greenhub_serve_requests_total");
    serve.signal(libc::SIGHUP);
    serve.await_log(1, "reload to generation 2 done");
    load.await_more(200);
    let t0 = Instant::now();
    let after = loop {
        let text = scrape(&addr);
        if value(&text, "greenhub_serve_reloads_total{outcome=\"done\"}") == 1.0
            && value(&text, "greenhub_serve_worker_exits_total{how=\"drained\"}") == 2.0
        {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(promtool(&after), "", "{after}");
    // The requests of the workers that ended still count.
    assert!(value(&after, "greenhub_serve_requests_total") >= before);
    assert_eq!(
        value(&after, "greenhub_serve_recycles_total{reason=\"reload\"}"),
        2.0
    );
    assert!(after.contains("generation=\"2\""));
    // Anything but /metrics is not found; a slow client does not hold the endpoint.
    let silent = TcpStream::connect(&addr).unwrap();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    drop(silent);
    let failures = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    serve.stop();
}

#[test]
fn a_socket_activated_master_serves_the_sockets_systemd_handed_it() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_greenhub-serve"))
        .args(["--workers", "1", "--heartbeat", "100ms", "--"])
        .arg(&exe)
        .args([WORKER, "--exact", "--nocapture", "--test-threads=1"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web")
        .env(CHILD, WORKER)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
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
    let mut child = cmd.spawn().unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(" ready in ") {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "the master ended");
    }
    // The master's own copy is the one handed; the test's copy can go.
    drop(listener);
    let mut c = connect(addr).unwrap();
    let (pid, _) = get(&mut c, "/").unwrap();
    assert_ne!(pid, child.id(), "a worker answers, not the master");
    drop(c);
    // SAFETY: stops the master this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn check_validates_and_refuses_with_reasons() {
    let serve = env!("CARGO_BIN_EXE_greenhub-serve");
    let run = |args: &[&str]| {
        let out = Command::new(serve).args(args).output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = run(&["--check", "--listen", "127.0.0.1:0", "--", "true"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("configuration valid"), "{out}");
    let (code, out) = run(&[
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--",
        "no-such-program-xyz",
    ]);
    assert_eq!(code, Some(2));
    assert!(out.contains("cannot run no-such-program-xyz"), "{out}");
    let (code, out) = run(&["--check", "--", "true"]);
    assert_eq!(code, Some(2));
    assert!(out.contains("listen: no socket to serve"), "{out}");
    let (code, out) = run(&[
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--max-memory",
        "\x1b[31mlots",
        "--",
        "true",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("\\u{1b}[31mlots") && !out.contains('\x1b'),
        "{out:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "listen = [\"127.0.0.1:0\"]\ncommand = [\"true\"]\nworkres = 3\n",
    )
    .unwrap();
    let (code, out) = run(&["--check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(out.contains("workres") && out.contains("line 3"), "{out}");
    // A port in use is a clear error at start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, out) = run(&["--listen", &addr, "--", "true"]);
    assert_eq!(code, Some(2));
    assert!(out.contains(&format!("cannot listen on {addr}")), "{out}");
}
