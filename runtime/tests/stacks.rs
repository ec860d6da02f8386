//! Stacks of parked green threads: they name the functions the threads wait in, with file and
//! line, and reading them is safe while threads wake, park, end and are killed.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::inspect::{StackError, ThreadStack, ThreadState, snapshot, snapshot_with_stacks};
use greenhub::net::{TcpListener, TcpStream};
use greenhub::{Event, Mutex, Queue, sleep, spawn};

/// Waits until the thread `id` is parked, then reads its stack.
fn parked_stack(id: u64) -> ThreadStack {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let parked = snapshot()
            .threads
            .iter()
            .any(|t| t.id == id && t.state == ThreadState::Waiting);
        if parked {
            match greenhub::inspect::stack(id) {
                Ok(stack) => return stack,
                Err(StackError::NotParked(_)) => {}
                Err(e) => panic!("stack of {id}: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "thread {id} never parked");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The frame of `function` (a path suffix), which must be there.
fn frame_of<'a>(stack: &'a ThreadStack, function: &str) -> &'a greenhub::inspect::StackFrame {
    stack
        .frames
        .iter()
        .find(|f| f.function.ends_with(function))
        .unwrap_or_else(|| panic!("no frame of {function} in {stack:#?}"))
}

fn assert_at(stack: &ThreadStack, function: &str, line: u32) {
    let frame = frame_of(stack, function);
    assert!(
        frame
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("stacks.rs")),
        "{frame:?}"
    );
    assert_eq!(frame.line, Some(line), "{frame:?} in {stack:#?}");
}

#[inline(never)]
fn waits_on_queue(q: &Queue<u32>, line: &AtomicU32) -> u32 {
    line.store(line!() + 1, Ordering::SeqCst);
    q.get().unwrap()
}

#[inline(never)]
fn waits_on_event(e: &Event<()>, line: &AtomicU32) {
    line.store(line!() + 1, Ordering::SeqCst);
    e.wait().unwrap()
}

#[inline(never)]
fn sleeps(line: &AtomicU32) {
    line.store(line!() + 1, Ordering::SeqCst);
    sleep(Duration::from_secs(60)).ok();
}

#[inline(never)]
fn waits_on_mutex(m: &Mutex<u32>, line: &AtomicU32) -> u32 {
    line.store(line!() + 1, Ordering::SeqCst);
    *m.lock().unwrap()
}

#[inline(never)]
fn reads_socket(s: &mut TcpStream, line: &AtomicU32) -> usize {
    let mut buf = [0u8; 16];
    line.store(line!() + 1, Ordering::SeqCst);
    s.read(&mut buf).unwrap_or(0)
}

#[inline(never)]
fn outer(q: &Queue<u32>, line: &AtomicU32) -> u32 {
    waits_on_queue(q, line) + 1
}

#[test]
fn a_parked_thread_shows_the_functions_it_waits_in_with_file_and_line() {
    let line = Arc::new(AtomicU32::new(0));
    let q = Queue::unbounded();
    let t = spawn({
        let (q, line) = (q.clone(), line.clone());
        move || outer(&q, &line)
    });
    let stack = parked_stack(t.id());
    assert_at(&stack, "waits_on_queue", line.load(Ordering::SeqCst));
    frame_of(&stack, "outer");
    // Innermost: the greenhub call the program made, greenhub's waiting machinery folded.
    let first = &stack.frames[0].function;
    assert!(
        first.contains("Queue") && first.ends_with("::get"),
        "{stack:#?}"
    );
    assert!(stack.folded > 0);
    // Outermost: the closure given to spawn; the spawn machinery folded.
    let last = &stack.frames.last().unwrap().function;
    assert!(last.contains("{{closure}}"), "{stack:#?}");
    q.put(1).unwrap();
    assert_eq!(t.wait().unwrap(), 2);
}

#[test]
fn every_kind_of_wait_shows_where_it_was_made() {
    let event = Event::new();
    let mutex = Arc::new(Mutex::new(7));
    let held = mutex.lock().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (ev_line, sl_line, mx_line, rd_line) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
    );
    let on_event = spawn({
        let (e, l) = (event.clone(), ev_line.clone());
        move || waits_on_event(&e, &l)
    });
    let sleeper = spawn({
        let l = sl_line.clone();
        move || sleeps(&l)
    });
    let on_mutex = spawn({
        let (m, l) = (mutex.clone(), mx_line.clone());
        move || waits_on_mutex(&m, &l)
    });
    let reader = spawn({
        let l = rd_line.clone();
        move || {
            let mut s = TcpStream::connect(addr).unwrap();
            reads_socket(&mut s, &l)
        }
    });
    let (mut server_side, _) = listener.accept().unwrap();

    assert_at(
        &parked_stack(on_event.id()),
        "waits_on_event",
        ev_line.load(Ordering::SeqCst),
    );
    assert_at(
        &parked_stack(sleeper.id()),
        "sleeps",
        sl_line.load(Ordering::SeqCst),
    );
    assert_at(
        &parked_stack(on_mutex.id()),
        "waits_on_mutex",
        mx_line.load(Ordering::SeqCst),
    );
    assert_at(
        &parked_stack(reader.id()),
        "reads_socket",
        rd_line.load(Ordering::SeqCst),
    );

    // The same in a whole snapshot, and in the text dump.
    let snap = snapshot_with_stacks();
    assert_eq!(snap.stacks_unavailable, None);
    let of = |id| {
        snap.threads
            .iter()
            .find(|t| t.id == id)
            .and_then(|t| t.stack.clone())
            .unwrap()
    };
    frame_of(&of(on_event.id()), "waits_on_event");
    frame_of(&of(sleeper.id()), "sleeps");
    let text = snap.format_run_info();
    assert!(text.contains("waits_on_mutex at "), "{text}");

    event.set(()).unwrap();
    drop(held);
    std::io::Write::write_all(&mut server_side, b"x").unwrap();
    sleeper.kill();
    on_event.wait().unwrap();
    assert_eq!(on_mutex.wait().unwrap(), 7);
    assert_eq!(reader.wait().unwrap(), 1);
}

