//! `Select`: one wait on several things. A queue branch takes exactly one item and only when
//! it wins (under timeouts, kills and competing getters), every kind of branch fires, waits
//! are bounded, and the snapshot shows one wait on the whole set.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub::ext::WaitOn;
use greenhub::net::UnixStream;
use greenhub::queue::GetError;
use greenhub::select::SelectError;
use greenhub::{Event, Queue, Select, spawn, with_timeout};

/// Waits (polling, up to 10 s) until green thread `id` parks on a select, and returns the
/// select's entry in the snapshot.
fn parked_select(id: u64) -> greenhub::inspect::ObjectInfo {
    let t0 = Instant::now();
    loop {
        if let Some(WaitOn::Object { object, id: sel }) = common::waiting_on(id)
            && object.name() == "select"
        {
            return common::object(sel);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "#{id} never parked on a select"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_item_is_taken_exactly_once_by_selects_racing_timeouts_kills_and_plain_getters() {
    let _watchdog = common::watchdog(Duration::from_secs(120));
    const PRODUCERS: u64 = 20;
    const PER: u64 = 2_000;
    const N: u64 = PRODUCERS * PER;
    let a: Queue<u64> = Queue::bounded(16).named("a");
    let b: Queue<u64> = Queue::unbounded().named("b");
    let got = Arc::new(Mutex::new(Vec::<u64>::new()));

    // Selects over both queues, with short timeouts that race the puts.
    let consume = {
        let (a, b, got) = (a.clone(), b.clone(), got.clone());
        move |seed: u64| {
            let mut closed = [false, false];
            let mut turn = seed;
            while !(closed[0] && closed[1]) {
                turn = turn
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut sel = Select::new();
                let ka = (!closed[0]).then(|| sel.get(&a));
                let kb = (!closed[1]).then(|| sel.get(&b));
                match sel.wait_timeout(Duration::from_micros((turn >> 33) % 800)) {
                    Err(SelectError::TimedOut) => continue,
                    Err(e) => panic!("{e}"),
                    Ok(_) => {}
                }
                for (k, c) in [(ka, 0), (kb, 1)] {
                    match k.and_then(|k| k.take()) {
                        Some(Ok(v)) => got.lock().unwrap().push(v),
                        Some(Err(GetError::Closed)) => closed[c] = true,
                        Some(Err(e)) => panic!("{e}"),
                        None => {}
                    }
                }
            }
        }
    };
    let selects: Vec<_> = (0..40)
        .map(|i| {
            spawn({
                let c = consume.clone();
                move || c(i)
            })
        })
        .collect();
    let doomed: Vec<_> = (0..20)
        .map(|i| {
            spawn({
                let c = consume.clone();
                move || c(100 + i)
            })
        })
        .collect();
    let os: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn({
                let c = consume.clone();
                move || c(200 + i)
            })
        })
        .collect();
    // Plain getters on one of the queues compete with the selects.
    let plain: Vec<_> = (0..5)
        .map(|_| {
            let (b, got) = (b.clone(), got.clone());
            spawn(move || {
                while let Ok(v) = b.get() {
                    got.lock().unwrap().push(v);
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (a, b) = (a.clone(), b.clone());
            spawn(move || {
                for i in 0..PER {
                    let v = p * PER + i;
                    if v.is_multiple_of(2) {
                        a.put(v).unwrap()
                    } else {
                        b.put(v).unwrap()
                    }
                    if i.is_multiple_of(64) {
                        greenhub::yield_now();
                    }
                }
            })
        })
        .collect();
    // Kills land while the doomed ones are parked, arming or holding a hand-off.
    for t in &doomed {
        greenhub::sleep(Duration::from_micros(300)).unwrap();
        t.kill();
    }
    for p in producers {
        p.wait().unwrap();
    }
    a.close();
    b.close();
    for t in selects.into_iter().chain(plain) {
        t.wait().unwrap();
    }
    for t in os {
        t.join().unwrap();
    }
    for t in doomed {
        let _ = t.wait();
    }
    // What the killed selects left (none, if every kill landed on a wait) drains here.
    let mut got = got.lock().unwrap().clone();
    for q in [&a, &b] {
        while let Ok(v) = q.try_get() {
            got.push(v);
        }
    }
    let mut seen = vec![0u8; N as usize];
    for v in got {
        seen[v as usize] += 1;
    }
    let lost = seen.iter().filter(|&&c| c == 0).count();
    let twice = seen.iter().filter(|&&c| c > 1).count();
    assert_eq!(
        (lost, twice),
        (0, 0),
        "{lost} items lost, {twice} taken twice"
    );
}

#[test]
fn a_branch_that_loses_takes_nothing() {
    let first: Queue<&str> = Queue::unbounded();
    let second: Queue<&str> = Queue::unbounded();
    first.put("one").unwrap();
    second.put("two").unwrap();
    let mut sel = Select::new();
    let k1 = sel.get(&first);
    let k2 = sel.get(&second);
    assert_eq!(sel.wait(), Ok(k1.index()));
    assert_eq!((k1.take(), k2.take()), (Some(Ok("one")), None));
    assert_eq!(second.len(), 1, "the losing queue keeps its item");
    // Waiting again waits for the branches left: the second fires now.
    assert_eq!(sel.wait(), Ok(k2.index()));
    assert_eq!(k2.take(), Some(Ok("two")));
    assert_eq!(sel.wait(), Err(SelectError::Exhausted));

    // A set event ahead of a queue with an item: the queue keeps it.
    let stop: Event = Event::new();
    stop.set(()).unwrap();
    second.put("kept").unwrap();
    let mut sel = Select::new();
    let s = sel.event(&stop);
    let q = sel.get(&second);
    assert_eq!(sel.wait(), Ok(s.index()));
    assert_eq!((s.take(), q.take()), (Some(Ok(())), None));
    assert_eq!(second.try_get(), Ok("kept"));
}

#[test]
fn a_parked_select_is_handed_one_item_and_shows_as_one_wait_on_all_its_branches() {
    let a: Queue<u32> = Queue::unbounded().named("a");
    let b: Queue<u32> = Queue::unbounded().named("b");
    let stop: Event = Event::new().named("stop");
    let t = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        spawn(move || {
            let mut sel = Select::new();
            let ka = sel.get(&a);
            let kb = sel.get(&b);
            let ks = sel.event(&stop);
            let _tick = sel.after(Duration::from_secs(3600));
            let i = sel.wait().unwrap();
            (i, ka.take(), kb.take(), ks.take())
        })
    };
    let shown = parked_select(t.id());
    let name = shown.name.clone().unwrap();
    for part in [
        format!("queue \"a\" #{}", a.id()),
        format!("queue \"b\" #{}", b.id()),
        format!("event \"stop\" #{}", stop.id()),
        "timer".to_string(),
    ] {
        assert!(name.contains(&part), "{name:?} lacks {part:?}");
    }
    assert_eq!((shown.waiters, shown.counts["branches"]), (1, 4));
    assert!(
        greenhub::inspect::format_run_info().contains(&format!("waiting on select \"{name}\"")),
        "{}",
        greenhub::inspect::format_run_info()
    );
    // Each queue sees the select as one of its getters.
    assert_eq!((a.waiting_getters(), b.waiting_getters()), (1, 1));
    b.put(5).unwrap();
    b.put(6).unwrap();
    assert_eq!(t.wait().unwrap(), (1, None, Some(Ok(5)), None));
    assert_eq!(b.try_get(), Ok(6));
    assert_eq!(
        a.waiting_getters(),
        0,
        "the select left the queue it did not take from"
    );
}

#[test]
fn a_closed_and_drained_queue_fires_with_closed() {
    let q: Queue<u8> = Queue::unbounded();
    q.put(1).unwrap();
    q.close();
    let mut sel = Select::new();
    let k = sel.get(&q);
    sel.wait().unwrap();
    assert_eq!(k.take(), Some(Ok(1)), "what was queued drains first");
    let mut sel = Select::new();
    let k = sel.get(&q);
    sel.wait().unwrap();
    assert_eq!(k.take(), Some(Err(GetError::Closed)));

    // Closed while the select is parked.
    let q: Queue<u8> = Queue::unbounded();
    let t = {
        let q = q.clone();
        spawn(move || {
            let mut sel = Select::new();
            let k = sel.get(&q);
            sel.wait().unwrap();
            k.take()
        })
    };
    parked_select(t.id());
    q.close();
    assert_eq!(t.wait().unwrap(), Some(Err(GetError::Closed)));
}

#[test]
fn join_branches_fire_in_the_order_threads_end() {
    let gates: Vec<Event> = (0..4).map(|_| Event::new()).collect();
    let threads: Vec<_> = (0..4u32)
        .map(|i| {
            let gate = gates[i as usize].clone();
            spawn(move || {
                gate.wait().unwrap();
                i * 10
            })
        })
        .collect();
    let mut sel = Select::new();
    let keys: Vec<_> = threads.iter().map(|t| sel.join(t)).collect();
    let mut order = Vec::new();
    for &i in &[2usize, 0, 3, 1] {
        gates[i].set(()).unwrap();
        let fired = sel.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(keys[fired].take(), Some(()));
        order.push(threads[fired].wait().unwrap());
    }
    assert_eq!(order, [20, 0, 30, 10]);
    assert_eq!(sel.wait(), Err(SelectError::Exhausted));
    // A thread that has ended already fires at once.
    let mut sel = Select::new();
    sel.join(&threads[0]);
    assert_eq!(sel.wait(), Ok(0));
}

#[test]
fn timers_timeouts_and_deadline_scopes() {
    let q: Queue<u8> = Queue::unbounded();
    let mut sel = Select::new();
    let item = sel.get(&q);
    let late = sel.after(Duration::from_secs(3600));
    let soon = sel.after(Duration::from_millis(5));
    let t0 = Instant::now();
    assert_eq!(sel.wait(), Ok(soon.index()));
    assert!(t0.elapsed() >= Duration::from_millis(5));
    assert_eq!(
        (soon.take(), late.take(), item.take()),
        (Some(()), None, None)
    );

    // The wait's own timeout, and the enclosing deadline scope, end it without a branch.
    assert_eq!(
        sel.wait_timeout(Duration::from_millis(5)),
        Err(SelectError::TimedOut)
    );
    let scoped = with_timeout(Duration::from_millis(5), || sel.wait());
    assert_eq!(scoped, Err(SelectError::TimedOut));
    assert_eq!(q.waiting_getters(), 0);
    // A time that has passed fires at once.
    let mut sel = Select::new();
    sel.at(Instant::now() - Duration::from_millis(1));
    assert_eq!(sel.wait(), Ok(0));
}

#[test]
fn a_killed_select_leaves_every_item_in_its_queue() {
    let _watchdog = common::watchdog(Duration::from_secs(60));
    let q: Queue<u32> = Queue::unbounded();
    for round in 0..300u32 {
        let t = {
            let q = q.clone();
            spawn(move || {
                let mut sel = Select::new();
                let k = sel.get(&q);
                sel.wait().unwrap();
                k.take()
            })
        };
        // Half the time the put and the kill race; otherwise the kill lands on the parked wait.
        if round.is_multiple_of(2) {
            parked_select(t.id());
        }
        q.put(round).unwrap();
        t.kill();
        match t.wait() {
            Ok(Some(Ok(v))) => assert_eq!(v, round),
            Ok(other) => panic!("{other:?}"),
            Err(_) => assert_eq!(q.try_get(), Ok(round), "round {round}: the item was lost"),
        }
        assert!(q.is_empty());
    }
}

#[test]
fn a_plain_os_thread_selects_too() {
    let q: Queue<u32> = Queue::unbounded();
    let stop: Event = Event::new();
    let putter = {
        let q = q.clone();
        spawn(move || {
            greenhub::sleep(Duration::from_millis(5)).unwrap();
            q.put(9).unwrap();
        })
    };
    let mut sel = Select::new();
    let s = sel.event(&stop);
    let k = sel.get(&q);
    assert_eq!(sel.wait_timeout(Duration::from_secs(10)), Ok(k.index()));
    assert_eq!((k.take(), s.take()), (Some(Ok(9)), None));
    putter.wait().unwrap();
}

/// Held by the tests that count or make descriptors (a child's pipes are descriptors too),
/// so that the count of one is not moved by the other.
static DESCRIPTORS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn descriptor_branches_fire_on_readiness_and_two_selects_can_watch_one_socket() {
    let _descriptors = DESCRIPTORS.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = common::watchdog(Duration::from_secs(60));
    let (reader, writer) = UnixStream::pair().unwrap();
    let reader = Arc::new(reader);
    let fired = Arc::new(AtomicUsize::new(0));
    let watchers: Vec<_> = (0..2)
        .map(|_| {
            let (reader, fired) = (reader.clone(), fired.clone());
            spawn(move || {
                let never: Queue<()> = Queue::unbounded();
                let mut sel = Select::new();
                let r = sel.readable(&*reader);
                let _n = sel.get(&never);
                sel.wait().unwrap();
                assert!(r.take().is_some());
                fired.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for w in &watchers {
        let shown = parked_select(w.id());
        assert!(
            shown.name.as_deref().unwrap().contains("(read)"),
            "{shown:?}"
        );
    }
    assert_eq!(fired.load(Ordering::SeqCst), 0, "nothing to read yet");
    (&writer).write_all(b"ping").unwrap();
    for w in watchers {
        w.wait().unwrap();
    }
    assert_eq!(fired.load(Ordering::SeqCst), 2);
    // Readiness is only reported: the data is still there.
    let reader = Arc::into_inner(reader).unwrap();
    let mut buf = [0; 4];
    (&reader).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    // A fresh socket is writable at once; a select loop over readiness does not leak: a
    // thousand waits that time out leave no entry behind.
    {
        let mut sel = Select::new();
        sel.writable(&writer);
        assert_eq!(sel.wait(), Ok(0));
    }
    let before = open_descriptors();
    for _ in 0..1000 {
        let mut sel = Select::new();
        sel.readable(&reader);
        assert_eq!(sel.wait_timeout(Duration::ZERO), Err(SelectError::TimedOut));
    }
    // The runtime's own threads may hold a descriptor for a moment (the monitor reading a
    // worker's /proc entry, symbols being loaded for a report): a leak stays, those go.
    let settle = std::time::Instant::now() + Duration::from_secs(10);
    while open_descriptors() > before && std::time::Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Fewer is no leak: one of those momentary descriptors may have been open at `before`.
    let after = open_descriptors();
    assert!(
        after <= before,
        "{after} descriptors open, {before} before the waits"
    );
    // Hung up: readable, and the read reports the end.
    drop(writer);
    let mut sel = Select::new();
    sel.readable(&reader);
    assert_eq!(sel.wait_timeout(Duration::from_secs(10)), Ok(0));
    assert_eq!((&reader).read(&mut buf).unwrap(), 0);
}

/// The descriptors open in this process, less the files under `/proc`: a worker opens its own
/// `/proc` entry, for good, the first time it runs a green thread, which a test running beside
/// this one may cause at any moment.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| !target.starts_with("/proc/"))
        })
        .count()
}

#[test]
fn out_of_descriptors_a_descriptor_branch_fires_rather_than_hangs() {
    if !common::is_child("out_of_descriptors_a_descriptor_branch_fires_rather_than_hangs") {
        let _descriptors = DESCRIPTORS.lock().unwrap_or_else(|e| e.into_inner());
        let out = common::run_child(
            "out_of_descriptors_a_descriptor_branch_fires_rather_than_hangs",
            &[],
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", common::text(&out));
        return;
    }
    let (reader, _writer) = UnixStream::pair().unwrap();
    let hoard = common::use_up_descriptors();
    let last = std::fs::File::open("/dev/null");
    let mut sel = Select::new();
    sel.readable(&reader);
    // Nothing to read, but no duplicate can be made: ready, as documented.
    assert_eq!(sel.wait_timeout(Duration::from_secs(10)), Ok(0));
    drop((last, hoard));
}
