//! A green thread's state (its record, its context, its handle's side) is freed once the
//! thread has ended and nothing holds its handle: neither the token its context keeps for the
//! next wait nor a local value holding the thread's own handle keeps it alive. Alone in its
//! binary: it counts the bytes the whole process holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::thread::{GreenThread, Local};
use greenhub::{Event, Queue, spawn};

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator, counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Counts the drops of the local values that hold their own thread's handle.
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// A thread's own handle, kept in its local value: a cycle through the thread's context.
struct OwnHandle(#[allow(dead_code)] Option<GreenThread<u64>>);

impl Drop for OwnHandle {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

static OWN: Local<OwnHandle> = Local::new();

/// Spawns `n` threads that each wait on a gate (so their context keeps a wake token), half
/// of them keeping their own handle in a local value; opens the gate and lets every handle
/// go (joining those the spawner keeps).
fn round(n: usize) {
    let gate = Event::<()>::new();
    let mut kept = Vec::new();
    for i in 0..n as u64 {
        let gate = gate.clone();
        let own = i % 2 == 0;
        // Where the thread receives its own handle.
        let inbox = Queue::<GreenThread<u64>>::unbounded();
        let mine = inbox.clone();
        let t = spawn(move || {
            if own {
                let me = mine.get().unwrap();
                assert_eq!(me.id(), greenhub::thread::current().unwrap().id());
                OWN.set(OwnHandle(Some(me)));
            }
            gate.wait().unwrap();
            i
        });
        if own {
            inbox.put(t).unwrap();
        } else {
            kept.push(t);
        }
    }
    gate.set(()).unwrap();
    for t in kept {
        t.wait().unwrap();
    }
}

#[test]
fn an_ended_threads_state_is_freed_when_nothing_holds_its_handle() {
    greenhub::Config::new().attach(false).init().unwrap();
    let n = 10_000;
    // Warm-up at the same size: the tables that grow to the peak (the registry's, the
    // scheduler's queues, the stack lists), the coroutine pool, the bounded history.
    for _ in 0..2 {
        round(n);
    }
    let settle = |want_dropped: usize| {
        let until = Instant::now() + Duration::from_secs(30);
        while DROPPED.load(Ordering::SeqCst) < want_dropped && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            DROPPED.load(Ordering::SeqCst),
            want_dropped,
            "a local value holding its own thread's handle is dropped as the thread ends"
        );
    };
    settle(n);
    std::thread::sleep(Duration::from_millis(200));
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    round(n);
    settle(n + n / 2);
    // The workers let go of ended coroutines just after their end: wait for the bytes to
    // come back, bounded.
    let until = Instant::now() + Duration::from_secs(30);
    let grown = loop {
        let grown = LIVE_BYTES.load(Ordering::Relaxed) - before;
        if grown < (n as i64) * 64 || Instant::now() > until {
            break grown;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A state kept alive would hold hundreds of bytes per thread (its record alone is 200).
    assert!(
        grown < (n as i64) * 64,
        "{grown} bytes still held after {n} threads ended: their states leak"
    );
}
