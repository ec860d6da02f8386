//! A pool of OS threads fed by a bounded greenhub queue.
//!
//! Callers put calls on the pool's [`Queue`] (so a full queue is a cooperative, FIFO, deadline-
//! bounded wait, shown in the snapshot as waiting on the `tpool queue`); pool threads take them
//! off it from plain OS threads. Threads start on demand up to the pool's size, and retire when
//! the pool shrinks. A finished call hands its result over in its slot (`call.rs`) and wakes
//! the caller through the runtime's hub, which batches wakes.

use std::mem::ManuallyDrop;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once, Weak};
use std::time::{Duration, Instant};

use greenhub::ext::{Inspect, ObjectInfo, Registration};
use greenhub::{Queue, queue::GetError, queue::PutError};
use parking_lot::Mutex;

use crate::Error;
use crate::call::{Call, CallState, Origin, Wake};
use crate::spin::{Gate, Look, Outcome, Window};
use crate::stats::{Book, PoolStats, RunningCall};

/// eventlet's default.
pub const DEFAULT_THREADS: usize = 20;

/// The most threads one pool may have.
pub const MAX_THREADS: usize = 4096;

/// Default bound of the request queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Incremented in the child of every `fork()`: a pool born in another generation belongs to
/// the parent, whose threads did not survive the fork.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    // Only an atomic store: this runs in the child of a multi-threaded process.
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

fn watch_forks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

pub(crate) trait Job: Send {
    /// Runs the call; `in_flight` is the pool's count of calls in flight, this one included.
    fn run(self: Box<Self>, ledger: &Mutex<Ledger>, in_flight: &AtomicUsize);
    fn cancel(self: Box<Self>, error: Error);
}

pub(crate) enum Work {
    Call(Box<dyn Job>),
    /// Asks one thread to retire if the pool has more threads than its size.
    Retire,
}

struct Task<T, F> {
    f: F,
    state: Arc<CallState<T>>,
    site: &'static Location<'static>,
    caller: Option<u64>,
    queued_at: Instant,
}

impl<T, F> Job for Task<T, F>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    fn run(self: Box<Self>, ledger: &Mutex<Ledger>, in_flight: &AtomicUsize) {
        let Task {
            f,
            state,
            site,
            caller,
            queued_at,
        } = *self;
        let started = Instant::now();
        ledger.lock().running = Some(Running {
            site,
            caller,
            started,
        });
        let outcome = greenhub::catch_panic(f).map_err(|p| Error::Panicked {
            message: p.message,
            location: p.location,
        });
        let ran = started.elapsed();
        {
            let mut l = ledger.lock();
            l.running = None;
            l.book
                .record(site, started - queued_at, ran, outcome.is_err());
        }
        // A call that ends with no other in flight has nothing to be batched with: its caller
        // is woken directly, one hop fewer than through the inbox.
        let wake = if in_flight.load(Ordering::Acquire) <= 1 {
            Wake::Direct
        } else {
            Wake::Batched
        };
        state.complete(outcome, wake);
    }

    fn cancel(self: Box<Self>, error: Error) {
        self.state.complete(Err(error), Wake::Batched);
    }
}

struct Running {
    site: &'static Location<'static>,
    caller: Option<u64>,
    started: Instant,
}

/// One pool thread's books: written by that thread alone (an uncontended lock per call
/// start and end), merged only when a snapshot asks, so that threads never contend on
/// statistics.
pub(crate) struct Ledger {
    thread: String,
    book: Book,
    running: Option<Running>,
}

/// Takes a thread's ledger off the list when the thread ends; its figures stay, merged into
/// the pool's retired book.
struct Retire<'a> {
    shared: &'a Shared,
    ledger: &'a Arc<Mutex<Ledger>>,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        // Under the list's lock, as `stats` reads both: the figures are always counted once.
        let mut ledgers = self.shared.ledgers.lock();
        ledgers.retain(|l| !Arc::ptr_eq(l, self.ledger));
        self.shared.retired.lock().add(&self.ledger.lock().book);
    }
}

