//! The worker signal: a worker walks its own stack when interrupted, for a blocked-worker
//! report ([`capture_running`]: one signal sent to the worker) and for the CPU profile
//! ([`Sampling`]: a timer on each worker's CPU clock).
//!
//! The signal is `SIGRTMIN + 7`, with one handler for both: a timer's signal (`SI_TIMER`) takes
//! a sample, any other answers the capture in progress. The handler walks the frame pointers
//! from the interrupted registers (`core/stack.rs`), only when the interrupted stack pointer
//! lies in the running green thread's stack (the worker's slot names that thread,
//! `core/slots.rs`). It runs on the thread's alternate signal stack where it has one, and
//! takes no lock and allocates nothing: a sample goes to the worker's ring, which the profile's
//! reader drains. A CPU-time timer only fires while its worker runs, so an idle worker in
//! `epoll_wait` is not interrupted; a system call that is interrupted is restarted where the
//! kernel restarts it (`SA_RESTART`), else it fails with `EINTR`.
//!
//! It uses the slots and the stack walk.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::core::slots::{self, WorkerSlot};
use crate::core::stack::{self, MAX_FRAMES, unsupported};

/// The signal that asks a worker for the stack it is running on: `SIGRTMIN + 7` (the C
/// library keeps the first real-time signals for itself). It is installed on first use, and
/// not at all if the program already handles it.
pub(crate) fn capture_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

/// The one capture in progress: which OS thread and green thread are asked for, and the frames
/// the signal handler found. The asker writes the request before the signal; one handler
/// claims it (turning `asked` back to 0), fills the frames and sets `done`; plain atomics, as
/// a signal handler may use.
struct Capture {
    /// The request's number (0: none, or claimed); a handler answers only the current one.
    asked: AtomicU64,
    tid: AtomicI32,
    /// The green thread whose stack is wanted: a worker that runs another answers with none.
    thread: AtomicU64,
    len: AtomicUsize,
    /// The number of the request answered.
    done: AtomicU64,
    ips: [AtomicUsize; MAX_FRAMES],
}

static CAPTURE: Capture = Capture {
    asked: AtomicU64::new(0),
    tid: AtomicI32::new(0),
    thread: AtomicU64::new(0),
    len: AtomicUsize::new(0),
    done: AtomicU64::new(0),
    ips: [const { AtomicUsize::new(0) }; MAX_FRAMES],
};

/// One capture at a time.
static CAPTURING: Mutex<u64> = Mutex::new(0);

/// How long the asker waits for the handler.
const CAPTURE_WAIT: std::time::Duration = Duration::from_millis(100);

/// Whether the capture signal's handler is installed (or why it cannot be).
fn handler_installed() -> Result<(), &'static str> {
    static INSTALLED: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let sig = capture_signal();
        // SAFETY: sigaction reads and writes plain structs we own; a null new action only
        // queries the current one.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                return Err("the capture signal cannot be queried");
            }
            if old.sa_sigaction != libc::SIG_DFL {
                return Err("the program handles the capture signal (SIGRTMIN+7) itself");
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            // On the thread's alternate signal stack where it has one (std gives its threads
            // one): the handler must not grow a green thread's stack near its end.
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err("the capture signal's handler cannot be installed");
            }
        }
        Ok(())
    })
}

/// Whether the system call `nr` (from `WorkerSlot::syscall`) may be interrupted by the capture
/// signal: the waits the standard library retries after `EINTR` (`thread::sleep`, and the
/// futex under its locks and condition variables). Any other may fail with `EINTR` where the
/// kernel does not restart it (a socket with a timeout, `poll`), so a worker in it is not
/// signalled.
pub(crate) fn may_interrupt(nr: i64) -> bool {
    nr < 0
        || [
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_futex,
        ]
        .contains(&nr)
}