#[test]
fn a_running_or_unknown_thread_has_no_stack_to_show() {
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snapshot()
        .threads
        .iter()
        .any(|t| t.id == spinner.id() && t.state == ThreadState::Running)
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        greenhub::inspect::stack(spinner.id()),
        Err(StackError::NotParked(spinner.id()))
    );
    stop.store(true, Ordering::Relaxed);
    spinner.wait().unwrap();
    assert_eq!(
        greenhub::inspect::stack(u64::MAX),
        Err(StackError::NoSuchThread(u64::MAX))
    );
}

#[inline(never)]
fn bounces(inbox: &Queue<u64>, outbox: &Queue<u64>, line: &AtomicU32) -> u64 {
    let mut sum = 0;
    loop {
        line.store(line!() + 1, Ordering::Relaxed);
        match inbox.get() {
            Ok(0) | Err(_) => return sum,
            Ok(v) => {
                sum += v;
                outbox.put(v).unwrap();
            }
        }
    }
}

/// Stacks are read over and over while threads wake and park thousands of times a second,
/// while others are spawned, end and are killed: no read faults, every stack read of a
/// bouncing thread names where it waits, and no message is lost or duplicated.
#[test]
fn reading_stacks_while_threads_wake_end_and_die_loses_nothing() {
    const PAIRS: usize = 50;
    const ROUNDS: u64 = 3_000;
    let line = Arc::new(AtomicU32::new(0));
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        let (a, b) = (Queue::unbounded(), Queue::unbounded());
        let echo = spawn({
            let (a, b, line) = (a.clone(), b.clone(), line.clone());
            move || bounces(&a, &b, &line)
        });
        let driver = spawn(move || {
            let mut sum = 0;
            for v in 1..=ROUNDS {
                a.put(v).unwrap();
                sum += b.get().unwrap();
            }
            a.put(0).unwrap();
            sum
        });
        pairs.push((echo, driver));
    }
    // Churn: threads that start, park briefly and end, and some killed while parked.
    let churning = Arc::new(AtomicBool::new(true));
    let churned = Arc::new(AtomicU64::new(0));
    let churner = spawn({
        let (churning, churned) = (churning.clone(), churned.clone());
        move || {
            while churning.load(Ordering::Relaxed) {
                let short = spawn(|| sleep(Duration::from_micros(200)).ok());
                let long = spawn(|| sleep(Duration::from_secs(60)).ok());
                sleep(Duration::from_micros(100)).ok();
                long.kill();
                let _ = short.wait();
                let _ = long.wait();
                churned.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let echo_ids: Vec<u64> = pairs.iter().map(|(e, _)| e.id()).collect();
    let mut reads = 0;
    let mut bouncing_seen = 0;
    while pairs.iter().any(|(_, d)| !d.is_done()) || reads < 20 {
        let snap = snapshot_with_stacks();
        assert_eq!(snap.stacks_unavailable, None);
        for t in &snap.threads {
            if let (Some(stack), true) = (&t.stack, echo_ids.contains(&t.id)) {
                frame_of(stack, "bounces");
                bouncing_seen += 1;
            }
        }
        reads += 1;
    }
    churning.store(false, Ordering::Relaxed);
    churner.wait().unwrap();
    let expected = ROUNDS * (ROUNDS + 1) / 2;
    for (echo, driver) in pairs {
        assert_eq!(driver.wait().unwrap(), expected);
        assert_eq!(echo.wait().unwrap(), expected);
    }
    assert!(bouncing_seen > 0, "no stack of a bouncing thread was read");
    assert!(churned.load(Ordering::Relaxed) > 0);
}
