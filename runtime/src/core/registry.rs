//! The live registry: every green thread, pending timer and watched descriptor, kept cheaply at
//! all times so that [`crate::inspect::snapshot`] can show a hung process as it is.
//!
//! Cost model. A green thread's own state (running or waiting on what, since when, until which
//! deadline) lives in its [`ThreadRecord`] and is written only by that thread, through a seqlock
//! of plain atomic stores: no lock and no read-modify-write on the switch path. The tables
//! (threads, timers, descriptors) are sharded maps touched once at creation and once at the end;
//! their locks are held for one map operation and never across a wait.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;
use std::panic::Location;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::core::clock;
use crate::core::trace;
use greenhub_snapshot::{Interest, ObjectInfo, ObjectKind, WaitOn};

const SHARDS: usize = 64;

/// Ids are sequential, so a multiplicative hash is enough to spread them over hashbrown's
/// buckets and control bytes, once the product's high half is folded into its low half: the
/// bucket index is the hash's low bits, and a product's low bits depend only on the id's low
/// bits, which are the same for every id of a registry shard.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let h = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// What a green thread is doing, as the registry stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Created by `spawn_after` and not started yet.
    Scheduled = 0,
    Running = 1,
    Waiting = 2,
}

/// One green thread's entry. Identity fields are immutable; the state is a seqlock written only
/// by the thread itself. Part of every thread's state: its fields are as narrow as their values
/// allow (the parent as a non-zero id, the stack size in 32 bits).
///
/// Laid out in declaration order (`repr(C)`): the fields every wait and every resumption
/// touch come last, 88 contiguous bytes that run on into the hot head of the thread's context
/// (`green/thread.rs` places the context right after the record). A server with thousands of
/// connections resumes a thread whose state has left the cache since its last wait, and each
/// cache line that resumption touches is a miss.
#[repr(C)]
pub(crate) struct ThreadRecord {
    pub name: Option<Arc<str>>,
    parent: Option<NonZeroU64>,
    /// The OS thread whose code began its line of spawns ([`os_thread_mark`]), inherited from
    /// parent to child: what a leak check of that OS thread's spawns looks for.
    pub origin: u64,
    pub site: &'static Location<'static>,
    pub created_ns: u64,
    /// Sampled time on a worker, added by the monitor thread.
    pub run_ns: AtomicU64,
    /// Its times, once timing has seen it (core/timing.rs): null before, then a `Box<Times>`
    /// of its own, freed with the record.
    times: AtomicPtr<Times>,
    /// The token of its current (or last) wait, for a reader that must know whether a wait the
    /// record shows has been woken already (`core/deadlock.rs`). Set when the thread makes a new
    /// token, which most waits do not (`core/wait.rs`).
    pub token: Mutex<Weak<dyn WaitTicket>>,
    /// A stack reader's claim on the thread (core/stack.rs).
    pub read_gate: AtomicU8,
    // The hot part: read or written by every wait and every resumption.
    pub id: u64,
    /// The upper bound of a walk of its stack: the address of a local in its outermost greenhub
    /// frame, set by the thread as it starts (0 before). See core/stack.rs.
    pub stack_base: AtomicUsize,
    /// Number of times this thread gave up its worker (waits and yields).
    pub switches: AtomicU64,
    /// The frame the thread waits in (owner-written with each wait; see core/stack.rs).
    pub park_fp: AtomicUsize,
    /// The stack pointer in that frame: the lower bound of a walk.
    pub park_sp: AtomicUsize,
    seq: AtomicU64,
    wait_a: AtomicU64,
    wait_b: AtomicU64,
    since_ns: AtomicU64,
    deadline_ns: AtomicU64,
    stack_size: u32,
    phase: AtomicU8,
    wait_kind: AtomicU8,
    pub kill_requested: AtomicBool,
}

