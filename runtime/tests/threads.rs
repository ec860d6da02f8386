//! Green threads: spawn, wait, kill, link, panics, names and parents.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use greenhub::{sleep, spawn, thread::Builder, thread::JoinError, thread::spawn_after};

/// Counts drops, to prove destructors ran.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_value_comes_back_to_its_waiter_exactly_once() {
    for round in 0..5 {
        let n = 20_000u64;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                spawn(move || {
                    if i % 7 == 0 {
                        greenhub::yield_now();
                    }
                    i * 3 + round
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for (i, h) in handles.into_iter().enumerate() {
            let v = h.wait().unwrap();
            assert_eq!(v, i as u64 * 3 + round);
            assert!(seen.insert(v), "value {v} delivered twice");
        }
        assert_eq!(seen.len(), n as usize);
    }
}

#[test]
fn green_threads_wait_for_each_other_across_workers() {
    // Waits from green threads on green threads, nested two deep, many at once.
    let outer: Vec<_> = (0..200u64)
        .map(|i| {
            spawn(move || {
                let inner: Vec<_> = (0..10u64)
                    .map(|j| {
                        spawn(move || {
                            sleep(Duration::from_millis(j % 3)).unwrap();
                            i * 100 + j
                        })
                    })
                    .collect();
                inner.into_iter().map(|t| t.wait().unwrap()).sum::<u64>()
            })
        })
        .collect();
    let total: u64 = outer.into_iter().map(|t| t.wait().unwrap()).sum();
    let expected: u64 = (0..200u64)
        .flat_map(|i| (0..10u64).map(move |j| i * 100 + j))
        .sum();
    assert_eq!(total, expected);
}

#[test]
fn builder_sets_name_and_stack_and_current_knows_parent() {
    let parent = Builder::new()
        .name("parent")
        .stack_size(128 * 1024)
        .spawn(|| {
            let me = greenhub::current().unwrap();
            let child = Builder::new()
                .name("child")
                .spawn(|| {
                    let c = greenhub::current().unwrap();
                    (c.id(), c.name().map(String::from), c.parent())
                })
                .unwrap();
            let child_id = child.id();
            let (id, name, parent) = child.wait().unwrap();
            assert_eq!(id, child_id);
            assert_eq!(name.as_deref(), Some("child"));
            (me.id(), me.name().map(String::from), parent, me.parent())
        })
        .unwrap();
    let parent_id = parent.id();
    assert_eq!(parent.name(), Some("parent"));
    let (id, name, childs_parent, own_parent) = parent.wait().unwrap();
    assert_eq!(id, parent_id);
    assert_eq!(name.as_deref(), Some("parent"));
    assert_eq!(childs_parent, Some(parent_id));
    assert_eq!(own_parent, None, "spawned from the test's OS thread");
    assert!(greenhub::current().is_none());
}

#[test]
fn spawn_site_is_the_callers_line() {
    let line = line!() + 1;
    let t = spawn(|| greenhub::current().unwrap().spawn_site().line());
    assert_eq!(t.wait().unwrap(), line);
}

#[test]
fn stack_size_out_of_range_is_an_error_not_a_panic() {
    let err = Builder::new().stack_size(100).spawn(|| ()).unwrap_err();
    assert!(matches!(
        err,
        greenhub::thread::SpawnError::InvalidStackSize(100)
    ));
    assert!(err.to_string().contains("16384"), "{err}");
}

#[test]
fn a_panic_reaches_wait_with_its_message_and_the_process_lives() {
    for i in 0..50 {
        let t = spawn(move || -> u32 { panic!("broken {i}") });
        match t.wait() {
            Err(JoinError::Panicked {
                message, location, ..
            }) => {
                assert_eq!(message, format!("broken {i}"));
                assert!(location.contains("threads.rs"), "{location}");
            }
            other => panic!("expected a panic, got {other:?}"),
        }
    }
    // Still usable afterwards.
    assert_eq!(spawn(|| 1).wait().unwrap(), 1);
}

#[test]
fn kill_unwinds_a_sleeping_thread_and_runs_its_destructors() {
    let drops = Arc::new(AtomicUsize::new(0));
    let n = 500;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let guard = DropCounter(drops.clone());
            spawn(move || {
                let _held = guard;
                sleep(Duration::from_secs(60)).unwrap();
                "finished"
            })
        })
        .collect();
    // Let them all reach their sleep.
    sleep(Duration::from_millis(50)).unwrap();
    let t0 = Instant::now();
    for t in &threads {
        t.kill();
    }
    for t in threads {
        assert!(matches!(t.wait(), Err(JoinError::Killed { .. })));
    }
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "kill must not wait for the sleeps"
    );
    assert_eq!(
        drops.load(Ordering::SeqCst),
        n,
        "every destructor ran exactly once"
    );
}

