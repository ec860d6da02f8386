//! The live registry: what a snapshot shows, and that it stays bounded.

use std::time::{Duration, Instant};

use greenhub::ext::{FdWatch, Interest, ObjectKind, WaitOn, Waiter};
use greenhub::inspect::{Outcome, Snapshot, ThreadState, TimerKindInfo, snapshot};
use greenhub::{sleep, spawn, thread::Builder, thread::spawn_after, with_timeout};

/// Polls snapshots until `check` accepts one (the registry is eventually consistent with
/// threads that are still on their way to a wait).
fn snapshot_where(check: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = snapshot();
        if check(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_waiting_thread_shows_what_it_waits_on_since_when_and_until_when() {
    let line = line!() + 3;
    let t = Builder::new()
        .name("sleeper")
        .spawn(|| sleep(Duration::from_secs(30)))
        .unwrap();
    let id = t.id();
    let s = snapshot_where(|s| {
        s.threads
            .iter()
            .any(|th| th.id == id && th.state == ThreadState::Waiting)
    });
    let th = s.threads.iter().find(|th| th.id == id).unwrap();
    assert_eq!(th.name.as_deref(), Some("sleeper"));
    assert_eq!(th.waiting_on, Some(WaitOn::Sleep));
    assert!(
        th.spawn_site.contains(&format!("registry.rs:{line}")),
        "{}",
        th.spawn_site
    );
    let remaining = th.deadline_in_us.expect("a sleep has a deadline");
    assert!(
        remaining > 20_000_000 && remaining <= 30_000_000,
        "{remaining}"
    );
    assert!(th.switches >= 1);
    // Its sleep is a pending timer owned by it.
    let timer = s.timers.iter().find(|tm| tm.owner == Some(id)).unwrap();
    assert_eq!(timer.kind, TimerKindInfo::Sleep);
    assert!(timer.due_in_us > 20_000_000);
    t.kill();
    assert!(t.wait().is_err());
    let s = snapshot();
    assert!(
        s.threads.iter().all(|th| th.id != id),
        "a killed thread leaves the live table"
    );
    assert!(
        s.timers.iter().all(|tm| tm.owner != Some(id)),
        "and its timer goes with it"
    );
}

#[test]
fn waits_on_objects_joins_and_descriptors_are_named() {
    let object = spawn(|| {
        Waiter::new(
            WaitOn::Object {
                object: ObjectKind::QUEUE,
                id: 4242,
            },
            Some(Duration::from_secs(30)),
        )
        .wait()
    });
    let object_id = object.id();
    let fd = spawn(|| {
        let _watch = FdWatch::new(0, Interest::Read);
        Waiter::new(
            WaitOn::Fd {
                fd: 0,
                interest: Interest::Read,
            },
            Some(Duration::from_secs(30)),
        )
        .wait()
    });
    let fd_id = fd.id();
    let target = spawn(|| sleep(Duration::from_secs(30)));
    let target_id = target.id();
    let joiner = spawn(move || target.wait().is_ok());
    let joiner_id = joiner.id();

    let s = snapshot_where(|s| {
        [object_id, fd_id, joiner_id].iter().all(|id| {
            s.threads
                .iter()
                .any(|t| t.id == *id && t.state == ThreadState::Waiting)
        })
    });
    let find = |id| s.threads.iter().find(|t| t.id == id).unwrap();
    assert_eq!(
        find(object_id).waiting_on,
        Some(WaitOn::Object {
            object: ObjectKind::QUEUE,
            id: 4242
        })
    );
    assert_eq!(
        find(fd_id).waiting_on,
        Some(WaitOn::Fd {
            fd: 0,
            interest: Interest::Read
        })
    );
    assert_eq!(
        find(joiner_id).waiting_on,
        Some(WaitOn::Join { thread: target_id })
    );
    let d = s
        .descriptors
        .iter()
        .find(|d| d.owner == Some(fd_id))
        .expect("the descriptor wait is registered");
    assert_eq!((d.fd, d.interest), (0, Interest::Read));

    for t in [object, fd] {
        t.kill();
        assert!(t.wait().is_err());
    }
    joiner.kill();
    assert!(joiner.wait().is_err());
    assert!(
        snapshot()
            .descriptors
            .iter()
            .all(|d| d.owner != Some(fd_id))
    );
}

#[test]
fn every_kind_of_timer_is_listed_with_owner_and_site() {
    let call = greenhub::call_after(Duration::from_secs(30), || {});
    let later = spawn_after(Duration::from_secs(30), || 1);
    let later_id = later.id();
    let scoped = spawn(|| with_timeout(Duration::from_secs(30), || sleep(Duration::from_secs(60))));
    let scoped_id = scoped.id();
    // Tables are read one after another: wait for a snapshot that shows the scoped thread in
    // both, asleep under its deadline.
    let s = snapshot_where(|s| {
        s.timers
            .iter()
            .any(|t| t.kind == TimerKindInfo::Deadline && t.owner == Some(scoped_id))
            && s.threads
                .iter()
                .any(|t| t.id == scoped_id && t.deadline_in_us.is_some())
    });
    let call_timer = s.timers.iter().find(|t| t.id == call.id()).unwrap();
    assert_eq!(call_timer.kind, TimerKindInfo::CallAfter);
    assert!(
        call_timer.site.contains("registry.rs"),
        "{}",
        call_timer.site
    );
    let spawn_timer = s
        .timers
        .iter()
        .find(|t| t.kind == TimerKindInfo::SpawnAfter && t.owner == Some(later_id))
        .unwrap();
    assert!(spawn_timer.due_in_us > 20_000_000);
    let th = s.threads.iter().find(|t| t.id == later_id).unwrap();
    assert_eq!(
        th.state,
        ThreadState::Scheduled,
        "not started yet, but alive"
    );
    let deadline = s
        .timers
        .iter()
        .find(|t| t.kind == TimerKindInfo::Deadline && t.owner == Some(scoped_id))
        .unwrap();
    assert!(deadline.due_in_us > 20_000_000);
    // The scoped thread's sleep shows the scope's (earlier) deadline.
    let sth = s.threads.iter().find(|t| t.id == scoped_id).unwrap();
    let until = sth.deadline_in_us.unwrap();
    assert!(until <= 30_000_000, "{until}");

    assert!(call.cancel());
    later.kill();
    scoped.kill();
    let _ = later.wait();
    let _ = scoped.wait();
    let s = snapshot();
    assert!(s.timers.iter().all(|t| t.id != call.id()));
    assert!(
        s.timers
            .iter()
            .all(|t| t.owner != Some(later_id) && t.owner != Some(scoped_id))
    );
}

#[test]
fn finished_threads_keep_their_outcome_for_a_while() {
    let ok = spawn(|| 1);
    let ok_id = ok.id();
    ok.wait().unwrap();
    let bad = spawn(|| -> u8 { panic!("kaboom") });
    let bad_id = bad.id();
    let _ = bad.wait();
    let dead = spawn(|| sleep(Duration::from_secs(30)));
    let dead_id = dead.id();
    dead.kill();
    let _ = dead.wait();
    let s = snapshot();
    let outcome = |id| {
        s.finished
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.outcome.clone())
    };
    assert_eq!(outcome(ok_id), Some(Outcome::Returned));
    assert_eq!(
        outcome(bad_id),
        Some(Outcome::Panicked {
            message: "kaboom".into()
        })
    );
    assert_eq!(outcome(dead_id), Some(Outcome::Killed));
}

#[test]
fn the_registry_stays_bounded_however_many_threads_come_and_go() {
    let before = snapshot();
    for _ in 0..5 {
        let ts: Vec<_> = (0..10_000).map(|i| spawn(move || i)).collect();
        for t in ts {
            t.wait().unwrap();
        }
    }
    let after = snapshot();
    // Default history: 1024 entries (64 shards of 16).
    assert!(after.finished.len() <= 1024, "{}", after.finished.len());
    assert!(after.totals.spawned >= before.totals.spawned + 50_000);
    // None of the 50,000 is still listed as live (other tests' threads may be).
    let max_id = after.threads.iter().map(|t| t.id).max().unwrap_or(0);
    let ours_alive = after
        .threads
        .iter()
        .filter(|t| {
            t.spawn_site.contains("registry.rs")
                && t.id > max_id.saturating_sub(50_000)
                && t.name.as_deref() != Some("churn")
        })
        .count();
    assert!(ours_alive <= 20, "{ours_alive} short threads still live");
}

#[test]
fn switches_are_counted() {
    let t = spawn(|| {
        for _ in 0..100 {
            greenhub::yield_now();
        }
        sleep(Duration::from_secs(30)).ok();
    });
    let id = t.id();
    let s = snapshot_where(|s| {
        s.threads
            .iter()
            .any(|th| th.id == id && th.state == ThreadState::Waiting)
    });
    let th = s.threads.iter().find(|th| th.id == id).unwrap();
    assert!(th.switches >= 101, "{}", th.switches);
    t.kill();
    let _ = t.wait();
}

#[test]
fn the_total_of_switches_never_goes_backwards_while_threads_end() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const BATCHES: u64 = 40;
    let batches = Arc::new(AtomicU64::new(0));
    let churn = {
        let batches = batches.clone();
        std::thread::spawn(move || {
            for _ in 0..BATCHES {
                let batch: Vec<_> = (0..50)
                    .map(|_| {
                        Builder::new()
                            .name("churn")
                            .spawn(|| {
                                for _ in 0..20 {
                                    greenhub::yield_now();
                                }
                            })
                            .unwrap()
                    })
                    .collect();
                for t in batch {
                    t.wait().unwrap();
                }
                batches.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Snapshots taken all the while threads start, switch and end.
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    let mut taken = 0;
    while batches.load(Ordering::SeqCst) < BATCHES && Instant::now() < give_up {
        let snap = snapshot();
        let total = snap.totals.switches;
        assert!(
            total >= last,
            "snapshot {taken}: {total} switches after {last} ({} live threads)",
            snap.threads.len()
        );
        last = total;
        taken += 1;
    }
    churn.join().unwrap();
    // 40 batches of 50 threads, 20 yields each.
    assert!(snapshot().totals.switches >= BATCHES * 50 * 20);
    assert!(taken > 10, "only {taken} snapshots overlapped the churn");
}

#[test]
fn run_info_is_a_tree_by_parent() {
    let parent = Builder::new()
        .name("tree-parent")
        .spawn(|| {
            let child = Builder::new()
                .name("tree-child")
                .spawn(|| sleep(Duration::from_secs(30)))
                .unwrap();
            let _ = child.wait();
        })
        .unwrap();
    let pid = parent.id();
    // Both settled: the child asleep and the parent waiting for it (the parent may still be
    // on its way to the join when the child already sleeps).
    let s = snapshot_where(|s| {
        let waiting = |f: &dyn Fn(&greenhub::inspect::ThreadInfo) -> bool| {
            s.threads
                .iter()
                .any(|t| f(t) && t.state == ThreadState::Waiting)
        };
        waiting(&|t| t.parent == Some(pid)) && waiting(&|t| t.id == pid)
    });
    let dump = s.format_run_info();
    let lines: Vec<&str> = dump.lines().collect();
    let p = lines
        .iter()
        .position(|l| l.contains("\"tree-parent\""))
        .unwrap_or_else(|| panic!("{dump}"));
    let c = lines
        .iter()
        .position(|l| l.contains("\"tree-child\""))
        .unwrap_or_else(|| panic!("{dump}"));
    assert_eq!(
        c,
        p + 1,
        "the child is listed right under its parent:\n{dump}"
    );
    let indent = |l: &str| l.len() - l.trim_start().len();
    assert_eq!(indent(lines[c]), indent(lines[p]) + 2, "{dump}");
    assert!(lines[p].contains("waiting on join #"), "{}", lines[p]);
    assert!(lines[c].contains("waiting on sleep"), "{}", lines[c]);
    parent.kill();
    let _ = parent.wait();
}

#[test]
fn snapshots_round_trip_through_json_with_a_schema_version() {
    let t = spawn(|| sleep(Duration::from_secs(30)));
    let s = snapshot();
    let json = serde_json::to_string(&s).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["schema_version"], greenhub::inspect::SCHEMA_VERSION);
    assert!(value["threads"].is_array());
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    t.kill();
    let _ = t.wait();
}

#[test]
fn run_info_names_the_object_a_thread_waits_on() {
    let jobs: greenhub::Queue<u32> = greenhub::Queue::unbounded().named("jobs");
    let anonymous: greenhub::Queue<u32> = greenhub::Queue::unbounded();
    let (q1, q2) = (jobs.clone(), anonymous.clone());
    let named = spawn(move || q1.get());
    let unnamed = spawn(move || q2.get());
    let s = snapshot_where(|s| {
        [named.id(), unnamed.id()].iter().all(|id| {
            s.threads
                .iter()
                .any(|t| t.id == *id && t.state == ThreadState::Waiting)
        })
    });
    let find = |id: u64| s.threads.iter().find(|t| t.id == id).unwrap().clone();
    let (a, b) = (find(named.id()), find(unnamed.id()));
    assert_eq!(a.waiting_on_name.as_deref(), Some("jobs"));
    assert!(
        a.describe()
            .contains(&format!("waiting on queue \"jobs\" #{}", jobs.id())),
        "{}",
        a.describe()
    );
    assert_eq!(b.waiting_on_name, None);
    assert!(
        b.describe()
            .contains(&format!("waiting on queue #{}", anonymous.id())),
        "{}",
        b.describe()
    );
    jobs.put(1).unwrap();
    anonymous.put(2).unwrap();
    assert_eq!(named.wait().unwrap(), Ok(1));
    assert_eq!(unnamed.wait().unwrap(), Ok(2));
}

#[test]
fn spawn_and_end_counts_and_live_stacks_add_up_while_threads_come_and_go_everywhere() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const SPAWNERS: usize = 4;
    const EACH: usize = 2_000;
    let before = snapshot();
    let done = Arc::new(AtomicBool::new(false));
    // Spawns from plain OS threads, and from green threads on the workers (each thread spawns
    // a child and waits for it): spawns and ends are counted on many threads at once.
    let spawners: Vec<_> = (0..SPAWNERS)
        .map(|_| {
            std::thread::spawn(|| {
                for round in 0..EACH / 100 {
                    let batch: Vec<_> = (0..50)
                        .map(|i| spawn(move || spawn(move || round * i).wait().unwrap()))
                        .collect();
                    for t in batch {
                        t.wait().unwrap();
                    }
                }
            })
        })
        .collect();
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut last = (0, 0);
            let mut live_before = 0;
            let mut taken = 0u32;
            while !done.load(Ordering::SeqCst) {
                let s = snapshot();
                let (spawned, finished) = (s.totals.spawned, s.totals.finished);
                assert!(
                    spawned >= last.0 && finished >= last.1,
                    "totals went backwards: {last:?} -> {:?}",
                    (spawned, finished)
                );
                // A snapshot reads the live stacks after its totals, so they are bounded by
                // the spawns the next snapshot counts (a count that went below zero, or one
                // never given back, shows as more).
                assert!(
                    live_before as u64 <= spawned,
                    "{live_before} live stacks, then {spawned} spawns ever"
                );
                live_before = s.runtime.live_stacks;
                last = (spawned, finished);
                taken += 1;
            }
            taken
        })
    };
    for s in spawners {
        s.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(watcher.join().unwrap() > 0);
    let after = snapshot();
    let n = (SPAWNERS * EACH) as u64;
    assert!(after.totals.spawned >= before.totals.spawned + n);
    assert!(after.totals.finished >= before.totals.finished + n);
    // Parked threads hold their stacks: the count sees at least these (other tests' threads
    // may add to it).
    let sleepers: Vec<_> = (0..100)
        .map(|_| spawn(|| sleep(Duration::from_secs(60))))
        .collect();
    let s = snapshot_where(|s| s.runtime.live_stacks >= 100);
    assert!(s.runtime.live_stacks >= 100, "{}", s.runtime.live_stacks);
    for t in &sleepers {
        t.kill();
    }
    for t in sleepers {
        let _ = t.wait();
    }
    // Once every stack is given back, the count is no more than the threads still alive
    // (other tests' included): none was counted twice or lost.
    let s = snapshot_where(|s| s.runtime.live_stacks <= s.threads.len());
    assert!(
        s.runtime.live_stacks <= s.threads.len(),
        "{} live stacks with {} threads alive",
        s.runtime.live_stacks,
        s.threads.len()
    );
}