/// A green thread's times while timing is on (`core/timing.rs` writes them), made the first time
/// it is timed.
#[derive(Default)]
pub(crate) struct Times {
    pub running_ns: AtomicU64,
    pub waiting_ns: AtomicU64,
    pub runnable_ns: AtomicU64,
    /// Runs (stretches on a worker) and waits timed.
    pub runs: AtomicU64,
    pub waits: AtomicU64,
    /// When the current run began (0: not timed).
    pub run_since: AtomicU64,
    /// When the current wait began (0: none).
    pub wait_since: AtomicU64,
    /// What it waits on (encoded by `core/timing.rs`).
    pub wait_class: AtomicU64,
    /// When a token woke it (0: not yet), written by the waker.
    pub woken_at: AtomicU64,
}

/// A frame on the current stack: its frame pointer and its stack pointer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameAt {
    pub fp: usize,
    pub sp: usize,
}

/// A green thread's handle state (`green/thread.rs`), which holds the thread's record inline:
/// a spawn makes one allocation for both.
pub(crate) trait Threaded: Send + Sync {
    /// The thread's record, inside this state.
    fn record(&self) -> &ThreadRecord;
    /// Kills the thread as its handle would (a kill by id).
    fn kill(&self);
}

/// A counted reference to a green thread's record: it keeps the thread's handle state, where
/// the record lives, alive.
#[derive(Clone)]
pub(crate) struct RecordRef {
    owner: Arc<dyn Threaded>,
    /// `owner.record()`, kept so that a read of the record costs no call through the vtable.
    record: NonNull<ThreadRecord>,
}

// SAFETY: `record` points into `owner`, which is `Send + Sync` and lives as long as this
// reference; `ThreadRecord` is `Sync`.
unsafe impl Send for RecordRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for RecordRef {}

impl RecordRef {
    /// A reference to the record inside `owner`.
    pub(crate) fn new(owner: Arc<dyn Threaded>) -> RecordRef {
        let record = NonNull::from(owner.record());
        RecordRef { owner, record }
    }

    /// Kills the thread as its handle would.
    pub(crate) fn kill(&self) {
        self.owner.kill();
    }

    /// Whether both name the same thread's record.
    pub(crate) fn same(a: &RecordRef, b: &RecordRef) -> bool {
        a.record == b.record
    }
}

impl std::ops::Deref for RecordRef {
    type Target = ThreadRecord;
    fn deref(&self) -> &ThreadRecord {
        // SAFETY: `record` points into `owner`, an `Arc`'s content, which never moves and
        // lives as long as this reference holds it.
        unsafe { self.record.as_ref() }
    }
}

/// The waker's side of a thread's wait, as the record keeps it (`core/token.rs` implements it).
pub(crate) trait WaitTicket: Send + Sync {
    /// Whether the wait is still waiting (neither woken nor given up).
    fn is_waiting(&self) -> bool;
    /// Unparks the waiter, if it still waits, without waking it: it looks at its deadline
    /// and kill flag again.
    fn poke(&self);
}

/// The ticket of a thread that has not waited yet.
struct NoTicket;

impl WaitTicket for NoTicket {
    fn is_waiting(&self) -> bool {
        false
    }

    fn poke(&self) {}
}

/// A mark of the calling OS thread, distinct from every other OS thread's (and never 0): the
/// origin of the green threads it spawns.
pub(crate) fn os_thread_mark() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static MARK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    MARK.with(|m| {
        if m.get() == 0 {
            m.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        m.get()
    })
}

/// A consistent read of a record's state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateView {
    pub phase: Phase,
    pub waiting_on: Option<WaitOn>,
    pub since_ns: u64,
    pub deadline_ns: Option<u64>,
    /// Changes with every state write: two reads with the same `seq` saw the same wait.
    pub seq: u64,
}

const NO_DEADLINE: u64 = u64::MAX;

/// What a green thread's record keeps for good from its spawn.
#[derive(Clone)]
pub(crate) struct Identity {
    pub id: u64,
    pub name: Option<Arc<str>>,
    pub parent: Option<u64>,
    /// See [`ThreadRecord::origin`].
    pub origin: u64,
    pub site: &'static Location<'static>,
    pub stack_size: usize,
}