#[test]
fn kill_before_start_means_the_body_never_runs() {
    let ran = Arc::new(AtomicUsize::new(0));
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..200 {
        let ran2 = ran.clone();
        let guard = DropCounter(drops.clone());
        let t = spawn_after(Duration::from_millis(200), move || {
            let _g = guard;
            ran2.fetch_add(1, Ordering::SeqCst);
        });
        t.kill();
        assert!(matches!(t.wait(), Err(JoinError::Killed { .. })));
    }
    sleep(Duration::from_millis(300)).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        200,
        "the unrun closures were dropped"
    );
}

#[test]
fn kill_from_an_os_thread_and_of_a_thread_waiting_on_a_join() {
    let sleeper = spawn(|| sleep(Duration::from_secs(60)));
    let sleeper_id = sleeper.id();
    let joiner = spawn(move || sleeper.wait().map(|_| ()).map_err(|e| e.to_string()));
    // Poll (not a fixed sleep: a loaded machine may start the joiner late).
    let expected = Some(greenhub::ext::WaitOn::Join { thread: sleeper_id });
    let mut seen = None;
    for _ in 0..1000 {
        let snap = greenhub::inspect::snapshot();
        seen = snap
            .threads
            .iter()
            .find(|t| t.id == joiner.id())
            .and_then(|t| t.waiting_on);
        if seen == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen, expected);
    let os = std::thread::spawn(move || {
        joiner.kill();
        joiner.wait()
    });
    assert!(matches!(os.join().unwrap(), Err(JoinError::Killed { .. })));
}

#[test]
fn a_killed_thread_that_catches_the_unwind_dies_at_its_next_wait() {
    let t = spawn(|| {
        let first = std::panic::catch_unwind(|| sleep(Duration::from_secs(60)));
        assert!(first.is_err(), "the kill unwinds through the sleep");
        // Still killed: the next wait unwinds again.
        let _ = sleep(Duration::from_secs(60));
        "survived"
    });
    std::thread::sleep(Duration::from_millis(20));
    t.kill();
    assert!(matches!(t.wait(), Err(JoinError::Killed { .. })));
}

#[test]
fn kill_after_the_end_changes_nothing() {
    let t = spawn(|| 9);
    t.wait_timeout(Duration::from_secs(5)).unwrap();
    t.kill();
    assert_eq!(t.wait().unwrap(), 9);
}

#[test]
fn wait_timeout_times_out_then_the_thread_finishes() {
    let t = spawn(|| {
        sleep(Duration::from_millis(80)).unwrap();
        5
    });
    assert!(!t.is_done());
    assert_eq!(
        t.wait_timeout(Duration::from_millis(10)),
        Err(greenhub::TimedOut)
    );
    assert!(!t.is_done());
    t.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(t.is_done());
    assert_eq!(t.wait().unwrap(), 5);
}

#[test]
fn link_runs_once_for_every_outcome() {
    let (tx, rx) = mpsc::channel::<String>();
    let ok = spawn(|| 1);
    let tx1 = tx.clone();
    ok.link(move |r| tx1.send(format!("ok:{}", r.unwrap())).unwrap());

    let panicked = spawn(|| -> u32 { panic!("p") });
    let tx2 = tx.clone();
    panicked.link(move |r| tx2.send(format!("panic:{}", r.is_err())).unwrap());

    let killed = spawn(|| sleep(Duration::from_secs(60)));
    let tx3 = tx.clone();
    killed.link(move |r| {
        // A link may wait, even for a killed thread.
        sleep(Duration::from_millis(1)).unwrap();
        let killed = matches!(r, Err(JoinError::Killed { .. }));
        tx3.send(format!("killed:{killed}")).unwrap()
    });
    std::thread::sleep(Duration::from_millis(20));
    killed.kill();

    let mut got: Vec<String> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec!["killed:true", "ok:1", "panic:true"]);
    // The panic was seen by a link, not by wait: wait still returns it.
    assert!(matches!(panicked.wait(), Err(JoinError::Panicked { .. })));
    assert_eq!(ok.wait().unwrap(), 1);
    // And nothing runs twice.
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
}

