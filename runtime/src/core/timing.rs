//! Where green threads' time goes, while timing is on: each switch reads the precise clock, each
//! green thread's record keeps its time running, waiting, and runnable but not yet running
//! (woken and waiting for a worker: the scheduling delay), and each spawn site gets histograms
//! of the same, the waits by kind (kept per worker, merged when read).
//!
//! Timing is on while someone asks for it ([`claim`]: the program, or an attached inspector
//! for as long as its connection lasts). Off, a switch pays nothing more than the flags word it
//! reads anyway (`core/barrier.rs`), and a wake one relaxed load of that word.
//!
//! A run ends at a wait or a yield; a wait ends when the thread runs again, and the part of it
//! after the wake (when a token woke it; descriptor readiness and yields count from the moment
//! the thread was runnable) is runnable time, not waiting time.
//!
//! It uses the registry's records, the barrier and the clock.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use greenhub_snapshot::{ObjectKind, WaitOn};

use crate::core::barrier;
use crate::core::clock;
use crate::core::registry::{ThreadRecord, Times};

/// What a stretch of a thread's time was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Spent {
    Running,
    Runnable,
    Sleeping,
    Joining,
    OnDescriptor,
    OnObject(ObjectKind),
}

impl Spent {
    fn waiting_on(on: WaitOn) -> Spent {
        match on {
            WaitOn::Sleep => Spent::Sleeping,
            WaitOn::Join { .. } => Spent::Joining,
            WaitOn::Fd { .. } => Spent::OnDescriptor,
            WaitOn::Object { object, .. } => Spent::OnObject(object),
        }
    }

    fn encode(self) -> u64 {
        match self {
            Spent::Running => 1,
            Spent::Runnable => 2,
            Spent::Sleeping => 3,
            Spent::Joining => 4,
            Spent::OnDescriptor => 5,
            Spent::OnObject(kind) => 16 + u64::from(kind.index()),
        }
    }

    fn decode(v: u64) -> Spent {
        match v {
            1 => Spent::Running,
            2 => Spent::Runnable,
            3 => Spent::Sleeping,
            4 => Spent::Joining,
            5 => Spent::OnDescriptor,
            v => Spent::OnObject(ObjectKind::from_index(v.saturating_sub(16) as u16)),
        }
    }

    /// Its name in a snapshot: `running`, `runnable`, or what was waited on.
    pub(crate) fn name(self) -> String {
        match self {
            Spent::Running => "running".into(),
            Spent::Runnable => "runnable".into(),
            Spent::Sleeping => "sleep".into(),
            Spent::Joining => "join".into(),
            Spent::OnDescriptor => "descriptor".into(),
            Spent::OnObject(kind) => kind.name().to_string(),
        }
    }
}

/// Claims on timing: it is on while there is one. A lock, so that the count and the flag
/// change together (a claim and a release that cross cannot leave the flag off).
static CLAIMS: Mutex<usize> = Mutex::new(0);

/// When timing last came on: marks older than this were left by an earlier spell and are
/// ignored (a wait that began then ended while timing was off).
static ON_SINCE: AtomicU64 = AtomicU64::new(0);

/// A claim on timing: on while any is held.
pub(crate) struct Claim(());

/// Turns timing on until the claim is dropped (and no other is held).
pub(crate) fn claim() -> Claim {
    let mut claims = CLAIMS.lock();
    *claims += 1;
    if *claims == 1 {
        ON_SINCE.store(clock::precise_ns(), Ordering::SeqCst);
        barrier::raise(barrier::TIMING);
    }
    Claim(())
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock();
        *claims -= 1;
        if *claims == 0 {
            barrier::clear(barrier::TIMING);
        }
    }
}

/// Whether timing is on.
pub(crate) fn on() -> bool {
    barrier::flags() & barrier::TIMING != 0
}

/// A mark, or 0 when it was left before timing last came on.
fn current(mark: u64) -> u64 {
    if mark >= ON_SINCE.load(Ordering::Relaxed) {
        mark
    } else {
        0
    }
}

fn times(record: &ThreadRecord) -> &Times {
    record.times_or_new()
}

/// The thread of `record` begins a wait on `on` (called on it).
// Never inlined: the per-worker book is found through a thread-local, whose address a
// caller that parks could keep across the park and use on another worker.
#[cold]
#[inline(never)]
pub(crate) fn wait_begins(record: &ThreadRecord, on: WaitOn) {
    end_run(record, Spent::waiting_on(on));
}

/// The thread of `record` yields: runnable from now.
// Never inlined: the per-worker book is found through a thread-local, whose address a
// caller that parks could keep across the park and use on another worker.
#[cold]
#[inline(never)]
pub(crate) fn yields(record: &ThreadRecord) {
    end_run(record, Spent::Runnable);
}

fn end_run(record: &ThreadRecord, next: Spent) {
    let t = times(record);
    let now = clock::precise_ns().max(1);
    let since = current(t.run_since.swap(0, Ordering::Relaxed));
    if since != 0 {
        let ran = now.saturating_sub(since);
        t.running_ns.fetch_add(ran, Ordering::Relaxed);
        t.runs.fetch_add(1, Ordering::Relaxed);
        book(record.site, Spent::Running, ran);
    }
    t.woken_at.store(0, Ordering::Relaxed);
    t.wait_class.store(next.encode(), Ordering::Relaxed);
    t.wait_since.store(now, Ordering::Relaxed);
}