impl ThreadRecord {
    pub(crate) fn new(identity: Identity, phase: Phase) -> ThreadRecord {
        let Identity {
            id,
            name,
            parent,
            origin,
            site,
            stack_size,
        } = identity;
        // The monitor's published clock, as every state write reads it: bookkeeping for a
        // human reader, on the spawn path.
        let now = clock::ticked_ns();
        ThreadRecord {
            id,
            name,
            // Ids start at 1.
            parent: parent.and_then(NonZeroU64::new),
            origin,
            site,
            created_ns: now,
            // At most `config::MAX_STACK_SIZE`.
            stack_size: u32::try_from(stack_size).unwrap_or(u32::MAX),
            switches: AtomicU64::new(0),
            run_ns: AtomicU64::new(0),
            kill_requested: AtomicBool::new(false),
            stack_base: AtomicUsize::new(0),
            park_fp: AtomicUsize::new(0),
            park_sp: AtomicUsize::new(0),
            read_gate: AtomicU8::new(0),
            times: AtomicPtr::new(std::ptr::null_mut()),
            token: Mutex::new(Weak::<NoTicket>::new() as Weak<dyn WaitTicket>),
            seq: AtomicU64::new(0),
            phase: AtomicU8::new(phase as u8),
            wait_kind: AtomicU8::new(0),
            wait_a: AtomicU64::new(0),
            wait_b: AtomicU64::new(0),
            since_ns: AtomicU64::new(now),
            deadline_ns: AtomicU64::new(NO_DEADLINE),
        }
    }

    /// Its times, if timing has seen it.
    pub(crate) fn times(&self) -> Option<&Times> {
        // SAFETY: null or a box of this record's, freed only by its drop.
        unsafe { self.times.load(Ordering::Acquire).as_ref() }
    }

    /// Its times, made now if timing had not seen it yet.
    pub(crate) fn times_or_new(&self) -> &Times {
        if let Some(times) = self.times() {
            return times;
        }
        let new = Box::into_raw(Box::<Times>::default());
        let times = match self.times.compare_exchange(
            std::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => new,
            Err(first) => {
                // SAFETY: `new` was made above and never shared.
                drop(unsafe { Box::from_raw(new) });
                first
            }
        };
        // SAFETY: a box of this record's, freed only by its drop.
        unsafe { &*times }
    }

    /// The id of the green thread that spawned it, if any.
    pub(crate) fn parent(&self) -> Option<u64> {
        self.parent.map(NonZeroU64::get)
    }

    /// Its stack's size in bytes.
    pub(crate) fn stack_size(&self) -> usize {
        self.stack_size as usize
    }

    /// Owner-only: records the start of a wait made in the frame `at` (which lives until the
    /// thread runs again: see core/stack.rs). Counts a switch.
    #[inline]
    pub(crate) fn begin_wait(&self, on: WaitOn, deadline_ns: Option<u64>, at: FrameAt) {
        // Published by the phase's seqlock write below.
        self.park_fp.store(at.fp, Ordering::Relaxed);
        self.park_sp.store(at.sp, Ordering::Relaxed);
        let (kind, a, b) = encode(on);
        self.write(
            Phase::Waiting,
            kind,
            a,
            b,
            deadline_ns.unwrap_or(NO_DEADLINE),
        );
        self.count_switch();
    }

    /// Owner-only: the thread runs again.
    #[inline]
    pub(crate) fn set_running(&self) {
        self.write(Phase::Running, 0, 0, 0, NO_DEADLINE);
    }

    /// Owner-only: a yield gives up the worker without waiting on anything.
    #[inline]
    pub(crate) fn count_switch(&self) {
        // Single writer: a load and a store, no read-modify-write.
        let n = self.switches.load(Ordering::Relaxed);
        self.switches.store(n + 1, Ordering::Relaxed);
    }