#[test]
fn link_after_the_end_runs_at_once_and_may_wait() {
    let t = spawn(|| 7u32);
    t.wait_timeout(Duration::from_secs(5)).unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let c = counter.clone();
        t.link(move |r| {
            assert_eq!(r.ok(), Some(&7));
            c.fetch_add(1, Ordering::SeqCst);
        });
    }
    assert_eq!(counter.load(Ordering::SeqCst), 3);
    assert_eq!(t.wait().unwrap(), 7);
}

#[test]
fn a_panicking_link_does_not_disturb_the_outcome() {
    let t = spawn(|| 3u8);
    t.link(|_| panic!("bad callback"));
    t.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(t.wait().unwrap(), 3);
}

#[test]
fn every_waiter_of_one_thread_wakes_at_its_end_and_one_takes_the_value() {
    for round in 0..200u64 {
        let gate: greenhub::Event<()> = greenhub::Event::new();
        let t = {
            let gate = gate.clone();
            Arc::new(spawn(move || {
                gate.wait().unwrap();
                round
            }))
        };
        // Several green threads and an OS thread wait on the one handle at once, some after
        // a wait of theirs timed out (its token stays listed until the next waiter comes).
        let ready = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..6)
            .map(|i| {
                let (t, ready) = (t.clone(), ready.clone());
                spawn(move || {
                    if i % 2 == 0 {
                        // The gate opens only once every waiter is past this line.
                        assert!(t.wait_timeout(Duration::from_millis(1)).is_err());
                    }
                    ready.fetch_add(1, Ordering::SeqCst);
                    t.wait_timeout(Duration::from_secs(60)).is_ok()
                })
            })
            .collect();
        let os = {
            let t = t.clone();
            std::thread::spawn(move || t.wait_timeout(Duration::from_secs(60)).is_ok())
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready.load(Ordering::SeqCst) < 6 {
            assert!(
                Instant::now() < deadline,
                "the waiters of round {round} never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Most waiters list themselves before the end (the others find it ended).
        std::thread::sleep(Duration::from_millis(2));
        gate.set(()).unwrap();
        for w in waiters {
            assert!(w.wait().unwrap(), "a waiter of round {round} was not woken");
        }
        assert!(
            os.join().unwrap(),
            "the OS thread of round {round} was not woken"
        );
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let t = t.clone();
                spawn(move || t.wait())
            })
            .collect();
        let results: Vec<_> = takers.into_iter().map(|w| w.wait().unwrap()).collect();
        let values: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(
            values,
            vec![&round],
            "the value of round {round} was lost or doubled"
        );
        assert_eq!(
            results
                .iter()
                .filter(|r| matches!(r, Err(JoinError::AlreadyJoined { .. })))
                .count(),
            2
        );
    }
}

#[test]
fn links_stress_every_callback_exactly_once() {
    let count = Arc::new(AtomicUsize::new(0));
    let n = 2000;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let t = spawn(move || {
                if i % 2 == 0 {
                    greenhub::yield_now();
                }
                i
            });
            let c = count.clone();
            t.link(move |r| {
                assert_eq!(r.ok(), Some(&i));
                c.fetch_add(1, Ordering::SeqCst);
            });
            t
        })
        .collect();
    for t in threads {
        t.wait().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(count.load(Ordering::SeqCst), n);
}

#[test]
fn spawn_after_waits_its_delay() {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..100)
        .map(|i| spawn_after(Duration::from_millis(30 + i % 5), move || (i, t0.elapsed())))
        .collect();
    for t in threads {
        let (i, at) = t.wait().unwrap();
        assert!(
            at >= Duration::from_millis(30 + i % 5),
            "{i} started at {at:?}"
        );
    }
}

#[test]
fn sleep_zero_and_yield_let_others_run() {
    // Two threads that only yield still both make progress.
    let turns = Arc::new(AtomicUsize::new(0));
    let a = {
        let turns = turns.clone();
        spawn(move || {
            for _ in 0..1000 {
                turns.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::ZERO).unwrap();
            }
        })
    };
    let b = {
        let turns = turns.clone();
        spawn(move || {
            for _ in 0..1000 {
                turns.fetch_add(1, Ordering::SeqCst);
                greenhub::yield_now();
            }
        })
    };
    a.wait().unwrap();
    b.wait().unwrap();
    assert_eq!(turns.load(Ordering::SeqCst), 2000);
}

