//! The master: one OS thread that owns the listening sockets and the workers, and acts on
//! signals, on what workers say (`READY=1`, heartbeats) and on time. It starts no greenhub
//! runtime: forking a process with green threads and worker threads is unsafe.
//!
//! The rules it keeps:
//! - **Replace, then drain.** A worker is retired (reload, recycling, a smaller target) only
//!   once its replacement has said it is ready; one replacement at a time. A new worker that
//!   exits or stays silent past `ready_timeout` stops a reload, and the old workers keep
//!   serving.
//! - **A crash costs a back-off, not a spin.** Restarts after crashes wait 100 ms, doubling
//!   up to `restart_backoff`; `crash_loop` crashes within `crash_window` are reported as a
//!   crash loop.
//! - **A stuck worker is shown before it is killed.** A silent heartbeat, or a green thread
//!   holding one of its workers past `blocked_limit`, gets the worker's run info (read over
//!   its attach socket, which answers even when every worker is stuck) written to the log,
//!   then SIGKILL.
//!
//! - **An upgrade keeps the sockets open.** SIGUSR2 starts the master's binary anew; it
//!   takes the listening sockets over the control socket (`upgrade.rs`), and this master
//!   drains only once the new one's workers are all ready.
//!
//! It uses `config.rs`, `listen.rs`, `notify.rs`, `signals.rs`, `spawn.rs`, `dump.rs`,
//! `upgrade.rs`, `status.rs`, `metrics.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub_snapshot::attach::WorkerProcess;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::Config;
use crate::dump;
use crate::listen::{self, Listener};
use crate::metrics::{self, Counters};
use crate::notify::{Message, NotifySocket};
use crate::signals::Signals;
use crate::spawn::{self, Program, SpawnError};
use crate::status::{Published, Status};
use crate::upgrade::{self, Control, UpgradeError};

/// The first pause before restarting a crashed worker.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How long a fast stop waits before SIGKILL.
const FAST_STOP: Duration = Duration::from_secs(1);

/// How long the kill of a stuck worker waits for its run info to be written.
const DUMP_LIMIT: Duration = Duration::from_secs(10);

/// The most notifications read in one pass of the loop: a flood cannot starve the rest.
const MESSAGES_PER_PASS: usize = 256;

/// A pass of the loop that took longer than this (the machine stalled, the master was
/// stopped) moves the workers' heartbeat and start times on by as much, so that nobody is
/// killed for the master's own silence.
const STALL: Duration = Duration::from_secs(1);

/// How often resident memory is read.
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// The longest sleep of the loop: timers are checked at least this often.
const TICK: Duration = Duration::from_millis(50);

