//! Timers that run code later: [`call_after`] and the start of [`crate::spawn_after`].
//!
//! A pending timer is an entry in one heap served by an OS thread (`greenhub-timer`), not a
//! sleeping green thread, so a million pending timers cost a million small entries and no
//! stacks. When a timer fires, its work runs in a fresh green thread, where it may wait.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::Location;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::context;
use crate::registry::{registry, IdMap, TimerEntry, TimerKind};
use crate::{clock, panic};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    jobs: IdMap<Job>,
}

struct Timers {
    queue: Mutex<Queue>,
    wake: Condvar,
}

static TIMERS: OnceLock<Timers> = OnceLock::new();

fn timers() -> &'static Timers {
    TIMERS.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("greenhub-timer".into())
            .spawn(run);
        if let Err(e) = spawned {
            panic::error(&format!(
                "greenhub: cannot start the timer thread ({e}); call_after and spawn_after will not fire"
            ));
        }
        Timers {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        }
    })
}

/// Schedules `job` to run on the timer thread after `delay`; returns the timer's id.
pub(crate) fn schedule(
    delay: Duration,
    kind: TimerKind,
    owner: Option<u64>,
    site: &'static Location<'static>,
    job: Job,
) -> u64 {
    let at = Instant::now()
        .checked_add(delay)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
    let reg = registry();
    let id = reg.next_id();
    reg.insert_timer(
        id,
        TimerEntry {
            deadline_ns: clock::instant_ns(at),
            kind,
            owner,
            site,
        },
    );
    let t = timers();
    let mut q = t.queue.lock();
    let earliest = q.heap.peek().is_none_or(|Reverse((first, _))| at < *first);
    q.heap.push(Reverse((at, id)));
    q.jobs.insert(id, job);
    drop(q);
    if earliest {
        t.wake.notify_one();
    }
    id
}

/// Cancels a pending timer. Returns `false` if it already fired or was cancelled.
pub(crate) fn cancel(id: u64) -> bool {
    let Some(t) = TIMERS.get() else { return false };
    let job = {
        let mut q = t.queue.lock();
        let job = q.jobs.remove(&id);
        // Cancelled entries stay in the heap until they come up; rebuild it when they dominate
        // so that create-and-cancel patterns keep memory bounded.
        if q.heap.len() > 64 && q.heap.len() > 2 * q.jobs.len() {
            let Queue { heap, jobs } = &mut *q;
            heap.retain(|Reverse((_, id))| jobs.contains_key(id));
        }
        job
    };
    let cancelled = job.is_some();
    if cancelled {
        registry().remove_timer(id);
    }
    // The job (and what it captured) is dropped here, outside the lock.
    drop(job);
    cancelled
}

/// Whether a timer is still pending.
pub(crate) fn is_pending(id: u64) -> bool {
    TIMERS
        .get()
        .is_some_and(|t| t.queue.lock().jobs.contains_key(&id))
}

fn run() {
    let t = timers();
    let mut due: Vec<(u64, Job)> = Vec::new();
    loop {
        {
            let mut q = t.queue.lock();
            loop {
                let now = Instant::now();
                while let Some(Reverse((at, id))) = q.heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    q.heap.pop();
                    if let Some(job) = q.jobs.remove(&id) {
                        due.push((id, job));
                    }
                }
                if !due.is_empty() {
                    break;
                }
                match q.heap.peek().copied() {
                    Some(Reverse((at, _))) => {
                        t.wake.wait_until(&mut q, at);
                    }
                    None => t.wake.wait(&mut q),
                }
            }
        }
        for (id, job) in due.drain(..) {
            registry().remove_timer(id);
            // Jobs only spawn green threads; a panic here is a greenhub bug, but it must not
            // stop every later timer.
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                panic::error(&format!(
                    "greenhub: a timer job panicked: {}",
                    panic::payload_message(&*payload)
                ));
            }
        }
    }
}

/// A pending [`call_after`]; cancel it before it fires.
#[derive(Debug)]
pub struct Timer {
    id: u64,
}

impl Timer {
    /// The timer's id (as the registry shows it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancels the timer. Returns `true` if it was pending (the function will not run),
    /// `false` if it already fired or was cancelled.
    pub fn cancel(&self) -> bool {
        cancel(self.id)
    }

    /// Whether the timer has neither fired nor been cancelled.
    pub fn is_pending(&self) -> bool {
        is_pending(self.id)
    }
}

/// Runs `f` in a new green thread after `delay` (eventlet's `call_after`), unless the returned
/// [`Timer`] is cancelled first. The green thread's parent is the caller.
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
///
/// let (tx, rx) = mpsc::channel();
/// let tx2 = tx.clone();
/// let _fires = greenhub::call_after(Duration::from_millis(5), move || tx.send("fired").unwrap());
/// let cancelled = greenhub::call_after(Duration::from_millis(5), move || tx2.send("no").unwrap());
/// assert!(cancelled.cancel());
/// assert_eq!(rx.recv().unwrap(), "fired");
/// assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
/// ```
#[track_caller]
pub fn call_after<F>(delay: Duration, f: F) -> Timer
where
    F: FnOnce() + Send + 'static,
{
    let site = Location::caller();
    let owner = context::current_id();
    let job = Box::new(move || {
        let spawned = crate::thread::Builder::new()
            .name("call_after")
            .spawn_from(site, owner, f);
        if let Err(e) = spawned {
            panic::error(&format!(
                "greenhub: the call_after timer set at {site} could not run its function: {e}"
            ));
        }
    });
    let id = schedule(delay, TimerKind::CallAfter, owner, site, job);
    Timer { id }
}
