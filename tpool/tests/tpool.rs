//! greenhub-tpool against its promises: results, panics, nesting, deadlines, kills, a full
//! queue, resize, shutdown, fork, Proxy, Unblock, observability and batched wake-ups.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use greenhub::ext::WaitOn;
use greenhub::{spawn, thread::JoinError, with_timeout};
use greenhub_tpool::{Error, Pool, PoolStats, Proxy, Unblock};

fn pool(name: &str, threads: usize) -> Pool {
    Pool::builder().name(name).threads(threads).build().unwrap()
}

/// Polls `cond` (up to 10 s) from the test's OS thread.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What green thread `id` waits on, per the snapshot.
fn waiting_on(id: u64) -> Option<WaitOn> {
    greenhub::inspect::snapshot()
        .threads
        .into_iter()
        .find(|t| t.id == id)
        .and_then(|t| t.waiting_on)
}

/// A gate a pool thread blocks on (an OS-thread wait), opened from the test.
#[derive(Clone)]
struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn new() -> Gate {
        Gate(Arc::new((Mutex::new(false), std::sync::Condvar::new())))
    }
    fn pass(&self) {
        let (m, c) = &*self.0;
        let mut open = m.lock().unwrap();
        while !*open {
            open = c.wait(open).unwrap();
        }
    }
    fn open(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
}

#[test]
fn execute_returns_the_value_to_the_calling_green_thread() {
    let t = spawn(|| greenhub_tpool::execute(|| std::thread::current().name().map(String::from)));
    let ran_on = t.wait().unwrap().unwrap().unwrap();
    assert!(ran_on.starts_with("tpool-tpool-"), "ran on {ran_on}");
}