    #[inline]
    fn write(&self, phase: Phase, kind: u8, a: u64, b: u64, deadline: u64) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.wait_kind.store(kind, Ordering::Relaxed);
        self.wait_a.store(a, Ordering::Relaxed);
        self.wait_b.store(b, Ordering::Relaxed);
        self.since_ns.store(clock::ticked_ns(), Ordering::Relaxed);
        self.deadline_ns.store(deadline, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Any thread: a consistent copy of the state.
    pub(crate) fn read(&self) -> StateView {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let phase = self.phase.load(Ordering::Relaxed);
            let kind = self.wait_kind.load(Ordering::Relaxed);
            let a = self.wait_a.load(Ordering::Relaxed);
            let b = self.wait_b.load(Ordering::Relaxed);
            let since_ns = self.since_ns.load(Ordering::Relaxed);
            let deadline = self.deadline_ns.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            let phase = match phase {
                0 => Phase::Scheduled,
                2 => Phase::Waiting,
                _ => Phase::Running,
            };
            return StateView {
                phase,
                waiting_on: if phase == Phase::Waiting {
                    decode(kind, a, b)
                } else {
                    None
                },
                since_ns,
                deadline_ns: (deadline != NO_DEADLINE).then_some(deadline),
                seq: s1,
            };
        }
    }
}

impl Drop for ThreadRecord {
    fn drop(&mut self) {
        let times = *self.times.get_mut();
        if !times.is_null() {
            // SAFETY: made by `times_or_new` from a box, freed only here.
            drop(unsafe { Box::from_raw(times) });
        }
    }
}

/// A wait's target in the three words of a record's state.
#[inline]
fn encode(on: WaitOn) -> (u8, u64, u64) {
    match on {
        WaitOn::Sleep => (1, 0, 0),
        WaitOn::Join { thread } => (2, thread, 0),
        WaitOn::Object { object, id } => (3, id, u64::from(object.index())),
        WaitOn::Fd { fd, interest } => (4, fd as u32 as u64, interest as u64),
    }
}

fn decode(kind: u8, a: u64, b: u64) -> Option<WaitOn> {
    Some(match kind {
        1 => WaitOn::Sleep,
        2 => WaitOn::Join { thread: a },
        3 => WaitOn::Object {
            object: ObjectKind::from_index(b as u16),
            id: a,
        },
        4 => WaitOn::Fd {
            fd: a as u32 as i32,
            interest: Interest::from_bits(b as u8),
        },
        _ => return None,
    })
}

/// How a green thread ended, as kept in the recently-finished history.
#[derive(Clone, Debug)]
pub(crate) enum Ending {
    Returned,
    Panicked(Arc<str>),
    Killed,
    NotStarted(Arc<str>),
}

/// A finished green thread as the history keeps it: a copy of what its record said, so that
/// the history holds no record (a record is freed by whoever lets go of it last, usually its
/// handle, never by the end of a thread spawned long after).
#[derive(Clone)]
pub(crate) struct Finished {
    pub identity: Identity,
    pub created_ns: u64,
    pub run_ns: u64,
    pub switches: u64,
    pub ended_ns: u64,
    pub ending: Ending,
}

impl Finished {
    fn of(record: &ThreadRecord, ended_ns: u64, ending: Ending) -> Finished {
        Finished {
            identity: Identity {
                id: record.id,
                name: record.name.clone(),
                parent: record.parent(),
                origin: record.origin,
                site: record.site,
                stack_size: record.stack_size(),
            },
            created_ns: record.created_ns,
            run_ns: record.run_ns.load(Ordering::Relaxed),
            switches: record.switches.load(Ordering::Relaxed),
            ended_ns,
            ending,
        }
    }
}

/// Kinds of pending timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerKind {
    Sleep,
    CallAfter,
    SpawnAfter,
    Deadline,
}

pub(crate) struct TimerEntry {
    pub deadline_ns: u64,
    pub kind: TimerKind,
    pub owner: Option<u64>,
    pub site: &'static Location<'static>,
}

/// A descriptor some green thread waits on.
pub(crate) struct FdEntry {
    pub fd: i32,
    pub interest: Interest,
    pub owner: Option<u64>,
    pub since_ns: u64,
}