/// The return addresses of the code the OS thread `tid` runs now, innermost first (the first
/// is the interrupted instruction's address plus one, so that it reads as a return address),
/// when it runs the green thread `thread`; `None` when it cannot be had (see
/// [`unsupported`]), the thread runs something else, or it does not answer within 100 ms.
///
/// The thread is interrupted by [`capture_signal`] and walks its own frame pointers in the
/// handler, reading only the running green thread's own stack (as its slot gives it). Callers
/// signal a worker only in user space or in a wait that [`may_interrupt`].
pub(crate) fn capture_running(tid: i32, thread: u64) -> Option<Vec<usize>> {
    if unsupported().is_some() || handler_installed().is_err() {
        return None;
    }
    let mut last = CAPTURING.lock();
    *last += 1;
    let n = *last;
    CAPTURE.tid.store(tid, Ordering::Relaxed);
    CAPTURE.thread.store(thread, Ordering::Relaxed);
    CAPTURE.len.store(0, Ordering::Relaxed);
    CAPTURE.asked.store(n, Ordering::Release);
    // SAFETY: tgkill sends a signal to one thread of this process; a thread that has ended
    // makes it fail with ESRCH.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid,
            capture_signal() as libc::c_long,
        )
    } == 0;
    let answered = |within: Duration| {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if CAPTURE.done.load(Ordering::Acquire) == n {
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    };
    if !sent || !answered(CAPTURE_WAIT) {
        // Take the request back. If a handler has claimed it already, it is writing the
        // frames: wait for it to finish before the buffer serves another request.
        let unclaimed = CAPTURE
            .asked
            .compare_exchange(n, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if unclaimed || !answered(Duration::from_secs(1)) {
            return None;
        }
    }
    let len = CAPTURE.len.load(Ordering::Relaxed).min(MAX_FRAMES);
    let ips: Vec<usize> = CAPTURE.ips[..len]
        .iter()
        .map(|ip| ip.load(Ordering::Relaxed))
        .collect();
    (!ips.is_empty()).then_some(ips)
}

/// The worker signal's handler: a timer's signal takes a profile sample, any other answers a
/// capture. Async-signal-safe: atomics, one `gettid`, reads of this thread's own stack, and no
/// lock or allocation.
extern "C" fn on_signal(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    if info.is_null() || context.is_null() {
        return;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a siginfo_t and the interrupted context as a
    // ucontext_t.
    let (code, context) = unsafe { ((*info).si_code, &*(context as *const libc::ucontext_t)) };
    if code == libc::SI_TIMER {
        sample(context);
    } else {
        capture(context);
    }
}

/// Answers the capture in progress, if it is for this thread: claims it, walks the stack of
/// the green thread this worker runs if it is the one asked for, and says it is done.
fn capture(context: &libc::ucontext_t) {
    let n = CAPTURE.asked.load(Ordering::Acquire);
    // SAFETY: gettid has no failure mode and touches no memory.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    if n == 0 || CAPTURE.tid.load(Ordering::Relaxed) != tid {
        return;
    }
    if CAPTURE
        .asked
        .compare_exchange(n, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let wanted = CAPTURE.thread.load(Ordering::Relaxed);
    let mut len = 0;
    if let Some((id, base, size)) = slots::this_thread().and_then(|s| s.running_here())
        && id == wanted
    {
        walk_interrupted(context, base, size, |ip| {
            CAPTURE.ips[len].store(ip, Ordering::Relaxed);
            len += 1;
            len < MAX_FRAMES
        });
    }
    CAPTURE.len.store(len, Ordering::Relaxed);
    CAPTURE.done.store(n, Ordering::Release);
}

/// Gives `each` the interrupted instruction's address plus one (so that it reads as a return
/// address), then the return addresses of the frame-pointer chain, when the interrupted code
/// runs on the green thread's stack that ends at `base` and is `size` bytes long.
fn walk_interrupted(
    context: &libc::ucontext_t,
    base: usize,
    size: usize,
    mut each: impl FnMut(usize) -> bool,
) {
    let (ip, sp, fp) = interrupted(context);
    // Only on the green thread's stack: the stack pointer below the base, within the size.
    if base == 0 || sp >= base || base - sp > size || !each(ip.wrapping_add(1)) {
        return;
    }
    // SAFETY: [sp, base) is the live part of this thread's own stack, which cannot change
    // while this handler runs.
    unsafe { stack::follow(fp, sp, base, each) };
}

/// The interrupted instruction, stack and frame pointers.
#[cfg(target_arch = "x86_64")]
fn interrupted(context: &libc::ucontext_t) -> (usize, usize, usize) {
    let regs = &context.uc_mcontext.gregs;
    (
        regs[libc::REG_RIP as usize] as usize,
        regs[libc::REG_RSP as usize] as usize,
        regs[libc::REG_RBP as usize] as usize,
    )
}

/// The interrupted instruction, stack and frame pointers.
#[cfg(target_arch = "aarch64")]
fn interrupted(context: &libc::ucontext_t) -> (usize, usize, usize) {
    let m = &context.uc_mcontext;
    (m.pc as usize, m.sp as usize, m.regs[29] as usize)
}

/// Elsewhere stacks are not read ([`unsupported`] says so first).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn interrupted(_: &libc::ucontext_t) -> (usize, usize, usize) {
    (0, 0, 0)
}

/// Frames kept per profile sample.
const SAMPLE_FRAMES: usize = 48;

/// Samples a worker's ring holds until the reader drains them.
const RING: usize = 4096;

/// The most workers sampled.
const MAX_WORKERS: usize = 256;

/// One sample: the green thread interrupted (0: none of ours) and its stack.
struct Entry {
    /// The profile it was taken for: a signal queued before a profile ended may land after.
    session: AtomicU64,
    thread: AtomicU64,
    len: AtomicUsize,
    ips: [AtomicUsize; SAMPLE_FRAMES],
}

/// A worker's samples: written by its signal handler (the one producer), drained by the
/// profile's reader (the one consumer).
struct Ring {
    head: AtomicUsize,
    tail: AtomicUsize,
    dropped: AtomicU64,
    entries: Box<[Entry]>,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            entries: (0..RING)
                .map(|_| Entry {
                    session: AtomicU64::new(0),
                    thread: AtomicU64::new(0),
                    len: AtomicUsize::new(0),
                    ips: [const { AtomicUsize::new(0) }; SAMPLE_FRAMES],
                })
                .collect(),
        }
    }
}

