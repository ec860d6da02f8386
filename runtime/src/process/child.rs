//! Child processes for green threads (gevent's `subprocess`, eventlet's `green.subprocess`):
//! [`Command`] starts a child as `std::process::Command` does; its pipes and its exit are
//! green waits.
//!
//! How it waits: each pipe is registered with the hub like a socket, so reading a child's
//! output or writing its input parks the green thread, not the worker. The exit is watched
//! through a pidfd (Linux 5.3 and later), readable when the child ends; where the kernel has
//! none, through SIGCHLD: whichever waiter takes the signal tells every waiter to look at its
//! child again (and each looks at least once a second, in case another action took the
//! signal), still without blocking its worker. Every wait is bounded by the deadline scope, ends on a kill, and shows
//! in the snapshot as a wait on an object of kind `process` named after the child ("pid 4242:
//! sleep"). From a plain OS thread the same calls block that thread.
//!
//! Rules:
//! - A child is reaped once: by [`Child::wait`] (or `output`, `status`), or, when the
//!   [`Child`] is dropped before that, by a green thread that waits for it in the background,
//!   so no zombie is left behind. Dropping a child does not kill it (as in `std`).
//! - [`Command::output`] and [`Child::communicate`] write the input and read both outputs at
//!   once, on green threads of their own, so a child that writes a lot before it reads cannot
//!   deadlock with its parent. Under a deadline that passes, they kill the child, reap it and
//!   return `TimedOut`: a deadline leaves nothing running.
//!
//! It uses `core` (registry objects, reports), `green` (threads, sleeps, deadlines) and `net`
//! (descriptors registered with the hub).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use greenhub_snapshot::{Interest, ObjectInfo, ObjectKind, WaitOn};

use crate::core::context::without_deadline;
use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::report;
use crate::green::thread::{Builder, GreenThread};
use crate::green::time::{deadline, sleep};
use crate::net::fd::{Registered, timed_out};
use crate::process::signal::Signals;
use crate::sync::event::Event;
use crate::sync::select::{Select, SelectError};

/// The kind of a child process in the snapshot.
static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("process"));

/// A child process to start: `std::process::Command`'s builder, whose [`spawn`](Self::spawn)
/// gives a [`Child`] with green pipes.
///
/// ```
/// use greenhub::subprocess::Command;
///
/// let t = greenhub::spawn(|| Command::new("sh").args(["-c", "echo hi"]).output());
/// let out = t.wait().unwrap().unwrap();
/// assert!(out.status.success());
/// assert_eq!(out.stdout, b"hi\n");
/// ```
#[derive(Debug)]
pub struct Command {
    inner: std::process::Command,
    /// Whether `stdin` was set: `output` leaves the input empty otherwise.
    stdin_set: bool,
}

impl From<std::process::Command> for Command {
    /// A command configured with everything `std` offers (`CommandExt` included).
    fn from(inner: std::process::Command) -> Command {
        Command {
            inner,
            stdin_set: false,
        }
    }
}

impl Command {
    /// A command to run `program`, found on `PATH` if it has no slash.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            inner: std::process::Command::new(program),
            stdin_set: false,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.inner.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    /// Sets an environment variable of the child.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.inner.env(key, value);
        self
    }

    /// Removes an environment variable from the child's.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.inner.env_remove(key);
        self
    }

    /// Starts the child with an empty environment.
    pub fn env_clear(&mut self) -> &mut Command {
        self.inner.env_clear();
        self
    }

    /// Sets the child's working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.inner.current_dir(dir);
        self
    }

    /// The child's standard input (inherited by default for `spawn` and `status`, empty for
    /// `output`); `Stdio::piped()` gives [`Child::stdin`].
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.inner.stdin(cfg);
        self.stdin_set = true;
        self
    }

    /// The child's standard output; `Stdio::piped()` gives [`Child::stdout`].
    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.inner.stdout(cfg);
        self
    }

    /// The child's standard error; `Stdio::piped()` gives [`Child::stderr`].
    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.inner.stderr(cfg);
        self
    }

    /// Starts the child.
    pub fn spawn(&mut self) -> io::Result<Child> {
        Child::new(self.inner.spawn()?, &self.inner)
    }

    /// Runs the child to its end with both outputs collected and its input empty unless
    /// [`Command::stdin`] set one, as `std::process::Command::output`; the command keeps
    /// these settings for later spawns. Under a deadline that passes, the child is killed and
    /// reaped, and the error is `TimedOut`.
    pub fn output(&mut self) -> io::Result<Output> {
        if !self.stdin_set {
            self.inner.stdin(Stdio::null());
        }
        self.inner.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.spawn()?.communicate(&[])
    }

    /// Runs the child to its end and returns its exit status. Under a deadline that passes,
    /// the child is killed and reaped, and the error is `TimedOut`.
    pub fn status(&mut self) -> io::Result<ExitStatus> {
        let mut child = self.spawn()?;
        match child.wait() {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                child.kill_and_reap();
                Err(e)
            }
            other => other,
        }
    }
}

