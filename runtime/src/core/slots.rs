//! Which green thread each worker runs now: a [`WorkerSlot`] per OS thread that runs greenhub
//! green threads.
//!
//! A slot holds the id of the green thread its worker runs (0 when it runs none of ours), the
//! bounds of that thread's stack, and a generation that changes at every switch. Writing them
//! costs a few relaxed stores per switch and no clock read. The monitor reads every slot each
//! tick (`core/monitor.rs`); the worker's own signal handler reads its slot to know which green
//! thread it interrupted and where its stack is (`core/sampler.rs`), so the id and the bounds
//! change in an order a handler can trust: the id is cleared before the bounds change and set
//! after them. The slot holds copies, never a pointer, so a handler reads nothing that a
//! thread's end could free.
//!
//! It uses the registry's record type and nothing else.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, compiler_fence};
use std::time::Duration;

use parking_lot::Mutex;

use crate::core::registry::ThreadRecord;

/// One worker's slot. Leaked: one per OS thread that ever runs a green thread (the workers).
pub(crate) struct WorkerSlot {
    /// The slot's number, in the order workers first ran a green thread.
    pub index: usize,
    /// The worker's Linux thread id.
    pub tid: i32,
    current: AtomicU64,
    /// The running thread's `stack_base` and stack size (see `core/stack.rs`).
    stack_base: AtomicUsize,
    stack_size: AtomicUsize,
    generation: AtomicU64,
    /// While the monitor dozes: when a run began (precise nanoseconds since the epoch), and
    /// the generation of that run (see [`WorkerSlot::note_start`]).
    start_ns: AtomicU64,
    start_generation: AtomicU64,
    /// The worker's CPU clock.
    cpu_clock: Option<libc::clockid_t>,
    /// `/proc/self/task/<tid>/stat`, opened once, for the worker's scheduler state.
    stat: Option<std::fs::File>,
}

impl WorkerSlot {
    /// The green thread the worker runs now (0: none of ours).
    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Changes at every switch of the worker.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Notes that the run of the current generation begins at `ns` (precise nanoseconds since
    /// the epoch). The worker calls it as a green thread starts running while the monitor
    /// dozes, so that the monitor's first look at a long run knows when it began.
    pub(crate) fn note_start(&self, ns: u64) {
        self.start_ns.store(ns, Ordering::Relaxed);
        self.start_generation
            .store(self.generation.load(Ordering::Relaxed), Ordering::Release);
    }

    /// When the run of `generation` began, if the worker noted it. A pair torn by a newer
    /// run's note only gives a later start, for a run that has ended already.
    pub(crate) fn started(&self, generation: u64) -> Option<u64> {
        if self.start_generation.load(Ordering::Acquire) != generation {
            return None;
        }
        let ns = self.start_ns.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        (self.start_generation.load(Ordering::Relaxed) == generation).then_some(ns)
    }

    /// The green thread the worker runs and its stack's base and size, for code running on
    /// the worker itself (its signal handler), which sees the slot's stores in program order.
    pub(crate) fn running_here(&self) -> Option<(u64, usize, usize)> {
        let id = self.current.load(Ordering::Relaxed);
        if id == 0 {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        Some((
            id,
            self.stack_base.load(Ordering::Relaxed),
            self.stack_size.load(Ordering::Relaxed),
        ))
    }

    /// The system call the worker is blocked in now (`Some(number)`), `Some(-1)` when it runs
    /// in user space, `None` when that cannot be read (`/proc/self/task/<tid>/syscall`).
    pub(crate) fn syscall(&self) -> Option<i64> {
        let text = std::fs::read_to_string(format!("/proc/self/task/{}/syscall", self.tid)).ok()?;
        let first = text.split_whitespace().next()?;
        if first == "running" {
            return Some(-1);
        }
        first.parse().ok()
    }

    /// The worker's CPU clock, for timers on its CPU time.
    pub(crate) fn cpu_clock(&self) -> Option<libc::clockid_t> {
        self.cpu_clock
    }

    /// The worker's CPU time so far.
    pub(crate) fn on_cpu(&self) -> Option<Duration> {
        let clock = self.cpu_clock?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: fills a valid timespec; a clock of a thread that has ended is an error.
        let ok = unsafe { libc::clock_gettime(clock, &mut ts) } == 0;
        ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// Whether the worker is asleep in the kernel now (state S or D), read through the file
    /// opened at registration.
    pub(crate) fn asleep(&self) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        let file = self.stat.as_ref()?;
        let mut buf = [0u8; 512];
        let n = file.read_at(&mut buf, 0).ok()?;
        let text = &buf[..n];
        // The state follows the command name, which is in parentheses and may hold any byte.
        let close = text.iter().rposition(|b| *b == b')')?;
        let state = text.get(close + 2)?;
        Some(matches!(state, b'S' | b'D'))
    }
}

static SLOTS: Mutex<Vec<&'static WorkerSlot>> = Mutex::new(Vec::new());

thread_local! {
    static SLOT: Cell<Option<&'static WorkerSlot>> = const { Cell::new(None) };
}

/// Every slot so far.
pub(crate) fn all() -> Vec<&'static WorkerSlot> {
    SLOTS.lock().clone()
}

/// This thread's slot, if it has one: what a signal handler may call (no registration, no
/// allocation, no lock).
pub(crate) fn this_thread() -> Option<&'static WorkerSlot> {
    SLOT.try_with(|s| s.get()).ok().flatten()
}

#[cold]
fn register() -> &'static WorkerSlot {
    let mut slots = SLOTS.lock();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is this thread; the call fills `clock`.
    let cpu_clock = (unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0)
        .then_some(clock);
    let slot: &'static WorkerSlot = Box::leak(Box::new(WorkerSlot {
        index: slots.len(),
        tid,
        current: AtomicU64::new(0),
        stack_base: AtomicUsize::new(0),
        stack_size: AtomicUsize::new(0),
        generation: AtomicU64::new(0),
        start_ns: AtomicU64::new(0),
        start_generation: AtomicU64::new(u64::MAX),
        cpu_clock,
        stat: std::fs::File::open(format!("/proc/self/task/{tid}/stat")).ok(),
    }));
    slots.push(slot);
    SLOT.with(|s| s.set(Some(slot)));
    slot
}

#[inline]
fn slot() -> &'static WorkerSlot {
    SLOT.with(|s| s.get()).unwrap_or_else(register)
}

/// The green thread of `record` runs on this OS thread from now on.
// Never inlined (nor `set_idle`): a caller that also waits (the wait path marks idle, parks,
// marks running) would let the compiler keep the thread-local's address from before the park,
// and a green thread resumed on another worker would then write the slot of the worker it left
// (seen in release builds as a sleeping thread reported for keeping its old worker busy).
#[inline(never)]
pub(crate) fn set_running(record: &ThreadRecord) {
    // Read and written in one call: the green thread cannot migrate in between.
    let s = slot();
    s.stack_base
        .store(record.stack_base.load(Ordering::Relaxed), Ordering::Relaxed);
    s.stack_size.store(record.stack_size(), Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    s.current.store(record.id, Ordering::Relaxed);
    bump(s);
}

/// No green thread of ours runs on this OS thread from now on.
#[inline(never)]
pub(crate) fn set_idle() {
    let s = slot();
    s.current.store(0, Ordering::Relaxed);
    bump(s);
}

#[inline]
fn bump(s: &WorkerSlot) {
    let g = s.generation.load(Ordering::Relaxed);
    s.generation.store(g.wrapping_add(1), Ordering::Release);
}
