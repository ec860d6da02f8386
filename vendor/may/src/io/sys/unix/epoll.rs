use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(feature = "io_timeout")]
use std::time::Duration;

use super::{from_nix_error, EventData, IoData};
use crate::coroutine_impl::CoroutineImpl;
#[cfg(feature = "io_timeout")]
use super::{timeout_handler, TimerList};
use crate::scheduler::Scheduler;
#[cfg(feature = "io_timeout")]
use crate::timeout_list::now;

use may_queue::mpsc::Queue;
use nix::sys::epoll::*;
use nix::sys::eventfd::*;
use nix::unistd::{read, write};
use smallvec::SmallVec;

pub type SysEvent = EpollEvent;

// One epoll for every descriptor, polled by one worker at a time (the leader); the
// other idle workers sleep on their own eventfd (a "park" epoll that holds only it), so
// a descriptor's readiness never wakes a sleeping worker and a coroutine is not tied to
// the worker its descriptor's number picks. greenhub's change: see vendor/CHANGES.md.
//
// Rules:
// - A worker with nothing to run tries to become the leader; if it does, it polls the
//   shared epoll, takes the ready coroutines, gives the leadership up and queues them on its
//   own local queue (the others steal from it). If it took more than one, it wakes a
//   parked worker whose stealing starts at it. Otherwise it parks.
// - `wakeup(id)` sets the worker's `wake_pending`, then writes an eventfd only if the worker
//   sleeps: the leader's `leader_evfd` (in the shared epoll) or its own (when parked). A
//   worker checks the flag and its queues after it takes the leadership or marks itself
//   parked, and does not block if there is anything: the waker sees it asleep or it sees the
//   flag (both sides SeqCst). A busy worker looks before it sleeps; meanwhile a parked worker
//   is woken to take what was queued to it (idle workers take from any global queue), or,
//   with none parked, the leader. `leader_evfd` is written once until the leader drains it,
//   and a parked worker's eventfd once per park: the first waker claims the wake (`woken`,
//   cleared before the worker marks itself parked), the others leave it to that write, since
//   a woken worker looks at its flag and every queue before it sleeps again.
// - Event data deleted from the epoll is released only by a leader, before it polls: the
//   events of the previous poll were all handled by the leader that made it, before it let
//   go. It is freed by worker `fd % workers`, whose timer handler may still point to it.
// - A descriptor's I/O timers live in worker `fd % workers`'s list and only that worker
//   touches them here. A ready coroutine whose wait has a timer (`EventData::timed`) taken
//   by another worker is forwarded to that worker, which removes the timer and runs it.
// - An interrupted poll is an empty one.
// - A runtime may add one timer descriptor (`add_poll_timer`): the leader that finds it ready
//   calls its hook after it gives the leadership up, and the coroutines the hook makes ready
//   are queued on that worker like those of its poll. The hook clears the descriptor.
struct WorkerSelector {
    park: Epoll,
    evfd: EventFd,
    parked: AtomicBool,
    /// A write to `evfd` is on its way for the current park.
    woken: AtomicBool,
    wake_pending: AtomicBool,
    #[cfg(feature = "io_timeout")]
    timer_list: TimerList,
    #[cfg(feature = "io_timeout")]
    forwarded: Queue<(CoroutineImpl, Arc<EventData>)>,
    #[cfg(feature = "io_timeout")]
    deleted: Queue<Arc<EventData>>,
}

impl WorkerSelector {
    fn new() -> io::Result<Self> {
        let park = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let evfd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        park.add(evfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
        Ok(WorkerSelector {
            park,
            evfd,
            parked: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            #[cfg(feature = "io_timeout")]
            timer_list: TimerList::new(),
            #[cfg(feature = "io_timeout")]
            forwarded: Queue::new(),
            #[cfg(feature = "io_timeout")]
            deleted: Queue::new(),
        })
    }
}

/// `Selector::leader` when no worker polls.
const NO_LEADER: usize = usize::MAX;
/// The epoll data of `leader_evfd`; descriptors' data are `EventData` addresses.
const LEADER_WAKE: u64 = 0;
/// The epoll data of the runtime's timer descriptor (`Selector::add_poll_timer`): never an
/// `EventData` address, which is aligned.
const POLL_TIMER: u64 = 1;

pub(crate) struct Selector {
    shared: Epoll,
    leader_evfd: EventFd,
    /// A write to `leader_evfd` has not been drained yet: later kicks need no write.
    leader_kicked: AtomicBool,
    leader: AtomicUsize,
    /// What the leader calls when the runtime's timer descriptor is ready: it returns how
    /// many coroutines it made ready.
    poll_timer: std::sync::OnceLock<fn() -> usize>,
    free_ev: Queue<Arc<EventData>>,
    // 128 should be fine for max io threads
    vec: SmallVec<[WorkerSelector; 128]>,
}

/// A wait interrupted by a signal (greenhub's profiler and stack reader signal workers; epoll
/// waits are never restarted) found nothing.
fn interrupted_is_zero(polled: nix::Result<usize>) -> io::Result<usize> {
    match polled {
        Ok(n) => Ok(n),
        Err(nix::errno::Errno::EINTR) => Ok(0),
        Err(e) => Err(from_nix_error(e)),
    }
}

fn drain_eventfd(evfd: &EventFd) {
    let mut buf = [0u8; 8];
    // clear the eventfd, ignore the result
    read(evfd.as_fd(), &mut buf).ok();
}

impl Selector {
    pub fn new(io_workers: usize) -> io::Result<Self> {
        let shared = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let leader_evfd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        shared.add(
            leader_evfd.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, LEADER_WAKE),
        )?;
        let mut s = Selector {
            shared,
            leader_evfd,
            leader_kicked: AtomicBool::new(false),
            leader: AtomicUsize::new(NO_LEADER),
            poll_timer: std::sync::OnceLock::new(),
            free_ev: Queue::new(),
            vec: SmallVec::new(),
        };