/// A child process started by [`Command::spawn`].
pub struct Child {
    /// The child's standard input, if piped: writing parks the green thread.
    pub stdin: Option<ChildStdin>,
    /// The child's standard output, if piped: reading parks the green thread.
    pub stdout: Option<ChildStdout>,
    /// The child's standard error, if piped: reading parks the green thread.
    pub stderr: Option<ChildStderr>,
    pid: u32,
    /// Always there until the drop hands it to a reaper.
    proc: Option<Proc>,
}

/// The process itself: what waiting, signalling and reaping need. A dropped [`Child`] hands
/// it to its reaper.
struct Proc {
    inner: std::process::Child,
    /// Readable when the child has ended; `None` where the kernel has no pidfd.
    pidfd: Option<Registered<OwnedFd>>,
    /// The exit status, once reaped.
    status: Option<ExitStatus>,
    shown: Arc<Shown>,
}

/// What the snapshot shows of a child.
struct Shown {
    reg: Registration,
    name: String,
    pid: u32,
    waiting: AtomicUsize,
    ended: AtomicBool,
}

impl Inspect for Shown {
    fn inspect(&self) -> ObjectInfo {
        ObjectInfo::new(
            *KIND,
            self.reg.id(),
            Some(&self.name),
            self.waiting.load(Ordering::Relaxed),
        )
        .count("pid", u64::from(self.pid))
        .count("running", u64::from(!self.ended.load(Ordering::Relaxed)))
    }
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.pid)
            .field("status", &self.proc.as_ref().and_then(|p| p.status))
            .finish()
    }
}

/// A pipe end registered with the hub.
fn pipe(fd: impl Into<OwnedFd>) -> io::Result<Registered<File>> {
    Registered::new(File::from(fd.into()))
}

impl Child {
    fn new(mut inner: std::process::Child, cmd: &std::process::Command) -> io::Result<Child> {
        let pid = inner.id();
        let stdin = inner.stdin.take().map(pipe).transpose()?.map(ChildStdin);
        let stdout = inner.stdout.take().map(pipe).transpose()?.map(ChildStdout);
        let stderr = inner.stderr.take().map(pipe).transpose()?.map(ChildStderr);
        let program = Path::new(cmd.get_program())
            .file_name()
            .unwrap_or(cmd.get_program())
            .to_string_lossy()
            .into_owned();
        let shown = Arc::new_cyclic(|weak: &Weak<Shown>| Shown {
            reg: Registration::new(weak.clone()),
            name: format!("pid {pid}: {program}"),
            pid,
            waiting: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
        });
        Ok(Child {
            stdin,
            stdout,
            stderr,
            pid,
            proc: Some(Proc {
                pidfd: pidfd(pid),
                inner,
                status: None,
                shown,
            }),
        })
    }

    /// The process, there until the drop.
    fn proc(&mut self) -> io::Result<&mut Proc> {
        self.proc
            .as_mut()
            .ok_or_else(|| io::Error::other("the child was handed to its reaper"))
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Its exit status if it has ended, without waiting (and reaps it then).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.proc()?.try_wait()
    }

    /// Waits for the child to end and returns its exit status; its standard input is closed
    /// first, as `std` does, so a child reading it sees the end. Bounded by the deadline
    /// scope (`TimedOut`; the child goes on); a kill ends it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        drop(self.stdin.take());
        self.proc()?.wait()
    }

    /// Sends SIGKILL to the child (if it has not been reaped yet).
    pub fn kill(&mut self) -> io::Result<()> {
        self.proc()?.signal(libc::SIGKILL)
    }

    /// Sends `signal` to the child (if it has not been reaped yet).
    pub fn signal(&mut self, signal: i32) -> io::Result<()> {
        self.proc()?.signal(signal)
    }

    /// Kills the child and reaps it, whatever the deadline scope says.
    fn kill_and_reap(&mut self) {
        let _ = self.kill();
        let _ = without_deadline(|| self.wait());
    }
}

