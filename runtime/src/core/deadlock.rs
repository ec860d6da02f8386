//! Deadlock detection, on the monitor thread: which green threads wait for something only
//! other waiting threads can give, so that none of them goes on by itself.
//!
//! The graph. A green thread waiting on the end of another (`WaitOn::Join`) waits for that
//! thread; one waiting on an object waits for the object's holders ([`Inspect::holders`]): a
//! mutex's holder, the threads holding a pool's every connection. A wait on anything else
//! (a timer, a descriptor, a queue or event any handle may feed, an object that lists no
//! holders) can end by itself, and so can a wait whose token was woken already (the hand-off is
//! made, the thread has not run yet). A waiting thread is *free* if one of the threads it waits
//! for is not waiting or is free: waits on a pool end when any holder gives a unit back. What
//! is not free is deadlocked: a cycle of locks, or a pool whose holders all wait for another
//! unit of it. Computed over the reverse edges in one pass, so a chain of ten thousand waits
//! costs ten thousand steps.
//!
//! A wait with a deadline takes part: its deadline ends the deadlock, which is still one
//! until then (HikariCP's pool self-deadlock ends in timeouts, and is the bug to report).
//!
//! No false alarms. The states and the holders are read at slightly different moments, so a
//! deadlock is reported only when two checks at least [`CHECK_TICKS`] monitor ticks apart find
//! the same threads in the same waits (a wait's sequence number identifies it), and the
//! woken-token test is made after the holders are read: a holder is recorded under the object's
//! lock after the hand-off's wake, so a hand-off seen in the holders is seen in the token.
//!
//! A deadlock is reported once, to the log (with each thread's stack), counted, and listed
//! in the snapshot until one of its waits ends. The monitor reads the stacks' return
//! addresses; `greenhub-reports` symbolizes them and publishes the report
//! ([`NewDeadlock::publish`]), since loading debug information must not hold up the ticks.
//!
//! All asleep. A wait on a queue, an event, a condition or a semaphore lists no holder: any
//! handle may feed or release it, and handles are not tracked. Such waits are stuck only when
//! nothing at all can act: every live green thread waits (on a join or on one of greenhub's
//! own synchronization objects, none woken), no timer is pending, and every OS thread of the
//! process is greenhub's, `may`'s, or asleep itself (`core/quiescence.rs`). Two checks that
//! find the same waits confirm it, as above; then every waiting thread not in a deadlock of
//! its own is reported too, in groups joined by their waits ([`DeadlockKind::Asleep`]). That
//! catches a lock and a queue waiting on each other and a waiter whose feeders are all gone,
//! in a process that has fallen still. In one that still serves (a thread waiting on a socket,
//! a program's own OS thread), those waits cannot be judged, and are not.
//!
//! Not seen: read-write locks and green pools in cycles (their holders are not recorded), and
//! locks held by plain OS threads.
//!
//! It uses the registry, the tokens of waits, stacks and symbols, and the report functions.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use greenhub_snapshot::{
    Deadlock, DeadlockKind, DeadlockedThread, HeldObject, ObjectKind, ThreadStack, WaitOn,
};
use parking_lot::{Mutex, RwLock};

use crate::core::alarm;
use crate::core::clock;
use crate::core::flight;
use crate::core::inbox;
use crate::core::quiescence::{self, AsleepThread};
use crate::core::registry::{IdMap, RecordRef, ThreadRecord, registry};
use crate::core::report;
use crate::core::stack;
use crate::core::symbols::fold;
use crate::core::trace;

/// Monitor ticks between two checks while anything runs (a deadlock is reported at the
/// second check that finds it). A process that falls quiet is checked before the monitor
/// parks.
pub(crate) const CHECK_TICKS: u32 = 10;

/// Deadlocks found since start.
static FOUND_TOTAL: AtomicU64 = AtomicU64::new(0);

/// The deadlocks in place at the last check.
static CURRENT: Mutex<Vec<Found>> = Mutex::new(Vec::new());

/// A deadlock as found: times kept as clock readings, turned relative when shown.
struct Found {
    seq: u64,
    kind: DeadlockKind,
    found_at: Instant,
    /// Each member's id and wait sequence number: the deadlock lasts while all keep them.
    members: Vec<(u64, u64)>,
    threads: Vec<FoundThread>,
}

struct FoundThread {
    id: u64,
    name: Option<String>,
    spawn_site: String,
    waiting_on: WaitOn,
    waiting_on_name: Option<String>,
    holds: Vec<HeldObject>,
    since_ns: u64,
    deadline_ns: Option<u64>,
    stack: Option<ThreadStack>,
}

