//! One-shot work queued for a connection ([`Pool::run`](crate::Pool::run) and the PostgreSQL
//! helpers on the pool), and the reply its green thread waits for.
//!
//! A job waits in the pool's queue beside green threads waiting in [`Pool::get`]
//! (crate::Pool::get), in one arrival order. The pool thread that finishes a job and finds
//! another at the head of the queue runs it at once on the same connection: no hand-off to a
//! green thread, no wake-up of another OS thread, no trip through r2d2 between the two. That
//! is what lets green threads beat OS threads blocked on r2d2's condvar.
//!
//! A job is claimed (by a runner) or cancelled (by its caller giving up) exactly once, by a
//! compare-and-swap on its state; the reply is delivered or dropped on the pool thread, under
//! the reply's lock, exactly once.

use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use greenhub::ext::Token;
use parking_lot::Mutex;

use crate::conn::Lease;
use crate::{Backend, Error};

const QUEUED: u8 = 0;
const CLAIMED: u8 = 1;
const CANCELLED: u8 = 2;

/// What a job does with the connection it is given (or with the reason it got none). It
/// returns the delivery of its result, which the runner makes once the connection is back in
/// the pool or on to the next job, so that a caller never sees its result while the pool
/// still counts its connection in use.
pub(crate) type Work<M> = Box<dyn FnOnce(Result<&mut Lease<M>, Error>) -> Delivery + Send>;

/// A result on its way to its caller.
pub(crate) type Delivery = Box<dyn FnOnce() + Send>;

pub(crate) struct Job<M: Backend> {
    state: AtomicU8,
    work: Mutex<Option<Work<M>>>,
    pub site: &'static Location<'static>,
    pub holder: Option<(u64, Option<String>)>,
    pub asked_at: Instant,
    /// The checkout's deadline: the pool's timeout, or the caller's scope if earlier.
    pub deadline: Instant,
}

impl<M: Backend> Job<M> {
    pub(crate) fn new(
        work: Work<M>,
        site: &'static Location<'static>,
        holder: Option<(u64, Option<String>)>,
        asked_at: Instant,
        deadline: Instant,
    ) -> Job<M> {
        Job {
            state: AtomicU8::new(QUEUED),
            work: Mutex::new(Some(work)),
            site,
            holder,
            asked_at,
            deadline,
        }
    }

    /// Whether it still waits in the queue.
    pub(crate) fn is_queued(&self) -> bool {
        self.state.load(Ordering::Acquire) == QUEUED
    }

    /// Takes the job to run it; `false` if its caller cancelled it (or it was claimed).
    pub(crate) fn claim(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Withdraws the job if nobody claimed it yet (its work is dropped here).
    pub(crate) fn cancel(&self) -> bool {
        let cancelled = self
            .state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if cancelled {
            drop(self.work.lock().take());
        }
        cancelled
    }

    /// Runs the claimed job on the connection, or tells it why there is none; returns the
    /// delivery of its result.
    pub(crate) fn run(&self, lease: Result<&mut Lease<M>, Error>) -> Option<Delivery> {
        let work = self.work.lock().take();
        work.map(|work| work(lease))
    }
}

enum State<R> {
    /// Not yet delivered; the caller may be waiting with this token.
    Pending(Option<Arc<Token>>),
    Done(Result<R, Error>),
    /// The caller stopped waiting: the value is dropped where it is delivered.
    Gone,
}

/// Where a job's result lands.
pub(crate) struct Slot<R>(Mutex<State<R>>);

impl<R> Slot<R> {
    pub(crate) fn new() -> Arc<Slot<R>> {
        Arc::new(Slot(Mutex::new(State::Pending(None))))
    }

    /// The result if it is in; otherwise registers `token` to be woken when it comes.
    pub(crate) fn take_or_register(&self, token: &Arc<Token>) -> Option<Result<R, Error>> {
        let mut st = self.0.lock();
        match std::mem::replace(&mut *st, State::Gone) {
            State::Done(value) => Some(value),
            State::Pending(_) => {
                *st = State::Pending(Some(token.clone()));
                None
            }
            State::Gone => None,
        }
    }

    /// The result if it is in; otherwise nothing changes.
    pub(crate) fn take_ready(&self) -> Option<Result<R, Error>> {
        let mut st = self.0.lock();
        match std::mem::replace(&mut *st, State::Gone) {
            State::Done(value) => Some(value),
            other => {
                *st = other;
                None
            }
        }
    }

    /// The caller leaves: a result in now or later is dropped.
    pub(crate) fn abandon(&self) {
        let left = std::mem::replace(&mut *self.0.lock(), State::Gone);
        drop(left);
    }
}

/// The job's side of the slot: delivers once; if dropped unsent (the job was cancelled or
/// never ran), delivers `ShutDown` to a caller that might still wait.
pub(crate) struct Reply<R> {
    slot: Option<Arc<Slot<R>>>,
}

impl<R> Reply<R> {
    pub(crate) fn new(slot: Arc<Slot<R>>) -> Reply<R> {
        Reply { slot: Some(slot) }
    }

    pub(crate) fn send(mut self, value: Result<R, Error>) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, value);
        }
    }
}

impl<R> Drop for Reply<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, Err(Error::ShutDown));
        }
    }
}

fn deliver<R>(slot: &Slot<R>, value: Result<R, Error>) {
    let mut st = slot.0.lock();
    match std::mem::replace(&mut *st, State::Gone) {
        State::Pending(token) => {
            *st = State::Done(value);
            drop(st);
            if let Some(token) = token {
                greenhub::ext::wake_batched(token);
            }
        }
        State::Done(earlier) => *st = State::Done(earlier),
        State::Gone => {
            drop(st);
            // Dropped here, on the pool thread, outside the lock.
            drop(value);
        }
    }
}