impl Proc {
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.inner.try_wait()?;
            if self.status.is_some() {
                self.shown.ended.store(true, Ordering::Relaxed);
            }
        }
        Ok(self.status)
    }

    fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.shown.waiting.fetch_add(1, Ordering::Relaxed);
        let on = WaitOn::Object {
            object: *KIND,
            id: self.shown.reg.id(),
        };
        let result = match self.pidfd.take() {
            Some(pidfd) => {
                let r = pidfd.io_as(Interest::Read, None, Some(on), |_| {
                    self.try_wait()?.ok_or(io::ErrorKind::WouldBlock.into())
                });
                self.pidfd = Some(pidfd);
                r
            }
            None => self.poll_exit(),
        };
        self.shown.waiting.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Without a pidfd: looks again at each SIGCHLD (see [`Reaping`]), and at least once a
    /// second (a SIGCHLD is lost if someone else's action takes it); every few milliseconds
    /// if SIGCHLD cannot be subscribed to.
    fn poll_exit(&mut self) -> io::Result<ExitStatus> {
        let Some(reaping) = Reaping::get() else {
            return self.poll_exit_slowly();
        };
        loop {
            // Taken before the look: an exit after it comes with a SIGCHLD that sets it.
            let exited = reaping.exited.lock().clone();
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let mut sel = Select::new();
            let signal = sel.signal(&reaping.sigchld);
            sel.event(&exited);
            match sel.wait_timeout(Duration::from_secs(1)) {
                Ok(_) if signal.take().is_some() => reaping.tell_everyone(),
                Ok(_) => {}
                Err(SelectError::TimedOut) if deadline_passed() => return Err(timed_out()),
                Err(_) => {}
            }
        }
    }

    fn poll_exit_slowly(&mut self) -> io::Result<ExitStatus> {
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            sleep(pause).map_err(|_| timed_out())?;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn signal(&mut self, signal: i32) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill has no memory effects; the child is not reaped, so its pid is its own.
        if unsafe { libc::kill(self.inner.id() as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Child {
    /// Writes `input` to the child's standard input (then closes it) while reading its
    /// standard output and error, each on a green thread of its own, then waits for its
    /// end: gevent's `communicate`. Pipes that were not set up read as empty. Under a
    /// deadline that passes, the child is killed and reaped, and the error is `TimedOut`.
    pub fn communicate(mut self, input: &[u8]) -> io::Result<Output> {
        let stdin = self.stdin.take();
        let input = input.to_vec();
        let writer = stdin.map(|mut stdin| {
            spawn_io("child stdin", move || {
                match stdin.write_all(&input) {
                    // A child that stops reading has said all it will: not an error here.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Vec::new()),
                    other => other.map(|()| Vec::new()),
                }
            })
        });
        let err_reader = self.stderr.take().map(|mut stderr| {
            spawn_io("child stderr", move || {
                let mut buf = Vec::new();
                stderr.read_to_end(&mut buf).map(|_| buf)
            })
        });
        let mut stdout = Vec::new();
        let read = match self.stdout.take() {
            Some(mut out) => out.read_to_end(&mut stdout).map(drop),
            None => Ok(()),
        };
        let finish = |t: Option<io::Result<GreenThread<io::Result<Vec<u8>>>>>| match t {
            None => Ok(Vec::new()),
            Some(Err(e)) => Err(e),
            Some(Ok(t)) => match t.wait() {
                Ok(r) => r,
                Err(e) => Err(io::Error::other(e.to_string())),
            },
        };
        let result = read
            .and_then(|()| finish(writer).map(drop))
            .and_then(|()| finish(err_reader))
            .and_then(|stderr| {
                let status = self.wait()?;
                Ok(Output {
                    status,
                    stdout,
                    stderr,
                })
            });
        if let Err(e) = &result
            && e.kind() == io::ErrorKind::TimedOut
        {
            self.kill_and_reap();
        }
        result
    }
}

/// A green thread for one pipe of [`Child::communicate`]; killed with its caller's.
fn spawn_io(
    name: &str,
    f: impl FnOnce() -> io::Result<Vec<u8>> + Send + 'static,
) -> io::Result<GreenThread<io::Result<Vec<u8>>>> {
    Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| io::Error::other(e.to_string()))
}

impl Drop for Child {
    fn drop(&mut self) {
        let Some(mut proc) = self.proc.take() else {
            return;
        };
        if proc.status.is_some() || !matches!(proc.try_wait(), Ok(None)) {
            return;
        }
        // Still running: reaped in the background when it ends, so that it leaves no zombie.
        // Its pipes close here, as they would without the reaper.
        let name = format!("reap {}", proc.shown.name);
        // With no green thread to spare, it is reaped when this process ends.
        let _ = Builder::new().name(name).spawn(move || {
            let _ = without_deadline(|| proc.wait());
        });
    }
}

/// Where the kernel has no pidfd, how waiters learn that some child has ended: SIGCHLD
/// (which coalesces, and names no child) is taken by whichever waiter gets it, which then
/// sets `exited` and puts a fresh event in its place, so that every waiter looks at its own
/// child again.
struct Reaping {
    sigchld: Signals,
    exited: parking_lot::Mutex<Event>,
}

impl Reaping {
    /// The process's reaping, made on first use; `None` if SIGCHLD cannot be subscribed to.
    fn get() -> Option<&'static Reaping> {
        static REAPING: LazyLock<Option<Reaping>> = LazyLock::new(|| {
            let sigchld = Signals::child_exits()
                .map_err(|e| {
                    report::warn(&format!(
                        "greenhub: cannot watch SIGCHLD ({e}); without pidfds, waits for child \
                     processes look for their end every few milliseconds"
                    ))
                })
                .ok()?;
            Some(Reaping {
                sigchld,
                exited: parking_lot::Mutex::new(Event::new()),
            })
        });
        REAPING.as_ref()
    }

    fn tell_everyone(&self) {
        #[cfg(test)]
        TOLD.fetch_add(1, Ordering::Relaxed);
        let told = std::mem::take(&mut *self.exited.lock());
        let _ = told.set(());
    }
}

/// Whether the enclosing deadline scope has passed.
fn deadline_passed() -> bool {
    deadline().is_some_and(|d| std::time::Instant::now() >= d)
}

/// Tests force the path of kernels without pidfds, and count the SIGCHLDs passed on.
#[cfg(test)]
static NO_PIDFD: AtomicBool = AtomicBool::new(false);
#[cfg(test)]
static TOLD: AtomicUsize = AtomicUsize::new(0);

/// A pidfd for `pid`, registered with the hub, or `None` where the kernel has none.
fn pidfd(pid: u32) -> Option<Registered<OwnedFd>> {
    #[cfg(test)]
    if NO_PIDFD.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned by pidfd_open and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Registered::new(fd).ok()
}

/// The standard input of a [`Child`]: writing parks the green thread.
#[derive(Debug)]
pub struct ChildStdin(Registered<File>);

/// The standard output of a [`Child`]: reading parks the green thread.
#[derive(Debug)]
pub struct ChildStdout(Registered<File>);

/// The standard error of a [`Child`]: reading parks the green thread.
#[derive(Debug)]
pub struct ChildStderr(Registered<File>);

/// Each pipe is a descriptor a [`Select`](crate::Select) can wait on.
impl AsFd for ChildStdin {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get().as_fd()
    }
}

