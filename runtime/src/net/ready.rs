//! Descriptor readiness as a branch of a [`Select`]: [`Select::readable`] and
//! [`Select::writable`].
//!
//! A select parks on its token, not on `may`'s poller, so readiness reaches it through a
//! watcher of its own: one OS thread, `greenhub-ready`, started on first use, waits in an
//! epoll set of its own. A branch adds a duplicate of the descriptor to that set, one-shot and
//! level-triggered (so readiness that came before the add is reported too), and the watcher
//! marks the branch ready and wakes the token. The duplicate gives every branch its own entry,
//! so two selects may watch one socket; it leaves the set before it is closed, since an epoll
//! entry outlives the closing of a duplicate while the socket stays open.
//!
//! A descriptor that cannot be watched (no descriptor left for the duplicate, a regular
//! file) is reported ready: readiness is a hint, and the next operation on the descriptor
//! does or reports what it can.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use greenhub_snapshot::Interest;

use crate::core::quiescence;
use crate::core::report;
use crate::core::token::Token;
use crate::sync::select::{Arm, Key, Outcome, Select};

/// The watcher: its epoll set and the branches in it, by key.
struct Watcher {
    epoll: OwnedFd,
    watches: Mutex<HashMap<u64, Arc<Watch>>>,
    next: AtomicU64,
}

/// One branch's entry in the watcher.
struct Watch {
    token: Arc<Token>,
    ready: AtomicBool,
}

/// The watcher, started on first use; the error says why it could not be.
fn watcher() -> Result<&'static Watcher, &'static str> {
    static WATCHER: OnceLock<Result<Watcher, String>> = OnceLock::new();
    WATCHER
        .get_or_init(|| {
            // SAFETY: epoll_create1 with a valid flag; the result is checked.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error().to_string());
            }
            // SAFETY: `fd` was just made and nothing else owns it.
            let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Watcher {
                epoll,
                watches: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            })
        })
        .as_ref()
        .map_err(String::as_str)
        .and_then(|w| {
            static THREAD: OnceLock<Result<(), String>> = OnceLock::new();
            THREAD
                .get_or_init(|| {
                    std::thread::Builder::new()
                        .name("greenhub-ready".into())
                        .spawn(move || {
                            // It wakes only waits on descriptors, which end by themselves.
                            let _own = quiescence::own_thread();
                            w.run()
                        })
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
                .as_ref()
                .map(|()| w)
                .map_err(String::as_str)
        })
}

impl Watcher {
    fn run(&self) {
        const BATCH: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: `events` holds BATCH entries for the kernel to fill.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    BATCH as i32,
                    -1,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                report::error(&format!(
                    "greenhub: the readiness watcher stopped: {e}; selects on descriptors \
                     will wait for their other branches only"
                ));
                return;
            }
            for ev in &events[..n as usize] {
                let key = ev.u64;
                // Gone when the branch was disarmed meanwhile.
                let watch = self.watches.lock().remove(&key);
                if let Some(w) = watch {
                    w.ready.store(true, Ordering::Release);
                    w.token.wake();
                }
            }
        }
    }

    /// Adds `fd` (a duplicate the caller keeps open until [`Watcher::remove`]) for one
    /// report of `interest`.
    fn add(&self, fd: &OwnedFd, interest: Interest, watch: Arc<Watch>) -> io::Result<u64> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let events = match interest {
            Interest::Read => libc::EPOLLIN,
            Interest::Write => libc::EPOLLOUT,
            Interest::ReadWrite => libc::EPOLLIN | libc::EPOLLOUT,
        } | libc::EPOLLRDHUP
            | libc::EPOLLONESHOT;
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: key,
        };
        self.watches.lock().insert(key, watch);
        // SAFETY: both descriptors are open; `ev` is a valid event.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            self.watches.lock().remove(&key);
            return Err(io::Error::last_os_error());
        }
        Ok(key)
    }

    fn remove(&self, fd: &OwnedFd, key: u64) {
        self.watches.lock().remove(&key);
        // SAFETY: both descriptors are open. The entry must go before the duplicate is
        // closed: closing it does not remove the entry while the socket itself stays open.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }
}