/// Deadlocks found since start, and green threads in deadlocks now.
pub(crate) fn counts() -> (u64, usize) {
    let deadlocked = CURRENT.lock().iter().map(|f| f.threads.len()).sum();
    (FOUND_TOTAL.load(Ordering::Relaxed), deadlocked)
}

/// The deadlocks in place at the last check, with times relative to `coarse_ns` (waits) and
/// `precise_ns` (deadlines).
pub(crate) fn current(coarse_ns: u64, precise_ns: u64) -> Vec<Deadlock> {
    CURRENT
        .lock()
        .iter()
        .map(|f| shown(f, coarse_ns, precise_ns))
        .collect()
}

/// A found deadlock as the snapshot shows it.
fn shown(f: &Found, coarse_ns: u64, precise_ns: u64) -> Deadlock {
    Deadlock {
        seq: f.seq,
        kind: f.kind.clone(),
        found_ago_us: f.found_at.elapsed().as_micros() as u64,
        threads: f
            .threads
            .iter()
            .map(|t| DeadlockedThread {
                id: t.id,
                name: t.name.clone(),
                spawn_site: t.spawn_site.clone(),
                waiting_on: t.waiting_on,
                waiting_on_name: t.waiting_on_name.clone(),
                holds: t.holds.clone(),
                waiting_for_us: coarse_ns.saturating_sub(t.since_ns) / 1000,
                deadline_in_us: t.deadline_ns.map(|d| {
                    (d as i128 - precise_ns as i128).clamp(i64::MIN as i128, i64::MAX as i128)
                        as i64
                        / 1000
                }),
                stack: t.stack.clone(),
            })
            .collect(),
    }
}

/// A waiting thread that only other threads' progress can free.
#[derive(Clone)]
struct Stuck {
    record: RecordRef,
    on: WaitOn,
    seq: u64,
    since_ns: u64,
    deadline_ns: Option<u64>,
    /// The threads it waits for: one of them going on frees it.
    waits_for: Vec<u64>,
}

/// The whole process asleep, as one check saw it: every green thread's id and wait sequence
/// number, and the OS threads'.
type Asleep = (Vec<(u64, u64)>, Vec<AsleepThread>);

/// The monitor's detector: what the last check found stuck.
#[derive(Default)]
pub(crate) struct Detector {
    /// Threads stuck at the last check, with the sequence number of the wait they were in.
    last: IdMap<u64>,
    /// The members of the deadlocks reported and still in place.
    reported: Vec<Vec<(u64, u64)>>,
    /// What the last check found when the whole process was asleep: every green thread's id
    /// and wait, and the OS threads' (two checks that agree find it asleep).
    last_asleep: Option<Asleep>,
    /// The members of the all-asleep groups reported, while their threads keep their waits.
    asleep_in_place: Vec<Vec<(u64, u64)>>,
}

/// A deadlock just found, to be published off the monitor thread: its stacks are symbolized
/// then (the first time loads debug information, which takes a while).
pub(crate) struct NewDeadlock {
    found: Found,
    /// The return addresses of each thread's stack, in the order of `found.threads`.
    stacks: Vec<Option<Vec<usize>>>,
}

impl NewDeadlock {
    /// Symbolizes its stacks, logs it, and lists it in the snapshot.
    pub(crate) fn publish(mut self) {
        for (thread, ips) in self.found.threads.iter_mut().zip(self.stacks) {
            thread.stack = ips.map(|ips| fold(&ips));
            if trace::on() {
                trace::deadlock(thread.id, self.found.seq);
            }
        }
        let deadlock = shown(&self.found, clock::coarse_ns(), clock::precise_ns());
        // Listed before it is said: a reader woken by the log or a hook finds it in the
        // snapshot.
        CURRENT.lock().push(self.found);
        report::error(&format!("greenhub: {}", deadlock.describe()));
        for hook in HOOKS.read().iter() {
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&deadlock)))
            {
                report::error(&format!(
                    "greenhub: a deadlock hook panicked: {}",
                    report::payload_message(&*payload)
                ));
            }
        }
        flight::incident("deadlock");
    }
}

/// A function told of every deadlock found ([`on_deadlock`]).
type Hook = Box<dyn Fn(&Deadlock) + Send + Sync>;

static HOOKS: RwLock<Vec<Hook>> = RwLock::new(Vec::new());