#[derive(Default)]
struct ThreadShard {
    live: IdMap<RecordRef>,
    /// Threads of this shard ever inserted and ever finished: counted under the shard's lock
    /// the spawn and the end take anyway, so that spawners and ending threads on different
    /// workers never write one shared counter.
    spawned: u64,
    finished_count: u64,
    finished: VecDeque<Finished>,
    /// Switches of this shard's threads that have ended, moved here under the same lock as
    /// the thread leaves `live`, so that a snapshot counts every thread exactly once.
    finished_switches: u64,
}

/// An atomic counter on a cache line of its own: spawners and exiting threads on different
/// workers update these, and must not slow each other down by sharing a line.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded(pub AtomicU64);

impl std::ops::Deref for Padded {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Process-wide counters of rare events (spawns and ends are counted per shard).
#[derive(Default)]
pub(crate) struct Counters {
    pub panicked: AtomicU64,
    pub killed: AtomicU64,
}

/// An object that shows in the snapshot: implemented by greenhub's synchronization types,
/// and by other crates' pools through `Registration`.
pub trait Inspect: Send + Sync {
    /// The object's current state. Called from the thread taking a snapshot; keep it short
    /// (take the object's lock once, copy the counts).
    fn inspect(&self) -> ObjectInfo;

    /// The green threads its waiters wait for, listed only while it has nothing to give: each
    /// holds a unit (the lock, a permit, a connection) and a waiter goes on once one of them
    /// gives it back. Empty when anything else could satisfy a waiter (a unit is free, more
    /// can be made, a plain OS thread holds one, any handle may put or set): then no wait on
    /// it is ever called a deadlock. The deadlock detector calls it on the monitor thread for
    /// objects with long waits; keep it short, like `inspect`.
    fn holders(&self) -> Vec<u64> {
        Vec::new()
    }

    /// The green threads among its waiters that wait for a unit (`None`, the default: all of
    /// them). A waiter not listed waits on the object for something else, such as the result
    /// of a call it made that runs meanwhile, which no holder's return gives it: the deadlock
    /// detector counts it as free.
    fn unit_waiters(&self) -> Option<Vec<u64>> {
        None
    }