pub(crate) struct Shared {
    pub(crate) name: String,
    /// The pool itself, for what only the registry's reference reaches (a resize asked for
    /// by an inspector starts threads, which hold the pool).
    me: Weak<Shared>,
    reg: ManuallyDrop<Registration>,
    queue: Queue<Work>,
    queue_capacity: usize,
    size: AtomicUsize,
    threads: AtomicUsize,
    busy: AtomicUsize,
    started_threads: AtomicU64,
    timed_out: AtomicU64,
    inline: AtomicU64,
    shut: AtomicBool,
    generation: u64,
    /// Each live pool thread's ledger.
    ledgers: Mutex<Vec<Arc<Mutex<Ledger>>>>,
    /// The figures of threads that have ended.
    retired: Mutex<Book>,
    /// Queued calls refused by a shutdown.
    cancelled: AtomicU64,
    /// Calls submitted and not yet completed (or cancelled).
    in_flight: AtomicUsize,
    /// Calls in the queue, as a hint read without the queue's lock.
    queued: AtomicUsize,
    /// Whether a thread is polling for work (at most one does).
    spinning: AtomicBool,
    /// Whether pool threads' polls for work pay.
    thread_polls: Gate,
    /// Whether callers' polls for results pay.
    caller_polls: Gate,
    /// Idle threads parked for work, last parked last.
    parked: Mutex<Vec<std::thread::Thread>>,
    /// Threads searching for work: spinning, or woken and not yet holding a call.
    searching: AtomicUsize,
    submitted: AtomicU64,
}

impl Origin for Shared {
    fn name(&self) -> &str {
        &self.name
    }

    fn id(&self) -> u64 {
        self.reg.id()
    }