/// Calls `hook` with every deadlock found from now on, once it is listed in the snapshot and
/// logged: to page someone, count it in a metric of the program's own, save a trace, or, in a
/// test, wake the test. It runs on greenhub's reports thread, one deadlock at a time; it must
/// not block for long (later reports wait for it). A hook that panics is reported and kept.
///
/// ```
/// greenhub::inspect::on_deadlock(|d| eprintln!("paging: {}", d.describe()));
/// ```
pub fn on_deadlock(hook: impl Fn(&Deadlock) + Send + Sync + 'static) {
    HOOKS.write().push(Box::new(hook));
}

impl Detector {
    /// One check: finds the stuck threads, returns the deadlocks that two checks agree on and
    /// that are new (for [`NewDeadlock::publish`]), and forgets those that ended.
    pub(crate) fn check(&mut self) -> Vec<NewDeadlock> {
        let reg = registry();
        let waiting = reg.threads_where(|s| {
            matches!(
                s.waiting_on,
                Some(WaitOn::Join { .. } | WaitOn::Object { .. })
            )
        });
        if waiting.is_empty() {
            self.last.clear();
            self.last_asleep = None;
            self.asleep_in_place.clear();
            self.reported.clear();
            CURRENT.lock().clear();
            return Vec::new();
        }
        // Holders first, then tokens (see the module's doc).
        let mut holders: IdMap<Vec<u64>> = IdMap::default();
        let mut unit_waiters: IdMap<Option<Vec<u64>>> = IdMap::default();
        for (_, state) in &waiting {
            if let Some(WaitOn::Object { id, .. }) = state.waiting_on
                && !holders.contains_key(&id)
            {
                let object = reg.object(id);
                holders.insert(id, object.as_ref().map(|o| o.holders()).unwrap_or_default());
                unit_waiters.insert(id, object.and_then(|o| o.unit_waiters()));
            }
        }
        let live = reg.live_count();
        let mut candidates: IdMap<Stuck> = IdMap::default();
        // Every waiting thread, for the all-asleep case; `None` once one cannot be in it.
        let mut all: Option<Vec<Stuck>> = (live == waiting.len()).then(Vec::new);
        for (record, state) in waiting {
            let Some(on) = state.waiting_on else { continue };
            let waits_for = match on {
                WaitOn::Join { thread } => vec![thread],
                // A waiter the object does not list as waiting for a unit waits for
                // something a holder's return does not give (a call of its own that runs).
                WaitOn::Object { id, .. }
                    if unit_waiters
                        .get(&id)
                        .and_then(Option::as_ref)
                        .is_some_and(|list| !list.contains(&record.id)) =>
                {
                    Vec::new()
                }
                WaitOn::Object { id, .. } => holders.get(&id).cloned().unwrap_or_default(),
                _ => Vec::new(),
            };
            let woken = woken(&record);
            let stuck = Stuck {
                record,
                on,
                seq: state.seq,
                since_ns: state.since_ns,
                deadline_ns: state.deadline_ns,
                waits_for,
            };
            let fed = match on {
                WaitOn::Object { object, .. } => fed_by_threads(object),
                _ => true,
            };
            if let Some(list) = &mut all {
                // A deadline ends a wait by itself: a timer keeps the process awake.
                if woken || !fed || stuck.deadline_ns.is_some() {
                    all = None;
                } else {
                    list.push(stuck.clone());
                }
            }
            if stuck.waits_for.is_empty() || woken {
                continue;
            }
            candidates.insert(stuck.record.id, stuck);
        }
        let seqs: IdMap<u64> = all.iter().flatten().map(|s| (s.record.id, s.seq)).collect();
        let asleep = match all {
            Some(all) => self.all_asleep(all),
            None => {
                self.last_asleep = None;
                None
            }
        };
        let stuck = stuck_of(candidates);
        // Confirmed: stuck in the same wait at the last check too; then closed again, since a
        // confirmed thread may wait for one that is stuck only since this check.
        let confirmed: IdMap<Stuck> = stuck
            .iter()
            .filter(|(id, s)| self.last.get(id) == Some(&s.seq))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        self.last = stuck.iter().map(|(id, s)| (*id, s.seq)).collect();
        let confirmed = stuck_of(confirmed);
        let groups = groups_of(&confirmed);
        // When nothing can act at all, the waits no holder ends are stuck too: the threads
        // not in a deadlock of their own, in groups joined by their waits.
        let asleep: IdMap<Stuck> = asleep
            .into_iter()
            .flatten()
            .filter(|s| !stuck.contains_key(&s.record.id))
            .map(|s| (s.record.id, s))
            .collect();
        let asleep_groups = groups_of(&asleep);

        // A group found all asleep stays in place while each of its threads is in the same
        // wait: what would end it cannot come from a thread that woke meanwhile elsewhere.
        // (`seqs` lists the waits only while every green thread waits; otherwise a group is
        // kept if its threads are still in their waits, read from the records.)
        let still_waiting = |m: &Vec<(u64, u64)>| {
            m.iter().all(|(id, seq)| match seqs.get(id) {
                Some(now) => now == seq,
                None => reg
                    .thread(*id)
                    .is_some_and(|r| r.read().seq == *seq && !woken(&r)),
            })
        };
        self.asleep_in_place.retain(|m| still_waiting(m));
        let mut in_place: Vec<Vec<(u64, u64)>> = groups
            .iter()
            .map(|g| members(g, &confirmed))
            .chain(asleep_groups.iter().map(|g| members(g, &asleep)))
            .collect();
        for m in &self.asleep_in_place {
            if !in_place.contains(m) {
                in_place.push(m.clone());
            }
        }
        self.reported.retain(|m| in_place.contains(m));
        CURRENT.lock().retain(|f| in_place.contains(&f.members));
        let mut new = Vec::new();
        let shapes = groups
            .iter()
            .map(|g| (g, &confirmed, false))
            .chain(asleep_groups.iter().map(|g| (g, &asleep, true)));
        for ((group, stuck, all_asleep), m) in shapes.zip(in_place) {
            if self.reported.contains(&m) {
                continue;
            }
            self.reported.push(m.clone());
            if all_asleep {
                self.asleep_in_place.push(m.clone());
            }
            new.push(describe(group, m, stuck, &holders, all_asleep));
        }
        new
    }