#[test]
fn call_after_fires_once_and_cancel_prevents_it() {
    // Every third timer is far off, so that cancelling it surely comes first however busy
    // the machine is; the rest are due soon and race their cancel: whichever wins, a
    // cancelled timer never fires and a fired one cannot be cancelled.
    let fired = Arc::new(AtomicUsize::new(0));
    let mut timers = Vec::new();
    for i in 0..300u64 {
        let f = fired.clone();
        let due = if i % 3 == 0 {
            Duration::from_secs(600)
        } else {
            Duration::from_millis(20 + i % 10)
        };
        let timer = greenhub::call_after(due, move || {
            // The function runs in a green thread and may wait.
            sleep(Duration::from_millis(1)).unwrap();
            f.fetch_add(1, Ordering::SeqCst);
        });
        timers.push(timer);
    }
    let mut cancelled = 0;
    for (i, t) in timers.iter().enumerate() {
        if i % 3 == 0 {
            assert!(t.is_pending(), "a timer due in ten minutes");
            assert!(t.cancel());
            assert!(!t.cancel(), "a second cancel finds nothing");
            cancelled += 1;
        } else if i % 3 == 1 && t.cancel() {
            assert!(!t.cancel(), "a second cancel finds nothing");
            cancelled += 1;
        }
    }
    let expected = 300 - cancelled;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fired.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Give a cancelled one the chance to misfire.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fired.load(Ordering::SeqCst), expected);
    for t in &timers {
        assert!(!t.is_pending());
        assert!(!t.cancel(), "fired or cancelled timers cannot be cancelled");
    }
}

#[test]
fn os_threads_and_green_threads_interoperate() {
    // OS threads spawn green threads and wait for them; green threads wait for each other.
    let os: Vec<_> = (0..8)
        .map(|k| {
            std::thread::spawn(move || {
                let ts: Vec<_> = (0..100u64).map(|i| spawn(move || i + k)).collect();
                ts.into_iter().map(|t| t.wait().unwrap()).sum::<u64>()
            })
        })
        .collect();
    let total: u64 = os.into_iter().map(|t| t.join().unwrap()).sum();
    let expected: u64 = (0..8u64)
        .map(|k| (0..100u64).map(|i| i + k).sum::<u64>())
        .sum();
    assert_eq!(total, expected);
}