    /// A caller polls only when so few calls are in flight that its result is next, and
    /// recent callers' polls paid.
    fn admit_poll(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) <= 2 && self.caller_polls.admit()
    }

    fn record_poll(&self, outcome: Outcome) {
        self.caller_polls.record(outcome);
    }

    fn count_timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn forked(&self) -> bool {
        FORK_GENERATION.load(Ordering::Relaxed) != self.generation
    }

    /// Before queueing a call: a pool with no thread at all starts one, so that a pool whose
    /// threads cannot be started says so ([`Error::NoThread`]) instead of queueing for ever.
    fn ensure_thread(self: &Arc<Self>) -> Result<(), Error> {
        if self.threads.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        self.start_thread(false).map(drop)
    }

    /// Starts a thread if there is room under the pool's size; whether it did. A `counted`
    /// thread starts as searching (its starter counted it).
    fn start_thread(self: &Arc<Self>, counted: bool) -> Result<bool, Error> {
        let mut n = self.threads.load(Ordering::Acquire);
        loop {
            if n >= self.size.load(Ordering::Acquire) {
                return Ok(false);
            }
            match self
                .threads
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let shared = self.clone();
        let k = self.started_threads.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("tpool-{}-{k}", self.name))
            .spawn(move || shared.serve(counted));
        match spawned {
            Ok(_) => Ok(true),
            Err(e) => {
                let left = self.threads.fetch_sub(1, Ordering::AcqRel) - 1;
                if left == 0 {
                    Err(Error::NoThread {
                        reason: e.to_string(),
                    })
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// A pool thread's life.
    fn serve(self: Arc<Self>, counted: bool) {
        let ledger = Arc::new(Mutex::new(Ledger {
            thread: std::thread::current().name().unwrap_or("?").to_string(),
            book: Book::new(),
            running: None,
        }));
        self.ledgers.lock().push(ledger.clone());
        let _retire = Retire {
            shared: &self,
            ledger: &ledger,
        };
        let mut searching = counted;
        loop {
            if self.retire_if_too_many() {
                self.stop_searching(&mut searching);
                return;
            }
            let work = self.next_work(&mut searching);
            match work {
                Ok(Work::Call(job)) => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    if self.shut.load(Ordering::Acquire) {
                        self.cancelled.fetch_add(1, Ordering::Relaxed);
                        self.in_flight.fetch_sub(1, Ordering::AcqRel);
                        job.cancel(Error::ShutDown);
                        continue;
                    }
                    self.busy.fetch_add(1, Ordering::AcqRel);
                    job.run(&ledger, &self.in_flight);
                    self.busy.fetch_sub(1, Ordering::AcqRel);
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                Ok(Work::Retire) => {}
                Err(_) => {
                    // Closed and drained: the pool was shut down.
                    self.threads.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
    }

    /// How a pool thread finds its next call. A thread *searches* while it spins, and from
    /// the moment a submitter wakes (or starts) it until it takes a call. Submitters wake a
    /// thread only when none searches, and a thread that takes a call while more are queued
    /// wakes the next one: a burst of calls spreads over the threads by a chain of wake-ups,
    /// not one futex wake-up per call, and no call waits while a thread could take it.
    fn next_work(self: &Arc<Self>, searching: &mut bool) -> Result<Work, GetError> {
        if let Some(work) = self.spin_for_work(searching) {
            self.found(&work, searching);
            return Ok(work);
        }
        let me = std::thread::current();
        loop {
            match self.queue.try_get() {
                Err(GetError::Empty) => {}
                Ok(work) => {
                    self.found(&work, searching);
                    return Ok(work);
                }
                Err(closed) => {
                    self.stop_searching(searching);
                    return Err(closed);
                }
            }
            if *searching {
                // Searching ends before parking; the queue is checked again after that (see
                // `wake_one` for the ordering this relies on).
                self.stop_searching(searching);
                continue;
            }
            self.parked.lock().push(me.clone());
            // A call queued after the check above either finds this thread in the list or
            // was queued before this second check.
            let taken = self.queue.try_get();
            if matches!(taken, Err(GetError::Empty)) {
                // A parked pool thread acts only for a caller: greenhub's deadlock check may
                // take it as asleep.
                greenhub::ext::idle_while(std::thread::park);
            }
            if !self.unlist(&me) {
                // A submitter took this thread off the list and counted it as searching.
                *searching = true;
            }
            match taken {
                Err(GetError::Empty) => {}
                Ok(work) => {
                    self.found(&work, searching);
                    return Ok(work);
                }
                Err(closed) => {
                    self.stop_searching(searching);
                    return Err(closed);
                }
            }
        }
    }

    fn stop_searching(&self, searching: &mut bool) {
        if std::mem::take(searching) {
            self.searching.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A thread took `work`: it stops searching, and wakes the next thread if calls remain.
    fn found(self: &Arc<Self>, work: &Work, searching: &mut bool) {
        self.stop_searching(searching);
        // `queued` still counts a call just taken (the caller decrements it).
        let others = match work {
            Work::Call(_) => 1,
            Work::Retire => 0,
        };
        if self.queued.load(Ordering::Acquire) > others {
            let _ = self.wake_one();
        }
    }

    /// Takes this thread off the parked list; `false` if a submitter already did.
    fn unlist(&self, me: &std::thread::Thread) -> bool {
        let mut parked = self.parked.lock();
        match parked.iter().rposition(|t| t.id() == me.id()) {
            Some(i) => {
                parked.remove(i);
                true
            }
            None => false,
        }
    }

    /// After queueing work: unless a thread is searching already (it will take the work, or
    /// wake the next thread if it takes other work), wakes the last-parked thread, or starts a
    /// new one when none is parked. SeqCst with the decrement in `stop_searching`: a submitter
    /// that saw a searcher queued its call before the searcher's last look at the queue.
    ///
    /// Returns whether a thread was awake for the work (searching): its result can come
    /// within a caller's poll. A thread woken from its park answers no sooner than the OS
    /// wakes it, tens of microseconds on a virtual machine's idle core, which a poll would
    /// spend spinning.
    fn wake_one(self: &Arc<Self>) -> bool {
        if self.searching.load(Ordering::SeqCst) > 0 {
            return true;
        }
        self.searching.fetch_add(1, Ordering::SeqCst);
        let parked = self.parked.lock().pop();
        let woken = match parked {
            Some(t) => {
                t.unpark();
                true
            }
            None => matches!(self.start_thread(true), Ok(true)),
        };
        if !woken {
            // Nobody to count: the threads there are will find the work.
            self.searching.fetch_sub(1, Ordering::SeqCst);
        }
        false
    }

    /// Wakes every parked thread (each counted as searching, as `wake_one` counts one).
    fn wake_all(&self) {
        let woken: Vec<_> = self.parked.lock().drain(..).collect();
        self.searching.fetch_add(woken.len(), Ordering::SeqCst);
        for t in woken {
            t.unpark();
        }
    }

    /// One thread at a time polls the queue for a short while before parking (searching),
    /// while such polls pay (`spin.rs`): a call that comes soon after the last one then
    /// starts without a futex wake-up, and spaced calls or busy cores stop the polling.
    fn spin_for_work(&self, searching: &mut bool) -> Option<Work> {
        if self.spinning.swap(true, Ordering::SeqCst) {
            return None;
        }
        if !self.thread_polls.admit() {
            self.spinning.store(false, Ordering::SeqCst);
            return None;
        }
        if !*searching {
            self.searching.fetch_add(1, Ordering::SeqCst);
            *searching = true;
        }
        let mut window = Window::open(None);
        let (found, outcome) = 'poll: loop {
            for _ in 0..64 {
                if self.queued.load(Ordering::Acquire) > 0
                    && let Ok(work) = self.queue.try_get()
                {
                    break 'poll (Some(work), Outcome::Found);
                }
                std::hint::spin_loop();
            }
            if window.look() != Look::Open {
                break (None, Outcome::Missed);
            }
        };
        self.thread_polls.record(outcome);
        self.spinning.store(false, Ordering::SeqCst);
        found
    }

    fn retire_if_too_many(&self) -> bool {
        let mut n = self.threads.load(Ordering::Acquire);
        loop {
            if n <= self.size.load(Ordering::Acquire) {
                return false;
            }
            match self
                .threads
                .compare_exchange(n, n - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
    }

    fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            name: self.name.clone(),
            size: self.size.load(Ordering::Relaxed),
            queue_capacity: self.queue_capacity,
            inline: self.inline.load(Ordering::Relaxed),
            shut_down: self.shut.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        if self.forked() {
            // The parent's threads and locks did not come along: a fresh, empty pool.
            return stats;
        }
        stats.threads = self.threads.load(Ordering::Relaxed);
        stats.busy = self.busy.load(Ordering::Relaxed);
        stats.queued = self.queue.len();
        stats.timed_out = self.timed_out.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut b = Book::new();
        let mut running = Vec::new();
        let ledgers = self.ledgers.lock();
        b.add(&self.retired.lock());
        for ledger in ledgers.iter() {
            let l = ledger.lock();
            b.add(&l.book);
            if let Some(r) = &l.running {
                running.push(RunningCall {
                    site: r.site.to_string(),
                    caller: r.caller,
                    running_for_us: now.saturating_duration_since(r.started).as_micros() as u64,
                    thread: l.thread.clone(),
                });
            }
        }
        stats.submitted = self.submitted.load(Ordering::Relaxed);
        stats.completed = b.completed;
        stats.panicked = b.panicked;
        stats.cancelled = self.cancelled.load(Ordering::Relaxed);
        stats.queue_wait = b.queue_wait.summary();
        stats.run_time = b.run_time.summary();
        stats.sites = b.sites();
        running.sort_by_key(|r| std::cmp::Reverse(r.running_for_us));
        stats.running = running;
        stats.waiting_for_room = self.queue.waiting_putters();
        stats
    }
}

impl Shared {
    /// [`Pool::resize`].
    fn resize(&self, threads: usize) -> Result<(), Error> {
        check_size(threads)?;
        let shared = self;
        let before = shared.size.swap(threads, Ordering::AcqRel);
        if threads > before {
            let wanted = shared.queue.len().min(threads - before);
            if let Some(pool) = shared.me.upgrade() {
                for _ in 0..wanted {
                    pool.start_thread(false)?;
                }
            }
        } else {
            let excess = shared
                .threads
                .load(Ordering::Acquire)
                .saturating_sub(threads);
            for _ in 0..excess {
                // A full queue means busy threads, which retire after their call anyway.
                if shared.queue.try_put(Work::Retire).is_err() {
                    break;
                }
            }
            // Parked threads take the retirements (those that find none park again).
            shared.wake_all();
        }
        Ok(())
    }
}

impl Inspect for Shared {
    fn inspect(&self) -> ObjectInfo {
        let stats = self.stats();
        let mut info = ObjectInfo::new(
            *crate::CALL_KIND,
            self.id(),
            Some(&self.name),
            stats.busy + stats.queued,
        )
        .count("size", stats.size as u64)
        .count("threads", stats.threads as u64)
        .count("busy", stats.busy as u64)
        .count("queued", stats.queued as u64)
        .total("submitted", stats.submitted)
        .total("completed", stats.completed)
        .total("panicked", stats.panicked)
        .total("timed_out", stats.timed_out)
        .total("cancelled", stats.cancelled);
        if let Ok(detail) = serde_json::to_value(&stats) {
            info = info.with_detail(detail);
        }
        info
    }

    fn resize(&self, size: usize) -> Result<(), String> {
        Shared::resize(self, size).map_err(|e| e.to_string())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.forked() {
            // SAFETY: dropped once, here.
            unsafe { ManuallyDrop::drop(&mut self.reg) };
        }
        // In a forked child the registry's lock may be held by a thread that did not come
        // along: the registration is left behind rather than risk a hang.
    }
}

/// A pool of OS threads for blocking calls. Cheap to clone (a handle).
///
/// ```
/// use greenhub_tpool::Pool;
///
/// let slow = Pool::builder().name("slow-disk").threads(4).build().unwrap();
/// let len = greenhub::spawn(move || {
///     slow.execute(|| std::fs::read("/proc/self/status").map(|b| b.len()))
/// });
/// assert!(len.wait().unwrap().unwrap().unwrap() > 0);
/// ```
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("id", &self.shared.id())
            .field("size", &self.size())
            .finish()
    }
}

/// Configures a [`Pool`].
#[derive(Clone, Debug)]
pub struct Builder {
    name: String,
    threads: usize,
    queue_capacity: usize,
}

impl Builder {
    /// The pool's name: in its threads' names and in the snapshot.
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = name.into();
        self
    }

    /// How many OS threads the pool may run (1 to [`MAX_THREADS`]). Threads start as calls need
    /// them.
    pub fn threads(mut self, threads: usize) -> Builder {
        self.threads = threads;
        self
    }

    /// How many calls may wait in the queue for a thread (at least 1); callers beyond that wait
    /// cooperatively for room.
    pub fn queue_capacity(mut self, capacity: usize) -> Builder {
        self.queue_capacity = capacity;
        self
    }

    /// The pool.
    pub fn build(self) -> Result<Pool, Error> {
        check_size(self.threads)?;
        if self.queue_capacity == 0 {
            return Err(Error::InvalidQueueCapacity);
        }
        watch_forks();
        let queue = Queue::builder()
            .bounded(self.queue_capacity)
            .kind(*crate::QUEUE_KIND)
            .build()
            .named(self.name.clone());
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
            me: weak.clone(),
            name: self.name,
            reg: ManuallyDrop::new(Registration::new(weak.clone())),
            queue,
            queue_capacity: self.queue_capacity,
            size: AtomicUsize::new(self.threads),
            threads: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            started_threads: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            shut: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            spinning: AtomicBool::new(false),
            thread_polls: Gate::default(),
            caller_polls: Gate::default(),
            parked: Mutex::new(Vec::new()),
            searching: AtomicUsize::new(0),
            submitted: AtomicU64::new(0),
            generation: FORK_GENERATION.load(Ordering::SeqCst),
            ledgers: Mutex::new(Vec::new()),
            retired: Mutex::new(Book::new()),
            cancelled: AtomicU64::new(0),
        });
        Ok(Pool { shared })
    }
}

fn check_size(threads: usize) -> Result<(), Error> {
    if (1..=MAX_THREADS).contains(&threads) {
        Ok(())
    } else {
        Err(Error::InvalidSize {
            threads,
            max: MAX_THREADS,
        })
    }
}

/// What [`Pool::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shutdown {
    /// Queued calls that never ran: their callers got [`Error::ShutDown`].
    pub cancelled: u64,
    /// Calls still running when the timeout passed (they finish on their threads; their
    /// results go to their callers if those still wait).
    pub still_running: usize,
}

impl Pool {
    /// A builder: [`DEFAULT_THREADS`] threads, a queue of [`DEFAULT_QUEUE_CAPACITY`].
    pub fn builder() -> Builder {
        Builder {
            name: "tpool".into(),
            threads: DEFAULT_THREADS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }

    /// The pool's id in the snapshot (green threads waiting for a result show
    /// `waiting on tpool call #id`).
    pub fn id(&self) -> u64 {
        self.shared.id()
    }

    /// The id of the pool's request queue in the snapshot (callers waiting for room show
    /// `waiting on tpool queue #id`).
    pub fn queue_id(&self) -> u64 {
        self.shared.queue.id()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many threads the pool may run.
    pub fn size(&self) -> usize {
        self.shared.size.load(Ordering::Relaxed)
    }

    /// Runs `f` on a pool thread and waits cooperatively for its value; see
    /// [`crate::execute`] for the rules.
    #[track_caller]
    pub fn execute<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let site = Location::caller();
        if !may::coroutine::is_coroutine() {
            return self.run_inline(f);
        }
        self.submit_from(site, f)?.wait()
    }

    /// Queues `f` and returns a handle to wait for its result later (or to abandon it).
    ///
    /// From a plain OS thread (or a pool thread) `f` runs inline, before this returns.
    #[track_caller]
    pub fn submit<T, F>(&self, f: F) -> Result<Call<T>, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.submit_at(Location::caller(), f)
    }

    pub(crate) fn submit_at<T, F>(
        &self,
        site: &'static Location<'static>,
        f: F,
    ) -> Result<Call<T>, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if !may::coroutine::is_coroutine() {
            let state = CallState::new();
            state.complete(self.run_inline(f), Wake::Batched);
            return Ok(Call::new(state, self.shared.clone(), site, false));
        }
        self.submit_from(site, f)
    }

    fn run_inline<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        self.shared.inline.fetch_add(1, Ordering::Relaxed);
        greenhub::catch_panic(f).map_err(|p| Error::Panicked {
            message: p.message,
            location: p.location,
        })
    }

    fn submit_from<T, F>(&self, site: &'static Location<'static>, f: F) -> Result<Call<T>, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let shared = &self.shared;
        if shared.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        shared.ensure_thread()?;
        let state = CallState::new();
        let task = Task {
            f,
            state: state.clone(),
            site,
            caller: greenhub::current().map(|c| c.id()),
            queued_at: Instant::now(),
        };
        shared.queued.fetch_add(1, Ordering::AcqRel);
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        match shared.queue.put(Work::Call(Box::new(task))) {
            Ok(()) => {
                // A caller may poll for its result if a pool thread was awake to take the
                // call, or if pool threads' own polls pay (calls come back to back: a caller
                // that polls here submits its next call while the thread still polls for it,
                // which keeps both awake). Spaced calls wake a parked thread whose polls
                // miss: their callers park instead of spinning through its wake-up.
                let may_poll = shared.wake_one() || shared.thread_polls.is_open();
                shared.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(Call::new(state, shared.clone(), site, may_poll))
            }
            Err(PutError::TimedOut(_)) => {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                shared.count_timed_out();
                Err(Error::TimedOut)
            }
            Err(_) => {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(Error::ShutDown)
            }
        }
    }

    /// Queues `f` for a pool thread and returns at once, from a green thread or a plain OS
    /// thread alike: it never runs `f` inline and never waits (for room either:
    /// [`Error::QueueFull`]). For detached work whose result nobody waits for; a panic in `f`
    /// is counted in the pool's stats.
    ///
    /// ```
    /// let pool = greenhub_tpool::Pool::builder().name("janitor").threads(1).build().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// pool.spawn(move || tx.send(std::thread::current().name().map(str::to_owned)).unwrap()).unwrap();
    /// assert_eq!(rx.recv().unwrap().as_deref(), Some("tpool-janitor-0"));
    /// ```
    #[track_caller]
    pub fn spawn<F>(&self, f: F) -> Result<(), Error>
    where
        F: FnOnce() + Send + 'static,
    {
        let site = Location::caller();
        let shared = &self.shared;
        if shared.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        shared.ensure_thread()?;
        let task = Task {
            f,
            state: CallState::new(),
            site,
            caller: greenhub::current().map(|c| c.id()),
            queued_at: Instant::now(),
        };
        shared.queued.fetch_add(1, Ordering::AcqRel);
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        match shared.queue.try_put(Work::Call(Box::new(task))) {
            Ok(()) => {
                let _ = shared.wake_one();
                shared.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    PutError::Closed(_) => Error::ShutDown,
                    _ => Error::QueueFull {
                        capacity: shared.queue_capacity,
                    },
                })
            }
        }
    }

    /// Changes how many threads the pool may run. Growing starts threads for calls already
    /// queued; shrinking retires idle threads at once and busy ones when their call ends.
    pub fn resize(&self, threads: usize) -> Result<(), Error> {
        self.shared.resize(threads)
    }

    /// Counters, histograms and the running calls.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// Shuts the pool down: new calls fail with [`Error::ShutDown`], queued calls are refused
    /// with that error, and calls already running are waited for up to `timeout`. Never waits
    /// longer than that; threads end as their call ends. Works from green and OS threads.
    pub fn shutdown(&self, timeout: Duration) -> Shutdown {
        let shared = &self.shared;
        let deadline = Instant::now() + timeout;
        shared.shut.store(true, Ordering::Release);
        shared.queue.close();
        shared.wake_all();
        let mut cancelled = 0u64;
        while let Ok(work) = shared.queue.try_get() {
            if let Work::Call(job) = work {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                job.cancel(Error::ShutDown);
                cancelled += 1;
            }
        }
        shared.cancelled.fetch_add(cancelled, Ordering::Relaxed);
        loop {
            let busy = shared.busy.load(Ordering::Acquire);
            let now = Instant::now();
            if busy == 0 || now >= deadline {
                return Shutdown {
                    cancelled,
                    still_running: busy,
                };
            }
            let nap = (deadline - now).min(Duration::from_millis(1));
            // Outside a deadline scope sleep cannot fail; inside one, the loop ends at the
            // scope's deadline because `now` catches up with ours or theirs.
            if greenhub::sleep(nap).is_err() {
                return Shutdown {
                    cancelled,
                    still_running: shared.busy.load(Ordering::Acquire),
                };
            }
        }
    }

    /// Whether [`Pool::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.shut.load(Ordering::Acquire)
    }
}