/// Why the master cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The listening sockets.
    #[error(transparent)]
    Listen(#[from] listen::ListenError),
    /// The worker program.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Taking the sockets over from an old master.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// The notify socket, the signal actions or the pid file.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Why a worker is replaced.
#[derive(Clone, Debug, PartialEq)]
enum Reason {
    Reload(u32),
    Memory { rss: u64, limit: u64 },
    Requests(u64),
    Age(Duration),
}

impl Reason {
    /// Its label in the metrics.
    fn kind(&self) -> &'static str {
        match self {
            Reason::Reload(_) => "reload",
            Reason::Memory { .. } => "memory",
            Reason::Requests(_) => "requests",
            Reason::Age(_) => "age",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Reload(g) => write!(f, "reload to generation {g}"),
            Reason::Memory { rss, limit } => write!(
                f,
                "resident memory {} MiB over the limit of {} MiB",
                rss >> 20,
                limit >> 20
            ),
            Reason::Requests(n) => write!(f, "served {n} requests"),
            Reason::Age(d) => write!(f, "reached its age limit of {} s", d.as_secs()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// Started, not ready yet.
    Starting,
    Ready,
    /// Told to stop (SIGTERM); killed at the deadline (`killed` once it has been).
    Draining {
        deadline: Instant,
        killed: bool,
    },
    /// Sent SIGKILL for this reason; its exit counts as a failure.
    Killed(String),
}

#[derive(Debug)]
struct Worker {
    id: u64,
    pid: u32,
    generation: u32,
    started: Instant,
    state: State,
    /// The worker this one replaces once ready.
    replaces: Option<u32>,
    /// Why this worker is to be replaced.
    retire: Option<Reason>,
    last_beat: Instant,
    beating: bool,
    requests: u64,
    blocked_ms: u64,
    rss: u64,
    over_memory_since: Option<Instant>,
    max_requests: Option<u64>,
    max_age: Option<Duration>,
    /// Its stats endpoint, from its heartbeat.
    stats: Option<std::net::SocketAddr>,
}

impl Worker {
    fn serving(&self) -> bool {
        matches!(self.state, State::Starting | State::Ready)
    }

    fn label(&self) -> String {
        format!(
            "worker {} (pid {}, generation {})",
            self.id, self.pid, self.generation
        )
    }
}

/// What ended a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stop {
    deadline: Instant,
    fast: bool,
}

/// An upgrade under way: the new master this one started.
#[derive(Debug)]
struct Upgrade {
    pid: u32,
    started: Instant,
    /// Its control connection, once it has taken the sockets.
    conn: Option<std::os::unix::net::UnixStream>,
}

/// The master process.
pub struct Master {
    cfg: Config,
    program: Program,
    listeners: Vec<Listener>,
    // Declared before `_dir`: the sockets go before their directory.
    notify: NotifySocket,
    control: Control,
    _dir: tempfile::TempDir,
    upgrade: Option<Upgrade>,
    /// The attach socket, if it could be made (removed when the master ends).
    _status: Option<Status>,
    /// What the attach socket and the metrics endpoint read.
    shared: Arc<Mutex<Published>>,
    /// Where the metrics endpoint listens, if it does.
    metrics_addr: Option<std::net::SocketAddr>,
    counters: Counters,
    /// The old master's control connection, while this master takes over from it.
    takeover: Option<(std::os::unix::net::UnixStream, String)>,
    signals: Signals,
    workers: BTreeMap<u32, Worker>,
    target: usize,
    generation: u32,
    next_id: u64,
    reload: Option<(u32, Instant)>,
    stop: Option<Stop>,
    crashes: VecDeque<Instant>,
    next_start: Instant,
    loop_reported: bool,
    last_memory: Instant,
    last_pass: Instant,
    /// Stuck workers whose run info is being read, with when to kill them anyway.
    dumps: Vec<(u32, std::sync::mpsc::Receiver<()>, Instant)>,
    /// The control socket is not polled until then (its accept failed for want of
    /// descriptors).
    control_paused: Option<Instant>,
    /// Unix socket files this master bound, removed when it stops for good.
    unix_paths: Vec<std::path::PathBuf>,
    /// A new master has taken the sockets over and serves them.
    handed_over: bool,
    seed: u64,
}

impl Master {
    /// Opens the sockets, the notify socket and the signal actions; writes the pid file.
    /// No worker runs yet.
    pub fn new(cfg: Config) -> Result<Master, MasterError> {
        let program = Program::resolve(&cfg.command)?;
        let (listeners, takeover) = match std::env::var_os(upgrade::TAKEOVER_VAR) {
            Some(path) => {
                let (listeners, conn) = upgrade::take(std::path::Path::new(&path))?;
                (listeners, Some((conn, path.to_string_lossy().into_owned())))
            }
            None => (listen::open(&cfg.listen, cfg.backlog)?, None),
        };
        let setup = |what| move |source| MasterError::Setup { what, source };
        let dir = tempfile::Builder::new()
            .prefix("greenhub-serve-")
            .tempdir_in(runtime_dir())
            .map_err(setup("the master's directory"))?;
        let notify = NotifySocket::bind(dir.path()).map_err(setup("the notify socket"))?;
        let control = Control::bind(dir.path()).map_err(setup("the control socket"))?;
        let signals = Signals::install().map_err(|source| MasterError::Setup {
            what: "the signal actions",
            source,
        })?;
        // A new master names itself in the pid file once the old one hands over to it.
        if takeover.is_none() {
            write_pid_file(&cfg).map_err(setup("the pid file"))?;
        }
        let unix_paths = if takeover.is_none() {
            cfg.listen
                .iter()
                .filter_map(|l| match &l.addr {
                    crate::config::ListenAddr::Unix(p) => Some(p.clone()),
                    crate::config::ListenAddr::Tcp(_) => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let shared: Arc<Mutex<Published>> = Arc::default();
        let metrics_addr = match cfg.stats {
            Some(addr) => {
                Some(metrics::start(addr, shared.clone()).map_err(setup("the metrics endpoint"))?)
            }
            None => None,
        };
        let now = Instant::now();
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
        Ok(Master {
            target: cfg.workers,
            cfg,
            program,
            listeners,
            notify,
            control,
            _dir: dir,
            upgrade: None,
            _status: Status::start(shared.clone())
                .inspect_err(|e| {
                    log::warn!(
                        "no attach socket, `inspector list` will not show this master: {e} \
                         (GREENHUB_ATTACH_DIR chooses the directory)"
                    )
                })
                .ok(),
            shared,
            metrics_addr,
            counters: Counters::default(),
            takeover,
            signals,
            workers: BTreeMap::new(),
            generation: 1,
            next_id: 1,
            reload: None,
            stop: None,
            crashes: VecDeque::new(),
            next_start: now,
            loop_reported: false,
            last_memory: now,
            last_pass: now,
            dumps: Vec::new(),
            control_paused: None,
            unix_paths,
            handed_over: false,
            seed: seed | 1,
        })
    }

    /// Where the metrics endpoint listens, if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// What the sockets listen on, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.shown.clone()).collect()
    }

    /// Runs until a stop has ended every worker.
    pub fn run(mut self) {
        log::info!(
            "greenhub-serve {}: {} workers of {} on {}",
            std::process::id(),
            self.target,
            self.program.shown(),
            self.addresses().join(", ")
        );
        if let Some(addr) = self.metrics_addr {
            log::info!("metrics on http://{addr}/metrics");
        }
        loop {
            self.wait();
            for sig in self.signals.take() {
                self.on_signal(sig);
            }
            self.reap();
            for _ in 0..MESSAGES_PER_PASS {
                let Some(m) = self.notify.receive() else {
                    break;
                };
                self.on_message(m);
            }
            let now = Instant::now();
            let gap = now.duration_since(self.last_pass);
            self.last_pass = now;
            if gap > STALL {
                log::warn!(
                    "the master's loop stalled for {:.1} s; the workers' timers move on as much",
                    gap.as_secs_f64()
                );
                for w in self.workers.values_mut() {
                    w.last_beat += gap;
                    w.started += gap;
                }
            }
            if now.duration_since(self.last_memory) >= MEMORY_EVERY {
                self.last_memory = now;
                self.sample_memory();
            }
            self.check(now);
            self.follow_upgrade(now);
            self.publish(now);
            match self.stop {
                Some(_) if self.workers.is_empty() => break,
                Some(_) => {}
                None => self.maintain(now),
            }
        }
        if let Some(path) = &self.cfg.pid_file
            && std::fs::read_to_string(path)
                .is_ok_and(|s| s.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(path);
        }
        // After an upgrade the new master serves on these paths: they stay.
        if !self.handed_over {
            for p in &self.unix_paths {
                let _ = std::fs::remove_file(p);
            }
        }
        log::info!("greenhub-serve {}: stopped", std::process::id());
    }

    /// What inspectors see.
    fn publish(&self, now: Instant) {
        let workers: Vec<WorkerProcess> = self
            .workers
            .values()
            .map(|w| WorkerProcess {
                id: w.id,
                pid: w.pid,
                generation: w.generation,
                state: match w.state {
                    State::Starting => "starting",
                    State::Ready => "ready",
                    State::Draining { .. } => "draining",
                    State::Killed(_) => "killed",
                }
                .to_string(),
                age_us: now.duration_since(w.started).as_micros() as u64,
                requests: w.requests,
                rss_bytes: w.rss,
                blocked_ms: w.blocked_ms,
                retiring: w.retire.as_ref().map(|r| r.to_string()),
            })
            .collect();
        let stats = self.workers.values().map(|w| w.stats).collect();
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Published {
            workers,
            stats,
            target: self.target,
            generation: self.generation,
            counters: self.counters.clone(),
        };
    }

    /// Sleeps until a signal, a message, or the next tick.
    fn wait(&self) {
        // SAFETY: both descriptors belong to `self` and outlive the poll.
        let (sig, note) = unsafe {
            (
                BorrowedFd::borrow_raw(self.signals.raw()),
                BorrowedFd::borrow_raw(self.notify.raw()),
            )
        };
        // SAFETY: as above.
        let ctl = unsafe { BorrowedFd::borrow_raw(self.control.raw()) };
        let mut fds = vec![
            PollFd::new(sig, PollFlags::POLLIN),
            PollFd::new(note, PollFlags::POLLIN),
        ];
        if self.control_paused.is_none() {
            fds.push(PollFd::new(ctl, PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16));
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGHUP if self.stop.is_none() => {
                self.generation += 1;
                self.reload = Some((self.generation, Instant::now()));
                log::info!(
                    "SIGHUP: reload to generation {}: each worker is replaced once its replacement is ready",
                    self.generation
                );
            }
            libc::SIGTERM if self.stop.is_none() => {
                log::info!(
                    "SIGTERM: graceful stop (workers get {} s to finish)",
                    self.cfg.stop_timeout.as_secs_f64()
                );
                self.begin_stop(false);
            }
            libc::SIGINT | libc::SIGQUIT if !self.stop.is_some_and(|s| s.fast) => {
                log::info!("{}: fast stop", greenhub::signal::name(sig));
                self.begin_stop(true);
            }
            libc::SIGTTIN if self.stop.is_none() => {
                self.target = (self.target + 1).min(1024);
                log::info!("SIGTTIN: {} workers", self.target);
            }
            libc::SIGTTOU if self.stop.is_none() => {
                if self.target > 1 {
                    self.target -= 1;
                }
                log::info!("SIGTTOU: {} workers", self.target);
            }
            libc::SIGUSR2 if self.stop.is_none() => self.begin_upgrade(),
            _ => {}
        }
    }

    fn begin_upgrade(&mut self) {
        if let Some(up) = &self.upgrade {
            log::warn!(
                "SIGUSR2: an upgrade is under way already (new master pid {})",
                up.pid
            );
            return;
        }
        let me = match Program::this_master() {
            Ok(p) => p,
            Err(e) => {
                log::error!("SIGUSR2: cannot upgrade: {e}");
                return;
            }
        };
        let env = [(
            upgrade::TAKEOVER_VAR.to_string(),
            self.control.path().display().to_string(),
        )];
        match spawn::spawn(&me, &env, &[], None) {
            Ok(pid) => {
                log::info!(
                    "SIGUSR2: upgrade: new master pid {pid} started from {}; this one drains once its workers are ready",
                    me.shown()
                );
                self.upgrade = Some(Upgrade {
                    pid,
                    started: Instant::now(),
                    conn: None,
                });
            }
            Err(e) => log::error!("SIGUSR2: cannot upgrade: {e}"),
        }
    }

    /// Hands the sockets to the new master, and drains this one once it is ready; on the
    /// new master's side, tells the old one when every worker is ready.
    fn follow_upgrade(&mut self, now: Instant) {
        let paused = self.control_paused.is_some_and(|until| now < until);
        if !paused {
            self.control_paused = None;
            match self
                .control
                .serve(&self.listeners, self.upgrade.as_ref().map(|u| u.pid))
            {
                Ok(Some((stream, pid))) => {
                    if let Some(up) = self.upgrade.as_mut()
                        && up.pid == pid
                    {
                        up.conn = Some(stream);
                    }
                }
                Ok(None) => {}
                // Out of descriptors: the connection stays queued; look again in a tick
                // instead of spinning on it.
                Err(_) => self.control_paused = Some(now + TICK),
            }
        }
        if let Some(up) = &self.upgrade
            && self.stop.is_none()
        {
            let verdict = up.conn.as_ref().and_then(upgrade::said_ready);
            let limit = self.cfg.ready_timeout * 2 + Duration::from_secs(10);
            match verdict {
                Some(true) => {
                    log::info!(
                        "upgrade: new master pid {} has its workers ready; this master drains its own and exits",
                        up.pid
                    );
                    self.upgrade = None;
                    self.handed_over = true;
                    self.begin_stop(false);
                }
                Some(false) => {
                    log::error!(
                        "upgrade stopped: new master pid {} left before its workers were ready; this master keeps serving",
                        up.pid
                    );
                    let _ = kill(Pid::from_raw(up.pid as i32), Signal::SIGTERM);
                    self.upgrade = None;
                    let _ = write_pid_file(&self.cfg);
                }
                None if now.duration_since(up.started) > limit => {
                    log::error!(
                        "upgrade stopped: new master pid {} not ready after {} s; this master keeps serving",
                        up.pid,
                        limit.as_secs()
                    );
                    let _ = kill(Pid::from_raw(up.pid as i32), Signal::SIGTERM);
                    self.upgrade = None;
                    let _ = write_pid_file(&self.cfg);
                }
                None => {}
            }
        }
        if self.takeover.is_some() && self.stop.is_none() {
            let ready = self
                .workers
                .values()
                .filter(|w| w.state == State::Ready)
                .count();
            if ready >= self.target
                && let Some((mut conn, path)) = self.takeover.take()
            {
                use std::io::Write;
                match conn.write_all(format!("{}\n", upgrade::READY).as_bytes()) {
                    Ok(()) => {
                        log::info!("took the sockets over ({path}); the old master drains now");
                        if let Err(e) = write_pid_file(&self.cfg) {
                            log::warn!("cannot write the pid file: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("cannot tell the old master ({path}) this one is ready: {e}")
                    }
                }
            }
        }
    }

    fn begin_stop(&mut self, fast: bool) {
        let now = Instant::now();
        let deadline = now
            + if fast {
                FAST_STOP
            } else {
                self.cfg.stop_timeout
            };
        self.stop = Some(Stop { deadline, fast });
        self.reload = None;
        // A new master that has not taken over yet goes too: it must not be left holding
        // the sockets.
        if let Some(up) = self.upgrade.take() {
            log::info!("stopping the new master pid {} too", up.pid);
            let _ = kill(Pid::from_raw(up.pid as i32), Signal::SIGTERM);
        }
        // New connections are refused from here on, not queued for workers that will not
        // take them (each worker closes its own copy when it stops accepting).
        self.listeners.clear();
        let pids: Vec<u32> = self.workers.keys().copied().collect();
        for pid in pids {
            let w = self.workers.get_mut(&pid).expect("listed");
            if matches!(w.state, State::Killed(_)) {
                continue;
            }
            let signal = if fast {
                Signal::SIGINT
            } else {
                Signal::SIGTERM
            };
            let _ = kill(Pid::from_raw(pid as i32), signal);
            w.state = State::Draining {
                deadline,
                killed: false,
            };
        }
    }

    /// Reaps every worker that has exited.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit status {code}")),
                WaitStatus::Signaled(pid, sig, _) => (pid, format!("killed by {sig}")),
                _ => continue,
            };
            let clean = matches!(status, WaitStatus::Exited(_, 0));
            self.on_exit(pid.as_raw() as u32, &how, clean);
        }
    }

    fn on_exit(&mut self, pid: u32, how: &str, clean: bool) {
        if self.upgrade.as_ref().is_some_and(|u| u.pid == pid) {
            if self.stop.is_none() {
                log::error!(
                    "upgrade stopped: new master pid {pid} exited ({how}); this master keeps serving"
                );
                self.upgrade = None;
                let _ = write_pid_file(&self.cfg);
            }
            return;
        }
        let Some(w) = self.workers.remove(&pid) else {
            return;
        };
        self.counters.retired_requests += w.requests;
        // A replacement in flight for this worker now simply adds capacity.
        for other in self.workers.values_mut() {
            if other.replaces == Some(pid) {
                other.replaces = None;
            }
        }
        let failed = match &w.state {
            State::Draining { .. } => {
                if clean {
                    log::info!("{} ended after its drain", w.label());
                } else {
                    log::info!("{} ended after its drain ({how})", w.label());
                }
                false
            }
            State::Killed(why) => {
                log::warn!("{} ended: {why} ({how})", w.label());
                true
            }
            State::Starting => {
                log::error!("{} exited before it was ready ({how})", w.label());
                true
            }
            State::Ready => {
                log::error!("{} exited on its own ({how})", w.label());
                true
            }
        };
        if failed {
            self.counters.failed += 1;
        } else {
            self.counters.drained += 1;
        }
        if !failed || self.stop.is_some() {
            return;
        }
        if w.replaces.is_some() {
            self.stop_reload("its new worker failed");
        }
        self.crashed(Instant::now());
    }

    /// Stops the reload under way, if any: the workers it had not replaced yet keep serving.
    fn stop_reload(&mut self, why: &str) {
        let Some((generation, _)) = self.reload.take() else {
            return;
        };
        for w in self.workers.values_mut() {
            if matches!(w.retire, Some(Reason::Reload(_))) {
                w.retire = None;
            }
        }
        self.counters.reloads_stopped += 1;
        log::error!(
            "reload to generation {generation} stopped: {why}; the workers still serving keep serving (send SIGHUP to try again)"
        );
    }

    fn crashed(&mut self, now: Instant) {
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.cfg.crash_window)
        {
            self.crashes.pop_front();
        }
        let n = self.crashes.len() as u32;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (n.saturating_sub(1)).min(20))
            .min(self.cfg.restart_backoff);
        self.next_start = now + backoff;
        if n >= self.cfg.crash_loop {
            if !self.loop_reported {
                log::error!(
                    "crash loop: {n} workers failed within {} s; starting the next in {:.1} s (pauses up to {} s)",
                    self.cfg.crash_window.as_secs(),
                    backoff.as_secs_f64(),
                    self.cfg.restart_backoff.as_secs()
                );
                self.loop_reported = true;
            }
        } else {
            self.loop_reported = false;
            log::info!("the next worker starts in {:.1} s", backoff.as_secs_f64());
        }
    }

    fn on_message(&mut self, m: Message) {
        let Some(w) = self.workers.get_mut(&m.pid) else {
            return;
        };
        let now = Instant::now();
        if let Some(n) = m
            .fields
            .get("X_GREENHUB_REQUESTS")
            .and_then(|v| v.parse().ok())
        {
            w.requests = n;
        }
        if let Some(n) = m
            .fields
            .get("X_GREENHUB_BLOCKED_MS")
            .and_then(|v| v.parse().ok())
        {
            w.blocked_ms = n;
        }
        if let Some(addr) = m
            .fields
            .get("X_GREENHUB_STATS")
            .and_then(|v| v.parse().ok())
        {
            w.stats = Some(addr);
        }
        if m.fields.get("WATCHDOG").is_some_and(|v| v == "1") {
            w.last_beat = now;
            w.beating = true;
        }
        if m.fields.get("READY").is_some_and(|v| v == "1") && w.state == State::Starting {
            w.state = State::Ready;
            w.last_beat = now;
            let replaces = w.replaces.take();
            let label = w.label();
            let took = now.duration_since(w.started);
            match replaces.and_then(|old| self.workers.get(&old).map(|o| (old, o.retire.clone()))) {
                Some((old, why)) => {
                    if let Some(r) = &why {
                        *self.counters.recycled.entry(r.kind()).or_default() += 1;
                    }
                    let why = why.map_or_else(String::new, |r| format!(": {r}"));
                    log::info!(
                        "{label} ready in {} ms; draining {}{why}",
                        took.as_millis(),
                        self.workers[&old].label()
                    );
                    self.drain(old, now);
                }
                None => log::info!("{label} ready in {} ms", took.as_millis()),
            }
        }
    }

    fn drain(&mut self, pid: u32, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if !w.serving() {
            return;
        }
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        w.state = State::Draining {
            deadline: now + self.cfg.stop_timeout,
            killed: false,
        };
    }

    fn sample_memory(&mut self) {
        for w in self.workers.values_mut() {
            if let Some(rss) = resident(w.pid) {
                w.rss = rss;
            }
        }
    }

    /// Time-driven checks: readiness, drains, the watchdog, recycling.
    fn check(&mut self, now: Instant) {
        let cfg = &self.cfg;
        let mut kills: Vec<(u32, String, bool)> = Vec::new();
        for w in self.workers.values_mut() {
            match &w.state {
                State::Starting if now.duration_since(w.started) > cfg.ready_timeout => {
                    kills.push((
                        w.pid,
                        format!("not ready after {} s", cfg.ready_timeout.as_secs_f64()),
                        false,
                    ));
                }
                State::Draining {
                    deadline,
                    killed: false,
                } if now > *deadline => {
                    kills.push((w.pid, "still running at its stop deadline".into(), false));
                }
                State::Ready => {
                    if cfg.heartbeat.is_some()
                        && w.beating
                        && now.duration_since(w.last_beat) > cfg.heartbeat_timeout
                    {
                        let silent = now.duration_since(w.last_beat).as_secs_f64();
                        kills.push((
                            w.pid,
                            format!("watchdog: heartbeat silent for {silent:.1} s"),
                            true,
                        ));
                        continue;
                    }
                    if let Some(limit) = cfg.blocked_limit
                        && w.blocked_ms >= limit.as_millis() as u64
                    {
                        kills.push((
                            w.pid,
                            format!(
                                "watchdog: a green thread has held one of its workers for {} ms",
                                w.blocked_ms
                            ),
                            true,
                        ));
                        continue;
                    }
                    if w.retire.is_some() {
                        continue;
                    }
                    if let Some(limit) = cfg.max_memory {
                        if w.rss > limit {
                            let since = *w.over_memory_since.get_or_insert(now);
                            if now.duration_since(since) >= cfg.memory_grace {
                                w.retire = Some(Reason::Memory { rss: w.rss, limit });
                            }
                        } else if w.rss < limit / 10 * 9 {
                            w.over_memory_since = None;
                        }
                    }
                    if w.retire.is_none()
                        && let Some(max) = w.max_requests
                        && w.requests >= max
                    {
                        w.retire = Some(Reason::Requests(w.requests));
                    }
                    if w.retire.is_none()
                        && let Some(max) = w.max_age
                        && now.duration_since(w.started) >= max
                    {
                        w.retire = Some(Reason::Age(max));
                    }
                    if let Some(r) = &w.retire {
                        log::info!("{} will be recycled: {r}", w.label());
                    }
                }
                _ => {}
            }
        }
        for (pid, why, show) in kills {
            let Some(w) = self.workers.get_mut(&pid) else {
                continue;
            };
            w.state = match &w.state {
                // A worker killed during its drain still ended by the master's will.
                State::Draining { deadline, .. } => State::Draining {
                    deadline: *deadline,
                    killed: true,
                },
                _ => State::Killed(why.clone()),
            };
            if show {
                // The run info is read on a thread of its own (a stuck worker may answer
                // slowly); the kill follows when it is written, or after DUMP_LIMIT.
                self.counters.watchdog_kills += 1;
                log::warn!("worker pid {pid}: {why}: reading its run info, then SIGKILL");
                let (tx, rx) = std::sync::mpsc::channel();
                let said = why.clone();
                let spawned = std::thread::Builder::new()
                    .name("greenhub-serve-dump".into())
                    .spawn(move || {
                        dump::log_run_info(pid, &said);
                        let _ = tx.send(());
                    });
                if spawned.is_ok() {
                    self.dumps.push((pid, rx, now + DUMP_LIMIT));
                    continue;
                }
            }
            log::warn!("worker pid {pid}: {why}: SIGKILL");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // Kills that waited for a run info.
        let workers = &self.workers;
        self.dumps.retain(|(pid, rx, deadline)| {
            let done = !matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty));
            if !done && now < *deadline {
                return true;
            }
            // Only a worker not reaped yet: a reaped pid may belong to another process now.
            if workers.contains_key(pid) {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
            false
        });
    }

    /// Keeps the number of serving workers at the target, and replaces one retired worker
    /// at a time.
    fn maintain(&mut self, now: Instant) {
        let counted = |w: &&Worker| w.serving() && w.replaces.is_none();
        let serving = self.workers.values().filter(counted).count();
        if serving < self.target {
            if now >= self.next_start {
                self.start(None, now);
            }
            return;
        }
        if serving > self.target {
            // The oldest goes first.
            if let Some(pid) = self
                .workers
                .values()
                .filter(counted)
                .min_by_key(|w| w.started)
                .map(|w| w.pid)
            {
                log::info!(
                    "{} drains: fewer workers wanted",
                    self.workers[&pid].label()
                );
                self.drain(pid, now);
            }
            return;
        }
        if self.workers.values().any(|w| w.replaces.is_some()) {
            return;
        }
        if let Some((generation, _)) = self.reload {
            for w in self.workers.values_mut() {
                if w.generation < generation && w.serving() && w.retire.is_none() {
                    w.retire = Some(Reason::Reload(generation));
                }
            }
        }
        let candidate = self
            .workers
            .values()
            .filter(|w| w.state == State::Ready && w.retire.is_some())
            .min_by_key(|w| (!matches!(w.retire, Some(Reason::Reload(_))), w.started))
            .map(|w| w.pid);
        match candidate {
            Some(old) if now >= self.next_start => self.start(Some(old), now),
            Some(_) => {}
            None => {
                if let Some((generation, began)) = self.reload
                    && !self
                        .workers
                        .values()
                        .any(|w| w.generation < generation && w.serving())
                {
                    log::info!(
                        "reload to generation {generation} done in {:.1} s",
                        now.duration_since(began).as_secs_f64()
                    );
                    self.counters.reloads_done += 1;
                    self.reload = None;
                }
            }
        }
    }

    fn start(&mut self, replaces: Option<u32>, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let mut env: Vec<(String, String)> = self
            .cfg
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push((
            "NOTIFY_SOCKET".into(),
            self.notify.path().display().to_string(),
        ));
        if let Some(h) = self.cfg.heartbeat {
            env.push(("WATCHDOG_USEC".into(), h.as_micros().to_string()));
        }
        if self.metrics_addr.is_some() && !self.cfg.env.contains_key("GREENHUB_STATS_ADDR") {
            // Each worker's own endpoint, on a loopback port its heartbeat names.
            env.push(("GREENHUB_STATS_ADDR".into(), "127.0.0.1:0".into()));
        }
        env.push(("GREENHUB_SERVE_WORKER".into(), id.to_string()));
        env.push((
            "GREENHUB_SERVE_GENERATION".into(),
            self.generation.to_string(),
        ));
        env.push((
            "GREENHUB_SERVE_STOP_TIMEOUT_MS".into(),
            self.cfg.stop_timeout.as_millis().to_string(),
        ));
        let sockets: Vec<(i32, &str)> = self
            .listeners
            .iter()
            .map(|l| (l.raw(), l.name.as_str()))
            .collect();
        match spawn::spawn(&self.program, &env, &sockets, Some(libc::SIGTERM)) {
            Ok(pid) => {
                let max_requests = self
                    .cfg
                    .max_requests
                    .map(|m| m.saturating_add(self.random(self.cfg.max_requests_jitter)));
                let max_age = self.cfg.max_age.map(|a| {
                    let jitter = self.random(self.cfg.max_age_jitter.as_millis() as u64);
                    a + Duration::from_millis(jitter)
                });
                let w = Worker {
                    id,
                    pid,
                    generation: self.generation,
                    started: now,
                    state: State::Starting,
                    replaces,
                    retire: None,
                    last_beat: now,
                    beating: false,
                    requests: 0,
                    blocked_ms: 0,
                    rss: 0,
                    over_memory_since: None,
                    max_requests,
                    max_age,
                    stats: None,
                };
                self.counters.starts += 1;
                log::info!("{} started", w.label());
                self.workers.insert(pid, w);
            }
            Err(e) => {
                log::error!("worker {id}: {e}");
                if replaces.is_some() {
                    self.stop_reload("its new worker could not start");
                }
                self.crashed(now);
            }
        }
    }

    /// A number below `bound` (0 when `bound` is 0), from a xorshift generator.
    fn random(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed % bound.saturating_add(1)
    }
}

/// Where the master's private directory goes: systemd's `RUNTIME_DIRECTORY`, else
/// `XDG_RUNTIME_DIR`, else the temporary directory (which cleaners of old files may reach).
fn runtime_dir() -> std::path::PathBuf {
    ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        .map(std::path::PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

fn write_pid_file(cfg: &Config) -> std::io::Result<()> {
    match &cfg.pid_file {
        Some(path) => std::fs::write(path, format!("{}\n", std::process::id())),
        None => Ok(()),
    }
}

/// Resident memory of `pid`, in bytes.
fn resident(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no failure mode for _SC_PAGESIZE.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some(pages * page)
}
