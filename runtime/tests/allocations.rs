//! A wait allocates nothing: a green thread reuses its wake token from one wait to the next
//! (see `fresh_token` in core/wait.rs). Alone in its binary: it counts every allocation of the
//! process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the one worker thread: only what runs there is counted (the monitor and the
    /// other runtime threads allocate for their own work).
    static WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// SAFETY: forwards to the system allocator, counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WORKER.with(|w| w.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
fn waits_and_wakes_allocate_nothing() {
    greenhub::Config::new()
        .workers(1)
        .attach(false)
        .init()
        .unwrap();
    // Two semaphores, one each way: every round trip is a wait and a wake on each side.
    let ping = greenhub::Semaphore::new(0);
    let pong = greenhub::Semaphore::new(0);
    let play = |rounds: u64| {
        let (ping2, pong2) = (ping.clone(), pong.clone());
        let echo = greenhub::spawn(move || {
            for _ in 0..rounds {
                ping2.acquire().unwrap().forget();
                pong2.release().unwrap();
            }
        });
        let (ping3, pong3) = (ping.clone(), pong.clone());
        let driver = greenhub::spawn(move || {
            WORKER.with(|w| w.set(true));
            // Warm up first (wait lists grow once), then count.
            for _ in 0..100 {
                ping3.release().unwrap();
                pong3.acquire().unwrap().forget();
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for _ in 100..rounds {
                ping3.release().unwrap();
                pong3.acquire().unwrap().forget();
            }
            ALLOCATIONS.load(Ordering::Relaxed) - before
        });
        let counted = driver.wait().unwrap();
        echo.wait().unwrap();
        counted
    };
    let rounds = 20_000;
    let counted = play(rounds);
    // Each round trip is two waits and two wakes. A token made per wait would be two
    // allocations per round trip; what remains is `may`'s run queue taking a new block of
    // slots now and then (one per few dozen pushes), as bare `may` does.
    assert!(
        counted < rounds / 4,
        "{counted} allocations in {rounds} round trips: a wait allocates"
    );
}