struct ReadyArm<'a> {
    fd: BorrowedFd<'a>,
    interest: Interest,
    /// Ready without the watcher: found ready when armed, or impossible to watch.
    ready_now: bool,
    /// The duplicate in the watcher's set, its key and its entry, while armed.
    watched: Option<(OwnedFd, u64, Arc<Watch>)>,
    out: Outcome<()>,
}

impl ReadyArm<'_> {
    fn poll_now(&self) -> bool {
        let events = match self.interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
            Interest::ReadWrite => libc::POLLIN | libc::POLLOUT,
        };
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call. Errors and hang-ups count
        // as ready: the next operation reports them.
        unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
    }

    fn watch(&mut self, token: &Arc<Token>) -> io::Result<()> {
        let w = watcher().map_err(io::Error::other)?;
        let dup = self.fd.try_clone_to_owned()?;
        let watch = Arc::new(Watch {
            token: token.clone(),
            ready: AtomicBool::new(false),
        });
        let key = w.add(&dup, self.interest, watch.clone())?;
        self.watched = Some((dup, key, watch));
        Ok(())
    }
}

impl Arm for ReadyArm<'_> {
    fn arm(&mut self, token: &Arc<Token>) {
        self.ready_now = false;
        if self.poll_now() || self.watch(token).is_err() {
            self.ready_now = token.claim();
        }
    }

    fn settle(&mut self, handed_only: bool) -> bool {
        let by_watcher = self
            .watched
            .as_ref()
            .is_some_and(|(_, _, w)| w.ready.load(Ordering::Acquire));
        let ready = self.ready_now || by_watcher || (!handed_only && self.poll_now());
        if ready {
            self.out.set(());
        }
        ready
    }

    fn disarm(&mut self) {
        if let Some((dup, key, _)) = self.watched.take()
            && let Ok(w) = watcher()
        {
            w.remove(&dup, key);
        }
        self.ready_now = false;
    }

    fn describe(&self) -> String {
        format!("fd {} ({})", self.fd.as_raw_fd(), self.interest.name())
    }
}

impl<'a> Select<'a> {
    /// A branch that fires when `io` is readable (or hung up, or in error: the next read
    /// reports it), as `poll(2)` says; it reads nothing. Any descriptor works: a greenhub
    /// socket, a pipe, a device.
    ///
    /// While it waits, the branch holds a duplicate of the descriptor; when none can be made
    /// (the process is out of descriptors) or the descriptor cannot be watched (a regular
    /// file), the branch fires at once, and the next operation on it does or reports what it
    /// can.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::time::Duration;
    /// use greenhub::{Queue, Select};
    /// use greenhub::net::UnixStream;
    ///
    /// let (a, b) = UnixStream::pair().unwrap();
    /// let quit: Queue<()> = Queue::unbounded();
    /// let writer = greenhub::spawn(move || (&b).write_all(b"ping").unwrap());
    /// let mut sel = Select::new();
    /// let data = sel.readable(&a);
    /// let stop = sel.get(&quit);
    /// sel.wait_timeout(Duration::from_secs(10)).unwrap();
    /// assert!(data.take().is_some() && stop.take().is_none());
    /// let mut buf = [0; 4];
    /// (&a).read_exact(&mut buf).unwrap();
    /// writer.wait().unwrap();
    /// ```
    pub fn readable(&mut self, io: &'a impl AsFd) -> Key<()> {
        self.ready(io.as_fd(), Interest::Read)
    }

    /// A branch that fires when `io` is writable (or hung up, or in error), as
    /// [`Select::readable`] does for reading.
    pub fn writable(&mut self, io: &'a impl AsFd) -> Key<()> {
        self.ready(io.as_fd(), Interest::Write)
    }

    fn ready(&mut self, fd: BorrowedFd<'a>, interest: Interest) -> Key<()> {
        self.add(|out| {
            Box::new(ReadyArm {
                fd,
                interest,
                ready_now: false,
                watched: None,
                out,
            })
        })
    }
}
