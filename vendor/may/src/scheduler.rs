use std::cell::Cell;
#[cfg(feature = "work_steal")]
use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::config::config;
use crate::coroutine_impl::{run_coroutine, CoroutineImpl};
use crate::io::{EventLoop, Selector};
use crate::likely::likely;
use crate::pool::CoroutinePool;
use crate::sync::AtomicOption;
use crate::timeout_list;
use crate::yield_now::set_co_para;
use may_queue::mpsc::Queue;

cfg_if::cfg_if! {
    if #[cfg(feature = "crossbeam_queue_steal")] {
        use crate::crossbeam_queue_shim::{self as spmc, Local, Steal};
    } else if #[cfg(feature = "work_steal")] {
        use may_queue::spmc::{self, Local, Steal};
    } else {
        use may_queue::spsc::Queue as Local;
    }
}

// thread id, only workers are normal ones
thread_local! { pub static WORKER_ID: Cell<usize> = const { Cell::new(usize::MAX) }; }

// Rounds of this worker's event loop: each begins when its run queue is empty.
thread_local! { static ROUNDS: Cell<u64> = const { Cell::new(0) }; }

/// How many times the current worker has run out of coroutines to run and looked outside:
/// polled its descriptors and taken in what other threads queued to it. A worker runs its
/// queue until it is empty before it looks, so a change in this count means the queue ran
/// dry in between. 0 on a thread that is not a worker.
///
/// Never inlined: a coroutine can move between workers, and the count must be the one of
/// the worker that runs the call.
#[inline(never)]
pub fn worker_rounds() -> u64 {
    ROUNDS.get()
}

/// Counts a round of the current worker's event loop.
pub(crate) fn count_round() {
    ROUNDS.set(ROUNDS.get().wrapping_add(1));
}

// here we use Arc<AtomicOption<>> for that in the select implementation
// other event may try to consume the coroutine while timer thread consume it
type TimerData = Arc<AtomicOption<CoroutineImpl>>;
type TimerThread = timeout_list::TimerThread<TimerData>;

/// The scheduler, published once by [`start_scheduler`] and never freed.
static SCHED: AtomicPtr<Scheduler> = AtomicPtr::new(std::ptr::null_mut());

/// Serialises [`start_scheduler`]: one caller builds the scheduler, the others wait for it.
static STARTING: Mutex<()> = Mutex::new(());

/// Starts the scheduler (its event loop, workers and timer thread) if it is not running.
///
/// The first spawn starts it too, and panics if it cannot; a program that wants the failure
/// as a value (no descriptor left for the event loop) calls this first. After an error
/// nothing is started and the call may be made again.
pub fn start_scheduler() -> io::Result<()> {
    if !SCHED.load(Ordering::Acquire).is_null() {
        return Ok(());
    }
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if !SCHED.load(Ordering::Acquire).is_null() {
        return Ok(());
    }
    init_scheduler()
}

#[cold]
fn init_scheduler() -> io::Result<()> {
    let workers = config().get_workers();
    let b: Box<Scheduler> = Scheduler::new(workers)?;
    SCHED.store(Box::into_raw(b), Ordering::Release);

    // timer thread
    thread::spawn(move || {
        note_thread();
        // timer function
        let timer_event_handler = |c: Arc<AtomicOption<CoroutineImpl>>| {
            // just re-push the co to the visit list
            if let Some(mut co) = c.take() {
                // set the timeout result for the coroutine
                set_co_para(&mut co, io::Error::new(io::ErrorKind::TimedOut, "timeout"));
                // s.schedule_global(c);
                run_coroutine(co);
            }
        };

        get_scheduler().timer_thread.run(&timer_event_handler);
    });

    let core_ids = core_affinity::get_core_ids().unwrap();
    let pin_cores = config().get_worker_pin();
    // io event loop thread
    for (id, core) in (0..workers).zip(core_ids.into_iter().cycle()) {
        thread::spawn(move || {
            note_thread();
            if pin_cores {
                core_affinity::set_for_current(core);
            }
            get_scheduler().event_loop.run(id);
        });
    }
    Ok(())
}

/// The kernel ids of the scheduler's own OS threads (its workers and its timer thread).
static THREAD_IDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn note_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        THREAD_IDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tid);
    }
}

/// Adds a timer descriptor to the workers' poll (Linux): the worker that finds it ready calls
/// `hook` on its own thread, and the coroutines the hook makes ready are queued on that
/// worker. The hook must clear the descriptor (re-arm or disarm it) and returns how many
/// coroutines it made ready. One per process; starts the scheduler if it has not.
#[cfg(target_os = "linux")]
pub fn add_poll_timer(fd: std::os::fd::BorrowedFd<'_>, hook: fn() -> usize) -> io::Result<()> {
    get_scheduler().get_selector().add_poll_timer(fd, hook)
}