    /// The waiting threads `all` (every live green thread, none woken, each on a join or an
    /// object only threads feed), if nothing else can act either and the last check found
    /// the same: no timer pending, no batched wake in the inbox, every OS thread asleep
    /// (`core/quiescence.rs`).
    fn all_asleep(&mut self, all: Vec<Stuck>) -> Option<Vec<Stuck>> {
        let os = if alarm::idle() && inbox::is_empty() {
            quiescence::os_threads_asleep(fed_by_threads)
        } else {
            None
        };
        let Some(os) = os else {
            self.last_asleep = None;
            return None;
        };
        let mut green: Vec<(u64, u64)> = all.iter().map(|s| (s.record.id, s.seq)).collect();
        green.sort_unstable();
        let seen = Some((green, os));
        let same = self.last_asleep == seen;
        self.last_asleep = seen;
        same.then_some(all)
    }
}

/// Whether only threads end a wait on objects of this kind (by setting, putting, releasing
/// or returning), so that it is stuck when no thread can act: greenhub's own synchronization
/// objects of their own kinds. A wait on anything else (a tpool call, a future, a child
/// process, signals, a database pool that connects, a queue given a kind of its own) may end
/// from outside.
fn fed_by_threads(kind: ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::EVENT
            | ObjectKind::QUEUE
            | ObjectKind::SEMAPHORE
            | ObjectKind::MUTEX
            | ObjectKind::GREENPOOL
    ) || matches!(kind.name(), "rlock" | "rwlock" | "condition" | "pool")
}

/// Whether the wait the record shows was woken already (its thread has not run since), or
/// its thread is being killed.
fn woken(record: &ThreadRecord) -> bool {
    // A kill pokes the wait, which then unwinds: it ends too.
    record.kill_requested.load(Ordering::SeqCst)
        || record
            .token
            .lock()
            .upgrade()
            .is_some_and(|token| !token.is_waiting())
}

/// The candidates that are not free: a candidate is free when one of the threads it waits for
/// is not a candidate, or is free.
fn stuck_of(mut candidates: IdMap<Stuck>) -> IdMap<Stuck> {
    let mut waited_by: IdMap<Vec<u64>> = IdMap::default();
    let mut free: Vec<u64> = Vec::new();
    for (id, c) in &candidates {
        for w in &c.waits_for {
            waited_by.entry(*w).or_default().push(*id);
        }
        if c.waits_for.iter().any(|w| !candidates.contains_key(w)) {
            free.push(*id);
        }
    }
    let mut freed: HashSet<u64> = free.iter().copied().collect();
    while let Some(f) = free.pop() {
        for w in waited_by.get(&f).into_iter().flatten() {
            if freed.insert(*w) {
                free.push(*w);
            }
        }
    }
    candidates.retain(|id, _| !freed.contains(id));
    candidates
}