/// Each worker's ring, by slot index, made on the first profile and kept: a handler may still
/// hold one when a profile ends.
static RINGS: [AtomicPtr<Ring>; MAX_WORKERS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_WORKERS];

/// A profile is being taken.
static SAMPLING: AtomicBool = AtomicBool::new(false);

/// The number of the profile being taken (each takes the next).
static SESSION: AtomicU64 = AtomicU64::new(0);

/// Takes a sample into this worker's ring.
fn sample(context: &libc::ucontext_t) {
    let Some(slot) = slots::this_thread() else {
        return;
    };
    let Some(ring) = RINGS.get(slot.index).and_then(|r| {
        // SAFETY: a ring, once published, is never freed.
        unsafe { r.load(Ordering::Acquire).as_ref() }
    }) else {
        return;
    };
    let head = ring.head.load(Ordering::Relaxed);
    if head.wrapping_sub(ring.tail.load(Ordering::Acquire)) >= RING {
        ring.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let entry = &ring.entries[head % RING];
    let mut len = 0;
    let thread = match slot.running_here() {
        Some((id, base, size)) => {
            walk_interrupted(context, base, size, |ip| {
                entry.ips[len].store(ip, Ordering::Relaxed);
                len += 1;
                len < SAMPLE_FRAMES
            });
            id
        }
        None => 0,
    };
    entry
        .session
        .store(SESSION.load(Ordering::Relaxed), Ordering::Relaxed);
    entry.thread.store(thread, Ordering::Relaxed);
    entry.len.store(len, Ordering::Relaxed);
    ring.head.store(head.wrapping_add(1), Ordering::Release);
}

/// Why a profile cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// This process cannot sample its stacks (the reason says why and what to change).
    #[error("profiles are unavailable: {0}")]
    Unsupported(&'static str),
    /// Another profile is being taken; one runs at a time.
    #[error("a profile is being taken already: ask again when it ends")]
    Busy,
    /// A timer on a worker's CPU clock could not be made or armed (the OS error).
    #[error("a timer on a worker's CPU clock failed: {0}")]
    Timer(String),
}

/// A CPU profile being taken: a timer per worker on its CPU clock, firing `hz` times a second
/// of that worker's CPU time. Dropping it stops the timers.
pub(crate) struct Sampling {
    timers: Vec<libc::timer_t>,
    /// The workers sampled.
    workers: Vec<&'static WorkerSlot>,
    /// Between two samples of a worker, in its CPU time.
    period: Duration,
}

/// One drained sample: the green thread (0: the worker ran none of ours) and its stack's
/// addresses, innermost first (empty when the stack could not be walked).
pub(crate) type Sample<'a> = (u64, &'a [usize]);