/// Whether some worker has coroutines queued that an idle worker could steal (racy: a hint
/// for a runtime deciding whether to wake idle workers). Starts the scheduler if it has not.
pub fn has_stealable_work() -> bool {
    get_scheduler().has_stealable()
}

/// The kernel thread ids (`gettid`) of the OS threads the scheduler runs: its workers and its
/// timer thread, once they have started (Linux only; empty elsewhere). A runtime that asks
/// which threads of its process might still act tells these apart from the program's own.
pub fn scheduler_thread_ids() -> Vec<i32> {
    THREAD_IDS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[inline]
pub fn get_scheduler() -> &'static Scheduler {
    let sched = SCHED.load(Ordering::Acquire);
    if likely(!sched.is_null()) {
        // SAFETY: a published scheduler is never freed.
        return unsafe { &*sched };
    }
    start_scheduler().expect("can't create event_loop");
    // SAFETY: `start_scheduler` succeeded, so the scheduler is published; it is never freed.
    unsafe { &*SCHED.load(Ordering::Acquire) }
}

/// A worker's global queue: coroutines scheduled from outside it. Any worker may take them
/// (not only its owner: a worker that a coroutine keeps would hold them for as long), one
/// at a time: `taking` makes the single-consumer queue's consumer side exclusive.
struct GlobalQueue {
    queue: Queue<CoroutineImpl>,
    taking: AtomicBool,
}

impl GlobalQueue {
    fn new() -> Self {
        GlobalQueue {
            queue: Queue::new(),
            taking: AtomicBool::new(false),
        }
    }

    /// Moves every coroutine queued here into `local`, unless another worker is taking them
    /// now. Returns whether it took any.
    #[cfg(feature = "work_steal")]
    fn take_into(&self, local: &mut Local<CoroutineImpl>) -> bool {
        if self
            .taking
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let mut took = false;
        let mut v = self.queue.bulk_pop();
        while !v.is_empty() {
            took = true;
            for co in v {
                local.push_back(co);
            }
            v = self.queue.bulk_pop();
        }
        self.taking.store(false, Ordering::Release);
        took
    }

    #[cfg(not(feature = "work_steal"))]
    fn take_into(&self, local: &Local<CoroutineImpl>) -> bool {
        if self
            .taking
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let mut took = false;
        let mut v = self.queue.bulk_pop();
        while !v.is_empty() {
            took = true;
            for co in v {
                local.push(co);
            }
            v = self.queue.bulk_pop();
        }
        self.taking.store(false, Ordering::Release);
        took
    }
}

#[repr(align(128))]
pub struct Scheduler {
    #[cfg(not(feature = "work_steal"))]
    local_queues: Vec<Local<CoroutineImpl>>,
    #[cfg(feature = "work_steal")]
    local_queues: Vec<UnsafeCell<Local<CoroutineImpl>>>,
    #[cfg(feature = "work_steal")]
    stealers: Vec<Steal<CoroutineImpl>>,
    global_queues: Vec<GlobalQueue>,
    event_loop: EventLoop,
    timer_thread: TimerThread,
    pub pool: CoroutinePool,
    pub workers: usize,
}

impl Scheduler {
    pub fn new(workers: usize) -> io::Result<Box<Self>> {
        #[cfg(not(feature = "work_steal"))]
        let local_queues = Vec::from_iter((0..workers).map(|_| Local::new()));

        #[cfg(feature = "work_steal")]
        let queues = Vec::from_iter((0..workers).map(|_| spmc::local()));
        #[cfg(feature = "work_steal")]
        let stealers = Vec::from_iter(queues.iter().map(|(s, _l)| s.clone()));
        #[cfg(feature = "work_steal")]
        let local_queues = Vec::from_iter(queues.into_iter().map(|(_s, l)| UnsafeCell::new(l)));

        let global_queues = Vec::from_iter((0..workers).map(|_| GlobalQueue::new()));

        Ok(Box::new(Scheduler {
            pool: CoroutinePool::new(),
            event_loop: EventLoop::new(workers)?,
            local_queues,
            #[cfg(feature = "work_steal")]
            stealers,
            global_queues,
            timer_thread: TimerThread::new(),
            workers,
        }))
    }

    #[inline]
    #[cfg(not(feature = "work_steal"))]
    pub fn run_queued_tasks(&self, id: usize) {
        let local = unsafe { self.local_queues.get_unchecked(id) };
        while let Some(co) = local.pop() {
            run_coroutine(co);
        }
    }