    /// Every green thread holding a unit of it now (the lock, a checked-out item or
    /// connection), whether or not it has units left: what a leak check looks for.
    fn held_by(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Resizes it (a pool's size: its threads, items or slots), when it can be: an operator's
    /// request through the inspector. The error says why not, in words.
    fn resize(&self, size: usize) -> Result<(), String> {
        let _ = size;
        Err("this object cannot be resized".into())
    }
}

/// An inspectable object, held weakly: the registry never keeps an object alive.
type ObjectRef = Weak<dyn Inspect>;

pub(crate) struct Registry {
    threads: Box<[Mutex<ThreadShard>]>,
    timers: Box<[Mutex<IdMap<TimerEntry>>]>,
    fds: Box<[Mutex<IdMap<FdEntry>>]>,
    objects: Box<[Mutex<IdMap<ObjectRef>>]>,
    finished_per_shard: usize,
    next_id: Padded,
    pub counters: Counters,
}

fn shards<T: Default>() -> Box<[Mutex<T>]> {
    (0..SHARDS).map(|_| Mutex::new(T::default())).collect()
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The registry; `finished_history` only matters on first use (the runtime's start).
pub(crate) fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| Registry::new(crate::core::config::DEFAULT_FINISHED_HISTORY))
}

pub(crate) fn init(finished_history: usize) {
    REGISTRY.get_or_init(|| Registry::new(finished_history));
}

impl Registry {
    fn new(finished_history: usize) -> Registry {
        Registry {
            threads: shards(),
            timers: shards(),
            fds: shards(),
            objects: shards(),
            finished_per_shard: finished_history.div_ceil(SHARDS),
            next_id: Padded(AtomicU64::new(1)),
            counters: Counters::default(),
        }
    }

    /// A fresh id, shared by threads, timers and descriptor registrations.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(id: u64) -> usize {
        (id as usize) % SHARDS
    }

    pub(crate) fn insert_thread(&self, record: RecordRef) {
        if trace::on() {
            trace::spawned(record.id, record.parent());
        }
        let mut shard = self.threads[Self::shard(record.id)].lock();
        shard.spawned += 1;
        shard.live.insert(record.id, record);
    }

    /// Moves a thread from the live table to the bounded history.
    pub(crate) fn finish_thread(&self, id: u64, ending: Ending) {
        let c = &self.counters;
        match ending {
            Ending::Panicked(_) => c.panicked.fetch_add(1, Ordering::Relaxed),
            Ending::Killed => c.killed.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if trace::on() {
            let how = match ending {
                Ending::Returned => trace::RETURNED,
                Ending::Panicked(_) | Ending::NotStarted(_) => trace::PANICKED,
                Ending::Killed => trace::KILLED,
            };
            trace::ended(id, how);
        }
        let ended_ns = clock::ticked_ns();
        let evicted = {
            let mut shard = self.threads[Self::shard(id)].lock();
            let Some(record) = shard.live.remove(&id) else {
                return;
            };
            shard.finished_count += 1;
            let finished = Finished::of(&record, ended_ns, ending);
            shard.finished_switches += finished.switches;
            shard.finished.push_back(finished);
            if shard.finished.len() > self.finished_per_shard {
                shard.finished.pop_front()
            } else {
                None
            }
        };
        // The evicted record (and its name) is freed outside the lock.
        drop(evicted);
    }

    pub(crate) fn thread(&self, id: u64) -> Option<RecordRef> {
        self.threads[Self::shard(id)].lock().live.get(&id).cloned()
    }

    /// How many green threads are alive (no record is copied).
    pub(crate) fn live_count(&self) -> usize {
        self.threads.iter().map(|s| s.lock().live.len()).sum()
    }

    /// The live threads, and the switches of the threads that have ended, read shard by
    /// shard under each shard's lock: a total made of both never counts a thread twice nor
    /// misses one, so it never goes backwards from one snapshot to the next.
    pub(crate) fn live_threads(&self) -> (Vec<RecordRef>, u64) {
        let mut out = Vec::new();
        let mut finished_switches = 0;
        for shard in self.threads.iter() {
            let shard = shard.lock();
            out.extend(shard.live.values().cloned());
            finished_switches += shard.finished_switches;
        }
        (out, finished_switches)
    }

    /// The live threads whose state `keep` accepts, with that state: one pass over the
    /// tables that clones only the records kept.
    pub(crate) fn threads_where(
        &self,
        mut keep: impl FnMut(&StateView) -> bool,
    ) -> Vec<(RecordRef, StateView)> {
        let mut out = Vec::new();
        for shard in self.threads.iter() {
            let shard = shard.lock();
            for record in shard.live.values() {
                let state = record.read();
                if keep(&state) {
                    out.push((record.clone(), state));
                }
            }
        }
        out
    }

    /// The recently finished threads, oldest first.
    pub(crate) fn finished(&self) -> Vec<Finished> {
        let mut out = Vec::new();
        for shard in self.threads.iter() {
            out.extend(shard.lock().finished.iter().cloned());
        }
        out.sort_by_key(|f| (f.ended_ns, f.identity.id));
        out
    }

    /// Lists a pending timer due at `at` under a fresh id, and returns the id.
    pub(crate) fn add_timer(
        &self,
        at: std::time::Instant,
        kind: TimerKind,
        owner: Option<u64>,
        site: &'static Location<'static>,
    ) -> u64 {
        let id = self.next_id();
        self.insert_timer(
            id,
            TimerEntry {
                deadline_ns: clock::instant_ns(at),
                kind,
                owner,
                site,
            },
        );
        id
    }

    fn insert_timer(&self, id: u64, entry: TimerEntry) {
        self.timers[Self::shard(id)].lock().insert(id, entry);
    }

    pub(crate) fn remove_timer(&self, id: u64) -> bool {
        self.timers[Self::shard(id)].lock().remove(&id).is_some()
    }

    pub(crate) fn timers(
        &self,
    ) -> Vec<(u64, TimerKind, u64, Option<u64>, &'static Location<'static>)> {
        let mut out = Vec::new();
        for shard in self.timers.iter() {
            out.extend(
                shard
                    .lock()
                    .iter()
                    .map(|(id, t)| (*id, t.kind, t.deadline_ns, t.owner, t.site)),
            );
        }
        out.sort_by_key(|t| (t.2, t.0));
        out
    }

    pub(crate) fn insert_fd(&self, id: u64, entry: FdEntry) {
        self.fds[Self::shard(id)].lock().insert(id, entry);
    }

    pub(crate) fn remove_fd(&self, id: u64) {
        self.fds[Self::shard(id)].lock().remove(&id);
    }

    /// Whether no green thread is alive but `me` of them (the caller's own) and no
    /// `call_after` is pending. Conservative: never true while a thread lives. The ends are
    /// read before the spawns, so a thread spawned by one that has ended is always counted.
    pub(crate) fn quiet(&self, me: u64) -> bool {
        if self.pending_calls() > 0 {
            return false;
        }
        // Every shard's ends first, then every shard's spawns: an end seen in the first pass
        // came (through its shard's lock) before this pass's later locks, and so did every
        // spawn its thread made, which the second pass therefore sees.
        let finished: u64 = self.threads.iter().map(|s| s.lock().finished_count).sum();
        let spawned: u64 = self.threads.iter().map(|s| s.lock().spawned).sum();
        spawned.saturating_sub(finished) <= me
    }

    /// Green threads ever spawned and ever finished (each shard read once, under its lock).
    pub(crate) fn spawn_counts(&self) -> (u64, u64) {
        self.threads.iter().fold((0, 0), |(spawned, finished), s| {
            let s = s.lock();
            (spawned + s.spawned, finished + s.finished_count)
        })
    }

    /// The number of pending `call_after` timers (work still to come).
    fn pending_calls(&self) -> usize {
        self.timers
            .iter()
            .map(|s| {
                s.lock()
                    .values()
                    .filter(|t| matches!(t.kind, TimerKind::CallAfter))
                    .count()
            })
            .sum()
    }

    /// The number of pending timers.
    pub(crate) fn timer_count(&self) -> usize {
        self.timers.iter().map(|s| s.lock().len()).sum()
    }

    /// The number of descriptors registered with an `FdWatch` (a green thread's plain wait on
    /// a descriptor is in its record instead).
    pub(crate) fn fd_count(&self) -> usize {
        self.fds.iter().map(|s| s.lock().len()).sum()
    }

    pub(crate) fn fds(&self) -> Vec<(i32, Interest, Option<u64>, u64)> {
        let mut out = Vec::new();
        for shard in self.fds.iter() {
            out.extend(
                shard
                    .lock()
                    .values()
                    .map(|f| (f.fd, f.interest, f.owner, f.since_ns)),
            );
        }
        out.sort_by_key(|f| (f.0, f.3));
        out
    }

    pub(crate) fn insert_object(&self, id: u64, object: ObjectRef) {
        self.objects[Self::shard(id)].lock().insert(id, object);
    }

    pub(crate) fn remove_object(&self, id: u64) {
        self.objects[Self::shard(id)].lock().remove(&id);
    }

    /// The live object `id`, if any.
    pub(crate) fn object(&self, id: u64) -> Option<Arc<dyn Inspect>> {
        self.objects[Self::shard(id)]
            .lock()
            .get(&id)
            .and_then(Weak::upgrade)
    }

    /// The live objects. The caller inspects them outside the table's locks.
    pub(crate) fn objects(&self) -> Vec<Arc<dyn Inspect>> {
        let mut out = Vec::new();
        for shard in self.objects.iter() {
            out.extend(shard.lock().values().filter_map(Weak::upgrade));
        }
        out
    }
}
