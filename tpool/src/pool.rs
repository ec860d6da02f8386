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

use greenhub::inspect::{Inspect, ObjectInfo, Registration};
use greenhub::wait::ObjectKind;
use greenhub::{GetError, PutError, Queue};
use parking_lot::Mutex;

use crate::call::{Call, CallState};
use crate::stats::{Book, PoolStats, RunningCall};
use crate::Error;

/// eventlet's default.
pub const DEFAULT_THREADS: usize = 20;

/// The most threads one pool may have.
pub const MAX_THREADS: usize = 4096;

/// How long an idle pool thread, and a caller, poll before parking.
const SPIN: Duration = Duration::from_micros(30);

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
    fn run(self: Box<Self>, ledger: &Mutex<Ledger>);
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
    fn run(self: Box<Self>, ledger: &Mutex<Ledger>) {
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
        state.complete(outcome);
    }

    fn cancel(self: Box<Self>, error: Error) {
        self.state.complete(Err(error));
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
        self.shared
            .ledgers
            .lock()
            .retain(|l| !Arc::ptr_eq(l, self.ledger));
        self.shared.retired.lock().add(&self.ledger.lock().book);
    }
}

pub(crate) struct Shared {
    pub(crate) name: String,
    reg: ManuallyDrop<Registration>,
    queue: Queue<Work>,
    queue_capacity: usize,
    size: AtomicUsize,
    threads: AtomicUsize,
    idle: AtomicUsize,
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
    /// Whether a thread is spinning for work (at most one does).
    spinning: AtomicBool,
    /// Idle threads parked for work, last parked last.
    parked: Mutex<Vec<std::thread::Thread>>,
    submitted: AtomicU64,
}

impl Shared {
    pub(crate) fn id(&self) -> u64 {
        self.reg.id()
    }

    /// Whether so few calls are in flight that a caller should poll for its result briefly
    /// instead of parking at once.
    pub(crate) fn worth_spinning(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) <= 2
    }

    pub(crate) fn count_timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    fn forked(&self) -> bool {
        FORK_GENERATION.load(Ordering::Relaxed) != self.generation
    }

    /// Starts a thread if calls could wait for one: nobody idle and room to grow.
    fn ensure_thread(self: &Arc<Self>) -> Result<(), Error> {
        if self.idle.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let mut n = self.threads.load(Ordering::Acquire);
        loop {
            if n >= self.size.load(Ordering::Acquire) {
                return Ok(());
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
            .spawn(move || shared.serve());
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                let left = self.threads.fetch_sub(1, Ordering::AcqRel) - 1;
                if left == 0 {
                    Err(Error::NoThread {
                        reason: e.to_string(),
                    })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// A pool thread's life.
    fn serve(self: Arc<Self>) {
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
        loop {
            if self.retire_if_too_many() {
                return;
            }
            let work = match self.spin_for_work() {
                Some(work) => Ok(work),
                None => self.wait_for_work(),
            };
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
                    job.run(&ledger);
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

    /// Parks until a call is queued. Parked threads are woken last-parked first, and only
    /// when no thread is spinning, so that a burst of short calls is served by the threads
    /// already awake instead of waking every parked thread in turn (a queue handing each
    /// call to its longest-waiting getter costs a futex wake-up per call).
    fn wait_for_work(&self) -> Result<Work, GetError> {
        self.idle.fetch_add(1, Ordering::AcqRel);
        let me = std::thread::current();
        let work = loop {
            match self.queue.try_get() {
                Err(GetError::Empty) => {}
                taken => break taken,
            }
            self.parked.lock().push(me.clone());
            // A call queued after the check above either finds this thread in the list or
            // was queued before this second check.
            match self.queue.try_get() {
                Err(GetError::Empty) => std::thread::park(),
                taken => {
                    self.unlist(&me);
                    break taken;
                }
            }
            self.unlist(&me);
        };
        self.idle.fetch_sub(1, Ordering::AcqRel);
        work
    }

    fn unlist(&self, me: &std::thread::Thread) {
        let mut parked = self.parked.lock();
        if let Some(i) = parked.iter().rposition(|t| t.id() == me.id()) {
            parked.remove(i);
        }
    }

    /// After queueing work: wakes the last-parked thread, unless one is spinning (it will
    /// take the work; see the ordering note on `spinning`).
    fn wake_one(&self) {
        if self.spinning.load(Ordering::SeqCst) {
            return;
        }
        if let Some(t) = self.parked.lock().pop() {
            t.unpark();
        }
    }

    fn wake_all(&self) {
        for t in self.parked.lock().drain(..) {
            t.unpark();
        }
    }

    /// One thread at a time polls the queue for a short while before parking: a call that
    /// comes soon after the last one then starts without a futex wake-up.
    fn spin_for_work(&self) -> Option<Work> {
        if self.spinning.swap(true, Ordering::SeqCst) {
            return None;
        }
        let until = Instant::now() + SPIN;
        let mut found = None;
        'spin: while Instant::now() < until {
            for _ in 0..64 {
                if self.queued.load(Ordering::Acquire) > 0 {
                    if let Ok(work) = self.queue.try_get() {
                        found = Some(work);
                        break 'spin;
                    }
                }
                std::hint::spin_loop();
            }
        }
        // SeqCst with the load in `wake_one`: a submitter that saw this thread spinning put
        // its call before this store, so the check after it (in `wait_for_work`) finds it.
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
        b.add(&self.retired.lock());
        let mut running = Vec::new();
        for ledger in self.ledgers.lock().iter() {
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

impl Inspect for Shared {
    fn inspect(&self) -> ObjectInfo {
        let stats = self.stats();
        let mut info = ObjectInfo::new(
            ObjectKind::TpoolCall,
            self.id(),
            Some(&self.name),
            stats.busy + stats.queued,
        )
        .count("size", stats.size as u64)
        .count("threads", stats.threads as u64)
        .count("busy", stats.busy as u64)
        .count("queued", stats.queued as u64)
        .count("submitted", stats.submitted)
        .count("completed", stats.completed)
        .count("panicked", stats.panicked)
        .count("timed_out", stats.timed_out);
        if let Ok(detail) = serde_json::to_value(&stats) {
            info = info.with_detail(detail);
        }
        info
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
            .kind(ObjectKind::TpoolQueue)
            .name(self.name.clone())
            .build();
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
            name: self.name,
            reg: ManuallyDrop::new(Registration::new(weak.clone())),
            queue,
            queue_capacity: self.queue_capacity,
            size: AtomicUsize::new(self.threads),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            started_threads: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            shut: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            spinning: AtomicBool::new(false),
            parked: Mutex::new(Vec::new()),
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
            state.complete(self.run_inline(f));
            return Ok(Call::new(state, self.shared.clone(), site));
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
                shared.wake_one();
                shared.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(Call::new(state, shared.clone(), site))
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
                shared.wake_one();
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
        check_size(threads)?;
        let shared = &self.shared;
        let before = shared.size.swap(threads, Ordering::AcqRel);
        if threads > before {
            let wanted = shared.queue.len().min(threads - before);
            for _ in 0..wanted {
                shared.ensure_thread()?;
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
                shared.wake_one();
            }
        }
        Ok(())
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