impl AsFd for ChildStdout {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get().as_fd()
    }
}

impl AsFd for ChildStderr {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get().as_fd()
    }
}

impl Write for ChildStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.io(Interest::Write, None, |f| (&*f).write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for ChildStdout {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.io(Interest::Read, None, |f| (&*f).read(buf))
    }
}

impl Read for ChildStderr {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.io(Interest::Read, None, |f| (&*f).read(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::green::thread::spawn;
    use crate::green::time::with_timeout;

    /// Kernels without pidfds: exits come through SIGCHLD. Many children ending at different
    /// times, waited for at once; one that ended before anyone waited; one waited for past a
    /// deadline, then killed.
    #[test]
    fn without_pidfds_each_exit_reaches_its_waiter_through_sigchld() {
        NO_PIDFD.store(true, Ordering::Relaxed);
        let waiters: Vec<_> = (0..40)
            .map(|i| {
                spawn(move || {
                    let script = format!("sleep 0.0{}; exit {}", i % 7, i % 5);
                    let status = Command::new("sh").args(["-c", &script]).status().unwrap();
                    (i, status.code())
                })
            })
            .collect();
        for w in waiters {
            let (i, code) = w.wait().unwrap();
            assert_eq!(code, Some(i % 5));
        }
        assert!(
            TOLD.load(Ordering::Relaxed) > 0,
            "no SIGCHLD reached a waiter"
        );
        let mut early = Command::new("true").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(early.wait().unwrap().success());

        let mut slow = Command::new("sleep").arg("30").spawn().unwrap();
        let t0 = std::time::Instant::now();
        let timed = with_timeout(Duration::from_millis(50), || slow.wait());
        assert_eq!(timed.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(
            t0.elapsed() < Duration::from_secs(25),
            "the deadline did not end the wait"
        );
        slow.kill().unwrap();
        let status = slow.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        NO_PIDFD.store(false, Ordering::Relaxed);
    }
}