impl Sampling {
    /// Starts sampling every worker at `hz` (1 to 1000) samples per second of its CPU time.
    pub(crate) fn start(hz: u32) -> Result<Sampling, ProfileError> {
        if let Some(why) = unsupported() {
            return Err(ProfileError::Unsupported(why));
        }
        handler_installed().map_err(ProfileError::Unsupported)?;
        if SAMPLING.swap(true, Ordering::AcqRel) {
            return Err(ProfileError::Busy);
        }
        SESSION.fetch_add(1, Ordering::AcqRel);
        let mut sampling = Sampling {
            timers: Vec::new(),
            workers: Vec::new(),
            period: Duration::from_secs(1) / hz.clamp(1, 1000),
        };
        sampling.cover_new_workers()?;
        Ok(sampling)
    }

    /// Arms a timer for each worker that has run a green thread since the last look: workers
    /// take their slot when they first run one, which may be after the profile began.
    pub(crate) fn cover_new_workers(&mut self) -> Result<(), ProfileError> {
        let every = libc::timespec {
            tv_sec: self.period.as_secs() as libc::time_t,
            tv_nsec: self.period.subsec_nanos() as libc::c_long,
        };
        for slot in slots::all() {
            if self.workers.iter().any(|w| w.index == slot.index) {
                continue;
            }
            let (Some(clock), Some(ring)) = (slot.cpu_clock(), RINGS.get(slot.index)) else {
                continue;
            };
            if ring.load(Ordering::Acquire).is_null() {
                ring.store(Box::into_raw(Box::new(Ring::new())), Ordering::Release);
            }
            // SAFETY: a zeroed sigevent is valid; the fields set say: signal this thread.
            let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = capture_signal();
            event.sigev_notify_thread_id = slot.tid;
            let mut timer: libc::timer_t = std::ptr::null_mut();
            // SAFETY: creates a timer on the worker's CPU clock that signals the worker; the
            // kernel fills `timer`.
            if unsafe { libc::timer_create(clock, &mut event, &mut timer) } != 0 {
                return Err(ProfileError::Timer(
                    std::io::Error::last_os_error().to_string(),
                ));
            }
            self.timers.push(timer);
            let spec = libc::itimerspec {
                it_interval: every,
                it_value: every,
            };
            // SAFETY: arms the timer just made.
            if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
                return Err(ProfileError::Timer(
                    std::io::Error::last_os_error().to_string(),
                ));
            }
            self.workers.push(slot);
        }
        Ok(())
    }

    /// The workers sampled.
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Hands every sample taken since the last drain to `each`; returns how many were dropped
    /// meanwhile because a ring was full.
    pub(crate) fn drain(&self, mut each: impl FnMut(Sample<'_>)) -> u64 {
        let mut dropped = 0;
        let mut ips = Vec::with_capacity(SAMPLE_FRAMES);
        for slot in &self.workers {
            // SAFETY: made before the timers, never freed.
            let Some(ring) = (unsafe { RINGS[slot.index].load(Ordering::Acquire).as_ref() }) else {
                continue;
            };
            let tail = ring.tail.load(Ordering::Relaxed);
            let head = ring.head.load(Ordering::Acquire);
            let mut at = tail;
            while at != head {
                let entry = &ring.entries[at % RING];
                at = at.wrapping_add(1);
                if entry.session.load(Ordering::Relaxed) != SESSION.load(Ordering::Relaxed) {
                    continue;
                }
                let len = entry.len.load(Ordering::Relaxed).min(SAMPLE_FRAMES);
                ips.clear();
                ips.extend(entry.ips[..len].iter().map(|ip| ip.load(Ordering::Relaxed)));
                each((entry.thread.load(Ordering::Relaxed), &ips));
            }
            ring.tail.store(head, Ordering::Release);
            dropped += ring.dropped.swap(0, Ordering::Relaxed);
        }
        dropped
    }
}

impl Drop for Sampling {
    fn drop(&mut self) {
        for timer in self.timers.drain(..) {
            // SAFETY: deletes a timer this session made; a signal already sent still finds
            // its ring (rings are never freed).
            unsafe { libc::timer_delete(timer) };
        }
        // Samples left in the rings belong to no profile.
        for slot in &self.workers {
            // SAFETY: as in `drain`.
            if let Some(ring) = unsafe { RINGS[slot.index].load(Ordering::Acquire).as_ref() } {
                ring.tail
                    .store(ring.head.load(Ordering::Acquire), Ordering::Release);
            }
        }
        SAMPLING.store(false, Ordering::Release);
    }
}
