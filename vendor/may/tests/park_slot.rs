//! `ParkSlot`: a park that loses no unpark and resumes its coroutine exactly once, with wakers
//! on other workers and on plain threads, a condition set by the waker, and cancellation.

#[macro_use]
extern crate may;

use may::coroutine::ParkSlot;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

fn workers() {
    static START: Once = Once::new();
    START.call_once(|| {
        may::config().set_workers(2);
    });
}

/// Two coroutines hand a turn back and forth through each other's slot; each parks until
/// the turn is its own. Lost unparks hang, double resumes corrupt the count.
#[test]
fn a_ping_pong_through_slots_loses_no_turn() {
    workers();
    const ROUNDS: u64 = 20_000;
    for _ in 0..5 {
        let turn = Arc::new(AtomicU64::new(0));
        let slots = Arc::new([ParkSlot::new(), ParkSlot::new()]);
        let players: Vec<_> = (0..2u64)
            .map(|me| {
                let (turn, slots) = (turn.clone(), slots.clone());
                go!(move || {
                    for r in 0..ROUNDS {
                        let mine = 2 * r + me;
                        while turn.load(Ordering::SeqCst) != mine {
                            slots[me as usize].park();
                        }
                        turn.store(mine + 1, Ordering::SeqCst);
                        slots[1 - me as usize].unpark();
                    }
                })
            })
            .collect();
        for p in players {
            p.join().unwrap();
        }
        assert_eq!(turn.load(Ordering::SeqCst), 2 * ROUNDS);
    }
}

/// An unpark that comes before the park makes the park return at once, once.
#[test]
fn an_unpark_before_the_park_is_kept_for_it() {
    workers();
    let slot = Arc::new(ParkSlot::new());
    slot.unpark();
    slot.unpark();
    let s = slot.clone();
    let parks = Arc::new(AtomicUsize::new(0));
    let p = parks.clone();
    let h = go!(move || {
        s.park();
        p.fetch_add(1, Ordering::SeqCst);
        // The second unpark above was not counted twice: this one parks until the next.
        s.park();
        p.fetch_add(1, Ordering::SeqCst);
    });
    while parks.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(parks.load(Ordering::SeqCst), 1, "the second park waits");
    slot.unpark();
    h.join().unwrap();
    assert_eq!(parks.load(Ordering::SeqCst), 2);
}

/// The condition protocol: a waker makes the condition true with a read-modify-write and
/// takes the coroutine; a waiter that parks after it does not stay parked. Wakers run on
/// plain threads and on coroutines, many times over.
#[test]
fn a_waker_that_sets_the_condition_and_takes_the_coroutine_is_never_lost() {
    workers();
    const WAITS: usize = 2_000;
    struct Wait {
        done: AtomicBool,
        slot: ParkSlot,
    }
    let resumed = Arc::new(AtomicUsize::new(0));
    for from_thread in [true, false] {
        let waits: Vec<Arc<Wait>> = (0..WAITS)
            .map(|_| {
                Arc::new(Wait {
                    done: AtomicBool::new(false),
                    slot: ParkSlot::new(),
                })
            })
            .collect();
        let waiters: Vec<_> = waits
            .iter()
            .map(|w| {
                let (w, resumed) = (w.clone(), resumed.clone());
                go!(move || {
                    let wait: &Wait = &w;
                    while !wait.done.load(Ordering::SeqCst) {
                        // SAFETY: the condition reads the `Wait` that owns the slot.
                        unsafe {
                            wait.slot
                                .park_unless(move || wait.done.load(Ordering::SeqCst))
                        };
                    }
                    resumed.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        let wake = move || {
            for w in &waits {
                if !w.done.swap(true, Ordering::SeqCst) {
                    if let Some(parked) = w.slot.take_parked() {
                        parked.schedule();
                    }
                }
            }
        };
        if from_thread {
            std::thread::spawn(wake).join().unwrap();
        } else {
            go!(wake).join().unwrap();
        }
        for w in waiters {
            w.join().unwrap();
        }
    }
    assert_eq!(resumed.load(Ordering::SeqCst), 2 * WAITS);
}

/// A coroutine cancelled while parked in a slot unwinds once the canceller unparks it, and
/// one cancelled before it parks does not park.
#[test]
fn a_cancelled_coroutine_unwinds_from_its_park() {
    workers();
    for early in [false, true] {
        let slot = Arc::new(ParkSlot::new());
        let parked = Arc::new(AtomicBool::new(false));
        let go_on = Arc::new(AtomicBool::new(!early));
        let (s, p, g) = (slot.clone(), parked.clone(), go_on.clone());
        let h = go!(move || {
            while !g.load(Ordering::SeqCst) {
                may::coroutine::yield_now();
            }
            p.store(true, Ordering::SeqCst);
            s.park();
            unreachable!("a cancelled park never returns normally");
        });
        if early {
            unsafe { h.coroutine().cancel() };
            go_on.store(true, Ordering::SeqCst);
        } else {
            while !parked.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            unsafe { h.coroutine().cancel() };
            slot.unpark();
        }
        assert!(h.join().is_err(), "the coroutine unwound");
    }
}

/// A coroutine that ends as soon as it is resumed, letting go of its slot while the worker it
/// left may still be finishing the park: the slot outlives that, and nothing is resumed twice
/// or lost. The slot's last reference goes either with the coroutine or with the waker.
#[test]
fn a_slot_let_go_of_right_after_the_resume_stays_sound() {
    workers();
    const WAITS: usize = 20_000;
    struct Wait {
        done: AtomicBool,
        slot: ParkSlot,
    }
    let resumed = Arc::new(AtomicUsize::new(0));
    for round in 0..WAITS {
        let w = Arc::new(Wait {
            done: AtomicBool::new(false),
            slot: ParkSlot::new(),
        });
        let (mine, r) = (w.clone(), resumed.clone());
        let h = go!(move || {
            {
                let wait: &Wait = &mine;
                while !wait.done.load(Ordering::SeqCst) {
                    // SAFETY: the condition reads the `Wait` that owns the slot.
                    unsafe {
                        wait.slot
                            .park_unless(move || wait.done.load(Ordering::SeqCst))
                    };
                }
            }
            drop(mine);
            r.fetch_add(1, Ordering::SeqCst);
        });
        let wake = move || {
            if !w.done.swap(true, Ordering::SeqCst) {
                if let Some(parked) = w.slot.take_parked() {
                    parked.schedule();
                }
            }
        };
        if round % 2 == 0 {
            wake();
        } else {
            go!(wake).join().unwrap();
        }
        h.join().unwrap();
    }
    assert_eq!(resumed.load(Ordering::SeqCst), WAITS);
}