/// The stuck threads in groups joined by their waits, each sorted by id, groups by first id.
fn groups_of(stuck: &IdMap<Stuck>) -> Vec<Vec<u64>> {
    let mut ids: Vec<u64> = stuck.keys().copied().collect();
    ids.sort_unstable();
    let index: IdMap<usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut parent: Vec<usize> = (0..ids.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, id) in ids.iter().enumerate() {
        for w in &stuck[id].waits_for {
            if let Some(&j) = index.get(w) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: Vec<Vec<u64>> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; ids.len()];
    for (i, id) in ids.iter().enumerate() {
        let r = root(&mut parent, i);
        match group_of[r] {
            Some(g) => groups[g].push(*id),
            None => {
                group_of[r] = Some(groups.len());
                groups.push(vec![*id]);
            }
        }
    }
    groups
}

fn members(group: &[u64], stuck: &IdMap<Stuck>) -> Vec<(u64, u64)> {
    group.iter().map(|id| (*id, stuck[id].seq)).collect()
}

/// The report of one group: what each thread holds and waits on, its stack, and whether it
/// is a pool's self-deadlock.
fn describe(
    group: &[u64],
    members: Vec<(u64, u64)>,
    stuck: &IdMap<Stuck>,
    holders: &IdMap<Vec<u64>>,
    all_asleep: bool,
) -> NewDeadlock {
    let reg = registry();
    let names: IdMap<Option<String>> = group
        .iter()
        .filter_map(|id| match stuck[id].on {
            WaitOn::Object { id: object, .. } => {
                Some((object, reg.object(object).and_then(|o| o.inspect().name)))
            }
            _ => None,
        })
        .collect();
    let objects: Vec<(ObjectKind, u64)> = {
        let mut seen: Vec<(ObjectKind, u64)> = group
            .iter()
            .filter_map(|id| match stuck[id].on {
                WaitOn::Object { object, id } => Some((object, id)),
                _ => None,
            })
            .collect();
        seen.sort_by_key(|(_, id)| *id);
        seen.dedup();
        seen
    };
    let held = |object: (ObjectKind, u64)| HeldObject {
        object: object.0,
        id: object.1,
        name: names.get(&object.1).cloned().flatten(),
    };
    let records: Vec<RecordRef> = group.iter().map(|id| stuck[id].record.clone()).collect();
    let mut stacks: Vec<Option<Vec<usize>>> = stack::read_parked(&records)
        .unwrap_or_default()
        .into_iter()
        .map(|parked| parked.map(|(_, ips)| ips))
        .collect();
    stacks.resize(group.len(), None);
    let threads = group
        .iter()
        .map(|id| {
            let s = &stuck[id];
            let holds = objects
                .iter()
                .filter(|(_, o)| holders.get(o).is_some_and(|h| h.contains(id)))
                .map(|o| held(*o))
                .collect();
            let waiting_on_name = match s.on {
                WaitOn::Object { id, .. } => names.get(&id).cloned().flatten(),
                _ => None,
            };
            FoundThread {
                id: *id,
                name: s.record.name.as_deref().map(String::from),
                spawn_site: s.record.site.to_string(),
                waiting_on: s.on,
                waiting_on_name,
                holds,
                since_ns: s.since_ns,
                deadline_ns: s.deadline_ns,
                stack: None,
            }
        })
        .collect();
    // A pool's self-deadlock: all wait on one object and all hold a unit of it.
    let kind = match objects.as_slice() {
        _ if all_asleep => DeadlockKind::Asleep,
        [pool]
            if group.iter().all(|id| {
                matches!(stuck[id].on, WaitOn::Object { id, .. } if id == pool.1)
                    && holders.get(&pool.1).is_some_and(|h| h.contains(id))
            }) && is_pool(pool.0) =>
        {
            DeadlockKind::Pool { pool: held(*pool) }
        }
        _ => DeadlockKind::Cycle,
    };
    NewDeadlock {
        found: Found {
            seq: FOUND_TOTAL.fetch_add(1, Ordering::Relaxed) + 1,
            kind,
            found_at: Instant::now(),
            members,
            threads,
        },
        stacks,
    }
}

/// Whether waiters of this kind wait for one of several units (a pool) rather than for one
/// lock, which makes a thread that holds a unit and waits for another a pool self-deadlock.
fn is_pool(kind: ObjectKind) -> bool {
    !matches!(kind, ObjectKind::MUTEX) && kind.name() != "rlock" && kind.name() != "rwlock"
}