        for _ in 0..io_workers {
            s.vec.push(WorkerSelector::new()?);
        }

        Ok(s)
    }

    #[inline]
    pub fn select(
        &self,
        scheduler: &Scheduler,
        id: usize,
        events: &mut [SysEvent],
        _timeout: Option<u64>,
    ) -> io::Result<Option<u64>> {
        assert!(id < self.vec.len());
        #[cfg(feature = "io_timeout")]
        let timeout_ms = _timeout
            .map(|to| EpollTimeout::try_from(to.div_ceil(1_000_000)).unwrap())
            .unwrap_or(EpollTimeout::NONE);
        #[cfg(not(feature = "io_timeout"))]
        let timeout_ms = EpollTimeout::NONE;

        let me = &self.vec[id];
        if self
            .leader
            .compare_exchange(NO_LEADER, id, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            let timeout = if self.has_work(scheduler, id) {
                EpollTimeout::ZERO
            } else {
                timeout_ms
            };
            self.release_deleted();
            let polled = interrupted_is_zero(self.shared.wait(events, timeout));
            let mut taken = SmallVec::<[CoroutineImpl; 16]>::new();
            let mut timer_ready = false;
            for event in &events[..*polled.as_ref().unwrap_or(&0)] {
                if event.data() == POLL_TIMER {
                    timer_ready = true;
                    continue;
                }
                if event.data() == LEADER_WAKE {
                    // Drained, then cleared: a read takes every write made before it, so a
                    // clear first would let a kick between the two be read and forgotten
                    // while its flag stays set. A kick that finds the flag still set here
                    // needs no write: this leader is awake and looks at every queue before
                    // it polls again.
                    drain_eventfd(&self.leader_evfd);
                    self.leader_kicked.store(false, Ordering::SeqCst);
                    continue;
                }
                if let Some(co) = self.take_ready(id, event) {
                    taken.push(co);
                }
            }
            self.leader.store(NO_LEADER, Ordering::SeqCst);
            // Called with `WORKER_ID` set: what it wakes is queued on this worker.
            let timed_out = match self.poll_timer.get() {
                Some(hook) if timer_ready => hook(),
                _ => 0,
            };
            let more_than_one = taken.len() + timed_out > 1;
            for co in taken {
                #[cfg(feature = "work_steal")]
                scheduler.schedule_with_id(co, id);
                #[cfg(not(feature = "work_steal"))]
                crate::coroutine_impl::run_coroutine(co);
            }
            if more_than_one {
                self.wake_one_parked(id);
            }
            polled?;
        } else {
            // Before `parked`: a waker that sees this park sees it unclaimed.
            me.woken.store(false, Ordering::SeqCst);
            me.parked.store(true, Ordering::SeqCst);
            let timeout = if self.has_work(scheduler, id) {
                EpollTimeout::ZERO
            } else {
                timeout_ms
            };
            let n = interrupted_is_zero(me.park.wait(events, timeout));
            me.parked.store(false, Ordering::Relaxed);
            if matches!(n, Ok(n) if n > 0) {
                drain_eventfd(&me.evfd);
            }
            n?;
        }

        #[cfg(feature = "io_timeout")]
        {
            self.take_forwarded(scheduler, id);
            // Event data this worker's timer list may point to, deleted and drained by a
            // leader: freed here, where that list's handler runs.
            while !me.deleted.bulk_pop().is_empty() {}
        }

        // run all the tasks, those queued from outside included
        scheduler.collect_global(id);
        scheduler.run_queued_tasks(id);

        // deal with the timer list
        #[cfg(feature = "io_timeout")]
        let next_expire = me.timer_list.schedule_timer(now(), &timeout_handler);
        #[cfg(not(feature = "io_timeout"))]
        let next_expire = None;
        Ok(next_expire)
    }