#[test]
fn detached_threads_woken_as_they_park_finish_without_hanging_a_worker() {
    // A green thread whose handle is gone, woken in the instant it parks, resumes inside its
    // own park's bookkeeping; when it then finishes, dropping the last handle to itself there
    // used to spin its worker forever. Many detached threads woken from OS threads and from
    // each other make that instant likely; the count proves every one of them finished.
    let _watchdog = common::watchdog(Duration::from_secs(60));
    const ROUNDS: usize = 200;
    const PER: usize = 100;
    let finished = Arc::new(AtomicUsize::new(0));
    for _ in 0..ROUNDS {
        let q: greenhub::Queue<()> = greenhub::Queue::unbounded();
        for _ in 0..PER {
            let (q, finished) = (q.clone(), finished.clone());
            drop(spawn(move || {
                let _ = q.get();
                finished.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let feeders: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for _ in 0..PER / 2 {
                        q.put(()).unwrap();
                    }
                })
            })
            .collect();
        for f in feeders {
            f.join().unwrap();
        }
    }
    let t0 = Instant::now();
    while finished.load(Ordering::SeqCst) < ROUNDS * PER {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} of {} detached threads finished",
            finished.load(Ordering::SeqCst),
            ROUNDS * PER
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn wait_any_returns_a_thread_that_ended_and_leaves_the_values_in_place() {
    for round in 0..50u64 {
        let threads: Vec<_> = (0..10u64)
            .map(|i| {
                greenhub::spawn(move || {
                    // One of them ends at once, the others much later.
                    if i == round % 10 {
                        return i;
                    }
                    let _ = sleep(Duration::from_secs(30));
                    i
                })
            })
            .collect();
        let first = greenhub::thread::wait_any(&threads, None).unwrap();
        assert_eq!(first as u64, round % 10, "round {round}");
        assert!(threads[first].is_done());
        assert_eq!(threads[first].wait().unwrap(), round % 10);
        greenhub::thread::kill_all(&threads, Some(Duration::from_secs(30))).unwrap();
        for (i, t) in threads.iter().enumerate() {
            if i != first {
                assert!(matches!(
                    t.wait(),
                    Err(greenhub::thread::JoinError::Killed { .. })
                ));
            }
        }
    }
}

#[test]
fn wait_any_join_all_and_kill_and_wait_honour_their_timeouts() {
    let sleepers: Vec<_> = (0..20)
        .map(|_| greenhub::spawn(|| sleep(Duration::from_secs(60)).is_ok()))
        .collect();
    assert_eq!(
        greenhub::thread::wait_any(&sleepers, Some(Duration::from_millis(20))),
        Err(greenhub::TimedOut)
    );
    assert_eq!(
        greenhub::thread::join_all(&sleepers, Some(Duration::from_millis(20))),
        Err(greenhub::TimedOut)
    );
    // Under a deadline scope too, from a green thread.
    let probe = greenhub::spawn(|| {
        let t = greenhub::spawn(|| sleep(Duration::from_secs(60)).is_ok());
        let r = greenhub::with_timeout(Duration::from_millis(20), || {
            greenhub::thread::join_all(std::slice::from_ref(&t), None)
        });
        t.kill_and_wait(Duration::from_secs(30)).unwrap();
        assert!(t.is_done());
        r
    });
    assert_eq!(probe.wait().unwrap(), Err(greenhub::TimedOut));
    greenhub::thread::kill_all(&sleepers, Some(Duration::from_secs(30))).unwrap();
    assert!(sleepers.iter().all(|t| t.is_done()));
    assert_eq!(
        greenhub::thread::wait_any::<()>(&[], None),
        Err(greenhub::TimedOut),
        "nothing to wait for"
    );
    // join_all on threads that all end gives every value back afterwards.
    let workers: Vec<_> = (0..100u64)
        .map(|i| {
            greenhub::spawn(move || {
                sleep(Duration::from_millis(i % 7)).unwrap();
                i
            })
        })
        .collect();
    greenhub::thread::join_all(&workers, None).unwrap();
    let values: Vec<u64> = workers.iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(values, (0..100).collect::<Vec<_>>());
}

#[test]
fn value_links_run_on_values_and_error_links_on_errors_only() {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel::<String>();
    for round in 0..100u32 {
        let outcome = round % 3;
        let t = greenhub::spawn(move || match outcome {
            0 => round,
            1 => panic!("boom {round}"),
            _ => {
                let _ = sleep(Duration::from_secs(60));
                round
            }
        });
        let (v, e) = (tx.clone(), tx.clone());
        t.link_value(move |x| v.send(format!("value {x}")).unwrap());
        t.link_error(move |err| e.send(format!("error {err}")).unwrap());
        if outcome == 2 {
            t.kill();
        }
        let said = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        match outcome {
            0 => assert_eq!(said, format!("value {round}")),
            1 => assert!(said.starts_with("error") && said.contains("boom"), "{said}"),
            _ => assert!(
                said.starts_with("error") && said.contains("killed"),
                "{said}"
            ),
        }
        // Exactly one of the two ran.
        assert!(rx.recv_timeout(Duration::from_millis(20)).is_err());
        let _ = t.wait();
    }
}

/// A thread's value nobody can claim any more (its handle is gone) is dropped when the thread
/// ends, or when the handle goes after the end: not kept for as long as anything still refers
/// to the thread, such as an event that still lists a wait of it that timed out.
#[test]
fn an_unclaimed_value_is_dropped_at_the_end_even_while_an_event_lists_an_old_wait() {
    for handle_outlives_thread in [false, true] {
        for _ in 0..50 {
            let event: Arc<greenhub::Event<()>> = Arc::new(greenhub::Event::new());
            let drops = Arc::new(AtomicUsize::new(0));
            let (e, d) = (event.clone(), drops.clone());
            let t = spawn(move || {
                // Times out; the event keeps the stale wait (and so a reference to this
                // thread) in its list until it is set or its list is swept.
                assert!(e.wait_timeout(Duration::from_millis(1)).is_err());
                DropCounter(d)
            });
            if handle_outlives_thread {
                t.wait_timeout(Duration::from_secs(30))
                    .expect("the thread ends");
            }
            drop(t);
            let deadline = Instant::now() + Duration::from_secs(30);
            while drops.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                drops.load(Ordering::SeqCst),
                1,
                "the value is dropped once the thread has ended and its handle is gone"
            );
            assert!(!event.is_set());
        }
    }
}