    #[inline]
    #[cfg(feature = "work_steal")]
    pub fn run_queued_tasks(&self, id: usize) {
        let local = unsafe { &mut *self.local_queues.get_unchecked(id).get() };

        let max_steal: usize = std::cmp::min(3, self.workers - 1);

        #[cfg(feature = "rand_work_steal")]
        let mut rng = fastrand::Rng::new();

        'work: loop {
            match local.pop() {
                Some(co) => {
                    run_coroutine(co);
                    continue 'work;
                }
                None => {
                    self.collect_global(id);
                    if local.has_tasks() {
                        continue 'work;
                    }
                }
            }

            // The i variable is unused if rand_work_steal is enabled since it selects the steal target randomly instead.
            for _i in 0..max_steal {
                cfg_if::cfg_if! {
                    if #[cfg(feature = "rand_work_steal")] {
                        let target = rng.usize(0..self.workers);
                    } else {
                        let target = (id + _i + 1) % self.workers;
                    }
                };
                let stealer = self.stealers.get(target).unwrap();
                if let Some(co) = stealer.steal_into(local) {
                    run_coroutine(co);
                    continue 'work;
                }
            }
            // Coroutines queued to a worker from outside wait for it only while it is free.
            for i in 1..self.workers {
                let target = (id + i) % self.workers;
                if self.global_queues[target].take_into(local) {
                    continue 'work;
                }
            }
            return;
        }
    }

    /// put the coroutine to correct queue so that next time it can be scheduled
    #[inline]
    pub fn schedule(&self, co: CoroutineImpl) {
        let id = WORKER_ID.get();

        if id != usize::MAX {
            self.schedule_with_id(co, id);
        } else {
            self.schedule_global(co);
        }
    }

    /// called by selector with known id
    #[inline]
    #[cfg(feature = "work_steal")]
    pub fn schedule_with_id(&self, co: CoroutineImpl, id: usize) {
        let local = unsafe { &mut *self.local_queues.get_unchecked(id).get() };
        local.push_back(co);
    }

    #[inline]
    #[cfg(not(feature = "work_steal"))]
    pub fn schedule_with_id(&self, co: CoroutineImpl, id: usize) {
        let local = unsafe { self.local_queues.get_unchecked(id) };
        local.push(co);
    }

    /// put the coroutine to global queue so that next time it can be scheduled
    #[inline]
    pub fn schedule_global(&self, co: CoroutineImpl) {
        static NEXT_THREAD_ID: AtomicUsize = AtomicUsize::new(0);
        let thread_id = NEXT_THREAD_ID
            .fetch_add(1, Ordering::Relaxed)
            .rem_euclid(self.workers);
        let global = unsafe { self.global_queues.get_unchecked(thread_id) };
        global.queue.push(co);
        // signal one waiting thread if any
        self.get_selector().wakeup(thread_id);
    }

    /// put the coroutine to global queue so that next time it can be scheduled
    #[inline]
    pub fn schedule_global_with_id(&self, co: CoroutineImpl, id: usize) {
        let thread_id = id.rem_euclid(self.workers);
        // println!("Scheduling to {thread_id}");
        let global = unsafe { self.global_queues.get_unchecked(thread_id) };
        global.queue.push(co);
        // signal one waiting thread if any
        self.get_selector().wakeup(thread_id);
    }

    /// Whether some worker's local queue holds coroutines another worker could steal. Any
    /// thread may ask; the answer may be stale by the time it is read.
    pub fn has_stealable(&self) -> bool {
        #[cfg(feature = "work_steal")]
        return self.stealers.iter().any(|s| !s.is_empty());
        #[cfg(not(feature = "work_steal"))]
        return false;
    }

    /// Whether worker `id` has coroutines in its local queue. Called by that worker only.
    #[inline]
    pub fn has_local(&self, id: usize) -> bool {
        #[cfg(feature = "work_steal")]
        return unsafe { (*self.local_queues.get_unchecked(id).get()).has_tasks() };
        #[cfg(not(feature = "work_steal"))]
        return unsafe { !self.local_queues.get_unchecked(id).is_empty() };
    }

    #[inline]
    pub fn collect_global(&self, id: usize) {
        #[cfg(feature = "work_steal")]
        let local = unsafe { &mut *self.local_queues.get_unchecked(id).get() };
        #[cfg(not(feature = "work_steal"))]
        let local = unsafe { self.local_queues.get_unchecked(id) };
        let global = unsafe { self.global_queues.get_unchecked(id) };
        global.take_into(local);
    }

    #[inline]
    pub fn add_timer(
        &self,
        dur: Duration,
        co: Arc<AtomicOption<CoroutineImpl>>,
    ) -> timeout_list::TimeoutHandle<TimerData> {
        self.timer_thread.add_timer(dur, co)
    }

    #[inline]
    pub fn del_timer(&self, handle: timeout_list::TimeoutHandle<TimerData>) {
        self.timer_thread.del_timer(handle);
    }

    #[inline]
    pub fn get_selector(&self) -> &Selector {
        self.event_loop.get_selector()
    }
}