    /// Adds the runtime's timer descriptor to the poll: the leader that finds it ready calls
    /// `hook`, which must clear it (re-arm or disarm it) and returns how many coroutines it
    /// made ready. One descriptor at most.
    pub fn add_poll_timer(&self, fd: BorrowedFd<'_>, hook: fn() -> usize) -> io::Result<()> {
        self.poll_timer
            .set(hook)
            .map_err(|_| io::Error::new(io::ErrorKind::AlreadyExists, "a poll timer is set"))?;
        self.shared
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, POLL_TIMER))
            .map_err(from_nix_error)
    }

    /// Whether worker `id` has something to do without waiting: a wake it has not seen, or
    /// coroutines queued to it. Clears the wake.
    fn has_work(&self, scheduler: &Scheduler, id: usize) -> bool {
        let me = &self.vec[id];
        let woken = me.wake_pending.swap(false, Ordering::SeqCst);
        #[cfg(feature = "io_timeout")]
        let woken = woken || !me.forwarded.is_empty();
        // Taken in, not looked at: a queue's emptiness is only safe to read by its consumer.
        scheduler.collect_global(id);
        woken || scheduler.has_local(id)
    }

    /// Frees the event data of descriptors deleted from the epoll. Called by the leader
    /// before it polls: no event of an earlier poll is still being handled (see the rules
    /// above). With I/O timers, the data goes to the worker whose timer list may point to it.
    fn release_deleted(&self) {
        let mut v = self.free_ev.bulk_pop();
        while !v.is_empty() {
            #[cfg(feature = "io_timeout")]
            for data in v {
                let owner = data.fd as usize % self.vec.len();
                self.vec[owner].deleted.push(data);
            }
            #[cfg(not(feature = "io_timeout"))]
            drop(v);
            v = self.free_ev.bulk_pop();
        }
    }

    /// The coroutine a ready event wakes, for worker `id` to run, if it is not forwarded.
    fn take_ready(&self, id: usize, event: &SysEvent) -> Option<CoroutineImpl> {
        let data = unsafe { &*(event.data() as *const EventData) };
        let events = event.events().bits() as usize;
        data.io_flag.fetch_or(events, Ordering::Release);

        // first check the atomic co, this may be grab by the worker first
        let co = data.co.take()?;

        #[cfg(feature = "io_timeout")]
        if data.timed.load(Ordering::Acquire) {
            let owner = data.fd as usize % self.vec.len();
            if owner != id {
                // The timer is in the owner's list: the owner removes it and runs the
                // coroutine. The data stays alive with the forwarded reference.
                let data = unsafe {
                    let ptr = data as *const EventData;
                    Arc::increment_strong_count(ptr);
                    Arc::from_raw(ptr)
                };
                self.vec[owner].forwarded.push((co, data));
                self.wakeup(owner);
                return None;
            }
            // it's safe to remove the timer since we own the timer list
            remove_timer(data);
        }
        #[cfg(not(feature = "io_timeout"))]
        let _ = id;
        Some(co)
    }

    /// Runs the coroutines whose timed waits other workers found ready.
    #[cfg(feature = "io_timeout")]
    fn take_forwarded(&self, scheduler: &Scheduler, id: usize) {
        let me = &self.vec[id];
        while let Some((co, data)) = me.forwarded.pop() {
            remove_timer(&data);
            scheduler.schedule_with_id(co, id);
        }
    }

    /// Wakes one parked worker other than `id`, if any, to steal from `id`: first those
    /// whose stealing starts at `id` (worker `w` steals from `w + 1`, `w + 2`, ...).
    fn wake_one_parked(&self, id: usize) -> bool {
        let n = self.vec.len();
        let parked = (1..n)
            .map(|back| (id + n - back) % n)
            .find(|&w| self.vec[w].parked.load(Ordering::SeqCst));
        if let Some(w) = parked {
            self.wake_parked(w);
        }
        parked.is_some()
    }

    /// Wakes worker `w`, seen parked, unless another waker has claimed this park's wake.
    fn wake_parked(&self, w: usize) {
        if !self.vec[w].woken.swap(true, Ordering::SeqCst) {
            self.write_wake(&self.vec[w].evfd, w);
        }
    }

    /// Wakes the leader from its poll (once until it drains the kick).
    fn kick_leader(&self, id: usize) {
        if !self.leader_kicked.swap(true, Ordering::SeqCst) {
            self.write_wake(&self.leader_evfd, id);
        }
    }

    /// Makes worker `id` look at its queues and timers soon: at once if it sleeps; if it is
    /// busy, it looks before it next sleeps, and a parked worker is woken meanwhile to take
    /// what was queued to it (idle workers take from each other's global queues).
    #[inline]
    pub fn wakeup(&self, id: usize) {
        // SeqCst against the worker's own SeqCst `parked` store or leadership CAS followed
        // by its swap of `wake_pending`: either it sees the flag or this sees it asleep.
        self.vec[id].wake_pending.store(true, Ordering::SeqCst);
        let leader = self.leader.load(Ordering::SeqCst);
        if leader == id {
            self.kick_leader(id);
        } else if self.vec[id].parked.load(Ordering::SeqCst) {
            self.wake_parked(id);
        } else if !self.wake_one_parked(id) && leader != NO_LEADER {
            // `id` is busy and nobody is parked: the leader, idle in its poll, takes what was
            // queued to `id` (idle workers take from any global queue).
            self.kick_leader(id);
        }
    }

    fn write_wake(&self, evfd: &EventFd, id: usize) {
        let ret = write(evfd, &1u64.to_le_bytes());
        trace!("wakeup id={:?}, ret={:?}", id, ret);
    }

    // register io event to the selector
    #[inline]
    pub fn add_fd(&self, io_data: IoData) -> io::Result<IoData> {
        let info = EpollEvent::new(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLOUT
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLET,
            io_data.as_ref() as *const _ as _,
        );

        let fd = io_data.fd;
        info!("add fd to epoll select, fd={:?}", fd);
        self.shared
            .add(unsafe { BorrowedFd::borrow_raw(fd) }, info)
            .map_err(from_nix_error)
            .map(|_| io_data)
    }

    #[inline]
    pub fn mod_fd(&self, io_data: &IoData, is_read: bool) -> io::Result<()> {
        let mut info = if is_read {
            EpollEvent::new(
                EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET,
                io_data.as_ref() as *const _ as _,
            )
        } else {
            EpollEvent::new(
                EpollFlags::EPOLLOUT | EpollFlags::EPOLLHUP | EpollFlags::EPOLLET,
                io_data.as_ref() as *const _ as _,
            )
        };

        let fd = io_data.fd;
        info!("mod fd to epoll select, fd={:?}, is_read={}", fd, is_read);
        self.shared
            .modify(unsafe { BorrowedFd::borrow_raw(fd) }, &mut info)
            .map_err(from_nix_error)
    }

    #[inline]
    pub fn del_fd(&self, io_data: &IoData) {
        // Only a wait that set an I/O timer has one to mark (see `EventData::take_timer`):
        // a close must not borrow the timer cell while a wake on another thread may.
        #[cfg(feature = "io_timeout")]
        if io_data.timed.load(Ordering::Acquire) {
            if let Some(h) = io_data.timer.borrow_mut().take() {
                unsafe {
                    // mark the timer as removed if any, this only happened
                    // when cancel an IO. what if the timer expired at the same time?
                    // because we run this func in the user space, so the timer handler
                    // will not got the coroutine
                    h.with_mut_data(|value| value.data.event_data = std::ptr::null_mut());
                }
            }
        }

        let fd = io_data.fd;
        info!("del fd from epoll select, fd={:?}", fd);
        self.shared
            .delete(unsafe { BorrowedFd::borrow_raw(fd) })
            .ok();

        // after EpollCtlDel push the unused event data: the next leader frees it before it
        // polls
        self.free_ev.push((*io_data).clone());
    }

    // register the io request to the timeout list
    #[inline]
    #[cfg(feature = "io_timeout")]
    pub fn add_io_timer(&self, io: &IoData, timeout: Duration) {
        let id = io.fd as usize % self.vec.len();
        // info!("io timeout = {:?}", dur);
        let (h, b_new) = self.vec[id].timer_list.add_timer(timeout, io.timer_data());
        io.timer.borrow_mut().replace(h);
        // before the coroutine is stored: a worker that takes it sees the flag
        io.timed.store(true, Ordering::Release);
        if b_new {
            // wake up the event loop thread to recall the next wait timeout
            self.wakeup(id);
        }
    }
}

/// Removes the timer of a wait whose coroutine was taken by a ready event. Only the worker
/// whose list holds the timer (`fd % workers`) calls it.
#[cfg(feature = "io_timeout")]
fn remove_timer(data: &EventData) {
    data.timed.store(false, Ordering::Relaxed);
    if let Some(h) = data.timer.borrow_mut().take() {
        unsafe {
            // tell the timer handler not to cancel the io
            // it's not always true that you can really remove the timer entry
            h.with_mut_data(|value| value.data.event_data = std::ptr::null_mut());
        }
        h.remove();
    }
}