#[test]
fn a_panic_comes_back_as_an_error_and_the_thread_survives() {
    let p = pool("panics", 1);
    let p2 = p.clone();
    let results = spawn(move || {
        let first = p2.execute(|| -> u32 { panic!("driver exploded") });
        let second = p2.execute(|| std::thread::current().id());
        let third = p2.execute(|| std::thread::current().id());
        (first, second, third)
    })
    .wait()
    .unwrap();
    match results.0 {
        Err(Error::Panicked { message, location }) => {
            assert_eq!(message, "driver exploded");
            assert!(location.unwrap().contains("tpool.rs"));
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
    // The one thread survived and ran both later calls.
    assert_eq!(results.1.unwrap(), results.2.unwrap());
    let stats = p.stats();
    assert_eq!((stats.completed, stats.panicked, stats.threads), (3, 1, 1));
}

#[test]
fn nested_calls_and_os_thread_calls_run_inline() {
    let p = pool("nested", 1);
    let p2 = p.clone();
    // With one thread, a nested call queued behind its parent would deadlock.
    let (outer, inner) = spawn(move || {
        let p3 = p2.clone();
        p2.execute(move || {
            let outer = std::thread::current().id();
            let inner = p3.execute(|| std::thread::current().id()).unwrap();
            (outer, inner)
        })
        .unwrap()
    })
    .wait()
    .unwrap();
    assert_eq!(outer, inner);
    // From a plain OS thread: inline, on the caller's own thread.
    let me = std::thread::current().id();
    assert_eq!(p.execute(move || std::thread::current().id()), Ok(me));
    assert_eq!(p.stats().inline, 2);
}

/// Records on which thread it was dropped.
#[derive(Debug)]
struct DropProbe(Arc<Mutex<Option<String>>>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = std::thread::current().name().map(String::from);
    }
}

#[test]
fn a_deadline_stops_the_wait_and_the_result_is_dropped_on_the_pool_thread() {
    let p = pool("deadline", 2);
    let gate = Gate::new();
    let dropped_on = Arc::new(Mutex::new(None));
    let (p2, g, d) = (p.clone(), gate.clone(), dropped_on.clone());
    let caller = spawn(move || {
        with_timeout(Duration::from_millis(30), || {
            p2.execute(move || {
                g.pass();
                DropProbe(d)
            })
        })
    });
    // The wait ends at the deadline while the call still runs.
    let r = caller.wait().unwrap();
    assert!(matches!(r, Err(Error::TimedOut)), "{r:?}");
    assert_eq!(p.stats().busy, 1);
    assert_eq!(p.stats().timed_out, 1);
    gate.open();
    eventually("the abandoned call completes", || p.stats().completed == 1);
    eventually("its result is dropped", || {
        dropped_on.lock().unwrap().is_some()
    });
    let on = dropped_on.lock().unwrap().clone().unwrap();
    assert!(on.starts_with("tpool-deadline-"), "dropped on {on}");
}

#[test]
fn a_killed_caller_unwinds_and_the_call_runs_to_completion() {
    let p = pool("kill", 1);
    let gate = Gate::new();
    let dropped_on = Arc::new(Mutex::new(None));
    let (p2, g, d) = (p.clone(), gate.clone(), dropped_on.clone());
    let caller = spawn(move || {
        p2.execute(move || {
            g.pass();
            DropProbe(d)
        })
    });
    eventually("the caller waits on the pool", || {
        waiting_on(caller.id())
            == Some(WaitOn::Object {
                object: *greenhub_tpool::CALL_KIND,
                id: p.id(),
            })
    });
    caller.kill();
    assert!(matches!(caller.wait(), Err(JoinError::Killed { .. })));
    gate.open();
    eventually("the result is dropped on the pool thread", || {
        dropped_on.lock().unwrap().is_some()
    });
    assert!(
        dropped_on
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .starts_with("tpool-kill-")
    );
    // The pool's one thread is free again.
    assert_eq!(spawn(move || p.execute(|| 5)).wait().unwrap(), Ok(5));
}

#[test]
fn a_full_queue_makes_callers_wait_in_order_and_honours_deadlines() {
    let p = Pool::builder()
        .name("full")
        .threads(1)
        .queue_capacity(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let call = |i: usize, p: &Pool| {
        let (p, g, o) = (p.clone(), gate.clone(), order.clone());
        spawn(move || {
            p.execute(move || {
                g.pass();
                o.lock().unwrap().push(i);
                i
            })
        })
    };
    // One running, two queued: the queue is full.
    let running = call(0, &p);
    eventually("call 0 runs", || p.stats().busy == 1);
    // Queued one at a time: callers spawned together race on two workers.
    let queued: Vec<_> = (1..3)
        .map(|i| {
            let t = call(i, &p);
            eventually("queued", || p.stats().queued == i);
            t
        })
        .collect();
    // The next callers wait for room, in arrival order.
    let mut waiting = Vec::new();
    for i in 3..6 {
        let t = call(i, &p);
        let (tid, qid) = (t.id(), p.queue_id());
        eventually("the caller waits for room", || {
            waiting_on(tid)
                == Some(WaitOn::Object {
                    object: *greenhub_tpool::QUEUE_KIND,
                    id: qid,
                })
        });
        waiting.push(t);
    }
    assert_eq!(p.stats().waiting_for_room, 3);
    // A caller with a deadline gives up waiting for room; its call never runs.
    let p2 = p.clone();
    let impatient = spawn(move || with_timeout(Duration::from_millis(20), || p2.execute(|| 99)));
    assert!(matches!(impatient.wait().unwrap(), Err(Error::TimedOut)));
    gate.open();
    let mut got = vec![running.wait().unwrap().unwrap()];
    for t in queued.into_iter().chain(waiting) {
        got.push(t.wait().unwrap().unwrap());
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn thousands_of_callers_each_get_their_own_result_exactly_once() {
    let p = pool("many", 16);
    const CALLERS: usize = 2000;
    const CALLS: usize = 10;
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let p = p.clone();
            spawn(move || {
                let mut got = Vec::with_capacity(CALLS);
                for i in 0..CALLS {
                    got.push(p.execute(move || (c, i)).unwrap());
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for (c, t) in callers.into_iter().enumerate() {
        let got = t.wait().unwrap();
        assert_eq!(got, (0..CALLS).map(|i| (c, i)).collect::<Vec<_>>());
        for pair in got {
            assert!(seen.insert(pair), "delivered twice: {pair:?}");
        }
    }
    assert_eq!(seen.len(), CALLERS * CALLS);
    let stats = p.stats();
    assert_eq!(stats.completed, (CALLERS * CALLS) as u64);
    assert_eq!(stats.submitted, (CALLERS * CALLS) as u64);
}

#[test]
fn resizing_under_load_loses_no_call() {
    let p = pool("resize", 4);
    let done = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..200)
        .map(|c| {
            let (p, done) = (p.clone(), done.clone());
            spawn(move || {
                for i in 0..20 {
                    let v = p
                        .execute(move || {
                            std::thread::sleep(Duration::from_micros(50));
                            c * 1000 + i
                        })
                        .unwrap();
                    assert_eq!(v, c * 1000 + i);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut sizes = [1usize, 16, 2, 8, 1, 12].iter().cycle();
    while done.load(Ordering::SeqCst) < 200 * 20 {
        p.resize(*sizes.next().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    for t in callers {
        t.wait().unwrap();
    }
    p.resize(3).unwrap();
    eventually("threads shrink to the size", || p.stats().threads <= 3);
    assert_eq!(p.stats().completed, 4000);
    assert!(matches!(
        p.resize(0),
        Err(Error::InvalidSize { threads: 0, .. })
    ));
    assert_eq!(p.size(), 3);
}

#[test]
fn shutdown_refuses_queued_calls_and_never_hangs() {
    let p = pool("shutdown", 2);
    let gate = Gate::new();
    let start = |p: &Pool, g: &Gate| {
        let (p, g) = (p.clone(), g.clone());
        spawn(move || {
            p.execute(move || {
                g.pass();
                1
            })
        })
    };
    let running: Vec<_> = (0..2).map(|_| start(&p, &gate)).collect();
    eventually("two running", || p.stats().busy == 2);
    let queued: Vec<_> = (0..5).map(|_| start(&p, &gate)).collect();
    eventually("five queued", || p.stats().queued == 5);
    // The running calls are blocked and stay so: shutdown gives up after its timeout.
    let report = p.shutdown(Duration::from_millis(50));
    assert_eq!(report.cancelled, 5);
    assert_eq!(report.still_running, 2);
    for t in queued {
        assert_eq!(t.wait().unwrap(), Err(Error::ShutDown));
    }
    let p2 = p.clone();
    assert_eq!(
        spawn(move || p2.execute(|| 1)).wait().unwrap(),
        Err(Error::ShutDown)
    );
    gate.open();
    for t in running {
        assert_eq!(t.wait().unwrap(), Ok(1));
    }
    eventually("threads end", || p.stats().threads == 0);
    let stats = p.stats();
    assert!(stats.shut_down);
    assert_eq!(stats.cancelled, 5);
}

#[test]
fn a_forked_child_runs_calls_inline_and_the_parent_keeps_working() {
    let p = pool("fork", 2);
    let p2 = p.clone();
    // The pool has threads and the hub runs before the fork.
    assert_eq!(spawn(move || p2.execute(|| 1)).wait().unwrap(), Ok(1));
    // SAFETY: the child only runs code that takes no lock a vanished thread could hold (the
    // inline path and the fork-aware stats), then leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = p.execute(|| 6 * 7) == Ok(42)
            && greenhub_tpool::execute(|| "x") == Ok("x")
            && p.stats().threads == 0;
        // SAFETY: leaves the child at once, without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let t0 = Instant::now();
    let status = loop {
        let mut status = 0;
        // SAFETY: waits for our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break status;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the child hung");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let p2 = p.clone();
    assert_eq!(spawn(move || p2.execute(|| 2)).wait().unwrap(), Ok(2));
    // The parent's pool is intact: its threads (at most its size) still serve calls.
    assert!((1..=2).contains(&p.stats().threads));
}

#[test]
fn proxy_calls_never_overlap_and_all_land() {
    struct Counter {
        inside: AtomicBool,
        total: u64,
    }
    let p = pool("proxy", 8);
    let counter = Proxy::with_pool(
        Counter {
            inside: AtomicBool::new(false),
            total: 0,
        },
        p.clone(),
    );
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let counter = counter.clone();
            spawn(move || {
                for _ in 0..20 {
                    counter
                        .call(|c| {
                            assert!(!c.inside.swap(true, Ordering::SeqCst), "overlap");
                            c.total += 1;
                            std::thread::sleep(Duration::from_micros(20));
                            c.inside.store(false, Ordering::SeqCst);
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in callers {
        t.wait().unwrap();
    }
    assert_eq!(counter.call(|c| c.total), Ok(1000));
    // A caller that gives up still holds its turn until its call ends: no overlap.
    let gate = Gate::new();
    let (c2, g) = (counter.clone(), gate.clone());
    let slow = spawn(move || {
        with_timeout(Duration::from_millis(10), || {
            c2.call(move |c| {
                c.inside.store(true, Ordering::SeqCst);
                g.pass();
                c.inside.store(false, Ordering::SeqCst);
            })
        })
    });
    assert!(
        slow.wait().unwrap().is_err(),
        "the call should have outlived its caller"
    );
    let c3 = counter.clone();
    let next = spawn(move || c3.call(|c| c.inside.load(Ordering::SeqCst)));
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !next.is_done(),
        "the next call started during the abandoned one"
    );
    gate.open();
    assert_eq!(next.wait().unwrap(), Ok(false));
}

#[test]
fn unblock_reads_writes_and_iterates_files() {
    let dir = std::env::temp_dir().join(format!("greenhub-tpool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (p, d) = (path.clone(), data.clone());
    spawn(move || {
        let mut w = Unblock::new(std::fs::File::create(&p).unwrap());
        for piece in d.chunks(1000) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        let mut back = Vec::new();
        Unblock::new(std::fs::File::open(&p).unwrap())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, d);
        let text: String = (0..500).map(|i| format!("line {i}\n")).collect();
        std::fs::write(p.with_extension("txt"), &text).unwrap();
        let file = std::fs::File::open(p.with_extension("txt")).unwrap();
        let lines: Vec<String> = Unblock::new(BufReader::new(file).lines())
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 500);
        assert_eq!(lines[499], "line 499");
        // into_inner flushes what is buffered.
        let mut w = Unblock::new(std::fs::File::create(p.with_extension("w")).unwrap());
        w.write_all(b"kept").unwrap();
        drop(w.into_inner().unwrap());
        assert_eq!(std::fs::read(p.with_extension("w")).unwrap(), b"kept");
    })
    .wait()
    .unwrap();
    // Bytes written and not flushed reach the file when the writer is dropped.
    let p = path.clone();
    spawn(move || {
        let mut w = Unblock::new(std::fs::File::create(&p).unwrap());
        w.write_all(b"tail").unwrap();
    })
    .wait()
    .unwrap();
    eventually("dropped bytes are written", || {
        std::fs::read(&path).unwrap() == b"tail"
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_snapshot_shows_the_pool_its_running_calls_and_sites() {
    let p = pool("observed", 2);
    let gate = Gate::new();
    let (p2, g) = (p.clone(), gate.clone());
    let caller = spawn(move || {
        p2.execute(move || {
            g.pass();
            7
        })
    });
    eventually("the call runs", || p.stats().busy == 1);
    let snap = greenhub::inspect::snapshot();
    let obj = snap.objects.iter().find(|o| o.id == p.id()).unwrap();
    assert_eq!(obj.kind, *greenhub_tpool::CALL_KIND);
    assert_eq!(obj.name.as_deref(), Some("observed"));
    assert_eq!(obj.counts["busy"], 1);
    let detail: PoolStats = serde_json::from_value(obj.detail.clone().unwrap()).unwrap();
    assert_eq!(detail.running.len(), 1);
    assert_eq!(detail.running[0].caller, Some(caller.id()));
    assert!(detail.running[0].site.contains("tpool.rs"));
    assert!(detail.running[0].thread.starts_with("tpool-observed-"));
    let queue = snap.objects.iter().find(|o| o.id == p.queue_id()).unwrap();
    assert_eq!(queue.kind, *greenhub_tpool::QUEUE_KIND);
    gate.open();
    assert_eq!(caller.wait().unwrap(), Ok(7));
    let p3 = p.clone();
    spawn(move || {
        for _ in 0..3 {
            p3.execute(|| ()).unwrap();
        }
        let _ = p3.execute(|| panic!("boom"));
    })
    .wait()
    .unwrap();
    let stats = p.stats();
    assert_eq!(
        (stats.submitted, stats.completed, stats.panicked),
        (5, 5, 1)
    );
    assert_eq!(stats.run_time.count, 5);
    assert!(stats.sites.len() >= 2, "{:?}", stats.sites);
    assert!(stats.sites.iter().all(|s| s.site.contains("tpool.rs")));
    assert_eq!(stats.sites.iter().map(|s| s.completed).sum::<u64>(), 5);
    assert!(stats.running.is_empty());
}

#[test]
fn bad_sizes_are_errors() {
    assert!(matches!(
        Pool::builder().threads(0).build(),
        Err(Error::InvalidSize { threads: 0, .. })
    ));
    assert!(matches!(
        Pool::builder().threads(1_000_000).build(),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        Pool::builder().queue_capacity(0).build(),
        Err(Error::InvalidQueueCapacity)
    ));
}

#[test]
fn results_from_os_thread_producers_are_not_confused() {
    // Green threads and OS threads call the same pool at once.
    let p = pool("mixed", 4);
    let (tx, rx) = mpsc::channel();
    let os: Vec<_> = (0..4)
        .map(|k| {
            let (p, tx) = (p.clone(), tx.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    tx.send(p.execute(move || (k, i)).unwrap()).unwrap();
                }
            })
        })
        .collect();
    let green: Vec<_> = (0..50)
        .map(|k| {
            let p = p.clone();
            spawn(move || {
                (0..40)
                    .map(|i| p.execute(move || (100 + k, i)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (k, t) in green.into_iter().enumerate() {
        assert_eq!(
            t.wait().unwrap(),
            (0..40).map(|i| (100 + k, i)).collect::<Vec<_>>()
        );
    }
    for t in os {
        t.join().unwrap();
    }
    drop(tx);
    assert_eq!(rx.iter().count(), 800);
}

#[test]
fn calls_queued_together_run_at_once_up_to_the_pool_size() {
    // Each call waits until all eight are running: that only happens if the pool starts a
    // thread for every call that no ready thread can take.
    for round in 0..10 {
        let p = pool("together", 8);
        // Warm: a thread or two started, then parked.
        let warm = p.clone();
        spawn(move || {
            for _ in 0..10 {
                warm.execute(|| ()).unwrap();
            }
        })
        .wait()
        .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let arrived = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (p, arrived) = (p.clone(), arrived.clone());
                spawn(move || {
                    p.execute(move || {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        let give_up = Instant::now() + Duration::from_secs(10);
                        while arrived.load(Ordering::SeqCst) < 8 && Instant::now() < give_up {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        arrived.load(Ordering::SeqCst)
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in calls {
            assert_eq!(
                t.wait().unwrap(),
                8,
                "round {round}: calls ran one after another"
            );
        }
    }
}

#[test]
fn an_inspector_resizes_a_pool_through_the_attach_channel() {
    let pool = Pool::builder().name("resized").threads(2).build().unwrap();
    // The runtime, and with it the attach channel, starts with the first green thread.
    spawn(|| ()).wait().unwrap();
    let path = greenhub::inspect::attach::socket_path(std::process::id());
    let t0 = Instant::now();
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "no attach socket: {e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ask = |request: String| {
        (&stream).write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    let answer = ask(format!("resize {} 5\n", pool.id()));
    assert!(answer.contains("resized to 5"), "{answer}");
    assert_eq!(pool.size(), 5);
    // Calls use the new room: five at once, each waiting for all five to have started.
    let started = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (pool, started) = (pool.clone(), started.clone());
            spawn(move || {
                pool.execute(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    while started.load(Ordering::SeqCst) < 5 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
        })
        .collect();
    for c in calls {
        c.wait().unwrap().unwrap();
    }
    let answer = ask(format!("resize {} 0\n", pool.id()));
    assert!(answer.contains("error"), "{answer}");
    assert_eq!(pool.size(), 5, "a refused resize changes nothing");
}