/// A token woke the thread of `record` (called by the waker).
// Never inlined: the per-worker book is found through a thread-local, whose address a
// caller that parks could keep across the park and use on another worker.
#[cold]
#[inline(never)]
pub(crate) fn woken(record: &ThreadRecord) {
    let t = times(record);
    let _ = t.woken_at.compare_exchange(
        0,
        clock::precise_ns().max(1),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
}

/// The thread of `record` runs (called on it, from its start or the end of a wait or yield).
// Never inlined: the per-worker book is found through a thread-local, whose address a
// caller that parks could keep across the park and use on another worker.
#[cold]
#[inline(never)]
pub(crate) fn runs(record: &ThreadRecord) {
    let t = times(record);
    let now = clock::precise_ns().max(1);
    let since = current(t.wait_since.swap(0, Ordering::Relaxed));
    if since != 0 {
        let class = Spent::decode(t.wait_class.load(Ordering::Relaxed));
        let woken = t.woken_at.swap(0, Ordering::Relaxed);
        // Runnable from the wake (a token's) or, for a yield, from the start of the wait.
        let runnable_from = match class {
            Spent::Runnable => since,
            _ if woken >= since => woken.min(now),
            _ => now,
        };
        let waited = runnable_from.saturating_sub(since);
        let runnable = now.saturating_sub(runnable_from);
        if class != Spent::Runnable {
            t.waiting_ns.fetch_add(waited, Ordering::Relaxed);
            t.waits.fetch_add(1, Ordering::Relaxed);
            book(record.site, class, waited);
        }
        if woken != 0 || class == Spent::Runnable {
            t.runnable_ns.fetch_add(runnable, Ordering::Relaxed);
            book(record.site, Spent::Runnable, runnable);
        }
    }
    t.run_since.store(now, Ordering::Relaxed);
}

/// The thread of `record` ends: its last run is counted.
// Never inlined: the per-worker book is found through a thread-local, whose address a
// caller that parks could keep across the park and use on another worker.
#[cold]
#[inline(never)]
pub(crate) fn ends(record: &ThreadRecord) {
    let t = times(record);
    let since = current(t.run_since.swap(0, Ordering::Relaxed));
    if since != 0 {
        let ran = clock::precise_ns().saturating_sub(since);
        t.running_ns.fetch_add(ran, Ordering::Relaxed);
        t.runs.fetch_add(1, Ordering::Relaxed);
        book(record.site, Spent::Running, ran);
    }
}

/// Past this many (site, kind) entries in a worker's book, new ones are not kept.
const MAX_ENTRIES: usize = 4096;

/// Histograms of one worker, by spawn site and kind of time; locked by its worker on each
/// timed switch (uncontended) and by a reader.
#[derive(Default)]
struct Book {
    entries: HashMap<(&'static Location<'static>, Spent), Histogram<u64>>,
}

static BOOKS: Mutex<Vec<Arc<Mutex<Book>>>> = Mutex::new(Vec::new());

thread_local! {
    static BOOK: OnceCell<Arc<Mutex<Book>>> = const { OnceCell::new() };
}

/// Durations from 1 ns to an hour, one significant digit (buckets within 10%).
fn histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 1).ok()
}

fn book(site: &'static Location<'static>, spent: Spent, ns: u64) {
    let _ = BOOK.try_with(|b| {
        let book = b.get_or_init(|| {
            let book = Arc::new(Mutex::new(Book::default()));
            BOOKS.lock().push(book.clone());
            book
        });
        // A reader merging this book holds it for a while: the stretch is left out then
        // rather than the worker blocked.
        let Some(mut book) = book.try_lock() else {
            return;
        };
        let full = book.entries.len() >= MAX_ENTRIES;
        let entry = match book.entries.get_mut(&(site, spent)) {
            Some(h) => Some(h),
            None if full => None,
            None => histogram().map(|h| book.entries.entry((site, spent)).or_insert(h)),
        };
        if let Some(h) = entry {
            h.saturating_record(ns.clamp(1, 3_600_000_000_000));
        }
    });
}

/// Every spawn site's histograms, merged over the workers.
pub(crate) fn sites() -> HashMap<&'static Location<'static>, Vec<(Spent, Histogram<u64>)>> {
    let books: Vec<Arc<Mutex<Book>>> = BOOKS.lock().clone();
    let mut merged: HashMap<(&'static Location<'static>, Spent), Histogram<u64>> = HashMap::new();
    for book in books {
        let book = book.lock();
        for (key, h) in &book.entries {
            match merged.get_mut(key) {
                Some(m) => {
                    let _ = m.add(h);
                }
                None => {
                    merged.insert(*key, h.clone());
                }
            }
        }
    }
    let mut by_site: HashMap<&'static Location<'static>, Vec<(Spent, Histogram<u64>)>> =
        HashMap::new();
    for ((site, spent), h) in merged {
        by_site.entry(site).or_default().push((spent, h));
    }
    by_site
}
