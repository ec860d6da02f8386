use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(feature = "io_timeout")]
use std::time::Duration;

use super::{from_nix_error, EventData, IoData};
#[cfg(feature = "io_timeout")]
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
//   shared epoll, takes the ready coroutines into its own local queue (the others steal
//   from it), gives the leadership up and runs them. If it took more than one, it wakes one
//   parked worker to steal. Otherwise it parks.
// - `wakeup(id)` reaches worker `id` wherever it sleeps: the leader through
//   `leader_evfd` (in the shared epoll), any other worker through its own eventfd. It sets
//   the worker's `wake_pending` first; a worker that has just become the leader checks it
//   (and its queues) after taking the leadership and polls without blocking if it is set:
//   either the waker saw it as the leader or it sees the flag (both sides SeqCst).
// - Event data deleted from the epoll is freed only by a leader, before it polls: the events
//   of the previous poll were all handled by the leader that made it, before it let go.
// - A descriptor's I/O timers live in worker `fd % workers`'s list and only that worker
//   touches them. A ready coroutine whose wait has a timer (`EventData::timed`) taken by
//   another worker is forwarded to that worker, which removes the timer and runs it.
struct WorkerSelector {
    park: Epoll,
    evfd: EventFd,
    parked: AtomicBool,
    wake_pending: AtomicBool,
    #[cfg(feature = "io_timeout")]
    timer_list: TimerList,
    #[cfg(feature = "io_timeout")]
    forwarded: Queue<(CoroutineImpl, Arc<EventData>)>,
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
            wake_pending: AtomicBool::new(false),
            #[cfg(feature = "io_timeout")]
            timer_list: TimerList::new(),
            #[cfg(feature = "io_timeout")]
            forwarded: Queue::new(),
        })
    }
}

/// `Selector::leader` when no worker polls.
const NO_LEADER: usize = usize::MAX;
/// The epoll data of `leader_evfd`; descriptors' data are `EventData` addresses.
const LEADER_WAKE: u64 = 0;

pub(crate) struct Selector {
    shared: Epoll,
    leader_evfd: EventFd,
    leader: AtomicUsize,
    free_ev: Queue<Arc<EventData>>,
    // 128 should be fine for max io threads
    vec: SmallVec<[WorkerSelector; 128]>,
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
            leader: AtomicUsize::new(NO_LEADER),
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
            // No event of an earlier poll is still being handled (see the rules above).
            while !self.free_ev.bulk_pop().is_empty() {}
            let polled = self.shared.wait(events, timeout);
            let mut taken = 0;
            if let Ok(n) = polled {
                for event in &events[..n] {
                    if event.data() == LEADER_WAKE {
                        drain_eventfd(&self.leader_evfd);
                        continue;
                    }
                    if self.take_ready(scheduler, id, event) {
                        taken += 1;
                    }
                }
            }
            self.leader.store(NO_LEADER, Ordering::SeqCst);
            polled?;
            if taken > 1 {
                self.wake_one_parked(id);
            }
        } else {
            me.parked.store(true, Ordering::SeqCst);
            let timeout = if self.has_work(scheduler, id) {
                EpollTimeout::ZERO
            } else {
                timeout_ms
            };
            let polled = me.park.wait(events, timeout);
            me.parked.store(false, Ordering::Relaxed);
            if matches!(polled, Ok(n) if n > 0) {
                drain_eventfd(&me.evfd);
            }
            polled?;
        }

        #[cfg(feature = "io_timeout")]
        self.take_forwarded(scheduler, id);

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

    /// Whether worker `id` has something to do without waiting: a wake it has not seen, or
    /// coroutines queued to it. Clears the wake.
    fn has_work(&self, scheduler: &Scheduler, id: usize) -> bool {
        let me = &self.vec[id];
        let woken = me.wake_pending.swap(false, Ordering::SeqCst);
        #[cfg(feature = "io_timeout")]
        let woken = woken || !me.forwarded.is_empty();
        woken || scheduler.has_queued(id)
    }

    /// Takes the coroutine a ready event wakes into worker `id`'s local queue; returns
    /// whether it did.
    fn take_ready(&self, scheduler: &Scheduler, id: usize, event: &SysEvent) -> bool {
        let data = unsafe { &*(event.data() as *const EventData) };
        let events = event.events().bits() as usize;
        data.io_flag.fetch_or(events, Ordering::Release);

        // first check the atomic co, this may be grab by the worker first
        let co = match data.co.take() {
            Some(co) => co,
            None => return false,
        };

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
                return false;
            }
            // it's safe to remove the timer since we own the timer list
            remove_timer(data);
        }

        #[cfg(feature = "work_steal")]
        scheduler.schedule_with_id(co, id);
        #[cfg(not(feature = "work_steal"))]
        {
            let _ = (scheduler, id);
            crate::coroutine_impl::run_coroutine(co);
        }
        true
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

    /// Wakes one parked worker other than `id`, if any, to steal from `id`.
    fn wake_one_parked(&self, id: usize) {
        let parked = self
            .vec
            .iter()
            .enumerate()
            .find(|(i, w)| *i != id && w.parked.load(Ordering::Relaxed));
        if let Some((i, _)) = parked {
            self.wakeup(i);
        }
    }

    // this will post an os event so that we can wake up the event loop
    #[inline]
    pub fn wakeup(&self, id: usize) {
        let buf = 1u64.to_le_bytes();
        self.vec[id].wake_pending.store(true, Ordering::SeqCst);
        let evfd = if self.leader.load(Ordering::SeqCst) == id {
            &self.leader_evfd
        } else {
            &self.vec[id].evfd
        };
        let ret = write(evfd, &buf);
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
        #[cfg(feature = "io_timeout")]
        if let Some(h) = io_data.timer.borrow_mut().take() {
            unsafe {
                // mark the timer as removed if any, this only happened
                // when cancel an IO. what if the timer expired at the same time?
                // because we run this func in the user space, so the timer handler
                // will not got the coroutine
                h.with_mut_data(|value| value.data.event_data = std::ptr::null_mut());
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
