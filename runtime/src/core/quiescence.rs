//! Whether anything outside the green threads can still act: the OS threads of the process,
//! known by their kernel ids, for the deadlock check's "all asleep" case (`core/deadlock.rs`).
//!
//! A wait on an event, a queue, a semaphore or a condition lists no holder: any thread with a
//! handle may set, put or release. Such a wait is stuck only when nothing at all can act: every
//! green thread waits, no timer is pending, and every OS thread of the process is one of these:
//!
//! - one of greenhub's own service threads, which never set, put or release a program's object
//!   (registered while it lives by [`own_thread`]), or one of `may`'s workers or its timer
//!   thread;
//! - parked in an untimed greenhub wait ([`OsWait`]): an OS thread joining a green thread, or
//!   waiting on an object, can act only once that wait ends (a timed one ends by itself);
//! - idle in a pool that acts only on behalf of a caller (`ext::idle_while`): a thread pool's
//!   thread waiting for work.
//!
//! Any other thread (the program's own, a library's, a test harness's) could do anything at
//! any moment, so while one exists the process is never taken to be asleep. Each OS wait and
//! idle spell has a sequence number, so that two checks can tell the same wait from a new one.
//!
//! It uses `may` (the ids of its threads) and the vocabulary of waits, nothing else of the
//! crate.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use greenhub_snapshot::{ObjectKind, WaitOn};
use parking_lot::Mutex;

/// The OS threads that cannot act now, by kernel id.
struct Quiet {
    /// greenhub's own service threads.
    own: HashSet<i32>,
    /// Threads in a greenhub wait (with what they wait on) or idle in a pool, with the
    /// sequence number of that wait or spell.
    asleep: HashMap<i32, (u64, Option<WaitOn>)>,
}

static QUIET: Mutex<Option<Quiet>> = Mutex::new(None);

/// Numbers OS waits and idle spells.
static SEQ: AtomicU64 = AtomicU64::new(1);

/// The calling OS thread's kernel id, asked of the kernel once per thread (a pool thread
/// notes itself asleep each time it parks for work).
fn tid() -> i32 {
    thread_local! {
        static TID: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    }
    TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions.
            t.set(unsafe { libc::gettid() });
        }
        t.get()
    })
}

fn with<R>(f: impl FnOnce(&mut Quiet) -> R) -> R {
    let mut quiet = QUIET.lock();
    f(quiet.get_or_insert_with(|| Quiet {
        own: HashSet::new(),
        asleep: HashMap::new(),
    }))
}

/// Registers the calling OS thread, while the returned guard lives, as one of greenhub's own
/// service threads: it never sets, puts into or releases an object a green thread waits on
/// (the monitor, the alarm thread, the reports, the attach channel, the stats endpoint, ...).
/// The alarm thread's timers are accounted for separately (a pending timer means the process
/// is not asleep). The guard goes with the thread: the kernel reuses thread ids.
pub(crate) fn own_thread() -> OwnThread {
    let me = tid();
    with(|q| q.own.insert(me));
    OwnThread { tid: me }
}

/// Keeps an OS thread registered as greenhub's own ([`own_thread`]).
pub(crate) struct OwnThread {
    tid: i32,
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        let me = self.tid;
        with(|q| q.own.remove(&me));
    }
}

/// An OS thread's untimed greenhub wait (or a pool thread's wait for work), while it lasts:
/// the thread cannot act before it ends.
pub(crate) struct OsWait {
    tid: i32,
}

impl OsWait {
    /// The calling OS thread begins an untimed wait on `on`, or (`None`) a pool's wait for
    /// work.
    pub(crate) fn begin(on: Option<WaitOn>) -> OsWait {
        let me = tid();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        with(|q| q.asleep.insert(me, (seq, on)));
        OsWait { tid: me }
    }
}

impl Drop for OsWait {
    fn drop(&mut self) {
        let me = self.tid;
        with(|q| q.asleep.remove(&me));
    }
}

/// An OS thread that cannot act now, as one check saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct AsleepThread {
    pub tid: i32,
    /// The number of its wait or idle spell.
    pub seq: u64,
}

/// The process's OS threads in waits, if no thread but the caller (the monitor) can act: each
/// other thread is a service thread (not listed), or in a greenhub wait on a join or on an
/// object of a kind `fed_by_threads` accepts, or idle in a pool. `None` if any other thread
/// exists, or the threads cannot be read.
pub(crate) fn os_threads_asleep(
    fed_by_threads: impl Fn(ObjectKind) -> bool,
) -> Option<Vec<AsleepThread>> {
    let me = tid();
    let scheduler: HashSet<i32> = may::scheduler_thread_ids().into_iter().collect();
    let mut out = Vec::new();
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let quiet = QUIET.lock();
    let quiet = quiet.as_ref()?;
    for entry in tasks {
        let tid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        if tid == me || scheduler.contains(&tid) || quiet.own.contains(&tid) {
            continue;
        }
        let (seq, on) = quiet.asleep.get(&tid)?;
        match on {
            None | Some(WaitOn::Join { .. }) => {}
            Some(WaitOn::Object { object, .. }) if fed_by_threads(*object) => {}
            Some(_) => return None,
        }
        out.push(AsleepThread { tid, seq: *seq });
    }
    out.sort();
    Some(out)
}
